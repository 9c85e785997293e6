"""The tokenizer of an MLX checkpoint as GGUF metadata (``tokenizer.ggml.*``), from its tokenizer.json.

What llama.cpp and transformers' GGUF loader read: the model (``gpt2`` for byte-level BPE, ``llama``
for sentencepiece-style BPE with byte fallback), the tokens in id order, their types (control for
special added tokens, user-defined for the other added ones, byte for ``<0xNN>``), scores, the merges,
and the special token ids, add-BOS/EOS flags and chat template through gguf-py's own ``SpecialVocab``.
Tokens the embedding has beyond the tokenizer are padded as ``[PADn]`` (unused), as convert_hf_to_gguf.py
does. Other tokenizer models (Unigram, WordPiece, WordLevel) are refused: a GGUF without a working
vocabulary would look complete and not run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass, field

from ..errors import Torch2MLXError

# tokenizer.ggml.pre: which pre-tokenizer regex the merges were learned with. llama.cpp identifies it by
# hashing the tokenizer's output (convert_hf_to_gguf.py's get_vocab_base_pre); this names the families'.
_PRE = {"qwen2": "qwen2", "qwen3": "qwen2", "llama": "llama-bpe"}


@dataclass
class Vocab:
    metadata: list[tuple[str, tuple]]
    describe: str
    warnings: list[str] = field(default_factory=list)


class _Collect(logging.Handler):
    def __init__(self, into: list[str]):
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(f"gguf-py: {record.getMessage()}")


@contextlib.contextmanager
def gguf_warnings(into: list[str]):
    """gguf-py's logged warnings (a special token id out of range, ...) into the report, not onto stderr."""
    log = logging.getLogger("gguf")
    h, was = _Collect(into), log.propagate
    log.addHandler(h)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(h)
        log.propagate = was


def _merges(model: dict) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]


def tokenizer_metadata(folder: str | None, arch: str, vocab_size: int) -> Vocab:
    from .to_gguf_plan import gguf_module

    gguf = gguf_module()
    path = os.path.join(folder, "tokenizer.json") if folder else ""
    if not path or not os.path.isfile(path):
        raise Torch2MLXError(
            f"{folder or 'the source'}: no tokenizer.json; a GGUF needs the vocabulary "
            "(llama.cpp reads it from the file)"
        )
    try:
        with open(path, "rb") as f:
            tj = json.loads(f.read())
        model = tj["model"]
        kind = model["type"]
        if kind != "BPE":
            raise Torch2MLXError(f"{path}: a {kind} tokenizer is not written by --to gguf (BPE only)")
        added = {a["content"]: a for a in tj.get("added_tokens") or [] if isinstance(a, dict) and "id" in a}
        by_id: dict[int, str] = {int(i): str(t) for t, i in model["vocab"].items()}
        for t, a in added.items():
            by_id[int(a["id"])] = t
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise Torch2MLXError(f"{path}: unreadable tokenizer ({type(e).__name__}: {e})") from None
    byte_fallback = bool(model.get("byte_fallback"))
    if not byte_fallback and "ByteLevel" not in json.dumps([tj.get("pre_tokenizer"), tj.get("decoder")]):
        # llama.cpp's gpt2 vocabulary is byte-level; a character BPE written as one would mis-tokenize
        raise Torch2MLXError(f"{path}: a BPE tokenizer neither byte-level nor with byte fallback is not written")
    n = vocab_size  # llama.cpp wants one token per embedding row
    beyond = sorted(i for i in by_id if i >= n)
    T = gguf.TokenType
    tokens, types, scores = [], [], []
    byte_tok = re.compile(r"<0x[0-9A-Fa-f]{2}>")
    pads = 0
    for i in range(n):
        t = by_id.get(i)
        if t is None:
            t, ty = f"[PAD{i}]", T.UNUSED
            pads += 1
        elif t in added:
            ty = T.CONTROL if added[t].get("special") else T.USER_DEFINED
        elif byte_fallback and byte_tok.fullmatch(t):
            ty = T.BYTE
        else:
            ty = T.NORMAL
        tokens.append(t)
        types.append(int(ty))
        scores.append(-float(i))  # sentencepiece BPE ranks pieces by score; id order is that rank
    md: list[tuple[str, tuple]] = []
    if byte_fallback:
        md += [("add_tokenizer_model", ("llama",)), ("add_token_scores", (scores,))]
        what = "llama (sentencepiece-style BPE, scores from token order)"
    else:
        pre = _PRE.get(arch, "default")
        md += [("add_tokenizer_model", ("gpt2",)), ("add_tokenizer_pre", (pre,))]
        what = f"gpt2 (byte-level BPE, pre-tokenizer {pre})"
    md += [("add_token_list", (tokens,)), ("add_token_types", (types,))]
    warnings: list[str] = []
    with gguf_warnings(warnings):
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n)
    if not special.merges:
        special.merges = _merges(model)
    for typ in ("bos", "eos"):
        # unsaid, llama.cpp and transformers' loader add BOS to a "llama" vocabulary; say what this tokenizer
        # does (SpecialVocab read its post-processor template and tokenizer_config.json's add_*_token)
        special.add_special_token.setdefault(typ, False)
    md.append(("special_vocab", (special,)))
    if beyond:
        names = ", ".join(repr(by_id[i]) for i in beyond[:3]) + (" ..." if len(beyond) > 3 else "")
        warnings.append(
            f"{len(beyond)} token(s) of tokenizer.json have ids beyond the model's {n} embedding rows "
            f"and are left out: {names}"
        )
    if not byte_fallback and arch not in _PRE:
        warnings.append(
            "tokenizer.ggml.pre written as 'default': llama.cpp may split text before BPE differently "
            "than this tokenizer's pre-tokenizer"
        )
    more = f", {pads} [PADn] up to the vocab size" if pads else ""
    return Vocab(md, f"{what}: {n} tokens, {len(special.merges)} merges{more}", warnings)
