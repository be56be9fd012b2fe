"""The `storage:` section: where stored responses, conversations, files and batches live, and for how long.

Embedded SQLite by default (a file in the data directory: `vlgate up` needs no setup and a restart finds
its state again); PostgreSQL for several gateway replicas (`url: postgresql://...`, or `VLGATE_STORAGE_URL`).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

DAY = 86400.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetentionSettings(_Strict):
    """How long things are kept; the sweeper deletes what is older (0 = keep forever)."""

    responses_s: float = Field(default=30 * DAY, ge=0, description="stored responses and their input items "
                               "(OpenAI keeps them 30 days)")
    conversations_s: float = Field(default=0, ge=0, description="conversations and their items (0: until deleted, "
                                   "as OpenAI)")
    files_s: float = Field(default=30 * DAY, ge=0, description="uploaded files and batch output/error files")
    batches_s: float = Field(default=30 * DAY, ge=0, description="finished batch jobs and their lines")
    sweep_interval_s: float = Field(default=600.0, gt=0, description="how often the sweeper runs")


class BatchSettings(_Strict):
    """Batch jobs run at low priority: only in slots interactive traffic leaves free."""

    share: float = Field(default=0.5, gt=0, le=1, description="most of the fleet's slots batch lines may hold at once")
    lease_s: float = Field(default=30.0, gt=1, description="a claimed line is re-run by any replica when its worker "
                           "has not renewed the claim for this long (a replica that died)")
    max_file_bytes: int = Field(default=200 * 1024 * 1024, gt=0, description="largest upload to /v1/files "
                                "(OpenAI's limit for batch input)")
    max_lines: int = Field(default=50_000, gt=0, description="most requests in one batch input file (OpenAI's)")


class StorageSettings(_Strict):
    url: str | None = Field(default=None, description="postgresql://user:pass@host/db for a fleet of replicas; "
                            "sqlite:///path/to/file.db; default: sqlite in data_dir (also VLGATE_STORAGE_URL)")
    data_dir: str | None = Field(default=None, description="where the embedded database lives (also "
                                 "VLGATE_DATA_DIR; default ~/.local/share/vlgate)")
    enabled: bool = Field(default=True, description="false: nothing is stored; stateful routes answer 400/404")
    retention: RetentionSettings = RetentionSettings()
    batches: BatchSettings = BatchSettings()

    def resolved_url(self) -> str:
        """The database URL: config, else VLGATE_STORAGE_URL, else SQLite in the data directory."""
        url = self.url or os.environ.get("VLGATE_STORAGE_URL")
        if url:
            return url
        return "sqlite:///" + str(self.resolved_data_dir() / "vlgate.db")

    def resolved_data_dir(self) -> Path:
        base = self.data_dir or os.environ.get("VLGATE_DATA_DIR")
        if base:
            return Path(base).expanduser()
        xdg = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
        return Path(xdg) / "vlgate"
