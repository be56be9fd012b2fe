"""Issues 14 and 23's numbers in one command: balancing, images, latency and the hot path, as one markdown report.

    python bench/report.py            # the full run (~21 min on 2 cores)
    python bench/report.py --quick    # every part, shorter (~6 min)
    python bench/report.py --only hotpath,fleet --litellm

Parts, each its own script run as a subprocess that writes a markdown section (`--markdown PATH`):
fleet (fleet_sim.py: policies in virtual time, 50-120% load), saturation (saturation_real.py: 100% and
120% load, open loop, on real llama-servers: vlgate vs round robin), cache (prefix_cache_real.py: cached
tokens on real llama-servers), images (images_bench.py: normalization alone), image_e2e (image_e2e.py: real
llama-server, direct vs vlgate), loop (loop_stall.py: text latency behind image requests), tier (tier_bench.py:
a front tier's normalized images passed on by a node), openloop (open_loop.py: added latency at 1,000 req/s,
open loop), and hotpath: the shared
harness (../shared/bench/run_bench.sh) with direct, nginx, the naive Starlette + httpx pass-through and
vlgate (LiteLLM with --litellm) in one run, reduced here to the ratios the targets are stated in.
The report goes to bench/results/<date>-report.md. Run it on a quiet machine: it measures CPU time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import free_port, machine

HERE = Path(__file__).resolve().parent
HARNESS = HERE.parent.parent / "shared" / "bench"
SCRIPTS = {"fleet": "fleet_sim.py", "saturation": "saturation_real.py", "cache": "prefix_cache_real.py",
           "images": "images_bench.py", "image_e2e": "image_e2e.py", "loop": "loop_stall.py", "tier": "tier_bench.py",
           "openloop": "open_loop.py"}
PARTS = (*SCRIPTS, "hotpath")


def run_part(name: str, quick: bool, workdir: Path) -> str:
    """One script's markdown section; a failure is reported in the section rather than ending the run."""
    out = workdir / f"{name}.md"
    argv = [sys.executable, str(HERE / SCRIPTS[name]), "--markdown", str(out), *(["--quick"] if quick else [])]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=HERE.parent)
    took = time.monotonic() - started
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stdout + proc.stderr)[-2000:]
        return f"## {name}: failed (exit {proc.returncode} after {took:.0f} s)\n\n```\n{tail}\n```\n"
    return out.read_text().rstrip("\n") + f"\n\n_({SCRIPTS[name]}, {took:.0f} s)_\n"


