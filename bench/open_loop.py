"""Issue 23: the gateway's added latency at a fixed arrival rate (open loop), over the fake upstream direct.

    python bench/open_loop.py [--rate 1000] [--duration 10] [--rounds 3] [--quick] [--markdown PATH] [--profile]

Closed-loop tools (wrk, the harness) send the next request only after the previous answer, so a stall of
the gateway delays the requests that would have arrived during it and their wait is never measured
(coordinated omission). Here request i is due at t0 + i/rate whether or not earlier ones returned, and its
latency runs from that due time to the last byte of its answer: a stall shows up in every request that
was due during it.

The load generator (this file with --loader, a subprocess) is a hand-rolled epoll loop, not asyncio:
asyncio's and libuv's timers have millisecond granularity, which would smear the send times by up to a
millisecond. It has a core of its own and busy-polls it (epoll with timeout 0), so sends leave within a few
microseconds of their due time (the send lag is reported) and answers are seen as they land. Connections
are a keep-alive pool: a due request takes the most recently idle connection or opens a new one (the
connect is then part of its latency, as for any client). Non-stream chat completions, the harness's body.

Pinning as the shared harness (../shared/bench/run_bench.py): the fake upstream and the gateway share
CPU 0 (`taskset -c 0`), the load generator and this driver run on CPU 1. Direct and gateway rounds
alternate (the order flips every round), each with a warm-up that is not recorded; the summary is the
median over rounds of each round's percentiles, and added = gateway minus direct. Direct is the loader's
floor (loopback, the fake's ~40 us, waking CPU 0). The gateway's CPU per request and CPU 0's busy share
come from /proc. With --profile (or when a goal is missed) one more gateway round runs under
`py-spy record -f raw --nonblocking` (on CPU 1) and its top frames go into the markdown; stalls (runs of
requests due back to back that all came late) are counted from the latencies.
"""

from __future__ import annotations

import argparse
import array
import errno
import json
import math
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, deque
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HARNESS = REPO.parent / "shared" / "bench"
BENCH_VENV_PY = Path.home() / ".cache" / "vlgate-bench-venv" / "bin" / "python"
CHAT_PATH = "/v1/chat/completions"
BODY = json.dumps({"model": "fake", "messages": [{"role": "user", "content": "Say hello"}],
                   "max_tokens": 32}).encode()
GOAL_P50_MS, GOAL_P99_MS = 0.3, 1.0
# `vlgate serve` started through this: gc.callbacks log every collection (monotonic end time, generation,
# microseconds) to the file named by VLGATE_BENCH_GC_LOG, so a stall can be told from a GC pause. The
# gateway's code is not touched; a callback costs ~1 us per collection.
GC_WRAPPER = """
import gc, os, sys, time
log = open(os.environ["VLGATE_BENCH_GC_LOG"], "w", buffering=1)
start = [0.0]
def on_gc(phase, info):
    now = time.perf_counter()
    if phase == "start":
        start[0] = now
    else:
        log.write("%.6f %d %.0f\\n" % (time.monotonic(), info["generation"], (now - start[0]) * 1e6))
gc.callbacks.append(on_gc)
sys.argv[0] = "vlgate"
from vlgate.cli import main
main()
"""


# --------------------------------------------------------------------------- the load generator (--loader)

class Conn:
    """One keep-alive connection: at most one request in flight (no pipelining), its answer read as it comes.

    The connect is non-blocking: a server that stops accepting (full backlog: SYNs dropped, retried after 1 s)
    must not stop the loader from sending the requests due meanwhile on its other connections."""

    __slots__ = ("buf", "close_after", "connecting", "fd", "idx", "need", "out", "sock", "status")

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        err = self.sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            self.sock.close()
            raise OSError(err, os.strerror(err))
        self.connecting = True
        self.fd = self.sock.fileno()
        self.buf = bytearray()
        self.idx = -1  # the request in flight, -1 when idle
        self.need = -1  # total bytes of the answer once its head is parsed
        self.out = b""  # not yet sent: the request while connecting, or what a short send left
        self.status = 0
        self.close_after = False


