"""normalize_body: shapes, params, counts, data URL forms, the cache, and a loop that never blocks."""

from __future__ import annotations

import asyncio
import base64
import copy
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from support.images import body_with, data_url, encode, max_loop_gap, run, settings
from vlgate.images import (
    GridRule,
    ImageError,
    ImageInfo,
    ImageNormalizer,
    ImageSettings,
)

PNG = encode(Image.new("RGB", (100, 60), (10, 200, 30)), "PNG")


def noisy_jpeg(w: int, h: int, seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return encode(Image.fromarray(arr), "JPEG", quality=85)


async def _with(s: ImageSettings, fn: Any) -> Any:
    n = ImageNormalizer(s)
    try:
        return await fn(n)
    finally:
        await n.aclose()


def norm(body: Any, s: ImageSettings | None = None) -> list[ImageInfo]:
    return run(_with(s or settings(), lambda n: n.normalize_body(body)))


def err(body: Any, s: ImageSettings | None = None) -> ImageError:
    with pytest.raises(ImageError) as info:
        norm(body, s)
    assert info.value.status == 400
    return info.value


def test_no_images_is_a_no_op() -> None:
    for body in ({"messages": [{"role": "user", "content": "hi"}]}, {"messages": []}, {}, {"messages": "x"},
                 {"messages": [None, 3, {"content": None}, {"content": [None, "x", {"type": "text"}]}]}, []):
        before = copy.deepcopy(body)
        assert norm(body) == []
        assert body == before


def test_rewrites_in_place_in_message_order() -> None:
    jpg = noisy_jpeg(64, 48, 1)
    body = body_with(data_url(PNG), data_url(jpg, "image/webp"))
    body["messages"].append(
        {"role": "user", "content": [{"type": "image_url", "image_url": data_url(PNG, "image/gif")}]})
    infos = norm(body)
    assert [(i.orig_width, i.orig_height, i.width, i.height) for i in infos] == [
        (100, 60, 128, 64), (64, 48, 64, 64), (100, 60, 128, 64)]
    assert infos[0].sha256 == infos[2].sha256 != infos[1].sha256
    parts = body["messages"][1]["content"]
    assert parts[0]["image_url"]["detail"] == "high" and parts[2] == {"type": "text", "text": "describe"}
    assert body["messages"][2]["content"][0]["image_url"]["url"].startswith("data:image/")  # string form -> object
    out = base64.b64decode(parts[0]["image_url"]["url"].split(",", 1)[1])
    import hashlib

    assert hashlib.sha256(out).hexdigest() == infos[0].sha256  # the affinity key is the forwarded bytes


@pytest.mark.parametrize("part,why", [
    ({"type": "image_url"}, "url"),
    ({"type": "image_url", "image_url": {}}, "url"),
    ({"type": "image_url", "image_url": {"url": 5}}, "url"),
    ({"type": "image_url", "image_url": ["x"]}, "url"),
    ({"type": "image_url", "image_url": {"url": "  "}}, "url"),
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64"}}, "no ','"),
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}}, "base64"),
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,"}}, "empty"),
])
def test_malformed_parts_are_400_with_param(part: dict, why: str) -> None:
    body = {"messages": [{"role": "user", "content": "x"},
                         {"role": "user", "content": [{"type": "text", "text": "a"}, part]}]}
    before = copy.deepcopy(body)
    e = err(body)
    assert why in e.message
    assert e.param == "messages[1].content[1].image_url"
    assert body == before  # nothing rewritten on failure


def test_body_untouched_when_a_later_image_fails() -> None:
    body = body_with(data_url(PNG), "data:image/png;base64," + base64.b64encode(b"garbage!").decode())
    before = copy.deepcopy(body)
    e = err(body)
    assert e.param == "messages[1].content[1].image_url"
    assert body == before


def test_data_url_variants() -> None:
    b64 = base64.b64encode(PNG).decode()
    wrapped = "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))
    urlsafe = base64.urlsafe_b64encode(PNG).decode().rstrip("=")
    from urllib.parse import quote_from_bytes

    for url in (f"data:image/png;base64,{wrapped}", f"data:;base64,{urlsafe}",
                f"DATA:application/octet-stream;base64,{b64}",
                "data:image/png," + quote_from_bytes(PNG)):
        assert norm(body_with(url))[0].orig_width == 100, url[:40]


def test_image_count_and_byte_limits() -> None:
    e = err(body_with(*[data_url(PNG)] * 9))
    assert "too many images: 9" in e.message and e.param == "messages[1].content[8].image_url"
    assert len(norm(body_with(*[data_url(PNG)] * 8))) == 8
    big = noisy_jpeg(1500, 1500, 2)  # ~1.5 MB of noise
    e = err(body_with(data_url(big)), settings(limits={"max_image_bytes": 1_000_000}))
    assert "limit per image" in e.message
    e = err(body_with(data_url(PNG), data_url(big)), settings(limits={"max_request_bytes": len(big)}))
    assert "limit per request" in e.message and e.param == "messages[1].content[1].image_url"


