"""Shared fixtures. Nothing here skips: a test that cannot run (no binary, no model) must fail."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from support.llama import LlamaServer
from vlgate.launcher.binary import ensure_server
from vlgate.tinymodel.model import TinyModel, write_tiny_model

# ---------------------------------------------------------------- the store's data directory

_DATA_DIR = tempfile.mkdtemp(prefix="vlgate-test-data-")


def pytest_configure(config: pytest.Config) -> None:
    """Gateways started by tests keep their embedded store (SQLite) in a temp dir, never in the user's
    data directory, and never reach a database the developer's environment names."""
    os.environ["VLGATE_DATA_DIR"] = _DATA_DIR
    os.environ.pop("VLGATE_STORAGE_URL", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_DATA_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def store_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's gateways start with an empty store of their own (a restart within a test finds it again)."""
    path = tmp_path_factory.mktemp("vlgate-data")
    monkeypatch.setenv("VLGATE_DATA_DIR", str(path))
    return path


# ---------------------------------------------------------------- llama-server binary + tiny model

def pytest_collection_finish(session: pytest.Session) -> None:
    """Build llama-server (~10 min cold) before the first test, outside any per-test timeout."""
    if any("llama_server_bin" in getattr(item, "fixturenames", ()) for item in session.items):
        ensure_server()


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    """The pinned llama-server (found, or built once into ~/.cache/vlgate)."""
    return ensure_server()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Random-weight text model + mmproj (about 0.5 s to generate)."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))


LlamaServerFactory = Callable[..., LlamaServer]


@pytest.fixture
def llama_server(
    llama_server_bin: Path, tiny_model: TinyModel, tmp_path: Path
) -> Iterator[LlamaServerFactory]:
    """Factory: `llama_server(slots=2, ctx=512, mmproj=False, extra_args=[])` -> started LlamaServer.

    Every server it started is stopped at teardown; logs go to the test's tmp_path.
    """
    started: list[LlamaServer] = []

    def start(
        slots: int = 2, ctx: int = 512, mmproj: bool = False, extra_args: Sequence[str] = (), threads: int = 1
    ) -> LlamaServer:
        server = LlamaServer(
            llama_server_bin, tiny_model.model, mmproj=tiny_model.mmproj if mmproj else None,
            slots=slots, ctx=ctx, threads=threads, extra_args=extra_args,
            log_dir=tmp_path / f"llama-server-{len(started)}",
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
