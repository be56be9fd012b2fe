"""Two tiers, one normalization: a node gateway passes on images its front tier already normalized.

In a two-level fleet (`vlgate serve` replicas in front of GPU nodes that run their own gateway) every image
would be decoded, resized and encoded twice. With the same `images.tier_secret` (or `VLGATE_TIER_SECRET`)
on both tiers, a gateway marks each image it normalized in a header to its backends,

    X-Vlgate-Tier: <sha256 hex>.<format>.<width>x<height>.<mac>, ...

where mac = HMAC-SHA256(secret, "vlgate-tier/1" | sha256(image bytes) | format | width | height), truncated to
128 bits. The MAC covers each image's digest, not the body: the node hashes every image anyway (its cache
key), so verifying costs ~2 us an image whatever the body's size or how the front re-serialized it.

What the node trusts: that the image bytes are exactly what a gateway holding the secret produced as a
normalized image (EXIF applied, 8-bit RGB, no metadata, one of the formats llama-server reads, the stated
size). What it still checks itself: strict base64 in the canonical form (what llama-server's decoder reads
the same way), the digest of the bytes it will forward (it computes it), that the stated size is a fixed
point of *its own* grid rule (so llama.cpp's resize stays a no-op; a front with another grid just loses
the shortcut), and the image count and byte budgets as for any image. A mark is not bound to a request: a
copy seen on the wire vouches only for the front's own output, which is what it is.

Anything else normalizes as today: no secret on the node (the header is not even read), no mark for an
image, a mark that does not verify (another secret: a rollout, a forged header). A client gains and loses
nothing by sending the header, and no gateway forwards a header it received: the forwarder sends only
marks made by this gateway's normalizer, for images of this request.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import logging
from contextvars import ContextVar

from vlgate.images.grid import GridRule
from vlgate.images.pipeline import Normalized
from vlgate.images.types import ImageInfo

log = logging.getLogger(__name__)

HEADER = b"x-vlgate-tier"  # as ASGI scopes carry names (lower case)
_LINE = b"X-Vlgate-Tier: "
_CONTEXT = b"vlgate-tier/1\x00"
_MAC_BYTES = 16  # 128 bits (RFC 2104 section 5: at least half the hash output)
_MIME = {"jpeg": "image/jpeg", "png": "image/png", "tga": "image/x-tga"}  # what the pipeline produces
_LENIENT = " \t\n\r\x0b\x0c-_"  # what images/dataurl.py's lenient decode accepts besides base64
_MAX_MARKS = 32  # entries read from one header, and marks one request sends (the latest): ~3.7 KB

Marks = dict[str, tuple[str, int, int, str]]  # image sha256 hex -> (format, width, height, mac hex)

# per request (each request runs in its own task, so a value never reaches another request):
# the header value it came with (set by the endpoint only when a secret is configured) ...
INCOMING: ContextVar[bytes | None] = ContextVar("vlgate_tier_incoming", default=None)
# ... and the marks of the images this gateway normalized for it, for the forwarder (empty: no header)
OUTGOING: ContextVar[tuple[str, ...]] = ContextVar("vlgate_tier_outgoing", default=())


def receive(value: bytes | None) -> None:
    """At the start of a request on a gateway with a secret: the marks it came with, none to send yet."""
    INCOMING.set(value)
    OUTGOING.set(())


def header_line(marks: tuple[str, ...]) -> bytes:
    """The header line to a backend for a request's marks (the forwarder, when OUTGOING has some)."""
    return _LINE + ", ".join(marks).encode() + b"\r\n"


class TierTrust:
    """Marks this gateway's normalized images, and verifies the marks of the tier in front of it."""

    def __init__(self, secret: str, grid: GridRule) -> None:
        self._key = secret.encode()
        self.grid = grid
        self.passed = 0  # images passed on without normalizing (a verified mark)
        self.rejected = 0  # marks that did not verify (another secret, or forged): normalized instead
        self._warned = False

    def _mac(self, digest: bytes, fmt: str, width: int, height: int) -> str:
        msg = b"%s%s\x00%s\x00%d\x00%d" % (_CONTEXT, digest, fmt.encode(), width, height)
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:_MAC_BYTES].hex()

    def mark(self, results: list[Normalized]) -> None:
        """Marks for this request's normalized images, added to those it already has (a preset pipeline
        normalizes crops after the image)."""
        marks = {m: None for m in OUTGOING.get()}
        for r in results:
            i = r.info
            mac = self._mac(bytes.fromhex(i.sha256), r.format, i.width, i.height)
            marks[f"{i.sha256}.{r.format}.{i.width}x{i.height}.{mac}"] = None
        OUTGOING.set(tuple(marks)[-_MAX_MARKS:])

    def incoming(self) -> Marks | None:
        """This request's marks by image digest: (format, width, height, mac); None when it has none."""
        value = INCOMING.get()
        if not value:
            return None
        marks: Marks = {}
        for entry in value.decode("latin-1").split(",")[:_MAX_MARKS]:
            fields = entry.strip().split(".")
            if len(fields) != 4 or fields[1] not in _MIME or len(fields[0]) != 64 \
                    or len(fields[3]) != 2 * _MAC_BYTES or not fields[3].isascii():
                continue
            w, _, h = fields[2].partition("x")
            if w.isdigit() and h.isdigit() and len(w) <= 5 and len(h) <= 5:
                marks[fields[0].lower()] = (fields[1], int(w), int(h), fields[3].lower())
        return marks or None

    def vouched(self, marks: Marks, sha256: str, size: int, is_b64: bool,
                payload: str, url: str) -> Normalized | None:
        """The image as it goes on when its mark verifies and it fits this gateway's grid, else None.
        `sha256`, `size`: of the decoded bytes; `payload`: the data URL's data (base64)."""
        mark = marks.get(sha256)
        if mark is None:
            return None
        fmt, width, height, mac = mark
        if not hmac.compare_digest(mac, self._mac(bytes.fromhex(sha256), fmt, width, height)):
            self.rejected += 1
            if not self._warned:
                self._warned = True
                log.warning("an image's X-Vlgate-Tier mark did not verify (the tiers' tier_secret differ, or a "
                            "client sent the header): normalizing it as any image (logged once)")
            return None
        # canonical base64 only: llama-server's decoder stops at a character outside the alphabet, where ours
        # skips whitespace and reads the URL-safe alphabet (the same digest, other bytes upstream). Our decoder
        # refuses anything else, so: no such character, padded length, padding last (~40 us for 2 MP)
        if not is_b64 or len(payload) != 4 * ((size + 2) // 3) or not _strict(payload[-8:]) \
                or any(c in payload for c in _LENIENT):
            return None
        if width <= 0 or height <= 0 or self.grid.size(width, height) != (width, height) \
                or not self.grid.fits(width, height):
            return None  # another grid than ours: llama.cpp would resize it; normalize it to our grid
        self.passed += 1
        prefix = f"data:{_MIME[fmt]};base64,"
        if not (url.startswith(prefix) and len(url) == len(prefix) + len(payload)):
            url = prefix + payload
        # as normalizing an image already on the grid would say: its own size is the original
        return Normalized(url, ImageInfo(sha256, width, height, width, height), fmt)


def _strict(tail: str) -> bool:
    """Padding only at the very end (the length and alphabet checks cover the rest)."""
    try:
        binascii.a2b_base64(tail, strict_mode=True)
    except binascii.Error:
        return False
    return True
