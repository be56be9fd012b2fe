"""Launcher planning without processes: settings, GPU detection, argv/env per backend, backoff, dry run."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from vlgate.backends import BackendState as S
from vlgate.cli.launch import format_status
from vlgate.config import ConfigError, load_config, parse_config
from vlgate.launcher import gpus
from vlgate.launcher.command import LaunchError, build_specs
from vlgate.launcher.download import ModelFiles
from vlgate.launcher.process import ALLOWED, describe_exit
from vlgate.launcher.settings import LauncherSettings, RestartPolicy
from vlgate.launcher.supervisor import CrashWindow, delay_for

VLGATE = shutil.which("vlgate")
FILES = ModelFiles(Path("/m/model.gguf"), Path("/m/mmproj.gguf"))


def specs(settings: LauncherSettings, found: list[str], tmp_path: Path):
    return build_specs(settings, binary=Path("/bin/llama-server"), model=FILES, gpus=found, alias="youtu-vl",
                       log_dir=tmp_path)


# ---------------------------------------------------------------------- settings / default config

def test_default_config_states_the_model_and_ctx_arithmetic() -> None:
    s = load_config().launcher
    assert s.model.repo == "tencent/Youtu-VL-4B-Instruct-GGUF"
    assert s.model.file == "Youtu-VL-4B-Instruct-Q8_0.gguf"
    assert s.model.mmproj_file == "mmproj-Youtu-VL-4b-Instruct-BF16.gguf"
    # 2048 image + 1024 prompt + 12280 answer = 15352 -> 15360; x 4 slots
    assert (s.image_max_tokens, s.prompt_tokens, s.n_predict, s.parallel) == (2048, 1024, 12280, 4)
    assert s.slot_ctx() == 15360
    assert s.ctx_for(s.parallel) == 61440
    text = Path(__file__).parents[2].joinpath("vlgate/configs/default.yaml").read_text()
    assert "15352 -> 15360" in text and "= 61440" in text


def test_unknown_launcher_field_is_one_clear_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"launcher": {"gpu_list": [0]}}, "f.yaml")
    assert str(err.value) == "f.yaml: launcher.gpu_list: unknown field"
    with pytest.raises(ConfigError, match="backoff_max_s must be >= "):
        parse_config({"launcher": {"restart": {"backoff_initial_s": 5, "backoff_max_s": 1}}})


# ---------------------------------------------------------------------- GPUs

def test_gpus_from_cuda_visible_devices() -> None:
    assert gpus.detect({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert gpus.detect({"CUDA_VISIBLE_DEVICES": "GPU-1a2b, 1"}) == ["GPU-1a2b", "1"]
    assert gpus.detect({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert gpus.detect({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert gpus.detect({"CUDA_VISIBLE_DEVICES": "0,-1,1"}) == ["0"]  # CUDA stops at the invalid entry


def _fake_exe(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_gpus_from_nvidia_smi_and_nvcc_is_not_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _fake_exe(tmp_path, "nvcc", "echo nvcc\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpus.detect() == []  # nvcc alone: CPU
    _fake_exe(tmp_path, "nvidia-smi", 'echo "0"; echo "1"\n')
    assert gpus.detect() == ["0", "1"]
    _fake_exe(tmp_path, "nvidia-smi", "echo 'NVIDIA-SMI has failed' >&2; exit 9\n")
    assert gpus.detect() == []


# ---------------------------------------------------------------------- argv + env

def test_one_backend_per_gpu_with_documented_flags(tmp_path: Path) -> None:
    s = LauncherSettings()
    a, b = specs(s, ["0", "1"], tmp_path)
    assert a.argv == (
        "/bin/llama-server", "-m", "/m/model.gguf", "--mmproj", "/m/mmproj.gguf", "--alias", "youtu-vl",
        "--host", "127.0.0.1", "--port", "8081", "--parallel", "4", "--ctx-size", "61440", "-ngl", "all",
        "--image-max-tokens", "2048", "--temp", "0.1", "--top-p", "0.001", "--repeat-penalty", "1.05",
        "-n", "12280", "--metrics", "--jinja",
    )  # fmt: skip
    assert a.env == {"CUDA_VISIBLE_DEVICES": "0"} and b.env == {"CUDA_VISIBLE_DEVICES": "1"}
    assert (a.name, b.name, b.port, b.url) == ("gpu0", "gpu1", 8082, "http://127.0.0.1:8082")
    assert a.log_path == tmp_path / "gpu0.log"
    assert a.shell().startswith("CUDA_VISIBLE_DEVICES=0 /bin/llama-server -m /m/model.gguf --mmproj")


def test_cpu_backend_has_no_gpu_layers_and_hides_gpus(tmp_path: Path) -> None:
    (cpu,) = specs(LauncherSettings(), [], tmp_path)
    assert cpu.name == "cpu0" and cpu.gpu is None
    assert cpu.argv[cpu.argv.index("-ngl") + 1] == "0"
    assert cpu.env["CUDA_VISIBLE_DEVICES"] == ""
    assert cpu.shell().startswith("CUDA_VISIBLE_DEVICES='' /bin/llama-server")


def test_per_backend_overrides(tmp_path: Path) -> None:
    s = LauncherSettings.model_validate({
        "host": "0.0.0.0", "threads": 2, "extra_args": ["--flash-attn", "on"], "env": {"A": "1", "B": "x"},
        "backends": [
            {"name": "big", "gpu": 3, "port": 9100, "parallel": 2, "extra_args": ["--no-mmap"], "env": {"B": "y"}},
            {"gpu": None, "ctx_size": 4096, "threads": 1},
        ],
    })
    big, cpu = specs(s, ["0", "1", "2", "3"], tmp_path)  # explicit backends win over detected GPUs
    assert big.argv[big.argv.index("--ctx-size") + 1] == str(2 * 15360)
    assert big.argv[-5:] == ("-t", "2", "--flash-attn", "on", "--no-mmap")
    assert big.env == {"A": "1", "B": "y", "CUDA_VISIBLE_DEVICES": "3"}
    assert (big.port, big.url) == (9100, "http://127.0.0.1:9100")  # listens on 0.0.0.0, polled on loopback
    assert cpu.name == "cpu1" and cpu.port == 8082
    assert cpu.argv[cpu.argv.index("--ctx-size") + 1] == "4096"
    assert cpu.argv[cpu.argv.index("-t") + 1] == "1"


def test_free_ports_and_duplicate_names(tmp_path: Path) -> None:
    s = LauncherSettings(port_base=0, cpu_backends=3)
    ports = [sp.port for sp in specs(s, [], tmp_path)]
    assert len(set(ports)) == 3 and all(1024 < p < 65536 for p in ports)
    dup = LauncherSettings.model_validate({"backends": [{"name": "x"}, {"name": "x"}]})
    with pytest.raises(LaunchError, match="two backends are named 'x'"):
        specs(dup, [], tmp_path)


# ---------------------------------------------------------------------- restart policy

def test_backoff_is_exponential_with_bounded_jitter() -> None:
    policy = RestartPolicy(backoff_initial_s=1, backoff_max_s=10, backoff_jitter_s=0.5)
    for attempt, base in [(1, 1), (2, 2), (3, 4), (4, 8)]:
        samples = [delay_for(policy, attempt) for _ in range(200)]
        assert min(samples) >= base and max(samples) <= base + 0.5
        assert max(samples) - min(samples) > 0.05  # jitter is really there
    assert delay_for(policy, 30) == 10  # capped


def test_crash_window() -> None:
    w = CrashWindow(count=3, window_s=10)
    assert not w.add(0) and not w.add(5)
    assert not w.add(16) and list(w.times) == [16]  # 0 and 5 are more than 10 s old
    assert not w.add(17)
    assert w.add(18) and list(w.times) == [16, 17, 18]


def test_state_table_and_exit_descriptions() -> None:
    assert S.LOADING in ALLOWED[S.STARTING] and S.READY in ALLOWED[S.LOADING]
    assert ALLOWED[S.FAILED] == {S.RESTARTING, S.STOPPED}  # parked until its cool-down or an un-park
    assert S.RESTARTING in ALLOWED[S.CRASHED] and S.READY not in ALLOWED[S.CRASHED]
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-4).startswith("killed by SIGILL (illegal instruction")


def test_status_table() -> None:
    body = {"status": "unavailable", "draining": False, "reason": "cpu0: failed (crash loop)", "in_flight": 0,
            "queued": 0, "backends": [
                {"name": "cpu0", "url": "http://127.0.0.1:9", "state": "failed", "reason": "crash loop (3 crashes)",
                 "slots": 2, "in_flight": 0, "served": 0},
                {"name": "cpu1", "url": "http://127.0.0.1:10", "state": "ready", "reason": "", "slots": 2,
                 "in_flight": 1, "served": 7}]}
    out = format_status(body, "http://gw").splitlines()
    assert out[0] == "gateway http://gw: unavailable (in_flight 0, queued 0)"
    assert out[1] == "  reason: cpu0: failed (crash loop)"
    assert out[2].split() == ["NAME", "STATE", "SLOTS", "IN-FLIGHT", "SERVED", "URL", "REASON"]
    assert out[3].split(None, 6) == ["cpu0", "failed", "2", "0", "0", "http://127.0.0.1:9", "crash loop (3 crashes)"]
    assert out[4].split() == ["cpu1", "ready", "2", "1", "7", "http://127.0.0.1:10"]


# ---------------------------------------------------------------------- CLI: dry run, clear errors

def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert VLGATE, "the vlgate console script is not installed (pip install -e .)"
    return subprocess.run([VLGATE, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_dry_run_prints_commands_and_env_and_starts_nothing(tmp_path: Path) -> None:
    model, mmproj = tmp_path / "m.gguf", tmp_path / "p.gguf"
    model.write_bytes(b"x")
    mmproj.write_bytes(b"x")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"launcher": {
        "model": {"path": str(model), "mmproj": str(mmproj)}, "server_binary": "/bin/true", "gpus": "auto",
        "port_base": 9300, "env": {"GGML_SCHED_MAX_COPIES": "1"}, "log_dir": str(tmp_path / "logs")}}))
    r = _run(["up", "--dry-run", "--config", str(cfg)], {"CUDA_VISIBLE_DEVICES": "4,5"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    cmds = [ln for ln in lines if "/bin/true" in ln and not ln.startswith("#")]
    assert cmds == [
        f"GGML_SCHED_MAX_COPIES=1 CUDA_VISIBLE_DEVICES={gpu} /bin/true -m {model} --mmproj {mmproj} --alias youtu-vl "
        f"--host 127.0.0.1 --port {port} --parallel 4 --ctx-size 61440 -ngl all --image-max-tokens 2048 --temp 0.1 "
        "--top-p 0.001 --repeat-penalty 1.05 -n 12280 --metrics --jinja"
        for gpu, port in (("4", 9300), ("5", 9301))
    ]
    assert "# GPUs: 4, 5" in lines and "# gateway: http://127.0.0.1:8000 -> 2 backend(s)" in lines
    assert not (tmp_path / "logs").exists()  # nothing started, nothing written
    r = _run(["launch", "--dry-run", "--config", str(cfg)], {"CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr
    assert "# GPUs: none: CPU only" in r.stdout and "# gateway" not in r.stdout
    assert "CUDA_VISIBLE_DEVICES='' /bin/true" in r.stdout and "-ngl 0" in r.stdout


def test_cold_dry_run_names_what_will_be_downloaded(tmp_path: Path) -> None:
    r = _run(["up", "--dry-run"], {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
                                   "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr
    assert "# note: tencent/Youtu-VL-4B-Instruct-GGUF/Youtu-VL-4B-Instruct-Q8_0.gguf is not cached yet" in r.stdout
    hub = tmp_path / "hub" / "models--tencent--Youtu-VL-4B-Instruct-GGUF" / "snapshots" / "<revision>"
    assert f"-m '{hub}/Youtu-VL-4B-Instruct-Q8_0.gguf'" in r.stdout
    assert "--port 8081 --parallel 4 --ctx-size 61440 -ngl 0" in r.stdout


@pytest.mark.parametrize(
    ("launcher", "message"),
    [
        ({"server_binary": "/nonexistent/llama-server"},
         "vlgate: error: llama-server binary '/nonexistent/llama-server' from the config does not exist"),
        ({"gpus": "some"}, "vlgate: error: {cfg}: launcher.gpus: Value error, must be auto, or a list of GPU"),
        ({"model": {"path": "/nonexistent/m.gguf"}},
         "vlgate: error: launcher.model.path: '/nonexistent/m.gguf' does not exist"),
    ],
)
def test_clear_one_line_errors(tmp_path: Path, launcher: dict, message: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"launcher": {"port_base": 0, **launcher}}))
    r = _run(["launch", "--config", str(cfg)])
    assert r.returncode == 2
    assert r.stderr.startswith(message.format(cfg=cfg)), r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_broken_binary_is_reported_as_such(tmp_path: Path) -> None:
    sigill = tmp_path / "llama-server"
    sigill.write_text("#!/bin/sh\nkill -ILL $$\n")
    sigill.chmod(0o755)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"launcher": {"server_binary": str(sigill)}}))
    r = _run(["install-server", "--config", str(cfg)])
    assert r.returncode == 2
    assert r.stderr.strip() == f"vlgate: error: {sigill}: killed by SIGILL (illegal instruction: built for another " \
                               "CPU; rebuild with GGML_NATIVE=OFF)"


def test_status_without_a_gateway_is_one_line(tmp_path: Path) -> None:
    from support.llama import free_port

    port = free_port()
    r = _run(["status", "--url", f"http://127.0.0.1:{port}"])
    assert r.returncode == 2
    assert r.stderr.strip() == (f"vlgate: error: cannot reach the gateway at http://127.0.0.1:{port} (ConnectError); "
                                "is `vlgate up` running? (pass --url for another address)")