def hot_path(quick: bool, litellm: bool, workdir: Path) -> str:
    """The shared harness, vlgate beside direct, nginx and the naive pass-through, in one run."""
    vlgate = shutil.which("vlgate") or str(Path(sys.executable).parent / "vlgate")
    naive, gateway = free_port(), free_port()
    builtin = "direct,nginx,litellm" if litellm else "direct,nginx"
    argv = [str(HARNESS / "run_bench.sh"), "--builtin", builtin, "--modes", "nonstream,stream", "--conc", "1,16",
            "--repeats", "1" if quick else "2", "--duration", "5" if quick else "8", "--warmup", "2",
            "--py-points", "10:64", "--py-duration", "5" if quick else "10", "--out", str(workdir / "harness"),
            *(["--quiet-max-wait", "15", "--retries", "1"] if quick else []),
            "--target", f"naive=http://127.0.0.1:{naive}",
            "--cmd", "naive={python} {here}/examples/starlette_passthrough.py --port {port} --upstream {upstream}",
            "--target", f"vlgate=http://127.0.0.1:{gateway}",
            "--cmd", f"vlgate={vlgate} serve --backend {{upstream}} --slots 64 --port {{port}} --model fake "
                     "--log-level warning"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    runs = sorted((workdir / "harness").glob("*/points.jsonl"))
    if proc.returncode != 0 or not runs:
        return f"## Hot path: failed (exit {proc.returncode})\n\n```\n{(proc.stdout + proc.stderr)[-2000:]}\n```\n"
    points = [json.loads(line) for line in runs[-1].read_text().splitlines() if line.strip()]
    return hot_path_section(points, builtin.split(",") + ["naive", "vlgate"])


def _median(points: list[dict], field: str) -> float | None:
    values = [p[field] for p in points if p.get("ok") and p.get(field) is not None]
    return statistics.median(values) if values else None


def hot_path_section(points: list[dict], targets: list[str]) -> str:
    wrk = {}
    for mode in ("nonstream", "stream"):
        for c in (1, 16):
            for t in targets:
                ps = [p for p in points if p["tool"] == "wrk" and p["mode"] == mode and p["concurrency"] == c
                      and p["target"] == t]
                wrk[mode, c, t] = (_median(ps, "rps"), _median(ps, "p50_ms"))
    py = {t: [p for p in points if p["tool"] == "pyclient" and p["target"] == t] for t in targets}
    lines = ["## Hot path (shared harness: fake llama-server, proxy + fake on one core, load on the other)", "",
             f"Machine: {machine()}. wrk closed loop, 32-token answers; medians over repeats. "
             "naive = the smallest Starlette + httpx pass-through (no parsing).", "",
             "| load | " + " | ".join(targets) + " | vlgate / nginx | vlgate / naive |",
             "|---|" + "---|" * (len(targets) + 2)]
    for mode in ("nonstream", "stream"):
        for c in (1, 16):
            cells = []
            for t in targets:
                rps, p50 = wrk[mode, c, t]
                cells.append(f"{rps:,.0f} req/s, p50 {p50:.2f} ms" if rps else "–")
            ours, nginx, naive = (wrk[mode, c, t][0] for t in ("vlgate", "nginx", "naive"))
            ratio_nginx = f"{100 * ours / nginx:.1f}%" if ours and nginx else "–"
            ratio_naive = f"{ours / naive:.1f}x" if ours and naive else "–"
            lines.append(f"| {mode} c={c} | " + " | ".join(cells) + f" | {ratio_nginx} | {ratio_naive} |")
    lines += ["", "64 streams at 100 tokens/s (pyclient: TTFB = request sent to first body bytes):", "",
              "| target | streams/s | % of direct | TTFB p50 ms | TTFB p99 ms |", "|---|---|---|---|---|"]
    direct_rate = _median(py["direct"], "rps")
    for t in targets:
        rate = _median(py[t], "rps")
        share = f"{100 * rate / direct_rate:.1f}%" if rate and direct_rate else "–"
        p50, p99 = _median(py[t], "ttfb_p50_ms"), _median(py[t], "ttfb_p99_ms")
        lines.append(f"| {t} | {rate or 0:.1f} | {share} | {p50 or 0:.2f} | {p99 or 0:.2f} |")
    ours, nginx, naive = (wrk["nonstream", 16, t][0] for t in ("vlgate", "nginx", "naive"))
    ttfb = _median(py["vlgate"], "ttfb_p50_ms")
    rate = _median(py["vlgate"], "rps")
    lines += ["", "Targets (issue 14, part 3): non-stream c=16 ≥ 12% of nginx and ≥ 5.5x naive; 64 streams ≥ 95% of "
              "direct with TTFB p50 ≤ 3 ms. This run: "
              + (f"{100 * ours / nginx:.1f}% of nginx, " if ours and nginx else "")
              + (f"{ours / naive:.1f}x naive, " if ours and naive else "")
              + (f"{100 * rate / direct_rate:.1f}% of direct, " if rate and direct_rate else "")
              + (f"TTFB p50 {ttfb:.2f} ms." if ttfb else "")]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every part, shorter")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}")
    ap.add_argument("--litellm", action="store_true", help="LiteLLM in the hot-path run too (slow to start)")
    ap.add_argument("--out", type=Path, help="report path (default bench/results/<date>-report.md)")
    args = ap.parse_args()
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    out = args.out or HERE / "results" / f"{time.strftime('%Y%m%d-%H%M')}-report.md"
    sections = [f"# vlgate benchmark report, {time.strftime('%Y-%m-%d %H:%M')}", "",
                f"Machine: {machine()}. Command: `python bench/report.py {' '.join(sys.argv[1:])}`.", ""]
    with tempfile.TemporaryDirectory(prefix="vlgate-report-") as tmp:
        for part in parts:
            print(f"[{time.strftime('%H:%M:%S')}] {part} ...", flush=True)
            section = hot_path(args.quick, args.litellm, Path(tmp)) if part == "hotpath" else \
                run_part(part, args.quick, Path(tmp))
            sections.append(section)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("\n".join(sections))  # a part at a time: an interrupted run keeps what it measured
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
