"""API keys: `Authorization: Bearer <key>`, compared in constant time, never forwarded or logged."""

from __future__ import annotations

import hashlib
import hmac

from vlgate.errors import APIError


class KeyChecker:
    def __init__(self, keys: list[str]) -> None:
        # compare digests: equal length, so the comparison time says nothing about the key
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: bytes | None) -> None:
        if not self._digests:
            return
        if not authorization:
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.", code="invalid_api_key")
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        digest = hashlib.sha256(token.strip().encode("latin-1")).digest()
        ok = False
        for known in self._digests:  # no early exit: every key is compared
            ok |= hmac.compare_digest(digest, known)
        if scheme.lower() != "bearer" or not ok:
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
