"""A line's result in OpenAI's output-file shapes, and the token usage a finished batch adds up.

Output file (2xx): `{"id": "batch_req_...", "custom_id", "response": {"status_code", "request_id", "body"},
"error": null}`. Error file: the same with the answer's status and error body, and `error: {code, message}`;
a line that never reached a route (refused by the batch itself: a stream, a background response) has
`response: null`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any

import orjson

from vlgate.gateway.endpoint.internal import Answer
from vlgate.store.base import LineResult


def line_id() -> str:
    return "batch_req_" + secrets.token_hex(12)


def answered(index: int, custom_id: str, answer: Answer) -> LineResult:
    """The result of a line that was sent to its route."""
    request_id = (answer.header(b"x-request-id") or b"").decode("latin-1") or None
    try:
        body: Any = orjson.loads(answer.body) if answer.body else None
    except orjson.JSONDecodeError:
        body = {"error": {"message": answer.body[:1000].decode("utf-8", "replace"), "type": "server_error",
                          "param": None, "code": "invalid_answer"}}
    ok = 200 <= answer.status < 300 and isinstance(body, dict)
    error = None
    if not ok:
        problem = body.get("error") if isinstance(body, dict) else None
        problem = problem if isinstance(problem, dict) else {}
        code = problem.get("code") or problem.get("type") or f"http_{answer.status}"
        error = {"code": str(code), "message": str(problem.get("message") or f"HTTP {answer.status}")}
    line = {"id": line_id(), "custom_id": custom_id,
            "response": {"status_code": answer.status, "request_id": request_id, "body": body}, "error": error}
    return LineResult(index, ok, line)


def refused(index: int, custom_id: str, code: str, message: str) -> LineResult:
    """The result of a line the batch did not run."""
    return LineResult(index, False, {"id": line_id(), "custom_id": custom_id, "response": None,
                                     "error": {"code": code, "message": message}})


class Usage:
    """Tokens of the successful lines, added up page by page, in the Batch object's `usage` shape (chat,
    Responses and embeddings answers each name them their own way)."""

    def __init__(self) -> None:
        self.prompt = self.completion = self.cached = self.reasoning = 0

    def add(self, results: Iterable[LineResult]) -> None:
        for r in results:
            body = (r.result.get("response") or {}).get("body") if r.ok else None
            counts = body.get("usage") if isinstance(body, dict) else None
            if not isinstance(counts, dict):
                continue
            self.prompt += _int(counts.get("input_tokens", counts.get("prompt_tokens")))
            self.completion += _int(counts.get("output_tokens", counts.get("completion_tokens")))
            details = counts.get("input_tokens_details") or counts.get("prompt_tokens_details") or {}
            self.cached += _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
            out_details = counts.get("output_tokens_details") or counts.get("completion_tokens_details") or {}
            self.reasoning += _int(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0

    def object(self) -> dict[str, Any]:
        return {"input_tokens": self.prompt, "input_tokens_details": {"cached_tokens": self.cached},
                "output_tokens": self.completion, "output_tokens_details": {"reasoning_tokens": self.reasoning},
                "total_tokens": self.prompt + self.completion}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
