"""Store URLs: which database a URL names, and how to show it without its password."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

POSTGRES_SCHEMES = ("postgresql", "postgres")


def redacted(url: str) -> str:
    """The URL without its password (for errors, logs and the status page)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        userinfo, host = parts.netloc.rsplit("@", 1)
        return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{host}"))
    except ValueError:
        return url.split("@", 1)[-1] if "@" in url else url


def backend_kind(url: str) -> str:
    """sqlite or postgresql (else the URL's scheme, which `open_store` refuses)."""
    scheme = url.split(":", 1)[0].lower()
    return "postgresql" if scheme in POSTGRES_SCHEMES else scheme
