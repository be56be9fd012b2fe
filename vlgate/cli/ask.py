"""`vlgate ask PRESET IMAGE...`: run a preset on images through any running vlgate, print JSON, save pictures.

One image: the result as indented JSON on stdout and the overlay in `--out` (default `<image>.<preset>.png`
in the current folder). Several images or folders: one JSON line per image as each finishes (a failed image
says why in its line; the rest go on), a progress bar on stderr, overlays in the `--out` folder; at most
`--concurrency` requests at once (the gateway spreads them over its backends). Exit 1 when any image failed.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import mimetypes
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlgate.cli.common import lazy_import

if TYPE_CHECKING:
    import httpx
else:
    httpx = lazy_import("httpx")  # imported when `vlgate ask` runs, not for every `vlgate --help`

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}


class AskError(Exception):
    """One image's failure, as the line reports it."""


def register(sub: Any) -> None:
    p = sub.add_parser("ask", help="run a preset on images through a running vlgate; print JSON, save overlays",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("preset", help="preset name (GET /v1/presets lists them), e.g. detect, refer_segment")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--expression", help="what to find or segment (ground, refer_segment)")
    p.add_argument("--classes", help="comma-separated categories (detect, segment)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="any other preset parameter")
    p.add_argument("--url", default=os.environ.get("VLGATE_URL", "http://127.0.0.1:8000"),
                   help="the gateway (default: $VLGATE_URL or http://127.0.0.1:8000)")
    p.add_argument("--key", default=os.environ.get("VLGATE_API_KEY"), help="API key (default: $VLGATE_API_KEY)")
    p.add_argument("--out", help="overlay file (one image) or folder (several; default ./vlgate-overlays)")
    p.add_argument("--no-overlay", action="store_true", help="JSON only, no pictures")
    p.add_argument("--concurrency", type=int, default=4, help="requests at once (default 4)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per image (default 900)")
    p.set_defaults(func=cmd_ask)


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

    async def served_model(self) -> str:
        if self.model is None:
            r = await self.client.get("/v1/models")
            if r.status_code != 200:
                raise AskError(f"GET /v1/models: {error_text(r)}")
            ids = [m["id"] for m in r.json().get("data", []) if ":" not in m["id"]]
            if not ids:
                raise AskError("the gateway lists no model")
            self.model = ids[0]
        return self.model

    async def one(self, path: Path, out: Path | None) -> dict[str, Any]:
        line: dict[str, Any] = {"image": str(path)}
        try:
            body = {"model": await self.served_model(), "preset": self.preset,
                    "messages": [{"role": "user", "content": [{"type": "image_url",
                                                               "image_url": {"url": data_url(path)}}]}]}
            r = await self.client.post("/v1/chat/completions", json=body)
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
                failed += not line["ok"]
                print(json.dumps(line) if many else json.dumps(line, indent=2), flush=True)
                bar.update(1)
    return 1 if failed else 0


def cmd_ask(args: argparse.Namespace) -> int:
    import asyncio  # 40 ms: not for every `vlgate --help`

    return asyncio.run(run(args))
