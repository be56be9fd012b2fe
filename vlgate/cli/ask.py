"""`vlgate ask PRESET IMAGE...`: run a preset on images through any running vlgate, print JSON, save pictures.

One image: the result as indented JSON on stdout and the overlay in `--out` (default `<image>.<preset>.png`
in the current folder). Several images or folders: one JSON line per image as each finishes (a failed image
says why in its line; the rest go on), a progress bar on stderr, overlays in the `--out` folder; at most
`--concurrency` requests at once (the gateway spreads them over its backends).

A busy gateway is waited for, not given up on: 429 and 503 answers and refused or reset connections are
tried again, after the server's `Retry-After` when it sends one, else after a jittered exponential backoff
(0.5, 1, 2, 4, 8, 8 s, each 50-100% of that), at most `--retries` times (default 6) and at most
`--retry-budget` seconds of waiting in all (default 60) per image; a Retry-After longer than what is left
of that budget fails the image at once. Any other 4xx (a bad key, a bad image) and timeouts are not
retried. An image that still fails gets one line on stderr (`vlgate ask: IMAGE: ERROR`) and an
`"ok": false, "error": ...` entry in the JSON; the other images go on.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import mimetypes
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlgate.cli.common import lazy_import

if TYPE_CHECKING:
    import httpx
else:
    httpx = lazy_import("httpx")  # imported when `vlgate ask` runs, not for every `vlgate --help`

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 503})
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 8.0

EPILOG = """\
gateway and key: --url, else $VLGATE_URL, else $OPENAI_BASE_URL (a trailing /v1 is dropped), else
http://127.0.0.1:8000; --key, else $VLGATE_API_KEY, else $OPENAI_API_KEY (sent as a Bearer token).

exit status: 0 every image succeeded; 1 at least one image failed after its retries (each said on
stderr and in its JSON entry; the others still ran); 2 bad usage (no images found, a bad --param)."""

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}


class AskError(Exception):
    """One image's failure, as the line reports it."""


def register(sub: Any) -> None:
    p = sub.add_parser("ask", help="run a preset on images through a running vlgate; print JSON, save overlays",
                       description="\n\n".join(__doc__.split("\n\n")[:3]), epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset", help="preset name (GET /v1/presets lists them), e.g. detect, refer_segment")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--expression", help="what to find or segment (ground, refer_segment)")
    p.add_argument("--classes", help="comma-separated categories (detect, segment)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="any other preset parameter")
    p.add_argument("--url", help=f"the gateway (default: $VLGATE_URL, $OPENAI_BASE_URL or {DEFAULT_URL})")
    p.add_argument("--key", help="API key (default: $VLGATE_API_KEY, else $OPENAI_API_KEY)")
    p.add_argument("--out", help="overlay file (one image) or folder (several; default ./vlgate-overlays)")
    p.add_argument("--no-overlay", action="store_true", help="JSON only, no pictures")
    p.add_argument("--concurrency", type=int, default=4, help="requests at once (default 4)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per request (default 900)")
    p.add_argument("--retries", type=int, default=6, metavar="N",
                   help="tries again after a 429, a 503 or a refused/reset connection, at most N times per image "
                        "(default 6; 0 = never)")
    p.add_argument("--retry-budget", type=float, default=60.0, metavar="SECONDS",
                   help="and at most this long waiting between tries, per image (default 60)")
    p.set_defaults(func=cmd_ask)


def gateway_url(given: str | None, env: Mapping[str, str] = os.environ) -> str:
    """--url, $VLGATE_URL, $OPENAI_BASE_URL, the default; without a trailing /v1 (the paths carry it)."""
    url = given or env.get("VLGATE_URL") or env.get("OPENAI_BASE_URL") or DEFAULT_URL
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def api_key(given: str | None, env: Mapping[str, str] = os.environ) -> str | None:
    """--key, $VLGATE_API_KEY, $OPENAI_API_KEY; None when none is set."""
    return given or env.get("VLGATE_API_KEY") or env.get("OPENAI_API_KEY") or None


def retry_after(r: httpx.Response) -> float | None:
    """The answer's Retry-After in seconds (a number or an HTTP date); None when absent or unreadable."""
    raw = r.headers.get("retry-after", "").strip()
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


@dataclass
class Tries:
    """One image's retry allowance: at most `retries` more tries and `budget_s` seconds of waiting."""

    retries: int
    budget_s: float
    used: int = 0
    waited_s: float = 0.0

    def wait_for(self, hint_s: float | None) -> float | str:
        """Seconds to sleep before the next try, or why there is none."""
        if self.used >= self.retries:
            return f"gave up after {self.used} retries" if self.used else "not retried (--retries 0)"
        left = self.budget_s - self.waited_s
        if hint_s is not None:
            if hint_s > left:
                return (f"Retry-After {hint_s:g} s is more than the {left:.3g} s left of the "
                        f"{self.budget_s:g} s retry budget; gave up after {self.used} retries")
            wait = min(left, hint_s + random.uniform(0, 0.1 * hint_s))  # never earlier than asked
        else:
            cap = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** self.used)
            wait = random.uniform(cap / 2, cap)  # jittered: a crowd of clients does not come back at once
            if wait > left:
                return f"gave up after {self.used} retries ({self.waited_s:.3g} s of the {self.budget_s:g} s budget)"
        self.used += 1
        self.waited_s += wait
        return wait


def preset_object(args: argparse.Namespace) -> dict[str, Any]:
    preset: dict[str, Any] = {"name": args.preset, "overlay": not args.no_overlay}
    if args.expression:
        preset["expression"] = args.expression
    if args.classes:
        preset["classes"] = [c.strip() for c in args.classes.split(",") if c.strip()]
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise AskError(f"--param {item!r}: use NAME=VALUE")
        preset[name] = value
    return preset