class Timer:
    """A timerfd (via ctypes: os.timerfd_* is 3.13+) armed at an absolute CLOCK_MONOTONIC time, the clock of
    time.perf_counter: epoll then wakes at the due time to the microsecond, not at its millisecond timeout."""

    def __init__(self) -> None:
        import ctypes

        class Timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        class Itimerspec(ctypes.Structure):
            _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]

        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK: 1 ns (default 50 us)
        self.fd = int(self._libc.timerfd_create(1, 0o4000 | 0o2000000))  # CLOCK_MONOTONIC, NONBLOCK | CLOEXEC
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create")
        self._spec = Itimerspec()
        self._ref = ctypes.byref(self._spec)

    def at(self, t: float) -> None:
        sec = int(t)
        self._spec.it_value.tv_sec, self._spec.it_value.tv_nsec = sec, max(1, int((t - sec) * 1e9))
        if self._libc.timerfd_settime(self.fd, 1, self._ref, None) != 0:  # TFD_TIMER_ABSTIME
            raise OSError("timerfd_settime")

    def clear(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass


def loader(url: str, key: str, rate: float, warmup: float, duration: float, grace: float, prewarm: int,
           out_path: str, spin: bool = False, max_conns: int = 256) -> None:
    """Send requests at t0 + i/rate for warmup + duration seconds; write the measured window's results as JSON.

    The wait for the next due time is a timerfd in the epoll set (`spin`: busy-poll epoll instead)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    request = (f"POST {u.path or CHAT_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n").encode() + BODY
    period = 1.0 / rate
    n_total = round((warmup + duration) * rate)
    first_measured = round(warmup * rate)
    sched0 = array.array("d", [0.0]) * n_total  # filled lazily: t0 + i*period
    sent = array.array("d", [math.nan]) * n_total
    done = array.array("d", [math.nan]) * n_total
    status = array.array("i", [0]) * n_total  # HTTP status, -1 connection error
    ep = select.epoll()
    conns: dict[int, Conn] = {}
    idle: list[Conn] = []  # LIFO: the pool stays as small as the load allows
    waiting: deque[int] = deque()  # due requests that found no connection (pool at max_conns)
    opened = inflight = max_inflight = 0

    def drop(c: Conn) -> None:
        nonlocal inflight
        if c.idx >= 0:
            status[c.idx] = -1
            done[c.idx] = time.perf_counter()
            inflight -= 1
            c.idx = -1
        try:
            ep.unregister(c.fd)
        except (OSError, ValueError):
            pass
        conns.pop(c.fd, None)
        if c in idle:
            idle.remove(c)
        c.sock.close()

    def write(c: Conn, data: bytes) -> None:
        try:
            n = c.sock.send(data)
        except BlockingIOError:
            n = 0
        if n < len(data):
            c.out = data[n:]
            ep.modify(c.fd, select.EPOLLIN | select.EPOLLOUT)

    def start(c: Conn, i: int) -> bool:
        """Put request i on connection c; False if c turned out dead (closed by the server while idle)."""
        nonlocal inflight, max_inflight
        c.idx, c.need, c.status, c.close_after = i, -1, 0, False
        inflight += 1
        max_inflight = max(max_inflight, inflight)
        sent[i] = time.perf_counter()
        if c.connecting:
            c.out = request
            return True
        try:
            write(c, request)
        except OSError:
            c.idx = -1
            inflight -= 1
            drop(c)
            return False
        return True

    def open_conn() -> Conn | None:
        nonlocal opened
        try:
            c = Conn(host, port)
        except OSError:
            return None
        conns[c.fd] = c
        ep.register(c.fd, select.EPOLLIN | select.EPOLLOUT)
        opened += 1
        return c

    def dispatch(i: int) -> None:
        while idle:
            if start(idle.pop(), i):
                return
        if len(conns) >= max_conns:
            waiting.append(i)  # latency still runs from its due time
            return
        c = open_conn()
        if c is None:
            status[i] = -1
            done[i] = time.perf_counter()
            return
        start(c, i)

    def freed(c: Conn) -> None:
        if waiting:
            start(c, waiting.popleft())
        else:
            idle.append(c)

    def on_writable(c: Conn) -> None:
        if c.connecting:
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                drop(c)
                return
            c.connecting = False
            data, c.out = c.out, b""
            ep.modify(c.fd, select.EPOLLIN)
            if c.idx < 0:
                freed(c)  # a warm-up connection
                return
            try:
                write(c, data)
            except OSError:
                drop(c)
            return
        if c.out:
            try:
                write(c, c.out)
            except OSError:
                drop(c)
                return
        if not c.out:
            ep.modify(c.fd, select.EPOLLIN)

    def on_readable(c: Conn) -> None:
        nonlocal inflight
        try:
            data = c.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            drop(c)
            return
        now = time.perf_counter()
        if not data or c.idx < 0:
            drop(c)  # closed by the server (an error if a request was in flight), or bytes nobody asked for
            return
        c.buf += data
        if c.need < 0:
            end = c.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(c.buf[:end]).lower()
            c.status = int(head[9:12])
            c.close_after = b"connection: close" in head
            i = head.find(b"content-length:")
            if i >= 0:
                eol = head.find(b"\r\n", i)
                c.need = end + 4 + int(head[i + 15:eol if eol > 0 else None])
            elif b"transfer-encoding: chunked" in head:
                c.need = 0  # chunked: complete at the last chunk
            else:
                c.need = end + 4
        if (c.need == 0 and c.buf.endswith(b"\r\n0\r\n\r\n")) or (c.need > 0 and len(c.buf) >= c.need):
            status[c.idx] = c.status
            done[c.idx] = now
            inflight -= 1
            c.idx, c.need = -1, -1
            c.buf.clear()
            if c.close_after:
                drop(c)
            else:
                freed(c)

    for _ in range(prewarm):
        open_conn()  # joins the idle list once connected
    timer = None if spin else Timer()
    if timer is not None:
        ep.register(timer.fd, select.EPOLLIN)
    armed = -1
    t0 = time.perf_counter() + 0.05
    for i in range(n_total):
        sched0[i] = t0 + i * period
    nxt = 0
    drain_until = math.inf
    polls = 0
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    while True:
        now = time.perf_counter()
        while nxt < n_total and sched0[nxt] <= now:
            dispatch(nxt)
            nxt += 1
        if nxt >= n_total:
            if inflight == 0 and not waiting:
                break
            if drain_until == math.inf:
                drain_until = now + grace
            if now > drain_until:
                break
            timeout = 0.001
        elif timer is None:
            wait = sched0[nxt] - now
            timeout = 0.0 if wait < 0.002 else wait - 0.002  # near the due time: poll without sleeping
        else:
            if armed != nxt:
                timer.at(sched0[nxt])
                armed = nxt
            timeout = 1.0
        polls += 1
        for fd, ev in ep.poll(timeout):
            c = conns.get(fd)
            if c is None:
                if timer is not None and fd == timer.fd:
                    timer.clear()
                continue
            if ev & select.EPOLLOUT:
                on_writable(c)
                if c.fd not in conns:
                    continue
            if ev & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP) and not c.connecting:
                on_readable(c)
    t_end = time.perf_counter()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    w0, w1 = t0 + warmup, t0 + warmup + duration
    lat: list[float] = []
    lag: list[float] = []
    codes: Counter[str] = Counter()
    timeouts = ok_in_window = 0
    for i in range(first_measured, n_total):
        lag.append(sent[i] - sched0[i])
        if math.isnan(done[i]):  # never answered: counted, with what it waited so far (a lower bound)
            timeouts += 1
            lat.append(t_end - sched0[i])
            continue
        if status[i] != 200:
            codes["conn" if status[i] < 0 else str(status[i])] += 1
            continue
        lat.append(done[i] - sched0[i])
        if w0 <= done[i] <= w1:
            ok_in_window += 1
    for c in list(conns.values()):
        drop(c)
    result = {"lat_us": [round(x * 1e6, 1) for x in lat], "due": int(n_total - first_measured),
              "sched_rel_s": [round(sched0[i] - t0 - warmup, 6) for i in range(first_measured, n_total)
                              if status[i] == 200 or math.isnan(done[i])],
              "lag_p50_us": pct(sorted(lag), 50) * 1e6, "lag_p99_us": pct(sorted(lag), 99) * 1e6,
              "lag_max_us": max(lag) * 1e6, "errors": dict(codes), "timeouts": timeouts,
              "achieved_rps": ok_in_window / duration, "connections": opened, "max_inflight": max_inflight,
              "loader_cpu_s": ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime, "polls": polls}
    Path(out_path).write_text(json.dumps(result))


# --------------------------------------------------------------------------- the driver

def pct(sorted_vals: list[float], p: float) -> float:
    """Percentile by linear interpolation between closest ranks (as the harness's pyclient)."""
    if not sorted_vals:
        return math.nan
    k = (len(sorted_vals) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(sorted_vals) - 1)
    return sorted_vals[f] + (sorted_vals[c] - sorted_vals[f]) * (k - f)


class Proc:
    """A process this bench started, in its own session (its PID is its process group), stopped by that PID."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log.open("ab")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                  start_new_session=True)
        self.pid = self.p.pid

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.p.wait(10)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.p.wait(5)
        self.log.close()


def niced(a: argparse.Namespace, argv: list[str]) -> list[str]:
    return ["nice", "-n", str(a.nice), *argv] if a.nice else argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def all_ticks() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, utime + stime in clock ticks) of every process, from /proc/<pid>/stat.

    Per process, because this VM's per-CPU lines in /proc/stat undercount (a pinned gateway at 34% of a core
    showed as 6% busy on its CPU); key -1 holds the all-CPU busy ticks."""
    out: dict[int, tuple[int, int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                f = Path(f"/proc/{d}/stat").read_text().rsplit(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            out[int(d)] = (int(f[1]), int(f[11]) + int(f[12]))
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    out[-1] = (-1, sum(v) - v[3] - v[4])  # all CPUs' busy ticks: also counts processes that exited meanwhile
    return out


def tree(snap: dict[int, tuple[int, int]], pid: int) -> set[int]:
    """A process and its descendants in a snapshot."""
    kids: dict[int, list[int]] = {}
    for p, (ppid, _) in snap.items():
        kids.setdefault(ppid, []).append(p)
    seen: set[int] = set()
    stack = [pid]
    while stack:
        p = stack.pop()
        if p not in seen:
            seen.add(p)
            stack.extend(kids.get(p, []))
    return seen


def usage(s0: dict[int, tuple[int, int]], s1: dict[int, tuple[int, int]], ours: dict[str, int],
          seconds: float) -> tuple[dict[str, float], float]:
    """CPU (% of one core) of each of our process trees, and of every other process, between two snapshots."""
    hz = os.sysconf("SC_CLK_TCK")
    mine: dict[str, float] = {}
    taken: set[int] = set()
    for name, pid in ours.items():
        pids = tree(s1, pid) | tree(s0, pid)
        taken |= pids
        mine[name] = 100.0 * sum(s1.get(p, (0, 0))[1] - s0.get(p, (0, 0))[1] for p in pids) / hz / seconds
    others = sum(t - s0.get(p, (0, 0))[1] for p, (_, t) in s1.items() if p not in taken and p not in (-1, os.getpid()))
    busy = s1[-1][1] - s0[-1][1] - sum(mine.values()) * hz * seconds / 100.0
    return mine, max(0.0, 100.0 * max(others, busy) / hz / seconds)


def post_ok(url: str, key: str, timeout: float = 60) -> None:
    """Wait until a non-stream chat completion through `url` answers 200 with content."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url + CHAT_PATH, data=BODY, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {key}"})
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200 and json.loads(r.read())["choices"][0]["message"]["content"]:
                    return
        except Exception as e:  # anything: not ready yet
            last = e
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer a chat completion: {last!r}")


def others_pct(ours: list[int], seconds: float) -> float:
    """CPU (% of one core, all CPUs) used over `seconds` by processes that are not ours: other people's work."""
    s0 = all_ticks()
    time.sleep(seconds)
    return usage(s0, all_ticks(), {str(p): p for p in ours}, seconds)[1]


def wait_quiet(a: argparse.Namespace, ours: list[int]) -> float:
    """Wait (at most --quiet-wait s) until other processes use under --quiet-pct of a core; return what they used."""
    deadline = min(time.monotonic() + a.quiet_wait, a.spare_until)
    while True:
        busy = others_pct(ours, 0.5)
        if busy < a.quiet_pct or time.monotonic() > deadline:
            return busy
        print(f"waiting for a quiet machine: others use {busy:.0f}% of a core", file=sys.stderr, flush=True)


def run_round(url: str, a: argparse.Namespace, key: str, pids: dict[str, int], tmp: Path, tag: str,
              duration: float, extra: list[str] | None = None) -> dict[str, Any]:
    """A round on a quiet machine, run again (--retries) if others used a core's --quiet-pct during it."""
    for attempt in range(a.retries + 1):
        wait_quiet(a, list(pids.values()))
        r = measure_round(url, a, key, pids, tmp, f"{tag}-{attempt}", duration, extra)
        r["noisy"] = r["others_pct"] >= a.quiet_pct
        if not r["noisy"] or extra or attempt == a.retries or time.monotonic() > a.spare_until:
            break
        print(f"{tag}: others used {r['others_pct']:.0f}% of a core during it: again", file=sys.stderr, flush=True)
    return r


def measure_round(url: str, a: argparse.Namespace, key: str, pids: dict[str, int], tmp: Path, tag: str,
                  duration: float, extra: list[str] | None = None) -> dict[str, Any]:
    """One loader run against `url`, with the CPU of our processes, CPU 0's and others' over its measured part."""
    out = tmp / f"{tag}.json"
    argv = ["taskset", "-c", a.lg_cpu, sys.executable, str(Path(__file__).resolve()), "--loader", url,
            "--key", key, "--rate", str(a.rate), "--warmup", str(a.warmup), "--duration", str(duration),
            "--loader-out", str(out), *([] if a.timer else ["--spin"])]
    p = subprocess.Popen(niced(a, argv), start_new_session=True)
    ours = {**pids, "loader": p.pid}
    time.sleep(a.warmup + 0.1)  # CPU counters over the measured window only (roughly: +-0.1 s)
    s0 = all_ticks()
    w0 = time.monotonic()
    profiler = None
    if extra:
        profiler = subprocess.Popen(extra, start_new_session=True, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
        ours["py-spy"] = profiler.pid
    time.sleep(max(0.0, duration - 0.2))
    s1 = all_ticks()
    w1 = time.monotonic()
    try:
        p.wait(duration + 30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    if profiler is not None:
        try:
            _, err = profiler.communicate(timeout=30)
            if profiler.returncode:
                print(f"py-spy: exit {profiler.returncode}: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        except subprocess.TimeoutExpired:
            os.killpg(profiler.pid, signal.SIGTERM)
            profiler.wait()
    if p.returncode != 0 or not out.exists():
        raise SystemExit(f"loader failed against {url} (exit {p.returncode})")
    r: dict[str, Any] = json.loads(out.read_text())
    r["cpu_pct"], r["others_pct"] = usage(s0, s1, ours, w1 - w0)
    r["gc"] = gc_pauses(tmp / "gc.log", w0, w1)
    lat = sorted(r["lat_us"])
    r.update(p50=pct(lat, 50), p99=pct(lat, 99), p999=pct(lat, 99.9), max=lat[-1] if lat else math.nan)
    return r


def gc_pauses(log: Path, w0: float, w1: float) -> list[tuple[int, float]]:
    """The gateway's collections (generation, us) that ended between monotonic times w0 and w1."""
    out: list[tuple[int, float]] = []
    if log.exists():
        for line in log.read_text().splitlines():
            f = line.split()
            if len(f) == 3 and w0 <= float(f[0]) <= w1:
                out.append((int(f[1]), float(f[2])))
    return out


def gc_line(g: list[dict[str, Any]], seconds: float) -> str:
    """GC pauses in the measured gateway rounds, per generation: count, total, the longest."""
    parts = []
    for gen in (0, 1, 2):
        d = [us for r in g for (n, us) in r["gc"] if n == gen]
        if d:
            parts.append(f"gen {gen}: {len(d)} ({sum(d) / 1000:.1f} ms in all, longest {max(d) / 1000:.2f} ms)")
    return (f"GC in the gateway over its {len(g)} measured rounds ({len(g) * seconds:.0f} s, gc.callbacks): "
            + ("; ".join(parts) or "none") + ".")


def stalls(r: dict[str, Any], floor_us: float, slow_us: float) -> dict[str, Any]:
    """Runs of consecutively due requests that each came more than `slow_us` over the floor: a held loop.

    A stall of S ms delays every request due during it, the first by about S; so each run's largest latency
    (minus the floor) is about the stall's length, and the run's start times show whether stalls come periodically."""
    runs: list[tuple[float, float, int]] = []  # (start s, length us, requests)
    cur: list[tuple[float, float]] = []
    for t, lat in zip(r["sched_rel_s"], r["lat_us"], strict=True):
        if lat - floor_us > slow_us:
            cur.append((t, lat))
            continue
        if cur:
            runs.append((cur[0][0], max(x[1] for x in cur) - floor_us, len(cur)))
            cur = []
    if cur:
        runs.append((cur[0][0], max(x[1] for x in cur) - floor_us, len(cur)))
    slow = sum(n for _, _, n in runs)
    return {"runs": len(runs), "slow": slow, "total": len(r["lat_us"]),
            "lengths_ms": sorted((round(s / 1000, 2) for _, s, _ in runs), reverse=True),
            "starts_s": [round(t, 3) for t, _, _ in runs]}


def fold(raw: Path, top: int) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks: own time per frame, inclusive per function, and own time per package."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    pkg: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [f for f in stack.split(";") if "(" in f]  # drop the process/thread pseudo-frames
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
        pkg[package(frames[-1])] += count
    return {"samples": total, "own": own.most_common(top), "incl": incl.most_common(top * 3),
            "pkg": pkg.most_common(top)}


def package(frame: str) -> str:
    """Where a frame's code lives: vlgate's module, or the third-party package / stdlib module."""
    path = frame[frame.rfind("(") + 1:].split(":")[0]
    if "/vlgate/" in path:
        return "vlgate/" + path.split("/vlgate/", 1)[1].rsplit("/", 1)[0] if path.count("/") else path
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/")[0]
    return "stdlib " + path.rsplit("/", 1)[-1]


def short(frame: str) -> str:
    """`func (…/pkg/mod.py:12)` -> `func (pkg/mod.py:12)`."""
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    if "site-packages/" in loc:
        loc = loc.split("site-packages/", 1)[1]
    elif "/vlgate/" in loc:
        loc = "vlgate/" + loc.split("/vlgate/", 1)[1]
    else:
        loc = loc.rsplit("/", 2)[-1] if "/lib/python" in loc else loc
    return f"`{name}` ({loc})"


def med(rounds: list[dict[str, Any]], field: str) -> float:
    return float(statistics.median(float(r[field]) for r in rounds))


def git_line() -> str:
    """The commit measured, and whether the gateway's code differed from it (someone may be editing it)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "vlgate"], cwd=REPO, capture_output=True,
                               text=True).stdout.strip()
    except OSError:
        return "commit unknown"
    return f"commit {head}" + (f", with uncommitted changes in {len(dirty.splitlines())} vlgate file(s)"
                               if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rate", type=float, default=1000.0, help="requests per second (constant spacing)")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per round")
    ap.add_argument("--warmup", type=float, default=2.0, help="unrecorded seconds at the rate before each round")
    ap.add_argument("--rounds", type=int, default=3, help="direct/gateway round pairs")
    ap.add_argument("--quick", action="store_true", help="3 rounds of 5 s, 1 s warm-up (~1 min)")
    ap.add_argument("--markdown", help="write the markdown section here too")
    ap.add_argument("--profile", action="store_true", help="profile a gateway round even if the goals are met")
    ap.add_argument("--no-profile", action="store_true", help="never profile")
    ap.add_argument("--sut-cpu", default="0", help="CPU of the fake upstream and the gateway")
    ap.add_argument("--lg-cpu", default="1", help="CPU of the load generator (and this driver)")
    ap.add_argument("--quiet-pct", type=float, default=20.0,
                    help="a round is noisy if other processes used this much of a core (%%) during it")
    ap.add_argument("--quiet-wait", type=float, default=20.0, help="seconds to wait for quiet before a round")
    ap.add_argument("--retries", type=int, default=1, help="reruns of a noisy round")
    ap.add_argument("--spare", type=float, default=60.0,
                    help="seconds the whole run may spend waiting for quiet and rerunning noisy rounds")
    ap.add_argument("--slow-ms", type=float, default=1.0, help="a stall: requests this much over direct p50")
    ap.add_argument("--timer", action="store_true",
                    help="the loader sleeps on a timerfd between sends instead of busy-polling its core")
    ap.add_argument("--nice", type=int, default=0, help="run the fake, the gateway and the loader under nice -n N")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (loader JSON, logs, profile)")
    ap.add_argument("--loader", metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--spin", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--loader-out", help=argparse.SUPPRESS)
    ap.add_argument("--key", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.loader:
        loader(a.loader, a.key, a.rate, a.warmup, a.duration, grace=2.0, prewarm=4, out_path=a.loader_out,
               spin=a.spin)
        return
    if a.quick:
        a.duration, a.warmup, a.rounds, a.quiet_wait, a.retries, a.spare = 5.0, 1.0, 3, 10.0, 0, 15.0
    a.spare_until = time.monotonic() + a.spare
    os.sched_setaffinity(0, {int(a.lg_cpu)})  # the driver stays off the gateway's core
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout's TERM still stops what we started
    key = "sk-bench-" + os.urandom(12).hex()
    tmp = Path(tempfile.mkdtemp(prefix="vlgate-open-loop-"))
    py_fake = str(BENCH_VENV_PY) if BENCH_VENV_PY.exists() else sys.executable
    up_port, gw_port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs: list[Proc] = []
    direct_url, gw_url = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
    try:
        fake_argv = ["taskset", "-c", a.sut_cpu, py_fake, str(HARNESS / "fake_upstream.py"), "--port", str(up_port),
                     "--tokens", "32"]
        fake = Proc("upstream", niced(a, fake_argv), tmp / "upstream.log")
        procs.append(fake)
        post_ok(direct_url, key)
        env["VLGATE_BENCH_GC_LOG"] = str(tmp / "gc.log")
        gw_argv = ["taskset", "-c", a.sut_cpu, sys.executable, "-c", GC_WRAPPER, "serve", "--backend", direct_url,
                   "--slots", "64", "--port", str(gw_port), "--model", "fake", "--log-level", "warning"]
        gw = Proc("vlgate", niced(a, gw_argv), tmp / "vlgate.log", env=env)
        procs.append(gw)
        post_ok(gw_url, key)
        pids = {"upstream": fake.pid, "vlgate": gw.pid}
        rounds: dict[str, list[dict[str, Any]]] = {"direct": [], "vlgate": []}
        for n in range(a.rounds):
            order = ["direct", "vlgate"] if n % 2 == 0 else ["vlgate", "direct"]
            for target in order:
                r = run_round(direct_url if target == "direct" else gw_url, a, key, pids, tmp, f"{target}{n}",
                              a.duration)
                rounds[target].append(r)
                print(f"round {n + 1} {target}: p50 {r['p50'] / 1000:.3f} ms, p99 {r['p99'] / 1000:.3f} ms, "
                      f"p99.9 {r['p999'] / 1000:.3f} ms, max {r['max'] / 1000:.2f} ms, "
                      f"{r['achieved_rps']:.0f} req/s, errors {r['errors']}, timeouts {r['timeouts']}, "
                      f"vlgate CPU {r['cpu_pct']['vlgate']:.1f}%, others {r['others_pct']:.0f}%",
                      file=sys.stderr, flush=True)
        added = {f: med(rounds["vlgate"], f) - med(rounds["direct"], f) for f in ("p50", "p99", "p999", "max")}
        missed = added["p50"] / 1000 > GOAL_P50_MS or added["p99"] / 1000 > GOAL_P99_MS
        prof = None
        if (missed or a.profile) and not a.no_profile:
            raw = tmp / "profile.txt"
            spy = ["taskset", "-c", a.lg_cpu, "py-spy", "record", "-f", "raw", "--nonblocking", "--full-filenames",
                   "-r", "250", "-p", str(gw.pid), "-d", str(int(a.duration)), "-o", str(raw)]
            pr = run_round(gw_url, a, key, pids, tmp, "profiled", a.duration, extra=spy)
            prof = {"round": pr, **fold(raw, 12)} if raw.exists() else None
        lines = section(a, rounds, added, prof)
    finally:
        for p in reversed(procs):
            p.stop()
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    from common import emit

    emit(lines, a.markdown)


def section(a: argparse.Namespace, rounds: dict[str, list[dict[str, Any]]], added: dict[str, float],
            prof: dict[str, Any] | None) -> list[str]:
    """The markdown: summary, per round, what the loader adds, and where the gateway's time went if profiled."""
    from common import machine

    d, g = rounds["direct"], rounds["vlgate"]

    def ms(x: float) -> str:
        return f"{x / 1000:.3f}"

    ok50, ok99 = added["p50"] / 1000 <= GOAL_P50_MS, added["p99"] / 1000 <= GOAL_P99_MS
    floor = med(d, "p50")
    L = ["## Added latency at a fixed rate (open loop, issue 23)", "",
         f"{a.rate:.0f} req/s of non-stream chat completions (constant spacing, open loop: latency from each "
         f"request's due time to its last byte), {a.rounds} x {a.duration:.0f} s per target after {a.warmup:.0f} s "
         f"warm-up, direct and gateway rounds alternating; fake upstream + `vlgate serve --slots 64` on CPU "
         f"{a.sut_cpu}, load generator (`bench/open_loop.py`'s epoll loader) on CPU {a.lg_cpu}. Medians of the "
         f"per-round percentiles. {machine()}; {git_line()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
         "",
         "| | direct (fake upstream) | vlgate | added | goal |", "|---|---|---|---|---|",
         f"| p50 | {ms(med(d, 'p50'))} ms | {ms(med(g, 'p50'))} ms | **{ms(added['p50'])} ms** | "
         f"<= 0.3 ms: {'met' if ok50 else 'missed'} |",
         f"| p99 | {ms(med(d, 'p99'))} ms | {ms(med(g, 'p99'))} ms | **{ms(added['p99'])} ms** | "
         f"<= 1 ms: {'met' if ok99 else 'missed'} |",
         f"| p99.9 | {ms(med(d, 'p999'))} ms | {ms(med(g, 'p999'))} ms | {ms(added['p999'])} ms | |",
         f"| max | {ms(med(d, 'max'))} ms | {ms(med(g, 'max'))} ms | {ms(added['max'])} ms | |",
         f"| achieved rate | {med(d, 'achieved_rps'):.0f} req/s | {med(g, 'achieved_rps'):.0f} req/s | | |",
         f"| errors / timeouts (all rounds) | {errs(d)} | {errs(g)} | | |",
         f"| CPU of fake + gateway (one core = 100%) | {sut(d):.0f}% | {sut(g):.0f}% | | |",
         f"| gateway CPU per request | | {cpu_us(g, a.rate, 'vlgate'):.0f} us | | |",
         f"| connections opened / max in flight | {max(r['connections'] for r in d)} / "
         f"{max(r['max_inflight'] for r in d)} | {max(r['connections'] for r in g)} / "
         f"{max(r['max_inflight'] for r in g)} | | |",
         "",
         "Per round (p50 / p99 / p99.9 / max, ms):", "",
         "| round | direct | vlgate | vlgate CPU | others' CPU (direct / vlgate) | send lag p99 (direct / vlgate) |",
         "|---|---|---|---|---|---|"]
    for n, (rd, rg) in enumerate(zip(d, g, strict=True)):
        L.append(f"| {n + 1} | {quad(rd)} | {quad(rg)} | {rg['cpu_pct']['vlgate']:.0f}% | "
                 f"{noisy(rd)} / {noisy(rg)} | {rd['lag_p99_us']:.0f} / {rg['lag_p99_us']:.0f} us |")
    lags = d + g
    L += ["", f"Loader floor: direct p50 {ms(floor)} ms / p99 {ms(med(d, 'p99'))} ms is everything but the gateway "
              f"(loader, loopback, the fake's ~40 us, waking CPU {a.sut_cpu}); the loader's sends left "
              f"{statistics.median(r['lag_p50_us'] for r in lags):.0f} us (p50) / "
              f"{max(r['lag_p99_us'] for r in lags):.0f} us (worst round's p99) / "
              f"{max(r['lag_max_us'] for r in lags):.0f} us (max) after their due time (busy-polling its own core)."]
    st = [stalls(r, floor, a.slow_ms * 1000) for r in g]
    sd = [stalls(r, floor, a.slow_ms * 1000) for r in d]
    longest = sorted((x for s in st for x in s["lengths_ms"]), reverse=True)[:8]
    L += ["", f"Requests more than {a.slow_ms:g} ms over direct's p50: direct "
              f"{sum(s['slow'] for s in sd)} of {sum(s['total'] for s in sd)}, vlgate "
              f"{sum(s['slow'] for s in st)} of {sum(s['total'] for s in st)} in "
              f"{sum(s['runs'] for s in st)} runs of consecutive due times (a run = the loop held that long); "
              f"longest vlgate runs: {', '.join(f'{x:g}' for x in longest)} ms."]
    L += ["", gc_line(g, a.duration)]
    if prof:
        L += profile_lines(a, prof, g)
    return L


def sut(rounds: list[dict[str, Any]]) -> float:
    return float(statistics.median(r["cpu_pct"]["upstream"] + r["cpu_pct"]["vlgate"] for r in rounds))


def noisy(r: dict[str, Any]) -> str:
    return f"{r['others_pct']:.0f}%" + (" (noisy)" if r["noisy"] else "")


def errs(rounds: list[dict[str, Any]]) -> str:
    codes: Counter[str] = Counter()
    for r in rounds:
        codes.update(r["errors"])
    t = sum(r["timeouts"] for r in rounds)
    return (", ".join(f"{k}: {v}" for k, v in codes.items()) or "0") + f" / {t}"


def quad(r: dict[str, Any]) -> str:
    return f"{r['p50'] / 1000:.3f} / {r['p99'] / 1000:.3f} / {r['p999'] / 1000:.3f} / {r['max'] / 1000:.2f}"


def cpu_us(rounds: list[dict[str, Any]], rate: float, who: str) -> float:
    return float(statistics.median(float(r["cpu_pct"][who]) for r in rounds)) / 100 / rate * 1e6


def profile_lines(a: argparse.Namespace, prof: dict[str, Any], g: list[dict[str, Any]]) -> list[str]:
    """The profiled round's figures and the top frames, in microseconds of gateway CPU per request."""
    pr = prof["round"]
    total = max(1, prof["samples"])
    per_req = pr["cpu_pct"]["vlgate"] / 100 / a.rate * 1e6

    def us(n: int) -> str:
        return f"{100 * n / total:.1f}% ({per_req * n / total:.0f} us)"

    L = ["", f"### Where the gateway's time goes at {a.rate:.0f} req/s (py-spy, 250 Hz, --nonblocking, one extra "
             f"round, not in the figures above)", "",
         f"That round: p50 {pr['p50'] / 1000:.3f} ms, p99 {pr['p99'] / 1000:.3f} ms (py-spy shares the loader's "
         f"core); gateway CPU {pr['cpu_pct']['vlgate']:.0f}% = {per_req:.0f} us per request; "
         f"{prof['samples']} non-idle samples = threads active (running or runnable) "
         f"{100 * prof['samples'] / (250 * a.duration):.0f}% of the time, against {pr['cpu_pct']['vlgate']:.0f}% "
         f"CPU (more: runnable behind the fake upstream on its core or other processes). `Runner.run`'s own time "
         f"is uvloop's C code (libuv, socket syscalls, httptools' parser). "
         f"Shares of the samples (us = share x CPU per request):", "",
         "| own time, by package | share |", "|---|---|"]
    L += [f"| {name} | {us(n)} |" for name, n in prof["pkg"]]
    L += ["", "| own time, by frame | share |", "|---|---|"]
    L += [f"| {short(f)} | {us(n)} |" for f, n in prof["own"]]
    L += ["", "| inclusive, vlgate frames | share |", "|---|---|"]
    L += [f"| {short(f)} | {us(n)} |" for f, n in prof["incl"] if "/vlgate/" in f][:12]
    return L


if __name__ == "__main__":
    main()
