"""`vlgate batch SOURCE --out results.jsonl`: run a folder of images (or a JSONL file of requests) as one batch
job on a running vlgate, show its progress, and download the results.

A folder (or image files): one chat request per image, with `--preset` (a vision task: detect, ocr, ...)
and/or `--prompt` (a question asked about each image); custom_id is the image's path. A `.jsonl` file is
uploaded as it is (OpenAI's batch input format, any of the three batchable endpoints). The batch runs on
the gateway at low priority, in slots its interactive traffic leaves free, and survives gateway restarts:
interrupting this command leaves it running (`--resume BATCH_ID` waits for it again and downloads).

The results file has one line per request, in input order: OpenAI's output line (`response.body` holds the
answer, and for presets the parsed `vlgate` result) or error line (`error`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlgate.cli.ask import (
    RETRY_STATUSES,
    AskError,
    Tries,
    api_key,
    data_url,
    error_text,
    expand,
    gateway_url,
    preset_object,
    retry_after,
)
from vlgate.cli.common import lazy_import

if TYPE_CHECKING:
    import httpx
else:
    httpx = lazy_import("httpx")

TERMINAL = ("completed", "failed", "expired", "cancelled")
EPILOG = """\
gateway and key: --url, else $VLGATE_URL, else $OPENAI_BASE_URL (a trailing /v1 is dropped), else
http://127.0.0.1:8000; --key, else $VLGATE_API_KEY, else $OPENAI_API_KEY.

