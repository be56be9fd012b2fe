"""A tiny random-weight llama text model + LLaVA-style vision projector, generated with `gguf`.

Why: `vlgate up --demo` and the test bed need a real `llama-server` that starts in well under a second
and serves chat (text, images, JSON under a grammar, tool calls) on a 2-core CPU, without downloading
any model. Weights are random (fixed seed), so the text is gibberish, but the shapes of every response
are real.

Design points (see llama.cpp src/llama-vocab.cpp, common/chat.cpp, tools/mtmd/clip.cpp):
- GPT-2-style byte-level BPE vocab with qwen2 pre-tokenization, ChatML control tokens and USER_DEFINED
  `<tool_call>` and Youtu-VL grounding tokens (tinyvocab.py): llama.cpp always parses USER_DEFINED
  tokens as single tokens and always prints them (CONTROL ones are dropped unless `special` is set).
- Qwen2.5's chat template with `<tool_call>` blocks (tinytemplate.py): b11434 reads it as native JSON
  tool calls and builds the tool-call grammar from it.
- A shaped output layer (tinyshape.py): without a grammar the model never stops early
  (completion_tokens == max_tokens, even at high temperature) and writes ASCII; under a grammar it
  closes strings and objects, so `response_format` answers are valid JSON and tool calls well formed;
  with tools in the prompt it answers with a tool call, after a tool result in text. A request
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

from vlgate.tinymodel import shape as tinyshape
from vlgate.tinymodel.template import CHAT_TEMPLATE
from vlgate.tinymodel.vocab import BOS, EOS, GROUNDING_TOKENS, Vocab, tiny_vocab

__all__ = ["CHAT_TEMPLATE", "GROUNDING_TOKENS", "TinyModel", "Vocab", "tiny_vocab", "write_tiny_model"]

VERSION = 3  # bump when the generated content changes (any tiny*.py): the file names carry it
SEED = 1234

N_EMBD, N_LAYER, N_HEAD, N_FF, N_CTX_TRAIN = 64, 2, 4, 128, 2048
V_EMBD, V_LAYER, V_HEAD, V_FF, V_PROJ_HIDDEN = 32, 2, 2, 48, 64
IMAGE_SIZE, PATCH_SIZE = 32, 8


@dataclass(frozen=True)
class TinyModel:
    """Paths of the generated text model and its vision projector (for `-m` and `--mmproj`)."""

    model: Path
    mmproj: Path


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
    vocab = tiny_vocab()
    reserved = tinyshape.RESERVED

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
    w.add_rope_freq_base(tinyshape.ROPE_FREQ_BASE)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(vocab.tokens))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    w.add_bos_token_id(vocab.id(BOS))
    w.add_eos_token_id(vocab.id(EOS))
    w.add_pad_token_id(vocab.id(BOS))
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    w.add_tensor("token_embd.weight", tinyshape.embedding(vocab, rng, N_EMBD))
    for il in range(N_LAYER):
        p = f"blk.{il}"
        m = {name: rand(N_FF if name.startswith("ffn") else N_EMBD, N_EMBD)
             for name in ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up")}
        m["attn_output"], m["ffn_down"] = rand(N_EMBD, N_EMBD), rand(N_EMBD, N_FF)
        for name in ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"):
            m[name][:, :reserved] = 0.0  # random parts never read the reserved dims ...
        for name in ("attn_output", "ffn_down"):
            m[name][:reserved, :] = 0.0  # ... nor write them
        if il == 0:
            tinyshape.lookup_heads(m["attn_q"], m["attn_k"], m["attn_v"], m["attn_output"], N_HEAD)
            tinyshape.tool_gates(m["ffn_gate"], m["ffn_up"], m["ffn_down"])
        w.add_tensor(f"{p}.attn_norm.weight", np.ones(N_EMBD, np.float32))
        for name, tensor in m.items():
            w.add_tensor(f"{p}.{name}.weight", tensor)
        w.add_tensor(f"{p}.ffn_norm.weight", np.ones(N_EMBD, np.float32))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float32))
    w.add_tensor("output.weight", tinyshape.output(vocab, rng, N_EMBD))


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
    # output width = text n_embd; image embeddings look like plain tokens in the reserved dims
    proj, bias = rand(N_EMBD, V_PROJ_HIDDEN), rand(N_EMBD)
    proj[: tinyshape.RESERVED], bias[: tinyshape.RESERVED] = 0.0, 0.0
    bias[tinyshape.DIM_ONE] = bias[tinyshape.DIM_KIND0 + tinyshape.Kind.SPECIAL] = 1.0
    w.add_tensor("mm.2.weight", proj)
    w.add_tensor("mm.2.bias", bias)


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
        print("usage: python -m vlgate.tinymodel.model DIR", file=sys.stderr)
        return 2
    tiny = write_tiny_model(Path(args[0]))
    print(tiny.model)
    print(tiny.mmproj)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
