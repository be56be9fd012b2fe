"""Image requests end to end: a real llama-server (tiny model + mmproj) directly vs through `vlgate serve`.

    python bench/image_e2e.py [--quick] [--markdown PATH] [--inputs screenshot,...]

Three inputs, each request a distinct file (a different corner patch, so no cache helps): a 12 MP JPEG photo,
a 4K PNG screenshot with anti-aliased text, a 1 MP WebP (llama-server cannot read WebP: its answer is shown).
Time to first token = the whole non-stream answer with max_tokens 1 (the answer leaves right after that one
token). Concurrency 1 and 8, llama-server with 8 slots. Two gateways in the same run: 1 decode worker pinned
to 1 CPU, 2 workers on 2 CPUs. Rounds interleave direct and both gateways; the tables give the median over
rounds of images/s and percentiles over all requests of a cell.
"""

from __future__ import annotations

import asyncio
import io
import math
import os

from common import machine
from image_stack import (
    INPUTS,
    GatewaySpec,
    Stack,
    chat_body,
    cli,
    cpu_plan,
    image_files,
    median,
    ms,
    placement,
    run_batch,
    workdir,
)
from images_bench import decoded, pipeline, psnr
from PIL import Image

TARGETS = {"direct": "llama-server direct", "gw1": "vlgate, 1 CPU, 1 worker", "gw2": "vlgate, 2 CPUs, 2 workers"}


def run(quick: bool, names: list[str] | None = None) -> tuple[list[str], str]:
    plan = cpu_plan()
    if plan["client"]:
        os.sched_setaffinity(0, plan["client"])
    rounds, n1, n8 = (1, 4, 16) if quick else (3, 6, 24)
    stack = Stack(workdir(), slots=8, gateways={"gw1": GatewaySpec(1, plan["gw1"]), "gw2": GatewaySpec(2, plan["gw2"])},
                  llama_cpus=plan["llama"])
    rows: list[str] = []
    quality: list[str] = []
    with stack:
        for name, (mime, _, _) in INPUTS.items():
            if names is not None and name not in names:
                continue
            files = image_files(name, 1 + rounds * (n1 + n8))
            if mime == "image/png":
                quality.append(what_the_model_sees(name, files[0]))
            bodies = [chat_body(mime, f) for f in files]
            size_mb = sum(map(len, files)) / len(files) / 1e6
            lat: dict[tuple[str, int], list[float]] = {}
            rates: dict[tuple[str, int], list[float]] = {}
            cpu: dict[str, list[float]] = {}  # CPU seconds of llama-server + the gateway used, per image
            refused: dict[str, str] = {}
            for target in TARGETS:  # warm-up: connections, first-image paths
                res = asyncio.run(run_batch(stack.urls[target], bodies[:1], 1))
                if res.errors:
                    refused[target] = res.errors[0]
            for r in range(rounds):
                order = list(TARGETS)[r % 3:] + list(TARGETS)[:r % 3]
                start = 1 + r * (n1 + n8)
                for target in order:
                    if target in refused:
                        continue
                    for conc, chunk in ((1, bodies[start:start + n1]), (8, bodies[start + n1:start + n1 + n8])):
                        before = cpu_seconds(stack, target)
                        res = asyncio.run(run_batch(stack.urls[target], chunk, conc))
                        cpu.setdefault(target, []).append((cpu_seconds(stack, target) - before) / len(chunk))
                        if res.errors:
                            raise SystemExit(f"{target} {name}: {res.errors[0]}")
                        lat.setdefault((target, conc), []).extend(res.latencies)
                        rates.setdefault((target, conc), []).append(res.rate)
            base = median(lat.get(("direct", 1), []))
            for target, label in TARGETS.items():
                if target in refused:
                    rows.append(f"| {name}, {size_mb:.2f} MB | {label} | refused: `{refused[target][:160]}` "
                                "| | | | | | |")
                    continue
                p1, p8 = lat[(target, 1)], lat[(target, 8)]
                ratio = "1x" if target == "direct" else "-" if math.isnan(base) else f"{median(p1) / base:.2f}x"
                rate8, base8 = median(rates[(target, 8)]), median(rates.get(("direct", 8), []))
                ratio8 = "1x" if target == "direct" else "-" if math.isnan(base8) else f"{rate8 / base8:.2f}x"
                rows.append(f"| {name}, {size_mb:.2f} MB | {label} | {ms(p1)} | {median(rates[(target, 1)]):.1f} "
                            f"| {ms(p8)} | {rate8:.1f} | {ratio} | {ratio8} | {median(cpu[target]) * 1000:.0f} |")
                print(rows[-1], flush=True)
    where = placement(plan) + f"; llama-server 8 slots, -t {len(plan['llama']) if plan['llama'] else 2}"
    return rows + quality, where


def what_the_model_sees(name: str, data: bytes) -> str:
    """PSNR of the pixels the model gets, against the exact resize (the full decode, LANCZOS, unencoded): through
    vlgate (what it sends; llama-server's resize is then a copy) and direct (llama.cpp b11434 resizes a Youtu-VL
    image itself with its port of Pillow's BILINEAR, mtmd-image.cpp resize_pillow: Pillow's BILINEAR here)."""
    sent = pipeline().run(data)
    size = (sent.info.width, sent.info.height)
    full = Image.open(io.BytesIO(data)).convert("RGB")
    ref = full.resize(size, Image.Resampling.LANCZOS)
    direct = full.resize(size, Image.Resampling.BILINEAR)
    return (f"QUALITY {name}: what the model sees at {size[0]}x{size[1]}, PSNR against the exact LANCZOS resize: "
            f"through vlgate {psnr(decoded(sent.data_url), ref):.2f} dB ({sent.format.upper()}), "
            f"direct {psnr(direct, ref):.2f} dB (llama.cpp's BILINEAR)")


def cpu_seconds(stack: Stack, target: str) -> float:
    """user + system CPU of llama-server and of `target`'s gateway so far (all their threads)."""
    pids = [stack.procs[0].proc.pid] + ([stack.pids[target]] if target in stack.pids else [])
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def markdown(rows: list[str], where: str, quick: bool) -> str:
    head = ("| input | path | c=1 TTFT p50 / p99 ms | c=1 images/s | c=8 TTFT p50 / p99 ms | c=8 images/s "
            "| c=1 p50 vs direct | c=8 images/s vs direct | CPU ms per image (llama-server + gateway) |\n"
            "|---|---|---|---|---|---|---|---|---|")
    return "\n".join([
        "## Images end to end (real llama-server, tiny model)", "",
        "How measured: `python bench/image_e2e.py" + (" --quick" if quick else "") + "` — each request a distinct "
        "file as a base64 data URL, non-stream max_tokens 1 (TTFT = whole answer), direct vs through `vlgate serve`, "
        "rounds interleaved.", "",
        f"Machine: {machine()}; {where}.", "", head, *[r for r in rows if r.startswith("|")], "",
        *[r.removeprefix("QUALITY ") + "." for r in rows if r.startswith("QUALITY ")], ""])


if __name__ == "__main__":
    cli(__doc__, run, markdown, inputs=True)
