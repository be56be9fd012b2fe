"""Get the model GGUF and its mmproj onto local disk, once, before any backend starts.

huggingface-hub does the hard parts (resume, progress bar, HF_TOKEN, the shared cache, offline
mode); here we add the checks that make failures one clear line: the file names are verified
against the repo listing (a renamed upload fails by name, not with a 404), and "no network and
no cache" names the files and the ways to provide them.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors

from vlgate.launcher.settings import ModelSource


class ModelError(RuntimeError):
    """The model files cannot be found or fetched; the message says which and how to fix it."""


@dataclass(frozen=True)
class ModelFiles:
    model: Path
    mmproj: Path


def offline_mode() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface-hub reads it only once, at import)."""
    raw = os.environ.get("HF_HUB_OFFLINE")
    if raw is not None:
        return raw.strip().lower() in ("1", "on", "yes", "true")
    return bool(hf_constants.HF_HUB_OFFLINE)


def _local(path: str, field: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(f"launcher.model.{field}: {path!r} does not exist (fix the path, or remove it to use the hub)")
    return p.resolve()


def _cache_dir(src: ModelSource) -> str | None:
    return os.path.expanduser(src.cache_dir) if src.cache_dir else None


def _unreachable() -> str | None:
    """Why the hub cannot be reached (DNS, connect), in 5 s rather than after the hub's ~25 s of retries.

    Skipped behind a proxy, where only the proxy knows.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urllib.parse.urlsplit(hf_constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=5).close()
    except OSError as exc:
        return f"{url.hostname}:{port}: {exc.strerror or exc}"
    return None


def _verify_names(src: ModelSource, names: list[str]) -> str | None:
    """Check `names` against the repo listing. Returns why the hub is unreachable, or None if it answered."""
    if why := _unreachable():
        return why
    try:
        listing = huggingface_hub.list_repo_files(src.repo, revision=src.revision)
    except hf_errors.GatedRepoError:
        raise ModelError(f"{src.repo} is gated: accept its terms on huggingface.co and set HF_TOKEN") from None
    except hf_errors.RepositoryNotFoundError:
        raise ModelError(
            f"{src.repo} not found on the Hugging Face Hub (set launcher.model.repo, or HF_TOKEN for a private repo)"
        ) from None
    except hf_errors.RevisionNotFoundError:
        raise ModelError(f"{src.repo} has no revision {src.revision!r} (fix launcher.model.revision)") from None
    except Exception as exc:  # network down, DNS, proxy: fall back to the cache
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip(": ")
    missing = [n for n in names if n not in listing]
    if missing:
        ggufs = ", ".join(sorted(f for f in listing if f.endswith(".gguf"))) or "none"
        raise ModelError(
            f"{src.repo} has no file {', '.join(missing)} (its GGUF files: {ggufs}); "
            "set launcher.model.file / launcher.model.mmproj_file to the new names"
        )
    return None


def _hint(src: ModelSource, names: list[str], why: str) -> str:
    cache = _cache_dir(src) or hf_constants.HF_HUB_CACHE
    files = ", ".join(names)
    return (
        f"model files {files} from {src.repo} are not in the Hugging Face cache ({cache}) and {why}. "
        f"Fix: run once with network access (HF_TOKEN if needed, HF_HUB_OFFLINE unset) to download them, "
        f"or `hf download {src.repo} {' '.join(names)}{' --cache-dir ' + cache if src.cache_dir else ''}`, "
        f"or set launcher.model.path and launcher.model.mmproj to local GGUF files"
    )


def fetch(src: ModelSource) -> ModelFiles:
    """Local paths as given; hub files from the cache or downloaded into it (resumable, with progress)."""
    model = _local(src.path, "path") if src.path else None
    mmproj = _local(src.mmproj, "mmproj") if src.mmproj else None
    wanted = ([src.file] if model is None else []) + ([src.mmproj_file] if mmproj is None else [])
    if not wanted:
        return ModelFiles(model, mmproj)  # type: ignore[arg-type]

    unreachable = "HF_HUB_OFFLINE is set" if offline_mode() else _verify_names(src, wanted)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in wanted:
        if unreachable is None:
            print(f"[vlgate] model: {src.repo}/{name} (downloading into the hub cache if needed)", file=sys.stderr)
        try:
            path = huggingface_hub.hf_hub_download(
                src.repo,
                name,
                revision=src.revision,
                cache_dir=_cache_dir(src),
                local_files_only=unreachable is not None,
            )
        except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled):
            missing.append(name)
            continue
        except hf_errors.GatedRepoError:
            raise ModelError(f"{src.repo} is gated: accept its terms on huggingface.co and set HF_TOKEN") from None
        except hf_errors.EntryNotFoundError:
            raise ModelError(f"{src.repo} has no file {name} (fix launcher.model.file / mmproj_file)") from None
        except OSError as exc:
            raise ModelError(f"downloading {src.repo}/{name} failed: {exc}") from None
        found[name] = Path(path)
    if missing:
        raise ModelError(_hint(src, missing, f"the hub cannot be reached ({unreachable or 'download failed'})"))
    return ModelFiles(model or found[src.file], mmproj or found[src.mmproj_file])


def locate(src: ModelSource) -> tuple[ModelFiles, list[str]]:
    """Paths for a dry run, without network: cached or local files, else a placeholder + a note."""
    notes: list[str] = []

    def one(local: str | None, name: str) -> Path:
        if local:
            return Path(local).expanduser()
        hit = huggingface_hub.try_to_load_from_cache(src.repo, name, cache_dir=_cache_dir(src), revision=src.revision)
        if isinstance(hit, str):
            return Path(hit)
        notes.append(f"{src.repo}/{name} is not cached yet: `vlgate up` downloads it before starting backends")
        cache = Path(_cache_dir(src) or hf_constants.HF_HUB_CACHE)
        folder = "models--" + src.repo.replace("/", "--")
        return cache / folder / "snapshots" / "<revision>" / name

    return ModelFiles(one(src.path, src.file), one(src.mmproj, src.mmproj_file)), notes
