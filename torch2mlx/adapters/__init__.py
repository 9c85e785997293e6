"""``convert_adapter``: LoRA adapters between PEFT and mlx-lm (the work is in ``stream/lora``; here module names
are mapped through the analyzer's rules kept as data). No torch."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import Torch2MLXError
from ..stream.lora.load import Adapter, detect, load

__all__ = ["Adapter", "AdapterResult", "convert_adapter", "detect", "load"]


@dataclass
class AdapterResult:
    """What ``convert_adapter`` wrote: ``report()`` is the text the CLI prints, ``to_dict()`` its JSON."""

    source: str
    out: str
    kind: str  # "peft" or "mlx": what was read
    to: str  # "mlx" or "torch": what was written
    modules: int
    config: dict
    sha256: str  # of the source adapter's files
    notes: list[str] = field(default_factory=list)

    def report(self) -> str:
        frm = {"peft": "PEFT", "mlx": "mlx-lm"}[self.kind]
        dst = {"mlx": "mlx-lm", "torch": "PEFT"}[self.to]
        lines = [f"{self.source} -> {self.out}: {frm} LoRA adapter of {self.modules} module(s) as a {dst} adapter"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "out": self.out,
            "from": self.kind,
            "to": self.to,
            "modules": self.modules,
            "adapter_sha256": self.sha256,
            "config": self.config,
            "notes": self.notes,
        }


def convert_adapter(src, out, *, to: str | None = None, base=None, overwrite: bool = False) -> AdapterResult:
    """Convert a LoRA adapter directory between PEFT and mlx-lm, exactly.

    A PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``/``.bin``) becomes an mlx-lm
    adapter (``adapters.safetensors`` + ``adapter_config.json``) that ``mlx_lm.load(base_mlx, adapter_path=out)``
    loads; an mlx-lm adapter becomes a PEFT one that ``PeftModel.from_pretrained(base, out)`` loads.
    Per-module ranks are zero-padded to mlx-lm's one rank (exact); per-module scales are folded into
    ``lora_b`` (exact for power-of-two ratios, else the rounding is reported in ``notes``); both are kept in
    the config so the way back is bit for bit. DoRA magnitudes carry over (both libraries rescale each
    output row of ``W + s*B@A`` to its magnitude).

    Args:
        src: the adapter directory.
        out: the directory to write (created; must be empty unless ``overwrite``).
        to: ``"mlx"`` or ``"torch"``; default: the other side of what ``src`` is. Giving the side ``src``
            already is refused.
        base: the base model's directory (its config.json) or config dict, to map module names through
            the architecture's rules; default: the adapter's ``base_model_name_or_path`` when it is a local
            directory, else names are kept (a note says so).
        overwrite: replace the files of a non-empty ``out``.

    Returns:
        AdapterResult: what was read and written, the config written and notes (padding, folding, names).

    Raises:
        Torch2MLXError: ``src`` is not an adapter directory, or holds what the other side cannot express
            (modules_to_save towards mlx-lm, embedding or conv LoRA, trained biases, ...): one line saying
            what and why; nothing is written then.

    Example:
        >>> from torch2mlx import convert_adapter
        >>> convert_adapter("./my-peft-adapter", "./my-mlx-adapter")  # doctest: +SKIP
        >>> # mlx_lm.load("./base-mlx", adapter_path="./my-mlx-adapter")
    """
    from ..stream.lora import write
    from . import names

    src = os.fspath(src)
    out = os.fspath(out)
    kind = detect(src)
    if kind is None:
        load(src)  # raises the reason
    assert kind is not None
    want = to or ("mlx" if kind == "peft" else "torch")
    if want not in ("mlx", "torch"):
        raise Torch2MLXError(f"to must be 'mlx' or 'torch', got {to!r}")
    if (kind == "peft") == (want == "torch"):
        raise Torch2MLXError(f"{src}: is already a {'PEFT' if kind == 'peft' else 'mlx-lm'} adapter (to={want!r})")
    if os.path.realpath(src) == os.path.realpath(out):
        raise Torch2MLXError(f"{out}: is the source adapter itself; choose another output directory")
    ad = load(src)
    config, where = names.base_config(base, ad.config)
    rename, note = names.mapper(config, want)
    if want == "mlx":
        written, notes = write.as_mlx_lm(ad, out, rename, overwrite=overwrite)
    else:
        written, notes = write.as_peft(ad, out, rename, overwrite=overwrite)
    if note:
        notes.insert(0, note)
    elif where and config is not None:
        notes.insert(0, f"module names mapped with the rules for {config['architectures'][0]} ({where})")
    return AdapterResult(src, out, kind, want, len(ad.modules), written, ad.sha256, notes)
