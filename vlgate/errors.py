"""`APIError`: an error the gateway answers itself, raised anywhere on the request path.

It carries the status, message and OpenAI's classification (`type`, `param`, `code`); how it looks on
the wire is each API dialect's business (`gateway/apis/<api>/errors.py`), so it is built there only.
"""

from __future__ import annotations

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    501: "not_implemented_error",
    502: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


class APIError(Exception):
    """An error the gateway answers itself; raise it anywhere on the request path."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or error_type(status)
        self.param = param
        self.code = code
        self.headers = headers or {}

    def response_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.status >= 500 or self.status == 429:
            # our own retries already ran: tell the openai SDK not to multiply them
            headers.setdefault("x-should-retry", "false")
        return headers
