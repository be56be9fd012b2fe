"""API keys: `Authorization: Bearer <key>`, compared in constant time, never forwarded or logged.

Roles: a key marked `admin: true` sees the fleet (backend URLs, every key's usage) and may use
`/admin`; every other key is a user key and sees only its own usage (secure by default, as
LiteLLM's master key vs virtual keys). With no keys configured everyone is admin: the loopback
default, where the front door's Host check keeps web pages out.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class Access:
    """Who a request is: its key's name (None without keys) and whether it may see the fleet."""

    name: str | None
    admin: bool


OPEN = Access(None, True)  # no keys configured


def admin_refused(what: str) -> APIError:
    return APIError(403, f"{what} needs an admin API key (one marked 'admin: true' in gateway.api_keys).",
                    code="admin_key_required")


class KeyChecker:
    def __init__(self, keys: Sequence[str | NamedKey]) -> None:
        named = [k if isinstance(k, NamedKey) else NamedKey(name=key_name(k), key=k) for k in keys]
        # compare digests: equal length, so the comparison time says nothing about the key
        self._digests = [hashlib.sha256(k.key.encode()).digest() for k in named]
        self._names = [k.name for k in named]
        self._admin = [k.admin for k in named]
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
        return self.access(authorization).name

    def access(self, authorization: bytes | None) -> Access:
        """The key's name and role (`OPEN` when no keys are configured); 401 on a missing or wrong key."""
        if not self._digests:
            return OPEN
        if not authorization:
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>').",
                           code="invalid_api_key")
        is_bearer, digest = _bearer(authorization)
        ok = False
        found = Access(None, False)
        for known, known_name, admin in zip(self._digests, self._names, self._admin, strict=True):  # no early exit
            match = hmac.compare_digest(digest, known)
            ok |= match
            found = Access(known_name, admin) if match else found
        if not is_bearer or not ok:
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        return found

    def identify_access(self, authorization: bytes | None) -> Access | None:
        """`access` without the 401: None for a missing or wrong key (probes answer anyone)."""
        try:
            return self.access(authorization)
        except APIError:
            return None
