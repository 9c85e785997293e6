"""``to_gguf(src, out)``: an MLX checkpoint (ours or mlx-lm's, quantized or not) as one llama.cpp GGUF file.

``to_gguf_plan`` plans it (names, types, metadata), ``to_gguf_vocab`` adds the tokenizer, and the
``gguf`` sink (``writers/gguf_file.py``) writes it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ..errors import Torch2MLXError
from ..formats.checkpoint import Checkpoint
from ..formats.data import DataReader
from .options import Options
from .sources import open_source
from .to_gguf_plan import GGUF_TYPES, GGUFPlan, check_gguf_type, hparams, plan


@dataclass
class GGUFResult:
    """What a run to GGUF did; ``report()`` is the text the CLI prints, ``to_dict()`` its JSON."""

    source: str
    out: str | None
    plan: GGUFPlan
    checkpoint: Checkpoint
    dry_run: bool = False
    seconds: float = 0.0
    bytes_out: int = 0
    tokenizer: str = ""
    format: str = "gguf"

    def to_dict(self) -> dict:
        p = self.plan
        return {
            "source": self.source,
            "out": self.out,
            "to": "gguf",
            "dry_run": self.dry_run,
            "architecture": p.arch,
            "gguf_type": p.gguf_type,
            "tensors_in": len(self.checkpoint.entries),
            "tensors_out": len(p.items),
            "bytes_out": self.bytes_out or p.nbytes_out,
            "seconds": round(self.seconds, 3),
            "tokenizer": self.tokenizer,
            "tensors": {i.name: i.record() for i in p.items},
            "skipped": [{"source": n, "why": w} for n, w in p.skipped],
            "warnings": p.warnings,
            "notes": p.notes,
        }

    def report(self) -> str:
        from ..core.sizes import human_bytes
        from ..errors import one_line

        p = self.plan
        hows: dict[str, int] = {}
        for i in p.items:
            hows[i.how or "planned"] = hows.get(i.how or "planned", 0) + 1
        lines = [
            f"{'planned' if self.dry_run else 'wrote'} {len(p.items)} tensors ({p.arch}, {p.gguf_type}) "
            + (f"-> {one_line(str(self.out))}" if self.out else ""),
            f"{human_bytes(self.bytes_out or p.nbytes_out)} out, {self.seconds:.2f} s; "
            + ", ".join(f"{k} {v}" for k, v in sorted(hows.items())),
        ]
        if self.tokenizer:
            lines.append(f"tokenizer: {one_line(self.tokenizer)}")
        worst = [i for i in p.items if i.max_abs]
        if worst:
            w = max(worst, key=lambda i: i.max_rel or 0.0)
            lines.append(
                f"inexact: {len(worst)} tensor(s) rounded or requantized; worst {one_line(w.name)}: "
                f"max abs {w.max_abs:.3g}, max rel {w.max_rel:.3g} (per tensor in --json)"
            )
        lines += [f"skipped: {one_line(n)} ({w})" for n, w in p.skipped[:5]]
        lines += [f"note: {one_line(n)}" for n in p.notes]
        lines += [f"warning: {one_line(w)}" for w in p.warnings]
        return "\n".join(lines)


def to_gguf(
    src,
    out,
    options: Options | None = None,
    *,
    gguf_type: str = "f16",
    format: str = "gguf",
    name: str | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: bool = False,
    **settings,
) -> GGUFResult:
    """Write the MLX checkpoint ``src`` (ours or mlx-lm's, quantized or not) as the GGUF file ``out``.

    ``torch2mlx.stream.to_gguf`` is this function; the CLI's ``t2mlx stream SRC OUT.gguf --to gguf``.

    Args:
        src: an MLX checkpoint directory (config.json names the architecture: llama, mistral, qwen2,
            qwen3, gemma2, gemma3, phi3) with its tokenizer.json.
        out: the ``.gguf`` file to write (a temporary file next to it, renamed when whole).
        gguf_type: f32, f16 (default), bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q6_k, or llama.cpp's K-quant
            mixes q4_k_m / q5_k_m (aliases q4_k / q5_k); 1-D tensors stay F32.
        name: ``general.name`` (default: config.json's ``_name_or_path`` or the directory's name).
        overwrite: replace an existing ``out``.
        dry_run: plan only (names, types, metadata); no tensor data is read.
        settings: ``key``, ``drop_cache`` as for ``convert``; the rest do not apply.
    """
    from . import sinks
    from .to_gguf_vocab import tokenizer_metadata

    opts = Options.resolve(options, settings)
    if opts.quantizing or opts.dtype != "keep" or opts.rules or opts.exclude or opts.strip_prefix:
        raise Torch2MLXError(
            "dtype, rules, exclude, strip_prefix and q_bits/q_recipe do not apply with --to gguf (gguf_type chooses)"
        )
    if opts.zarr_compressor != "none":
        raise Torch2MLXError("zarr_compressor does not apply with --to gguf")
    if opts.target is not None:
        raise Torch2MLXError(f"target {opts.target} does not apply with --to gguf (it writes llama.cpp's layout)")
    if opts.keep:
        raise Torch2MLXError("keep does not apply with --to gguf (its source is an MLX checkpoint)")
    if opts.card is not True:
        raise Torch2MLXError("card does not apply with --to gguf (a GGUF file gets no model card)")
    if not isinstance(gguf_type, str):
        raise Torch2MLXError(f"gguf_type must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    check_gguf_type(gguf_type)
    if not dry_run and (out is None or out == ""):
        raise Torch2MLXError("out is required (or dry_run=True)")
    sink = sinks.sink(format, sinks.GGUF)
    if out:
        out = os.fspath(out)
        if os.path.isdir(out):
            raise Torch2MLXError(f"{out}: is a directory (--to gguf writes one .gguf file)")
        if not out.endswith(".gguf"):
            raise Torch2MLXError(f"{out}: --to gguf writes one file; give it a name ending in .gguf")
        if os.path.exists(out) and not overwrite and not dry_run:
            raise Torch2MLXError(f"{out}: exists; rerun with overwrite to replace it")
    ck, label, _ = open_source(src, opts, False, label="<MLX weights>")
    if out and any(os.path.realpath(f) == os.path.realpath(out) for f in ck.files):
        raise Torch2MLXError(f"{out}: is the source itself; choose another output path")
    with DataReader(drop_cache=opts.drop_cache) as reader:
        p = plan(ck, reader, gguf_type, name)
        tok = tokenizer_metadata(ck.folder, p.arch, int(hparams(ck.config or {})[1]["vocab_size"]))
        p.metadata += tok.metadata
        p.warnings += tok.warnings
        res = GGUFResult(label, None if dry_run else out, p, ck, dry_run=dry_run, tokenizer=tok.describe)
        if dry_run:
            return res
        t0 = time.perf_counter()
        sink.write(sinks.Run(res, opts, out, progress=progress, reader=reader))  # type: ignore[arg-type]
        res.seconds = time.perf_counter() - t0
    return res
