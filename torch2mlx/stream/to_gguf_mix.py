"""Which GGML type each matrix of a ``--to gguf`` file gets: one type, or llama.cpp's K-quant mixes.

The mixes follow llama.cpp's ``llama_tensor_get_type`` (src/llama-quant.cpp) for the dense models
``--to gguf`` writes:

- ``q4_k_m`` (``Q4_K_M``): Q4_K, but Q6_K for ``output.weight`` (``token_embd.weight`` when the output
  is tied to it) and for ``attn_v``/``ffn_down`` of the layers ``use_more_bits`` picks -- the first and
  last eighth of the layers and every third layer in between (``i < n/8 or i >= 7n/8 or
  (i - n/8) % 3 == 2``); a fused ``attn_qkv`` (phi3) is Q5_K.
- ``q5_k_m`` (``Q5_K_M``): the same with Q5_K as the base and a fused ``attn_qkv`` Q6_K.
- ``q4_k``/``q5_k``: aliases of ``q4_k_m``/``q5_k_m``, as ``llama-quantize`` takes them.
- ``q6_k``: Q6_K everywhere.

Rows that are not whole super-blocks of 256 fall back as llama.cpp does: Q4_K -> Q5_0, Q5_K -> Q5_1,
Q6_K -> Q8_0 (blocks of 32), and F16 when not even those divide the rows; ``output.weight``
(rows not of 256) is Q8_0 in a mix. Not modelled: llama.cpp's MoE, Falcon and 70B-specific rules.
"""

from __future__ import annotations

import re

# --gguf-type -> (base GGML type, the mix rule's name or None, gguf.LlamaFileType member)
K_TYPES = {
    "q4_k_m": ("Q4_K", "M", "MOSTLY_Q4_K_M"),
    "q4_k": ("Q4_K", "M", "MOSTLY_Q4_K_M"),
    "q5_k_m": ("Q5_K", "M", "MOSTLY_Q5_K_M"),
    "q5_k": ("Q5_K", "M", "MOSTLY_Q5_K_M"),
    "q6_k": ("Q6_K", None, "MOSTLY_Q6_K"),
}
K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")
# llama.cpp's fallback for rows that are not whole super-blocks of 256.
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_LAYER = re.compile(r"^blk\.(\d+)\.")


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def mixed_type(gguf_name: str, gguf_type: str, n_layers: int, output_tied: bool) -> str:
    """The GGML type of matrix ``gguf_name`` before the row-size fallback."""
    base, rule, _ = K_TYPES[gguf_type]
    if rule is None:
        return base
    is_output = gguf_name == "output.weight" or (output_tied and gguf_name == "token_embd.weight")
    if is_output:
        return "Q6_K"
    m = _LAYER.match(gguf_name)
    if m is None:
        return base
    i = int(m.group(1))
    if ".attn_v." in gguf_name or ".ffn_down." in gguf_name:
        return "Q6_K" if use_more_bits(i, n_layers) else base
    if ".attn_qkv." in gguf_name:
        return "Q5_K" if base == "Q4_K" else "Q6_K"
    return base


def fallback(qtype: str, row: int, block_of) -> str:
    """``qtype``, or what llama.cpp writes when ``row`` is not whole blocks of it (``block_of(type)``)."""
    while qtype not in ("F16", "F32") and row % block_of(qtype):
        qtype = FALLBACK.get(qtype, "F16")
    return qtype