def test_images_disabled() -> None:
    e = err(body_with(data_url(PNG)), settings(enabled=False))
    assert "does not accept images" in e.message


def test_cache_same_bytes_same_result_and_processed_once() -> None:
    async def go(n: ImageNormalizer) -> tuple[list, list, int]:
        b1, b2 = body_with(data_url(PNG), data_url(PNG, "image/jpeg")), body_with(data_url(PNG))
        first = await n.normalize_body(b1)  # the same image twice in one request: in-flight dedupe
        second = await n.normalize_body(b2)  # a later turn of the chat: cache hit
        urls = [p["image_url"]["url"] for p in b1["messages"][1]["content"][:2]]
        urls.append(b2["messages"][1]["content"][0]["image_url"]["url"])
        return first + second, urls, n.processed

    infos, urls, processed = run(_with(settings(), go))
    assert processed == 1
    assert len(set(infos)) == 1 and len(set(urls)) == 1


def test_cache_is_bounded_by_entries_and_bytes() -> None:
    images = [encode(Image.new("RGB", (40, 40), (i, 0, 0)), "PNG") for i in range(6)]

    async def go(n: ImageNormalizer) -> tuple[int, int, int]:
        for img in images:
            await n.normalize_body(body_with(data_url(img)))
        await n.normalize_body(body_with(data_url(images[0])))  # evicted: processed again
        return len(n.cache), n.cache.bytes, n.processed

    entries, size, processed = run(_with(settings(cache={"max_entries": 3}), go))
    assert entries == 3 and processed == 7
    body = body_with(data_url(images[1]))
    norm(body)
    one = len(body["messages"][1]["content"][0]["image_url"]["url"])  # the cached (normalized) size
    entries, size, processed = run(_with(settings(cache={"max_bytes": 2 * one + one // 2}), go))
    assert entries == 2 and size <= 2 * one + one // 2 and processed == 7
    entries, _, processed = run(_with(settings(cache={"max_entries": 0}), go))
    assert entries == 0 and processed == 7


def test_concurrent_requests_share_one_run() -> None:
    jpg = noisy_jpeg(2000, 1500, 3)

    async def go(n: ImageNormalizer) -> tuple[set, int]:
        bodies = [body_with(data_url(jpg)) for _ in range(5)]
        results = await asyncio.gather(*(n.normalize_body(b) for b in bodies))
        return {r[0] for r in results}, n.processed

    infos, processed = run(_with(settings(), go))
    assert len(infos) == 1 and processed == 1


def test_event_loop_never_blocks() -> None:
    """Big images decode in the pool: the loop keeps ticking (a blocking decode would stall it for the whole run)."""
    body = body_with(*[data_url(noisy_jpeg(3000, 2000, 10 + i)) for i in range(3)])

    async def go(n: ImageNormalizer) -> tuple[Any, float, float]:
        return await max_loop_gap(lambda: n.normalize_body(body))

    infos, gap, total = run(_with(ImageSettings(), go))
    assert len(infos) == 3 and (infos[0].width, infos[0].height) == GridRule().size(3000, 2000) == (1760, 1184)
    assert gap < total / 3, (gap, total)
    assert gap < 0.25, (gap, total)


def test_unexpected_decoder_exception_is_a_400() -> None:
    async def go(n: ImageNormalizer) -> ImageError:
        def boom(_data: bytes) -> Any:
            raise RuntimeError("decoder exploded")

        n.pixels.pipeline = type("P", (), {"run": staticmethod(boom)})()  # the pool's copy (threads here)
        with pytest.raises(ImageError) as e:
            await n.normalize_body(body_with(data_url(PNG)))
        return e.value

    e = run(_with(settings(), go))
    assert "decoder exploded" in e.message and e.param == "messages[1].content[0].image_url"


def test_output_decodes_like_llama_cpp_would() -> None:
    """What llama-server gets: base64 data URL of a baseline JPEG/PNG at exactly the grid size."""
    body = body_with(data_url(noisy_jpeg(1000, 700, 4)))
    info = norm(body)[0]
    url = body["messages"][1]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert img.size == (info.width, info.height) == (1024, 704) and img.mode == "RGB"


@pytest.mark.parametrize("mb,blocks", [(0, 0), (128, 8), (40, 2)])
def test_pillow_block_cache_setting(mb: int, blocks: int) -> None:
    """Pillow keeps that many 16 MB pixel blocks for the next image (process-wide); 0 returns them at once."""
    assert Image.core.get_block_size() == 16 * 1024 * 1024
    try:
        infos = norm(body_with(data_url(PNG)), settings(pillow_block_cache_mb=mb))
        assert Image.core.get_blocks_max() == blocks and len(infos) == 1
    finally:
        Image.core.set_blocks_max(ImageSettings().pillow_block_cache_mb // 16)
