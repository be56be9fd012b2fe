"""Two tiers, one normalization (images/tier.py): a node gateway passes on the images its front tier already
normalized when both hold the same `tier_secret`, and normalizes everything else as before.

In process: the marks, what a node checks itself, the settings. Then real processes: a tiny llama-server, a
node gateway over it with the secret, and fronts over the node with the same secret (from the environment),
another secret, and none; the node's image cache counts every image it normalizes (a miss each: every image
here is new to it), so an image passed on leaves its counters alone. A recording fake backend shows which
header lines a gateway sends on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import io
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from support.llama import LlamaServer
from vlgate.config import ConfigError, parse_config
from vlgate.images import ImageNormalizer, ImageSettings
from vlgate.images import tier as tiermod
from vlgate.images.grid import GridRule
from vlgate.images.tier import TierTrust

SECRET = "s3cret-shared-by-both-tiers"
OTHER = "another-secret-entirely-0123"
_colors = itertools.count(1)


def photo(size: tuple[int, int] = (900, 700)) -> bytes:
    """A new JPEG every call (a different colour ramp): no cache on either tier has seen it."""
    n = next(_colors)
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    img.paste((n * 37 % 256, n * 91 % 256, n * 13 % 256), (0, 0, 60, 60))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def chat(data: bytes, mime: str = "image/jpeg", max_tokens: int = 6) -> dict[str, Any]:
    url = f"data:{mime};base64," + base64.b64encode(data).decode()
    return {"model": "youtu-vl", "max_tokens": max_tokens, "temperature": 0, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                     {"type": "text", "text": "What is in the picture?"}]}]}


def url_of(body: dict[str, Any]) -> str:
    url: str = body["messages"][0]["content"][0]["image_url"]["url"]
    return url


# ---------------------------------------------------------------- in process: marks and checks

def settings(secret: str | None = SECRET, **extra: Any) -> ImageSettings:
    return ImageSettings.model_validate({"tier_secret": secret, **extra})


async def front_then_node(front: ImageSettings, node: ImageSettings, body: dict[str, Any],
                          header: bytes | None = None) -> tuple[ImageNormalizer, dict[str, Any], bytes]:
    """The front normalizes `body`; the node gets the body it forwarded with its header (or `header`)."""
    f, n = ImageNormalizer(front), ImageNormalizer(node)
    try:
        tiermod.receive(None)
        await f.normalize_body(body)
        marks = tiermod.OUTGOING.get()
        line = tiermod.header_line(marks) if marks else b""
        sent = line.split(b": ", 1)[1].rstrip() if line else b""
        forwarded = copy.deepcopy(body)
        tiermod.receive(sent if header is None else header)
        await n.normalize_body(forwarded)
        return n, forwarded, sent
    finally:
        await f.aclose()
        await n.aclose()


def test_a_node_with_the_secret_passes_the_front_tiers_image_on() -> None:
    body = chat(photo())
    node, forwarded, sent = asyncio.run(front_then_node(settings(), settings(), body))
    assert node.processed == 0 and node.tier is not None and node.tier.passed == 1
    assert url_of(forwarded) == url_of(body)  # the very bytes the front made
    sha, fmt, size, mac = sent.decode().split(".")
    raw = base64.b64decode(url_of(body).split(",", 1)[1])
    assert sha == hashlib.sha256(raw).hexdigest() and fmt == "jpeg" and len(mac) == 32
    w, h = Image.open(io.BytesIO(raw)).size
    assert size == f"{w}x{h}"


@pytest.mark.parametrize("node", [settings(OTHER), settings(None)], ids=["another secret", "no secret"])
def test_without_the_same_secret_the_node_normalizes(node: ImageSettings) -> None:
    n, _, _ = asyncio.run(front_then_node(settings(), node, chat(photo())))
    assert n.processed == 1
    if n.tier is not None:
        assert n.tier.passed == 0 and n.tier.rejected == 1


def test_a_mark_binds_the_bytes_and_the_size() -> None:
    body = chat(photo())
    _, _, sent = asyncio.run(front_then_node(settings(), settings(), copy.deepcopy(body)))
    sha, fmt, size, mac = sent.decode().split(".")
    w, h = (int(v) for v in size.split("x"))
    forged = [f"{sha}.{fmt}.{w + 32}x{h}.{mac}",  # another size
              f"{sha}.png.{size}.{mac}",  # another format
              f"{sha}.{fmt}.{size}.{'0' * 32}",  # a guessed MAC
              f"{sha}.{fmt}.{size}.{mac[:-1]}",  # truncated
              "garbage, .., ...., " + "é" * 10]
    for header in forged:
        n, _, _ = asyncio.run(front_then_node(settings(), settings(), copy.deepcopy(body), header.encode("utf-8")))
        assert n.processed == 1, header


def test_the_node_checks_the_grid_and_the_encoding_itself() -> None:
    trust = TierTrust(SECRET, GridRule())
    raw = b"\xff\xd8" + bytes(range(256)) * 40 + b"x"  # not even an image: the MAC vouches for it (== padded)
    sha = hashlib.sha256(raw).hexdigest()
    b64 = base64.b64encode(raw).decode()

    def marks(w: int, h: int, fmt: str = "jpeg") -> tiermod.Marks:
        return {sha: (fmt, w, h, trust._mac(bytes.fromhex(sha), fmt, w, h))}

    url = "data:image/jpeg;base64," + b64
    ok = trust.vouched(marks(1632, 1216), sha, len(raw), True, b64, url)
    assert ok is not None and ok.data_url is url and (ok.info.width, ok.info.orig_width) == (1632, 1632)
    assert trust.vouched(marks(1000, 700), sha, len(raw), True, b64, url) is None  # not on our grid
    assert trust.vouched(marks(4096, 4096), sha, len(raw), True, b64, url) is None  # past the token budget
    assert b64.endswith("==")  # other encodings of the same bytes, each the canonical length or shorter:
    for other in (b64[:100] + "\n" + b64[100:-1], b64.replace("+", "-").replace("/", "_"), b64[:-1]):
        assert trust.vouched(marks(1632, 1216), sha, len(raw), True, other, url) is None
    # Anthropic's shape reaches the normalizer as an octet-stream data URL: the node writes its real type
    png = trust.vouched(marks(64, 64, "png"), sha, len(raw), True, b64, "data:application/octet-stream;base64," + b64)
    assert png is not None and png.data_url == "data:image/png;base64," + b64


def test_marks_accumulate_within_a_request_and_start_over_with_the_next() -> None:
    async def go() -> tuple[int, int]:
        f = ImageNormalizer(settings())
        try:
            tiermod.receive(None)
            await f.normalize_body(chat(photo()))
            await f.normalize_body(chat(photo()))  # a preset pipeline's crop, say
            first = len(tiermod.OUTGOING.get())
            tiermod.receive(None)
            return first, len(tiermod.OUTGOING.get())
        finally:
            await f.aclose()

    assert asyncio.run(go()) == (2, 0)


def test_the_secret_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLGATE_TIER_SECRET", raising=False)
    assert parse_config({}).images.resolved_tier_secret() is None
    with pytest.raises(ConfigError, match=r"images\.tier_secret"):
        parse_config({"images": {"tier_secret": "short"}})
    config = parse_config({"images": {"tier_secret": SECRET}})
    assert config.images.resolved_tier_secret() == SECRET and SECRET not in repr(config)
    monkeypatch.setenv("VLGATE_TIER_SECRET", OTHER)  # the config's own wins
    assert config.images.resolved_tier_secret() == SECRET
    assert parse_config({}).images.resolved_tier_secret() == OTHER
    monkeypatch.setenv("VLGATE_TIER_SECRET", "short")
    with pytest.raises(ConfigError, match="VLGATE_TIER_SECRET must be at least 16"):
        ImageNormalizer(parse_config({}).images)


# ---------------------------------------------------------------- real gateways

@contextlib.contextmanager
def gateway_over_fake(tmp: Path, images: dict[str, Any]) -> Iterator[tuple[GatewayProcess, FakeBackend]]:
    fb = FakeBackend().start()
    gw = GatewayProcess({"backends": [{"url": fb.url}], "images": images}, tmp)
    try:
        gw.start()
        gw.wait_ready()
        yield gw, fb
    finally:
        gw.stop()
        fb.stop()


@pytest.mark.slow
def test_a_gateway_never_forwards_a_clients_header(tmp_path: Path) -> None:
    """Only the gateway's own marks go on, for the image it forwards; without a secret, none at all."""
    forged = b"%s.jpeg.1632x1216.%s" % (b"a" * 64, b"b" * 32)
    for secret in (SECRET, None):
        with gateway_over_fake(tmp_path, {"tier_secret": secret} if secret else {}) as (gw, fb):
            r = httpx.post(gw.url + "/v1/chat/completions", json=chat(photo()), headers={"X-Vlgate-Tier": forged},
                           timeout=30)
            assert r.status_code == 200, r.text
            seen = fb.chat_requests()[-1]
            if secret is None:
                assert "x-vlgate-tier" not in seen.headers
                continue
            sent = seen.headers["x-vlgate-tier"]
            assert forged.decode() not in sent and "," not in sent
            url = url_of(httpx.Response(200, content=seen.body).json())
            raw = base64.b64decode(url.split(",", 1)[1])
            assert sent.startswith(hashlib.sha256(raw).hexdigest() + ".jpeg.")


