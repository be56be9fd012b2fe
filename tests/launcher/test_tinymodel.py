"""The tiny model + real llama-server test bed: the facts other tests rely on."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import gguf
import httpx
import pytest
from PIL import Image

from support.llama import LlamaServer, port_is_free
from vlgate.tinymodel.model import (
    GROUNDING_TOKENS,
    TinyModel,
    tiny_vocab,
    write_tiny_model,
)
from vlgate.tinymodel.shape import Group, Kind, classify
from vlgate.tinymodel.vocab import byte_symbols, train_merges

CHAT = "/v1/chat/completions"


def png_data_url(size: int = 48) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# ---------------------------------------------------------------- generator (no server)

def test_generation_is_deterministic_and_cached(tmp_path: Path, tiny_model: TinyModel) -> None:
    again = write_tiny_model(tmp_path)
    for a, b in ((again.model, tiny_model.model), (again.mmproj, tiny_model.mmproj)):
        assert a.read_bytes() == b.read_bytes()
    mtime = again.model.stat().st_mtime_ns
    assert write_tiny_model(tmp_path) == again
    assert again.model.stat().st_mtime_ns == mtime  # not rewritten
    assert again.model.stat().st_size < 1_000_000 and again.mmproj.stat().st_size < 200_000


def test_vocab_is_byte_level_bpe(tiny_model: TinyModel) -> None:
    reader = gguf.GGUFReader(tiny_model.model)

    def field(key: str):
        return reader.fields[key].contents()

    vocab = tiny_vocab()
    assert (field("tokenizer.ggml.model"), field("tokenizer.ggml.pre")) == ("gpt2", "qwen2")
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    assert (tokens, types, field("tokenizer.ggml.merges")) == (vocab.tokens, vocab.types, vocab.merges)
    assert tokens[:256] == list(byte_symbols()) and 500 < len(vocab.merges) <= 600
    assert train_merges() == [tuple(m.split(" ")) for m in vocab.merges]  # deterministic
    kind = dict(zip(tokens, types, strict=True))
    assert kind["Ċ"] == kind["Ġcat"] == kind['":'] == gguf.TokenType.NORMAL  # "\n", " cat"
    assert {kind[t] for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")} == {gguf.TokenType.CONTROL}
    assert {kind[t] for t in ("<tool_call>", "</tool_call>", *GROUNDING_TOKENS)} == {gguf.TokenType.USER_DEFINED}
    assert tokens[field("tokenizer.ggml.eos_token_id")] == "<|im_end|>"
    assert field("tokenizer.ggml.add_bos_token") is False


def test_token_kinds_and_groups() -> None:
    """What the shaped output layer keys on (vlgate/tinymodel/shape.py), for a few telling tokens."""
    vocab = tiny_vocab()
    expect = {'"': (Kind.QUOTE, Group.QUOTE), '"}': (Kind.CLOSE, Group.QUOTE_CLOSE), "}": (Kind.CLOSE, Group.CLOSE),
              '":': (Kind.COLON, Group.MIXED), "Ġcat": (Kind.WORD, Group.FREE), "Ċ": (Kind.SPACE, Group.NEWLINE),
              "`": (Kind.SPECIAL, Group.BANNED), "<tool_call>": (Kind.TOOL_OPEN, Group.TOOL_CALL),
              "</tool_call>": (Kind.END_CALL, Group.END_CALL), "<|im_end|>": (Kind.SPECIAL, Group.EOS),
              "<box>": (Kind.SPECIAL, Group.GROUNDING), "<|im_start|>": (Kind.SPECIAL, Group.BANNED)}
    assert {tok: classify(vocab, vocab.id(tok)) for tok in expect} == expect


# ---------------------------------------------------------------- real llama-server

@pytest.mark.slow
def test_health_fast_and_cleanup(llama_server_bin: Path, tiny_model: TinyModel, tmp_path: Path) -> None:
    t0 = time.monotonic()
    with LlamaServer(llama_server_bin, tiny_model.model, log_dir=tmp_path) as server:
        assert time.monotonic() - t0 < 5.0
        assert httpx.get(server.url + "/health").status_code == 200
        proc, port = server.proc, server.port
    assert proc is not None and proc.poll() is not None
    assert port_is_free(port)


@pytest.mark.slow
def test_chat_runs_to_max_tokens(llama_server) -> None:
    """Without a grammar the shaped output layer never picks EOS (nor a special token), even when hot."""
    server = llama_server()
    body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 200}  # the slot holds 256
    for temperature in (0.0, 0.8, 2.0):
        r = httpx.post(server.url + CHAT, json=body | {"temperature": temperature}, timeout=30)
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["usage"]["completion_tokens"] == 200
        assert data["choices"][0]["finish_reason"] == "length"
        content = data["choices"][0]["message"]["content"]
        assert content and content.isascii()


@pytest.mark.slow
def test_stream_ends_with_usage_chunk_then_done(llama_server) -> None:
    server = llama_server()
    body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + CHAT, json=body, timeout=30) as r:
        assert r.status_code == 200
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 5
    chunks = [json.loads(e) for e in events[:-2]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.slow
def test_slots_props_metrics(llama_server) -> None:
    server = llama_server(slots=2)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert len(client.get("/slots").json()) == 2
        assert client.get("/props").json()["total_slots"] == 2
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and "llamacpp:" in metrics.text


@pytest.mark.slow
def test_prompt_over_slot_context_is_400(llama_server) -> None:
    server = llama_server(slots=2, ctx=512)
    body = {"messages": [{"role": "user", "content": "Hello world " * 400}], "max_tokens": 4}
    r = httpx.post(server.url + CHAT, json=body, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "exceed_context_size_error"


@pytest.mark.slow
def test_image_request_with_mmproj(llama_server) -> None:
    server = llama_server(mmproj=True)
    content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": png_data_url()}}]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 6}
    r = httpx.post(server.url + CHAT, json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 6


@pytest.mark.slow
def test_grounding_tokens_round_trip(llama_server) -> None:
    """USER_DEFINED tokens: one token each, printed in detokenized and generated text (logit_bias forces)."""
    server = llama_server()
    text = "<ref>cat</ref><box><x_1><y_15></box>"
    with httpx.Client(base_url=server.url, timeout=30) as client:
        ids = client.post("/tokenize", json={"content": text}).json()["tokens"]
        assert len(ids) == 7
        assert client.post("/detokenize", json={"tokens": ids}).json()["content"] == text
        box = ids[3]
        body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3, "logit_bias": {str(box): 100}}
        assert client.post(CHAT, json=body).json()["choices"][0]["message"]["content"] == "<box>" * 3