def expand(paths: list[str]) -> list[Path]:
    """Files as given; folders → their image files (sorted, not recursive)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def data_url(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AskError(f"cannot read {path}: {exc.strerror}") from None
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"  # the gateway reads the bytes
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def save_overlay(url: str, target: Path) -> Path:
    """Write the overlay; converted when the target's suffix names another format than the gateway's."""
    header, _, payload = url.partition(",")
    raw = base64.b64decode(payload)
    fmt = "jpeg" if "jpeg" in header else "png"
    wanted = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}.get(target.suffix.lower())
    if wanted is None:
        target = target.with_suffix(".jpg" if fmt == "jpeg" else ".png")
    elif wanted != fmt:
        from PIL import Image

        buf = io.BytesIO()
        Image.open(io.BytesIO(raw)).convert("RGB").save(buf, wanted.upper())
        raw = buf.getvalue()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(raw)
    return target


class Asker:
    def __init__(self, args: argparse.Namespace, client: httpx.AsyncClient, preset: dict[str, Any]) -> None:
        self.args, self.client, self.preset = args, client, preset
        self.model: str | None = None
        self._model_lock: Any = None

    async def send(self, tries: Tries, request: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        """The answer, tried again after 429/503 or a refused/reset connection while `tries` allows."""
        import asyncio

        while True:
            try:
                r = await request()
            except (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
                problem, hint = f"{type(exc).__name__}: {exc or 'no answer'} ({self.args.url})", None
            else:
                if r.status_code not in RETRY_STATUSES:
                    return r
                problem, hint = error_text(r), retry_after(r)
            wait = tries.wait_for(hint)
            if isinstance(wait, str):
                raise AskError(f"{problem} ({wait})")
            await asyncio.sleep(wait)

    async def served_model(self, tries: Tries) -> str:
        import asyncio

        if self._model_lock is None:
            self._model_lock = asyncio.Lock()
        async with self._model_lock:  # one lookup, not one per image at once
            if self.model is None:
                r = await self.send(tries, lambda: self.client.get("/v1/models"))
                if r.status_code != 200:
                    raise AskError(f"GET /v1/models: {error_text(r)}")
                ids = [m["id"] for m in r.json().get("data", []) if ":" not in m["id"]]
                if not ids:
                    raise AskError("the gateway lists no model")
                self.model = ids[0]
        return self.model

    async def one(self, path: Path, out: Path | None) -> dict[str, Any]:
        line: dict[str, Any] = {"image": str(path)}
        tries = Tries(max(0, self.args.retries), max(0.0, self.args.retry_budget))
        try:
            body = {"model": await self.served_model(tries), "preset": self.preset,
                    "messages": [{"role": "user", "content": [{"type": "image_url",
                                                               "image_url": {"url": data_url(path)}}]}]}
            r = await self.send(tries, lambda: self.client.post("/v1/chat/completions", json=body))
            if r.status_code != 200:
                raise AskError(error_text(r))
            answer = r.json()
            result = dict(answer.get("vlgate") or {})
            picture = result.pop("overlay", None)
            line.update(ok=True, text=answer["choices"][0]["message"].get("content"), result=result)
            if picture and out is not None:
                line["overlay"] = str(save_overlay(picture, out))
        except AskError as exc:
            line.update(ok=False, error=str(exc))
        except httpx.HTTPError as exc:
            line.update(ok=False, error=f"{type(exc).__name__}: {exc or 'no answer'} ({self.args.url})")
        if tries.used:
            line["retries"] = tries.used
        return line


def error_text(r: httpx.Response) -> str:
    try:
        return f"{r.status_code}: {r.json()['error']['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{r.status_code}: {r.text[:300]}"


async def run(args: argparse.Namespace) -> int:
    import asyncio

    from tqdm import tqdm

    paths = expand(args.images)
    if not paths:
        print("vlgate ask: no images found", file=sys.stderr)
        return 2
    many = len(paths) > 1 or any(Path(p).is_dir() for p in args.images)
    try:
        preset = preset_object(args)
    except AskError as exc:
        print(f"vlgate ask: {exc}", file=sys.stderr)
        return 2
    args.url, args.key = gateway_url(args.url), api_key(args.key)
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    folder = Path(args.out or "vlgate-overlays")
    gate = asyncio.Semaphore(max(1, args.concurrency))
    failed = 0
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=args.timeout) as client:
        asker = Asker(args, client, preset)

        async def job(i: int, path: Path) -> dict[str, Any]:
            if args.no_overlay:
                out = None
            elif many:
                out = folder / f"{i:04d}-{path.stem}.{args.preset}.png"
            else:
                out = Path(args.out or f"{path.stem}.{args.preset}.png")
            async with gate:
                return await asker.one(path, out)

        tasks = [asyncio.ensure_future(job(i, p)) for i, p in enumerate(paths)]
        with tqdm(total=len(tasks), unit="image", file=sys.stderr, disable=not many or None) as bar:
            for next_done in asyncio.as_completed(tasks):
                line = await next_done
                if not line["ok"]:
                    failed += 1
                    tqdm.write(f"vlgate ask: {line['image']}: {line['error']}", file=sys.stderr)
                print(json.dumps(line) if many else json.dumps(line, indent=2), flush=True)
                bar.update(1)
    return 1 if failed else 0


def cmd_ask(args: argparse.Namespace) -> int:
    import asyncio  # 40 ms: not for every `vlgate --help`

    return asyncio.run(run(args))
