"""How long `vlgate` takes to start: `--help` of the entry and of a few subcommands against bare
`python -c "import pydantic, yaml"` (what any config-reading CLI pays), median of N runs each.

    python bench/cli_start.py                      # this checkout
    python bench/cli_start.py --runs 30
    python bench/cli_start.py --pythonpath /tmp/old  # another tree (git archive <rev> vlgate | tar -x -C /tmp/old)

The target (issue: what operators' stacks expect): every `--help` within ~2x of the baseline. Find what a
command imports with `python -X importtime -m vlgate.cli status --help 2>&1 | sort -t'|' -k2 -n | tail`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

COMMANDS: list[tuple[str, list[str]]] = [
    ('python -c "import pydantic, yaml"', ["-c", "import pydantic, yaml"]),
    ("vlgate --help", ["-m", "vlgate.cli", "--help"]),
    ("vlgate status --help", ["-m", "vlgate.cli", "status", "--help"]),
    ("vlgate reload --help", ["-m", "vlgate.cli", "reload", "--help"]),
    ("vlgate serve --help", ["-m", "vlgate.cli", "serve", "--help"]),
    ("vlgate config schema", ["-m", "vlgate.cli", "config", "schema"]),
]


def once(args: list[str], env: dict[str, str], cwd: str | None) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--pythonpath", help="import vlgate from this folder instead (an older tree)")
    args = parser.parse_args()
    env = dict(os.environ)
    cwd = None
    if args.pythonpath:  # run there too: `-m`/`-c` put the working folder first on sys.path
        env["PYTHONPATH"] = cwd = os.path.abspath(args.pythonpath)
    times: dict[str, list[float]] = {name: [] for name, _ in COMMANDS}
    for _ in range(args.runs):  # interleaved: a noisy moment hits every command alike
        for name, cmd in COMMANDS:
            times[name].append(once(cmd, env, cwd))
    base = statistics.median(times[COMMANDS[0][0]])
    width = max(len(name) for name, _ in COMMANDS)
    print(f"{'command'.ljust(width)}  median ms  min ms  x baseline")
    for name, _ in COMMANDS:
        med = statistics.median(times[name])
        print(f"{name.ljust(width)}  {med * 1000:9.0f}  {min(times[name]) * 1000:6.0f}  {med / base:10.2f}")


if __name__ == "__main__":
    main()
