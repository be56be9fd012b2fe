"""Do Youtu-VL's structure tokens (`<box>`, `<ref>`, `<x_N>` …) reach the client through a backend?

What llama.cpp b11434 does (tools/server, common, src):
- Generated text is rendered by `common_token_to_piece(ctx, tok, accept_special_token(...))`
  (server-context.cpp:4215); `accept_special_token` is `params_base.special || tok in
  task.params.sampling.preserved_tokens` (server-context.cpp:4130-4133). With special=false a token whose
  attribute is CONTROL (or UNKNOWN) renders as "" (src/llama-vocab.cpp:3712-3716); USER_DEFINED and
  NORMAL tokens always render.
- `params.special` is set only by the command-line flag `-sp/--special` (common/arg.cpp:1897-1903,
  default false: common/common.h:564). `/props` does not report it (server-context.cpp:4955-4995).
- The per-request field `preserved_tokens` (server-schema.cpp:341-351) would work on `/completion`,
  but on `/v1/chat/completions` it is overwritten by the chat template's own list
  (server-common.cpp:1442, and 1484-1489 copies request fields only when not already set): no
  per-request fix exists for chat.
- `/tokenize` (`with_pieces`) and `/detokenize` render pieces with special=true (server-context.cpp:5440-5488,
  server-common.cpp:1649-1656, common/common.h:1160-1163), so they show the text of any token; the tell
  is tokenizing with `parse_special: false` (src/llama-vocab.cpp:3295-3301): a CONTROL token is then not
  matched and splits into pieces, a USER_DEFINED one stays a single token.
- With `--special`, EOG tokens are rendered too: the content ends with the EOS text (e.g. `<|im_end|>`),
  which the gateway must strip (`strip_suffixes`).
Hence: USER_DEFINED or plain-text tokens → ok; CONTROL tokens → ok only with `--special` (probed with a
1-token generation forced by `logit_bias`), else the fix is launching with `--special`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

PROBE_TOKENS: tuple[str, ...] = (
    "<ref>", "</ref>", "<box>", "</box>", "<x_0>", "<y_0>", "<x_2047>", "<y_2047>",
    "<ins>", "</ins>", "<mask>", "</mask>", "<depth>", "<person>", "</person>", "<kpt>", "</kpt>", "<v_1>",
)
LAUNCH_FIX = ["--special"]


@dataclass
class TokenCheck:
    """The verdict for one backend."""

    ok: bool | None  # True: structured presets work as is (after request_fields); False: they don't; None: unknown
    reason: str
    tokens: dict[str, str] = field(default_factory=dict)  # token → user_defined | control | text | mismatch
    request_fields: dict[str, Any] = field(default_factory=dict)  # add to each preset request (none exist in b11434)
    launch_args: list[str] = field(default_factory=list)  # llama-server flags that fix it
    strip_suffixes: list[str] = field(default_factory=list)  # trailing text to cut from content
    build_info: str | None = None


async def _post(client: httpx.AsyncClient, url: str, headers: dict, payload: dict) -> Any:
    r = await client.post(url, json=payload, headers=headers)
    r.raise_for_status()
    return r.json()


async def _classify(client: httpx.AsyncClient, base: str, headers: dict, tok: str) -> tuple[str, list[int]]:
    with_special = (await _post(client, f"{base}/tokenize", headers,
                                {"content": tok, "parse_special": True, "with_pieces": True}))["tokens"]
    ids = [t["id"] if isinstance(t, dict) else int(t) for t in with_special]
    text = (await _post(client, f"{base}/detokenize", headers, {"tokens": ids})).get("content", "")
    if text.strip() != tok:  # an SPM vocab may spell plain text with a leading space
        return "mismatch", ids
    if len(ids) != 1:
        return "text", ids  # spelled with ordinary tokens: always printed
    plain = (await _post(client, f"{base}/tokenize", headers, {"content": tok, "parse_special": False}))["tokens"]
    plain_ids = [t["id"] if isinstance(t, dict) else int(t) for t in plain]
    return ("user_defined" if plain_ids == ids else "control"), ids


async def _special_enabled(client: httpx.AsyncClient, base: str, headers: dict, tok_id: int, tok: str) -> bool | None:
    """Force one generated token with logit_bias: it comes back only if the server runs with --special."""
    try:
        r = await _post(client, f"{base}/completion", headers, {
            "prompt": "a", "n_predict": 1, "temperature": 0, "logit_bias": [[tok_id, 100.0]],
            "cache_prompt": False, "return_tokens": True,
        })
    except (httpx.HTTPError, ValueError):
        return None
    if r.get("tokens") and r["tokens"][0] != tok_id:
        return None  # the bias did not win: no verdict
    return r.get("content", "") == tok


async def check_special_tokens(client: httpx.AsyncClient, base_url: str, headers: dict, *,
                               probe: bool = True) -> TokenCheck:
    """Decide whether `<box>`, `<ref>`, `<x_N>` … survive this backend's output (see module doc)."""
    base = base_url.rstrip("/")
    build_info = eos = None
    try:
        r = await client.get(f"{base}/props", headers=headers)
        if r.status_code == 200:
            props = r.json()
            build_info, eos = props.get("build_info"), props.get("eos_token")
    except (httpx.HTTPError, ValueError):
        pass
    kinds: dict[str, str] = {}
    control: list[tuple[str, int]] = []
    try:
        for tok in PROBE_TOKENS:
            kind, ids = await _classify(client, base, headers, tok)
            kinds[tok] = kind
            if kind == "control":
                control.append((tok, ids[0]))
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        return TokenCheck(None, f"cannot check special tokens: /tokenize or /detokenize failed ({exc})",
                          kinds, build_info=build_info)
    bad = [t for t, k in kinds.items() if k == "mismatch"]
    if bad:
        return TokenCheck(False, f"the model's vocabulary does not round-trip {', '.join(bad)}: structured "
                          "presets cannot be parsed from this backend", kinds, build_info=build_info)
    if not control:
        return TokenCheck(True, "structure tokens are user-defined or plain text: they reach the client",
                          kinds, build_info=build_info)
    names = ", ".join(t for t, _ in control)
    enabled = await _special_enabled(client, base, headers, control[0][1], control[0][0]) if probe else None
    strip = [eos] if eos else []
    if enabled:
        return TokenCheck(True, f"{names} are control tokens and the server runs with --special: they reach the "
                          "client (so does the EOS text; strip it)", kinds, strip_suffixes=strip,
                          build_info=build_info)
    why = "without --special" if enabled is False else "and --special could not be confirmed"
    return TokenCheck(False, f"{names} are control tokens, dropped from generated text {why}; structured presets "
                      "need llama-server started with --special (no per-request field keeps them on "
                      "/v1/chat/completions)", kinds, launch_args=list(LAUNCH_FIX), strip_suffixes=strip,
                      build_info=build_info)
