"""A tiny random-weight llama text model + LLaVA-style vision projector, generated with `gguf`.

Why: `vlgate up --demo` and the test bed need a real `llama-server` that starts in well under a second
and serves chat (text and images) on a 2-core CPU, without downloading any model. Weights are random
(fixed seed), so the text is gibberish, but the shapes of every response are real.

Design points (see llama.cpp src/llama-vocab.cpp, tools/mtmd/clip.cpp):
- SentencePiece (`llama`) vocab: <unk>/<s>/</s>, the 256 byte tokens, ChatML control tokens, ASCII
  letters/digits/punctuation and a few "▁word" pieces (with their prefixes, so SPM merges reach them).
- Youtu-VL-style grounding tokens (<ref>, <box>, <x_N>, <y_N>) are USER_DEFINED: llama.cpp always
  parses them as single tokens and always prints them when detokenizing (CONTROL ones are dropped
  unless `special` is set).
- Only NORMAL tokens can be sampled: the residual stream's dimension 0 is a constant (embedding 1.0,
  no layer reads or writes it), so after the final RMSNorm it is large and positive; every non-NORMAL
  token (EOS/EOG, control, byte, user-defined) has only -10 in that column of `output.weight`, i.e. a
  logit near -78 against at most ~+6 for word pieces. Hence generations never stop early
  (completion_tokens == max_tokens, even at high temperature) and are plain ASCII; a request
  `logit_bias` of +100 can still force a grounding token.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

VERSION = 1  # bump when the generated content changes: the file names carry it
SEED = 1234

N_EMBD, N_LAYER, N_HEAD, N_FF, N_CTX_TRAIN = 64, 2, 4, 128, 2048
V_EMBD, V_LAYER, V_HEAD, V_FF, V_PROJ_HIDDEN = 32, 2, 2, 48, 64
IMAGE_SIZE, PATCH_SIZE = 32, 8

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GROUNDING_TOKENS = (
    ["<ref>", "</ref>", "<box>", "</box>"]
    + [f"<x_{i}>" for i in range(16)]
    + [f"<y_{i}>" for i in range(16)]
)
_WORDS = ["the", "a", "is", "of", "and", "to", "in", "cat", "dog", "image", "box", "Hello", "world", "red", "blue"]
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?:;'-()\"/"


@dataclass(frozen=True)
class TinyModel:
    """Paths of the generated text model and its vision projector (for `-m` and `--mmproj`)."""

    model: Path
    mmproj: Path


def tiny_vocab() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types; ids 0/1/2 are <unk>/<s>/</s> as in llama-style SPM vocabs."""
    T = gguf.TokenType
    toks: list[tuple[str, float, int]] = [("<unk>", 0.0, T.UNKNOWN), ("<s>", 0.0, T.CONTROL), ("</s>", 0.0, T.CONTROL)]
    toks += [(f"<0x{b:02X}>", 0.0, T.BYTE) for b in range(256)]
    toks += [("<|im_start|>", 0.0, T.CONTROL), ("<|im_end|>", 0.0, T.CONTROL)]
    toks += [(t, 0.0, T.USER_DEFINED) for t in GROUNDING_TOKENS]
    pieces = ["▁"] + list(_CHARS)
    for word in _WORDS:  # "▁the" needs "▁t", "▁th": SPM only merges adjacent pairs that are tokens
        pieces += ["▁" + word[:i] for i in range(1, len(word) + 1)]
    seen: set[str] = set()
    for p in pieces:
        if p not in seen:
            seen.add(p)
            toks.append((p, float(len(p)), T.NORMAL))  # longer pieces win merges
    return [t for t, _, _ in toks], [s for _, s, _ in toks], [int(k) for _, _, k in toks]


