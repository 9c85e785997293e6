"""Write an ``Adapter`` as mlx-lm's adapter directory or as PEFT's.

mlx-lm has one rank and one scale per adapter; PEFT one per module. Towards mlx-lm, smaller ranks are
padded with zero rows/columns (exact: the extra products are zeros) and a module's own scale is folded
into its ``lora_b`` as ``lora_b * (own / common)`` (exact when that ratio is a power of two; otherwise the
rounding is measured and reported). ``adapter_config.json`` keeps each module's own rank and scale under
``torch2mlx`` (mlx-lm ignores the key), so the way back restores them and the round trip is bit for bit.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from typing import TypeVar

import numpy as np

from ...core.dtypes import DType
from ...errors import Torch2MLXError
from ..plan import Output, layout_shard, render_header
from ..writers.files import os_error, temp_name, write_json_atomic
from .fold import fold
from .load import CONFIG, MLX_FILE, PEFT_FILES, PEFT_PREFIX, UNFOLDED_FILE, Adapter, _pattern_value

T = TypeVar("T")


def save_adapter_file(path: str, tensors: dict[str, tuple[DType, np.ndarray]], metadata: dict) -> None:
    """A whole safetensors file from arrays in memory (adapters are small): temp file, then rename."""
    outs = [Output(name, dt, tuple(arr.shape)) for name, (dt, arr) in tensors.items()]
    ordered = layout_shard(outs)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(render_header(ordered, metadata))
            for o in ordered:
                f.write(
                    np.ascontiguousarray(tensors[o.name][1]).astype(tensors[o.name][0].np_dtype, copy=False).tobytes()
                )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise os_error(path, e) from None


# every file either kind of adapter directory may hold: overwrite removes them all, so no stale one
# (another kind's weights, an unfolded lora_b of an earlier conversion) is read with the new adapter
_ADAPTER_FILES = (CONFIG, MLX_FILE, UNFOLDED_FILE) + PEFT_FILES


def _prepare(out: str, overwrite: bool) -> None:
    if os.path.isfile(out):
        raise Torch2MLXError(f"{out}: is a file; an adapter is written as a directory")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise Torch2MLXError(f"{out}: not empty (rerun with overwrite)")
    try:
        os.makedirs(out, exist_ok=True)
        for name in _ADAPTER_FILES:
            if os.path.isfile(os.path.join(out, name)):
                os.unlink(os.path.join(out, name))
    except OSError as e:
        raise os_error(out, e) from None


def _most_common(values: list[T]) -> T:
    """The most frequent value; the first seen among equals."""
    counts = Counter(values)
    return max(counts, key=lambda v: (counts[v], -values.index(v)))


def as_mlx_lm(ad: Adapter, out: str, rename, *, overwrite: bool = False) -> tuple[dict, list[str]]:
    """mlx-lm's ``adapters.safetensors`` + ``adapter_config.json`` for ``ad``; (config written, notes)."""
    if ad.full:
        saved = sorted({n.rsplit(".", 1)[0] for n in ad.full})
        raise Torch2MLXError(
            f"{ad.path}: modules_to_save ({', '.join(saved)}) are full weights, and mlx-lm's adapter loader "
            "takes only lora_a/lora_b/m: fuse the adapter instead (t2mlx stream BASE OUT --adapter DIR)"
        )
    notes: list[str] = []
    mods = list(ad.modules.values())
    rank = max(m.rank for m in mods)
    scale = _most_common([m.scale for m in mods])
    tensors: dict[str, tuple[DType, np.ndarray]] = {}
    ranks, scales, keys = {}, {}, []
    originals: dict[str, tuple[DType, np.ndarray]] = {}
    padded, folded, worst = 0, [], 0.0
    for m in mods:
        path = rename(m.path)
        keys.append(path)
        a, b = m.a, m.b
        if m.rank < rank:
            ranks[path] = m.rank
            padded += 1
            a = np.concatenate([a, np.zeros((rank - m.rank, a.shape[1]), a.dtype)], axis=0)
            b = np.concatenate([b, np.zeros((b.shape[0], rank - m.rank), b.dtype)], axis=1)
        if m.scale != scale:
            scales[path] = m.scale
            b, err = fold(b, m.dtype, m.scale / scale)
            folded.append(path)
            worst = max(worst, err)
            if err:  # the fold rounded: keep the exact lora_B beside it for the way back
                originals[path + ".lora_b"] = (m.dtype, np.ascontiguousarray(m.b.T))
        tensors[path + ".lora_a"] = (m.dtype, np.ascontiguousarray(a.T))
        tensors[path + ".lora_b"] = (m.dtype, np.ascontiguousarray(b.T))
        if m.magnitude is not None:
            assert m.magnitude_dtype is not None
            tensors[path + ".m"] = (m.magnitude_dtype, m.magnitude)
    if padded:
        notes.append(f"{padded} module(s) of rank below {rank} padded with zeros to mlx-lm's one rank (exact)")
    if folded:
        notes.append(
            f"{len(folded)} module(s) with their own scale (rank_pattern/alpha_pattern/rsLoRA) have it folded "
            f"into lora_b against mlx-lm's one scale {scale:g}: "
            + ("exact (power-of-two ratios)" if worst == 0 else f"largest relative rounding {worst:.3g}")
        )
    config = {
        "fine_tune_type": "dora" if ad.dora else "lora",
        # keys are whole module paths: mlx-lm's per-layer pass (num_layers) matches names inside a layer,
        # its model-wide pass whole paths, so any set of modules is expressed exactly
        "num_layers": len({_layer(k) for k in keys} - {None}) or 1,
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": ad.dropout, "keys": keys},
        "torch2mlx": {"from": ad.kind, "ranks": ranks, "scales": scales, "source_config": ad.config},
    }
    _prepare(out, overwrite)
    save_adapter_file(os.path.join(out, MLX_FILE), tensors, {"format": "mlx"})
    if originals:  # mlx-lm reads only adapters.safetensors
        save_adapter_file(os.path.join(out, UNFOLDED_FILE), originals, {"format": "mlx"})
        notes.append(f"{UNFOLDED_FILE}: the unrounded lora_b of those modules, for an exact way back to PEFT")
    write_json_atomic(os.path.join(out, CONFIG), config)
    return config, notes


