"""API keys: `Authorization: Bearer <key>`, compared in constant time, never forwarded or logged."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from vlgate.config import NamedKey
from vlgate.errors import APIError


def _bearer(authorization: bytes) -> tuple[bool, bytes]:
    """Whether the scheme is Bearer, and the digest of the token (digests have one length, so comparing
    them takes the same time whatever the key)."""
    scheme, _, token = authorization.decode("latin-1").partition(" ")
    return scheme.lower() == "bearer", hashlib.sha256(token.strip().encode("latin-1")).digest()


def bearer_matches(authorization: bytes | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time (the /metrics scrape token)."""
    is_bearer, digest = _bearer(authorization or b"")
    return is_bearer and hmac.compare_digest(digest, hashlib.sha256(token.encode()).digest())


def key_name(key: str) -> str:
    """A plain key's stable name for usage counters: a short hash, never the key."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def credentials(authorization: bytes | None, x_api_key: bytes | None) -> bytes | None:
    """A request's credentials as `Bearer <key>`: `Authorization`, else Anthropic's `x-api-key` (its SDK's way)."""
    if not authorization and x_api_key:
        return b"Bearer " + x_api_key.strip()
    return authorization


def header_credentials(headers: Mapping[str, str]) -> bytes | None:
    """`credentials` from a Starlette request's headers (the GET routes)."""
    return credentials(headers.get("authorization", "").encode("latin-1") or None,
                       headers.get("x-api-key", "").encode("latin-1") or None)


class KeyChecker:
    def __init__(self, keys: Sequence[str | NamedKey]) -> None:
        named = [k if isinstance(k, NamedKey) else NamedKey(name=key_name(k), key=k) for k in keys]
        # compare digests: equal length, so the comparison time says nothing about the key
        self._digests = [hashlib.sha256(k.key.encode()).digest() for k in named]
        self._names = [k.name for k in named]
        self.names = sorted(set(self._names))

    def identify(self, authorization: bytes | None) -> str | None:
        """The name of a valid `Bearer` key, else None (no error: for probes that answer anyone)."""
        try:
            return self.check(authorization) if self._digests and authorization else None
        except APIError:
            return None

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: bytes | None) -> str | None:
        """The key's name (None when no keys are configured); 401 on a missing or wrong key."""
        if not self._digests:
            return None
        if not authorization:
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>').", code="invalid_api_key")
        is_bearer, digest = _bearer(authorization)
        ok = False
        name = None
        for known, known_name in zip(self._digests, self._names):  # no early exit: every key is compared
            match = hmac.compare_digest(digest, known)
            ok |= match
            name = known_name if match else name
        if not is_bearer or not ok:
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        return name
