"""Pipeline presets (and overlays) answered by the gateway: several backend requests for one client request.

Each step is a normal non-stream request through the forwarder (balancer, queue, retries), keyed for affinity
by the image it carries, so the steps about one image meet on one backend. Step 0 is the preset's own prompt;
its failure is the request's failure. Later steps run within the request's deadline (`request_timeout_s` from
arrival), items of a `for_each` step in parallel (at most `gateway.pipeline_parallel` at once); a failing or
late step leaves the results gathered so far plus a `parse_errors` entry, never an error status.

Streams (`stream: true`): nothing is sent until the pipeline is done; then one chunk carries step 0's text,
the next the finish reason and the `vlgate` result (the usage chunk, when asked for, comes last and carries it).
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import Send

from vlgate.backends import BackendState
from vlgate.errors import APIError
from vlgate.gateway.apis.openai import completion
from vlgate.gateway.apis.openai.errors import complete_error
from vlgate.gateway.endpoint.context import RequestContext
from vlgate.gateway.endpoint.respond import read_answer, send_json_bytes
from vlgate.gateway.gateway import Gateway
from vlgate.gateway.observe import tracing
from vlgate.gateway.observe.usage import Tokens
from vlgate.gateway.presetrun.source import image_of_data_url, original_pixels
from vlgate.gateway.routing.affinity import Affinity
from vlgate.images.parts import find_images
from vlgate.images.types import ImageInfo
from vlgate.presets import overlay
from vlgate.presets.masks import core_target
from vlgate.presets.pipeline import (
    Item,
    LabelMap,
    fill,
    needs_labels,
    step_items,
    step_labels,
)
from vlgate.presets.run import PresetRun, extension
from vlgate.presets.settings import CropSpec, PipelineStep
from vlgate.presets.transforms import crop_around_box

CHAT_PATH = "/v1/chat/completions"
_NOT_FORWARDED = ("messages", "stream", "stream_options", "n", "response_format", "tools", "tool_choice",
                  "parallel_tool_calls")


class StepFailed(Exception):
    pass


@dataclass
class StepLog:
    name: str
    requests: int = 0
    failed: int = 0
    started: float = field(default_factory=time.perf_counter)
    ms: float = 0.0

    def done(self) -> dict[str, Any]:
        self.ms = round((time.perf_counter() - self.started) * 1000, 1)
        return {"name": self.name, "requests": self.requests, "failed": self.failed, "ms": self.ms}


def _text(response: dict[str, Any]) -> tuple[str, str | None]:
    choice = (response.get("choices") or [{}])[0]
    content = (choice.get("message") or {}).get("content")
    return (content if isinstance(content, str) else ""), choice.get("finish_reason")


def source_image_url(body: dict[str, Any]) -> str | None:
    """The user's last image URL before normalization (crops are cut from its original pixels)."""
    try:
        parts = find_images(body)
    except APIError:
        return None  # the normalizer reports the bad part
    return parts[-1].url if parts else None


def _affinity(image: ImageInfo) -> Affinity:
    return (hash(("vlgate-image", image.sha256)),)