def _layer(path: str) -> int | None:
    parts = path.split(".")
    for i, p in enumerate(parts[:-1]):
        if p == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def _alpha_for(scale: float, r: int) -> float:
    """An alpha with ``alpha / r == scale`` exactly in Python floats (PEFT computes its scaling so)."""
    alpha = scale * r
    for _ in range(8):
        if alpha / r == scale:
            break
        alpha = math.nextafter(alpha, math.inf if alpha / r < scale else -math.inf)
    if alpha / r != scale:
        raise Torch2MLXError(f"no lora_alpha gives scale {scale!r} at rank {r} exactly")
    return int(alpha) if alpha == int(alpha) else alpha


def as_peft(ad: Adapter, out: str, rename, *, overwrite: bool = False) -> tuple[dict, list[str]]:
    """PEFT's ``adapter_model.safetensors`` + ``adapter_config.json``; (config written, notes)."""
    notes: list[str] = []
    mods = list(ad.modules.values())
    paths = {m.path: rename(m.path) for m in mods}
    source = (ad.config.get("torch2mlx") or {}).get("source_config")
    same = (
        isinstance(source, dict)
        and (ad.config.get("torch2mlx") or {}).get("from") == "peft"
        and all(_peft_scale(source, paths[m.path], m.rank) == m.scale for m in mods)
    )
    if isinstance(source, dict) and same:
        config = dict(source)  # what the adapter was made from, and still describes it exactly
    else:
        r = _most_common([m.rank for m in mods])
        scale = _most_common([m.scale for m in mods])
        config = {
            "peft_type": "LORA",
            "base_model_name_or_path": None,
            "task_type": None,
            "r": r,
            "lora_alpha": _alpha_for(scale, r),
            "lora_dropout": ad.dropout,
            "target_modules": sorted(paths.values()),
            "rank_pattern": {},
            "alpha_pattern": {},
            "use_rslora": False,
            "use_dora": ad.dora,
            "bias": "none",
            "fan_in_fan_out": False,
            "modules_to_save": None,
            "inference_mode": True,
            "init_lora_weights": True,
        }
        for m in mods:
            p = paths[m.path]
            if m.rank != r:
                config["rank_pattern"]["^" + re.escape(p)] = m.rank
            if m.scale != scale or m.rank != r:
                config["alpha_pattern"]["^" + re.escape(p)] = _alpha_for(m.scale, m.rank)
        if config["rank_pattern"] or config["alpha_pattern"]:
            notes.append("modules with their own rank or scale are listed in rank_pattern / alpha_pattern")
    tensors: dict[str, tuple[DType, np.ndarray]] = {}
    for m in mods:
        key = PEFT_PREFIX + paths[m.path]
        tensors[key + ".lora_A.weight"] = (m.dtype, m.a)
        tensors[key + ".lora_B.weight"] = (m.dtype, m.b)
        if m.magnitude is not None:
            assert m.magnitude_dtype is not None
            tensors[key + ".lora_magnitude_vector"] = (m.magnitude_dtype, m.magnitude)
    _prepare(out, overwrite)
    save_adapter_file(os.path.join(out, "adapter_model.safetensors"), tensors, {"format": "pt"})
    write_json_atomic(os.path.join(out, CONFIG), config)
    return config, notes


def _peft_scale(config: dict, path: str, rank: int) -> float:
    """The scale PEFT gives ``path`` under ``config``."""
    alpha = _pattern_value(config.get("alpha_pattern") or {}, path, config.get("lora_alpha", 8))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