@pytest.fixture(scope="module")
def tiers(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path,
          tiny_model: Any) -> Iterator[dict[str, GatewayProcess]]:
    tmp = tmp_path_factory.mktemp("tiers")
    server = LlamaServer(llama_server_bin, tiny_model.model, mmproj=tiny_model.mmproj, slots=2, ctx=2048,
                         extra_args=("--jinja",), log_dir=tmp / "llama").start()
    started: list[GatewayProcess] = []
    try:
        node = GatewayProcess({"backends": [{"url": server.url}], "images": {"tier_secret": SECRET}}, tmp)
        started.append(node.start())
        node.wait_ready()
        fronts = {"trusted": ({}, {"VLGATE_TIER_SECRET": SECRET}),  # the secret from the environment
                  "other": ({"tier_secret": OTHER}, {}), "plain": ({}, {})}
        out = {"node": node}
        for name, (images, env) in fronts.items():
            gw = GatewayProcess({"backends": [{"url": node.url}], "images": images}, tmp, env=env)
            started.append(gw.start())
            out[name] = gw
        for gw in out.values():
            gw.wait_ready()
        yield out
    finally:
        for gw in started:
            gw.stop()
        server.stop()


def normalized_by_node(node: GatewayProcess) -> int:
    """Images the node normalized (each is new to it: a cache miss); an image passed on is neither."""
    cache = httpx.get(node.url + "/status", timeout=5).json()["gateway"]["image_cache"]
    return int(cache["hits"] + cache["misses"])