class PresetResponder:
    """`ctx.respond` for a preset the gateway runs itself (see module doc)."""

    def __init__(self, gw: Gateway, ctx: RequestContext, run: PresetRun, body: dict[str, Any],
                 images: list[ImageInfo], source_url: str | None) -> None:
        self.gw, self.ctx, self.run, self.body = gw, ctx, run, body
        self.image = images[-1] if images else None
        parts = find_images(body)
        self.image_url = parts[-1].url if parts else None  # normalized: what the model saw
        self.source_url = source_url
        self.errors: list[str] = []
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        self.requests = 0
        self._pixels: asyncio.Task[Any] | None = None

    # -- backend requests ------------------------------------------------------------------------
    async def call(self, body: dict[str, Any], affinity: Affinity | None) -> dict[str, Any]:
        """One non-stream backend request; an APIError carries the backend's complaint. The first is the
        request's own (admitted at the door); each later one counts against the key's request rate."""
        if self.requests and self.ctx.charges.requests:
            self.gw.key_limits.charge_call(self.ctx.key)
        self.requests += 1
        upstream = await self.gw.forwarder.send(CHAT_PATH, orjson.dumps(body), affinity, False, request_id=self.ctx.id)
        self.ctx.backend, self.ctx.attempts = upstream.backend.name, self.ctx.attempts + upstream.attempts  # log line
        try:
            data = await read_answer(upstream)
            upstream.response.release()
            upstream.release()
        finally:
            upstream.close()  # a no-op after a clean read; drops the connection (and the slot) otherwise
        if upstream.status != 200:
            status, data = complete_error(upstream.status if upstream.status >= 400 else 502, data)
            if status >= 500:  # as the proxy does: counts towards the backend's ejection
                upstream.failed(BackendState.SUSPECT, f"answered {status}")
            else:
                upstream.succeeded()
            err = orjson.loads(data)["error"]
            raise APIError(status, str(err["message"]), type=err.get("type"), param=err.get("param"),
                           code=err.get("code"))
        try:
            response = orjson.loads(data)
        except orjson.JSONDecodeError:
            upstream.failed(BackendState.SUSPECT, "answered 200 with no JSON")
            raise APIError(502, "The backend's answer is not JSON.", code="backend_error") from None
        if not isinstance(response, dict) or not isinstance(response.get("choices"), list):
            raise APIError(502, "The backend's answer has no choices.", code="backend_error")
        upstream.succeeded()
        for key in self.usage:
            self.usage[key] += int((response.get("usage") or {}).get(key) or 0)
        # charged at finish, stream or not, also when a later step fails
        self.ctx.spent = Tokens(self.usage["prompt_tokens"], self.usage["completion_tokens"])
        return response

    def step_body(self, image_url: str, prompt: str) -> dict[str, Any]:
        """demo.py build_messages: one user turn, image then text (no system message); the request's sampling."""
        body = {k: v for k, v in self.body.items() if k not in _NOT_FORWARDED}
        body["messages"] = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                         {"type": "text", "text": prompt}]}]
        return body

    # -- the pipeline ----------------------------------------------------------------------------
    async def respond(self, send: Send) -> int:
        first = {k: v for k, v in self.body.items() if k not in ("stream", "stream_options")}
        affinity = _affinity(self.image) if self.image else self.ctx.affinity
        with tracing.step("prompt"):  # a span per step when traces are on (observe/tracing.py)
            response = await self.call(first, affinity)  # step 0: its failure is the request's
        text, finish_reason = _text(response)
        ext = extension(self.run.name, self.run.parsers, text, self.image, finish_reason)
        self.errors = list(ext.pop("parse_errors"))
        if self.run.pipeline and self.image is not None:
            steps = [{"name": "prompt", "requests": 1, "failed": 0,
                      "ms": round((time.perf_counter() - self.ctx.started) * 1000, 1)}]
            remaining = self.ctx.started + self.gw.config.gateway.request_timeout_s - time.perf_counter()
            await self.follow_up(ext, text, steps, remaining)
            ext["pipeline"] = {"steps": steps, "requests": self.requests}
        if self.run.overlay:
            async with self.gw.full_size:  # drawn at the user's size
                ext["overlay"] = await self.draw(ext)
        ext["parse_errors"] = list(dict.fromkeys(self.errors))
        response["usage"] = {**(response.get("usage") or {}), **self.usage}
        response["vlgate"] = ext
        message = response["choices"][0].setdefault("message", {}) if response.get("choices") else {}
        if self.run.json_content:
            message["content"] = orjson.dumps(ext).decode()
        completion.fill_chat(response)
        headers = [(b"x-request-id", self.ctx.id.encode())]
        self.ctx.ttfb = time.perf_counter() - self.ctx.started  # the client's first byte comes now
        if self.body.get("stream") is True:
            await self.send_stream(send, response, headers)
        else:
            self.ctx.answer = data = orjson.dumps(response)
            await send_json_bytes(send, 200, data, headers)
        return 200

    async def follow_up(self, ext: dict[str, Any], text: str, steps: list[dict[str, Any]], remaining: float) -> None:
        previous, labels = dict(ext), list[str]()
        log: StepLog | None = None
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                for step in self.run.pipeline:
                    log = StepLog(step.name)
                    if step.for_each:
                        items = step_items(step, previous)
                        if not items:  # demo.py: nothing to work on, the earlier answer stands
                            steps.append(log.done())
                            break
                        with tracing.step(step.name):
                            await self.for_each(step, items, labels, ext, log)
                    else:
                        if needs_labels(step):
                            labels = step_labels(step, text)
                            if not labels:
                                steps.append(log.done())
                                break
                        with tracing.step(step.name):
                            text, previous = await self.on_image(step, labels, log)
                        for key, value in previous.items():
                            if key not in ("preset", "image"):
                                ext[key] = value
                    steps.append(log.done())
                    log = None
        except TimeoutError:
            self.errors.append(f"pipeline: the request deadline (request_timeout_s) passed during step "
                               f"{log.name if log else '?'}; results so far")
            if log is not None:
                steps.append(log.done())
        except APIError as exc:
            self.errors.append(f"{log.name if log else 'pipeline'}: {exc.message}")
            if log is not None:
                log.failed += 1
                steps.append(log.done())

    async def on_image(self, step: PipelineStep, labels: list[str], log: StepLog) -> tuple[str, dict[str, Any]]:
        """A step on the user's own image (the normalized one step 0 sent)."""
        assert self.image is not None and self.image_url is not None
        prompt = fill(step.prompt, self.run.values, labels, step.labels_join)
        log.requests += 1
        response = await self.call(self.step_body(self.image_url, prompt), _affinity(self.image))
        text, finish_reason = _text(response)
        parsers = () if step.parser == "none" else tuple([step.parser] if isinstance(step.parser, str) else step.parser)
        result = extension(self.run.name, parsers, text, self.image, finish_reason)
        self.errors.extend(f"{step.name}: {e}" for e in result.pop("parse_errors"))
        return text, result

    async def for_each(self, step: PipelineStep, items: list[Item], labels: list[str], ext: dict[str, Any],
                       log: StepLog) -> None:
        """One crop request per item, at most `pipeline_parallel` at once and never more than the key's
        concurrency allows (the request's own place plus the spare ones it can take); pasted in item order."""
        assert self.image is not None
        async with self.gw.full_size:  # full-size pixels and label map: a few pipelines at once (memory)
            await self._crops(step, items, labels, ext, log)

    async def _crops(self, step: PipelineStep, items: list[Item], labels: list[str], ext: dict[str, Any],
                     log: StepLog) -> None:
        pixels = await self.pixels()
        limits, key = self.gw.key_limits, self.ctx.key
        wanted = self.gw.config.gateway.pipeline_parallel - 1
        spare = limits.take_spare(key, wanted) if self.ctx.charges.concurrency else 0
        try:
            await self._for_each(step, items, labels, ext, log, pixels, asyncio.Semaphore(1 + spare))
        finally:
            if self.ctx.charges.concurrency:
                limits.give_back(key, spare)
            self._pixels = None  # the full-size pixels go with the step, not with the request

    async def _for_each(self, step: PipelineStep, items: list[Item], labels: list[str], ext: dict[str, Any],
                        log: StepLog, pixels: Any, gate: asyncio.Semaphore) -> None:
        assert self.image is not None
        found: list[tuple[tuple[int, int, int, int], Any] | None] = [None] * len(items)
        label_map = LabelMap(self.image.orig_width, self.image.orig_height)

        async def one(i: int, item: Item) -> None:
            async with gate:
                log.requests += 1
                try:
                    crop = await asyncio.to_thread(crop_around_box, pixels, item.box, step.crop or CropSpec(), i)
                    url = f"data:{crop.mime};base64," + base64.b64encode(crop.data).decode()
                    body = self.step_body(url, fill(step.prompt, self.run.values, labels, step.labels_join))
                    info = (await self.gw.images.normalize_body(body))[0]
                    text, _ = _text(await self.call(body, _affinity(info)))
                except APIError as exc:
                    log.failed += 1
                    self.errors.append(f"{step.name}[{i}]: {exc.message}")
                    return
                cells, errs = core_target(text, info)
                self.errors.extend(f"{step.name}[{i}]: {e}" for e in errs)
                if cells is not None:
                    found[i] = (crop.region, cells)

        tasks = [asyncio.ensure_future(one(i, item)) for i, item in enumerate(items)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            done = [(items[i], f) for i, f in enumerate(found) if f is not None]
            if done:  # also when the deadline cut the rest: what came back is pasted
                for item, (region, cells) in done:
                    name = fill(step.label, self.run.values, labels, ", ") if step.label else item.label
                    label_map.paste(region, cells, label_map.class_id(name, [] if step.label else labels))
                ext["masks"] = await asyncio.to_thread(label_map.masks)

    async def pixels(self) -> Any:
        """The user's image at full size (once per request, in a worker thread)."""
        if self._pixels is None:
            assert self.image is not None and self.image_url is not None
            images = self.gw.images
            self._pixels = asyncio.ensure_future(asyncio.to_thread(
                original_pixels, self.source_url, self.image_url, self.image, images.settings, list(images.formats)))
        return await self._pixels

    async def draw(self, ext: dict[str, Any]) -> str | None:
        if self.image is None or self.image_url is None:
            self.errors.append("overlay: the request has no image")
            return None
        photo = self.image_url.startswith("data:image/jpeg")
        base = await asyncio.to_thread(image_of_data_url, self.image_url)
        size = (self.image.orig_width, self.image.orig_height)
        return await asyncio.to_thread(overlay.draw, base, ext, size, photo=photo)

    async def send_stream(self, send: Send, response: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
        fields = ("id", "created", "model", "system_fingerprint")
        head: dict[str, Any] = {k: response[k] for k in fields if k in response}
        head["object"] = "chat.completion.chunk"
        usage_wanted = bool((self.body.get("stream_options") or {}).get("include_usage"))
        choice = (response.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        chunks = [
            {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": message.get("content") or ""},
                                  "logprobs": None, "finish_reason": None}]},
            {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                  "finish_reason": choice.get("finish_reason") or "stop"}]},
        ]
        if usage_wanted:
            for c in chunks:
                c["usage"] = None
            chunks.append({**head, "choices": [], "usage": response.get("usage")})
        chunks[-1]["vlgate"] = response["vlgate"]
        body = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), *headers]})
        await send({"type": "http.response.body", "body": body, "more_body": False})