def _write_gguf(path: Path, arch: str, fill: Callable[[gguf.GGUFWriter], None]) -> None:
    """Write via a temp file in the same folder + rename, so a concurrent reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch)
        fill(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fill_text_model(w: gguf.GGUFWriter) -> None:
    rng = np.random.default_rng(SEED)
    tokens, scores, types = tiny_vocab()
    n_vocab = len(tokens)

    def rand(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    w.add_name("vlgate-tiny")
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    # Residual dim 0 is a constant 1.0: the embedding sets it and no layer output writes to it.
    embd = rand(n_vocab, N_EMBD)
    embd[:, 0] = 1.0
    w.add_tensor("token_embd.weight", embd)
    for il in range(N_LAYER):
        p = f"blk.{il}"
        w.add_tensor(f"{p}.attn_norm.weight", np.ones(N_EMBD, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"):  # inputs: never read dim 0
            m = rand(N_FF if name.startswith("ffn") else N_EMBD, N_EMBD)
            m[:, 0] = 0.0
            w.add_tensor(f"{p}.{name}.weight", m)
        for name, n_in in (("attn_output", N_EMBD), ("ffn_down", N_FF)):  # outputs: never write dim 0
            m = rand(N_EMBD, n_in)
            m[0, :] = 0.0
            w.add_tensor(f"{p}.{name}.weight", m)
        w.add_tensor(f"{p}.ffn_norm.weight", np.ones(N_EMBD, np.float32))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float32))
    # After the final RMSNorm, dim 0 is ~7.8 and the rest ~0.16: NORMAL-token logits spread over about
    # +-6 (varied text), while a non-NORMAL row that is only -10 in dim 0 gets a logit of about -78.
    out = rand(n_vocab, N_EMBD, std=1.0)
    banned = np.array(types) != gguf.TokenType.NORMAL
    out[:, 0] = 0.0
    out[banned] = 0.0
    out[banned, 0] = -10.0
    w.add_tensor("output.weight", out)


def _fill_mmproj(w: gguf.GGUFWriter) -> None:
    rng = np.random.default_rng(SEED + 1)

    def rand(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    n_pos = (IMAGE_SIZE // PATCH_SIZE) ** 2 + 1  # patches + class token
    w.add_name("vlgate-tiny-mmproj")
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.embedding_length", V_EMBD)
    w.add_uint32("clip.vision.feed_forward_length", V_FF)
    w.add_uint32("clip.vision.block_count", V_LAYER)  # the llava graph runs layers 0..n-2: need >= 2
    w.add_uint32("clip.vision.projection_dim", N_EMBD)
    w.add_uint32("clip.vision.attention.head_count", V_HEAD)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    w.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    w.add_uint32("clip.vision.patch_size", PATCH_SIZE)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    w.add_tensor("v.patch_embd.weight", rand(V_EMBD, 3, PATCH_SIZE, PATCH_SIZE).astype(np.float16))
    w.add_tensor("v.patch_embd.bias", rand(V_EMBD))
    w.add_tensor("v.class_embd", rand(V_EMBD))
    w.add_tensor("v.position_embd.weight", rand(n_pos, V_EMBD))
    w.add_tensor("v.pre_ln.weight", np.ones(V_EMBD, np.float32))
    w.add_tensor("v.pre_ln.bias", np.zeros(V_EMBD, np.float32))
    for il in range(V_LAYER):
        p = f"v.blk.{il}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(f"{p}.{name}.weight", rand(V_EMBD, V_EMBD))
            w.add_tensor(f"{p}.{name}.bias", rand(V_EMBD))
        for name in ("ln1", "ln2"):
            w.add_tensor(f"{p}.{name}.weight", np.ones(V_EMBD, np.float32))
            w.add_tensor(f"{p}.{name}.bias", np.zeros(V_EMBD, np.float32))
        # V_FF != V_EMBD, else clip.cpp takes ffn_up/ffn_down for a legacy swapped export
        w.add_tensor(f"{p}.ffn_up.weight", rand(V_FF, V_EMBD))
        w.add_tensor(f"{p}.ffn_up.bias", rand(V_FF))
        w.add_tensor(f"{p}.ffn_down.weight", rand(V_EMBD, V_FF))
        w.add_tensor(f"{p}.ffn_down.bias", rand(V_EMBD))
    w.add_tensor("mm.0.weight", rand(V_PROJ_HIDDEN, V_EMBD))
    w.add_tensor("mm.0.bias", rand(V_PROJ_HIDDEN))
    w.add_tensor("mm.2.weight", rand(N_EMBD, V_PROJ_HIDDEN))  # output width = text n_embd
    w.add_tensor("mm.2.bias", rand(N_EMBD))


def write_tiny_model(directory: Path) -> TinyModel:
    """Write (or reuse, when this VERSION's files exist) the tiny model pair under `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tiny = TinyModel(
        model=directory / f"vlgate-tiny-v{VERSION}.gguf",
        mmproj=directory / f"vlgate-tiny-v{VERSION}-mmproj.gguf",
    )
    if not tiny.model.exists():
        _write_gguf(tiny.model, "llama", _fill_text_model)
    if not tiny.mmproj.exists():
        _write_gguf(tiny.mmproj, "clip", _fill_mmproj)
    return tiny


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m vlgate.launcher.tinymodel DIR", file=sys.stderr)
        return 2
    tiny = write_tiny_model(Path(args[0]))
    print(tiny.model)
    print(tiny.mmproj)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