exit status: 0 every request succeeded; 1 some failed (their error lines are in the results) or the batch
ended otherwise than completed; 2 bad usage (nothing to send, a refused file)."""


class BatchError(Exception):
    """What stops the command, in one line."""


def register(sub: Any) -> None:
    p = sub.add_parser("batch", help="run a folder of images or a JSONL file as a batch job; download the results",
                       description="\n\n".join(__doc__.split("\n\n")[:2]), epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="*", metavar="SOURCE", help="a folder of images, image files, or one .jsonl file")
    p.add_argument("--out", default="results.jsonl", help="where the results go (default results.jsonl)")
    p.add_argument("--preset", help="vision task per image (GET /v1/presets lists them), e.g. detect, ocr")
    p.add_argument("--prompt", help="question asked about each image (with or without --preset)")
    p.add_argument("--expression", help="what to find or segment (ground, refer_segment)")
    p.add_argument("--classes", help="comma-separated categories (detect, segment)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="any other preset parameter")
    p.add_argument("--max-tokens", type=int, help="max_tokens of each request")
    p.add_argument("--model", help="model id (default: the gateway's first model)")
    p.add_argument("--url", help="the gateway (default: $VLGATE_URL, $OPENAI_BASE_URL or http://127.0.0.1:8000)")
    p.add_argument("--key", help="API key (default: $VLGATE_API_KEY, else $OPENAI_API_KEY)")
    p.add_argument("--resume", metavar="BATCH_ID", help="wait for a batch made earlier and download its results")
    p.add_argument("--poll", type=float, default=1.0, metavar="SECONDS", help="status poll interval (default 1)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per HTTP request (default 600)")
    p.set_defaults(func=cmd_batch)


def build_lines(args: argparse.Namespace, model: Callable[[], str]) -> bytes:
    """The JSONL to upload: the file as given, or one request per image."""
    if len(args.source) == 1 and args.source[0].endswith(".jsonl"):
        path = Path(args.source[0])
        try:
            return path.read_bytes()
        except OSError as exc:
            raise BatchError(f"cannot read {path}: {exc.strerror}") from None
    images = expand(args.source)
    if not images:
        raise BatchError("no images found (give a folder of images, image files, or a .jsonl file)")
    if not args.preset and not args.prompt:
        raise BatchError("say what to do with each image: --preset NAME and/or --prompt TEXT")
    preset = None
    if args.preset:
        args.no_overlay = True  # pictures would swell the results file; `vlgate ask` draws them
        preset = preset_object(args)
    name = model()
    out = []
    for path in images:
        content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": data_url(path)}}]
        if args.prompt:
            content.append({"type": "text", "text": args.prompt})
        body: dict[str, Any] = {"model": name, "messages": [{"role": "user", "content": content}]}
        if preset is not None:
            body["preset"] = preset
        if args.max_tokens:
            body["max_tokens"] = args.max_tokens
        line = {"custom_id": str(path), "method": "POST", "url": "/v1/chat/completions", "body": body}
        out.append(json.dumps(line).encode())
    return b"\n".join(out) + b"\n"


class Gateway:
    """The few calls this command makes; 429/503 and refused connections are waited out (as `vlgate ask`)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        tries = Tries(6, 60.0)
        while True:
            try:
                r = self.client.request(method, path, **kw)
            except (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
                problem, hint = f"{type(exc).__name__}: {exc or 'no answer'} ({self.client.base_url})", None
            else:
                if r.status_code not in RETRY_STATUSES:
                    if r.status_code >= 400:
                        raise BatchError(f"{method} {path}: {error_text(r)}")
                    return r
                problem, hint = error_text(r), retry_after(r)
            wait = tries.wait_for(hint)
            if isinstance(wait, str):
                raise BatchError(f"{method} {path}: {problem} ({wait})")
            time.sleep(wait)

    def model(self) -> str:
        ids = [m["id"] for m in self.call("GET", "/v1/models").json().get("data", []) if ":" not in m["id"]]
        if not ids:
            raise BatchError("the gateway lists no model")
        return str(ids[0])


def wait(gw: Gateway, batch_id: str, poll_s: float) -> dict[str, Any]:
    from tqdm import tqdm

    with tqdm(unit="request", file=sys.stderr, desc=batch_id[:18]) as bar:
        while True:
            batch = gw.call("GET", f"/v1/batches/{batch_id}").json()
            counts = batch.get("request_counts") or {}
            bar.total = counts.get("total") or None
            bar.n = (counts.get("completed") or 0) + (counts.get("failed") or 0)
            bar.set_postfix(status=batch["status"], failed=counts.get("failed") or 0, refresh=False)
            bar.refresh()
            if batch["status"] in TERMINAL:
                return dict(batch)
            time.sleep(poll_s)


def download(gw: Gateway, batch: dict[str, Any], out: Path) -> int:
    """Output and error lines together, in input order (as far as custom_ids tell); how many failed."""
    rows: list[dict[str, Any]] = []
    failed = 0
    for field in ("output_file_id", "error_file_id"):
        if batch.get(field):
            text = gw.call("GET", f"/v1/files/{batch[field]}/content").text
            found = [json.loads(x) for x in text.splitlines() if x.strip()]
            failed += len(found) if field == "error_file_id" else 0
            rows += found
    order = {custom_id: i for i, custom_id in enumerate(batch.get("_order", []))}
    rows.sort(key=lambda r: order.get(r.get("custom_id"), len(order)))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return failed


def run(args: argparse.Namespace) -> int:
    if not args.source and not args.resume:
        raise BatchError("give a folder of images, image files or a .jsonl file (or --resume BATCH_ID)")
    url, key = gateway_url(args.url), api_key(args.key)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=args.timeout) as client:
        gw = Gateway(client)
        order: list[str] = []
        if args.resume:
            batch_id = args.resume
        else:
            data = build_lines(args, gw.model)
            name = Path(args.source[0]).stem if len(args.source) == 1 else "images"
            uploaded = gw.call("POST", "/v1/files", files={"file": (f"{name}.jsonl"[:200], data)},
                               data={"purpose": "batch"}).json()  # the gateway checks it, naming a bad line
            requests = [json.loads(x) for x in data.splitlines() if x.strip()]
            order = [r["custom_id"] for r in requests]
            endpoint = requests[0]["url"]
            created = gw.call("POST", "/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": endpoint,
                                                           "completion_window": "24h"}).json()
            batch_id = created["id"]
            print(f"vlgate batch: {batch_id} ({len(order)} requests); interrupted, it keeps running: "
                  f"vlgate batch --resume {batch_id}", file=sys.stderr)
        batch = wait(gw, batch_id, max(0.05, args.poll))
        batch["_order"] = order
        failed = download(gw, batch, Path(args.out))
        counts = batch.get("request_counts") or {}
        print(f"vlgate batch: {batch_id} {batch['status']}: {counts.get('completed', 0)} succeeded, {failed} failed "
              f"-> {args.out}", file=sys.stderr)
    return 0 if batch["status"] == "completed" and not failed else 1


def cmd_batch(args: argparse.Namespace) -> int:
    try:
        return run(args)
    except (BatchError, AskError) as exc:
        print(f"vlgate batch: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"vlgate batch: {type(exc).__name__}: {exc or 'no answer'}", file=sys.stderr)
        return 2