def ask(gw: GatewayProcess, body: dict[str, Any], headers: dict[str, str] | None = None,
        path: str = "/v1/chat/completions") -> dict[str, Any]:
    r = httpx.post(gw.url + path, json=body, headers=headers or {}, timeout=60)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


@pytest.mark.slow
def test_with_the_secret_the_node_does_not_normalize_again(tiers: dict[str, GatewayProcess]) -> None:
    node = tiers["node"]
    data = photo((1600, 1200))
    before = normalized_by_node(node)
    one_tier = ask(node, chat(data))  # the node alone normalizes the photo
    assert normalized_by_node(node) == before + 1
    two_tiers = ask(tiers["trusted"], chat(data))  # the front normalizes it, the node passes it on
    assert normalized_by_node(node) == before + 1
    # llama-server saw the same bytes: the same answer (temperature 0) and the same prompt
    assert two_tiers["choices"][0]["message"] == one_tier["choices"][0]["message"]
    assert two_tiers["usage"]["prompt_tokens"] == one_tier["usage"]["prompt_tokens"]
    # the Anthropic shape too (the node writes the data URL's real type back): as from the node alone
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                         "data": base64.b64encode(photo()).decode()}}
    body = {"model": "youtu-vl", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": [image, {"type": "text", "text": "what?"}]}]}
    two_tiers = ask(tiers["trusted"], body, path="/v1/messages")
    assert normalized_by_node(node) == before + 1
    one_tier = ask(node, body, path="/v1/messages")
    assert normalized_by_node(node) == before + 2
    assert two_tiers["content"] == one_tier["content"]

    def prompt(m: dict[str, Any]) -> int:
        return int(m["usage"]["input_tokens"] + m["usage"].get("cache_read_input_tokens", 0))

    # the same prompt, the image included (the second one read nearly all of it from llama-server's cache)
    assert prompt(two_tiers) == prompt(one_tier) > prompt(ask(node, {**body, "messages": [
        {"role": "user", "content": "what?"}]}, path="/v1/messages"))


@pytest.mark.slow
@pytest.mark.parametrize("front", ["other", "plain"])
def test_another_secret_or_none_is_normalized_as_before(tiers: dict[str, GatewayProcess], front: str) -> None:
    node = tiers["node"]
    before = normalized_by_node(node)
    ask(tiers[front], chat(photo()))
    assert normalized_by_node(node) == before + 1


@pytest.mark.slow
def test_a_client_forging_the_header_gains_nothing(tiers: dict[str, GatewayProcess]) -> None:
    """Straight to the node, an image already on the grid with a mark it made up: normalized as any image."""
    node = tiers["node"]
    img = Image.open(io.BytesIO(photo((1632, 1216))))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    raw = buf.getvalue()
    mark = f"{hashlib.sha256(raw).hexdigest()}.jpeg.1632x1216.{'c' * 32}"
    before = normalized_by_node(node)
    ask(node, chat(raw), {"X-Vlgate-Tier": mark})
    assert normalized_by_node(node) == before + 1
    assert "did not verify" in node.log_path.read_text()  # (logged once: maybe for the other front)
