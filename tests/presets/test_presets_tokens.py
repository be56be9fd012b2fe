"""check_special_tokens against a fake llama-server that follows b11434's tokenizer rules:
/tokenize with parse_special=false does not match CONTROL tokens (llama-vocab.cpp tokenizer_st_partition),
/tokenize pieces and /detokenize always render special tokens, and generated text drops CONTROL tokens
unless the server runs with --special.
"""

from __future__ import annotations

import asyncio
import json

import httpx

from vlgate.presets import TokenCheck, check_special_tokens
from vlgate.presets.tokens import PROBE_TOKENS


class FakeLlama:
    def __init__(self, kind: str = "user_defined", special: bool = False, broken: set[str] = frozenset()):
        self.specials = {tok: 500 + i for i, tok in enumerate(["<ref>", "</ref>", "<box>", "</box>", "<x_0>", "<y_0>"])}
        self.kind = kind
        self.special = special
        self.broken = broken  # tokens whose stored text differs (a bad conversion)
        self.calls: list[str] = []

    def piece(self, tid: int) -> str:
        for tok, i in self.specials.items():
            if i == tid:
                return tok.upper() if tok in self.broken else tok
        return chr(tid - 1000)

    def tokenize(self, content: str, parse_special: bool) -> list[int]:
        ids, i = [], 0
        while i < len(content):
            for tok, tid in self.specials.items():
                if content.startswith(tok, i) and (parse_special or self.kind != "control"):
                    ids.append(tid)
                    i += len(tok)
                    break
            else:
                ids.append(ord(content[i]) + 1000)
                i += 1
        return ids

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request.url.path)
        body = json.loads(request.content) if request.content else {}
        if request.url.path == "/props":
            return httpx.Response(200, json={"build_info": "b11434-test", "eos_token": "<|im_end|>"})
        if request.url.path == "/tokenize":
            ids = self.tokenize(body["content"], body.get("parse_special", True))
            if body.get("with_pieces"):
                return httpx.Response(200, json={"tokens": [{"id": t, "piece": self.piece(t)} for t in ids]})
            return httpx.Response(200, json={"tokens": ids})
        if request.url.path == "/detokenize":
            return httpx.Response(200, json={"content": "".join(self.piece(t) for t in body["tokens"])})
        if request.url.path == "/completion":
            (tid, _bias), = body["logit_bias"]
            shown = self.special or self.kind != "control"
            return httpx.Response(200, json={"content": self.piece(tid) if shown else "", "tokens": [tid]})
        return httpx.Response(404, json={"error": {"code": 404, "message": "File Not Found"}})


def run_check(fake: FakeLlama, **kw) -> TokenCheck:
    async def go() -> TokenCheck:
        async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as client:
            return await check_special_tokens(client, "http://backend:8081/", {"Authorization": "Bearer k"}, **kw)

    return asyncio.run(go())


def test_user_defined_tokens_work_as_is():
    fake = FakeLlama("user_defined")
    check = run_check(fake)
    assert check.ok is True
    assert check.tokens["<box>"] == "user_defined" and check.tokens["<ins>"] == "text"
    assert set(check.tokens) == set(PROBE_TOKENS)
    assert check.launch_args == [] and check.request_fields == {} and check.strip_suffixes == []
    assert check.build_info == "b11434-test"
    assert "/completion" not in fake.calls  # no generation probe needed


def test_control_tokens_without_special_need_the_launch_flag():
    fake = FakeLlama("control", special=False)
    check = run_check(fake)
    assert check.ok is False
    assert check.tokens["<box>"] == "control" and check.tokens["<x_0>"] == "control"
    assert check.launch_args == ["--special"]
    assert check.request_fields == {}
    assert "--special" in check.reason and "<box>" in check.reason
    assert fake.calls.count("/completion") == 1


def test_control_tokens_with_special_work_and_eos_must_be_stripped():
    check = run_check(FakeLlama("control", special=True))
    assert check.ok is True
    assert check.launch_args == []
    assert check.strip_suffixes == ["<|im_end|>"]


def test_control_tokens_without_probe_are_not_confirmed():
    check = run_check(FakeLlama("control", special=True), probe=False)
    assert check.ok is False and "could not be confirmed" in check.reason


def test_vocabulary_mismatch_is_reported():
    check = run_check(FakeLlama("user_defined", broken={"<box>"}))
    assert check.ok is False
    assert check.tokens["<box>"] == "mismatch"
    assert "<box>" in check.reason


def test_backend_without_tokenize_is_unknown():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"code": 404, "message": "File Not Found"}})

    async def go() -> TokenCheck:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await check_special_tokens(client, "http://b", {})

    check = asyncio.run(go())
    assert check.ok is None
    assert check.reason.startswith("cannot check special tokens")
