"""Module paths between transformers' names (PEFT's) and the MLX model's (mlx-lm's).

The analyzer's rules kept as data (``analysis/known_rules.json``) say, per architecture, which MLX name each
Linear weight takes; most LLMs keep transformers' names, some do not. Without a base config the names
are kept as they are, and the note says so.
"""

from __future__ import annotations

import json
import os

from ..errors import Torch2MLXError


def base_config(base, adapter_config: dict) -> tuple[dict | None, str | None]:
    """(config.json of the base model, where it came from): ``base`` (a directory or a config dict), else the
    adapter's ``base_model_name_or_path`` when that is a local directory."""
    if isinstance(base, dict):
        return base, "the given config"
    candidates = [os.fspath(base)] if base is not None else []
    named = adapter_config.get("base_model_name_or_path")
    if base is None and isinstance(named, str) and os.path.isdir(named):
        candidates.append(named)
    for d in candidates:
        f = os.path.join(d, "config.json")
        if os.path.isfile(f):
            try:
                with open(f, encoding="utf-8") as fh:
                    return json.load(fh), f
            except (OSError, ValueError) as e:
                raise Torch2MLXError(f"{f}: cannot read ({e})") from None
        if base is not None:
            raise Torch2MLXError(f"{d}: no config.json (base names the model the adapter belongs to)")
    return None, None


def linear_names(config: dict | None) -> dict[str, str] | None:
    """transformers' Linear module pattern (layer indices as ``*``) -> the MLX one, for the architecture
    ``config`` names; None when its rules are not kept as data."""
    from ..analysis import known

    if not isinstance(config, dict):
        return None
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else None
    data = known._data().get(arch) if isinstance(arch, str) else None
    if data is None:
        return None
    out = {}
    for row in data["tensors"].values():
        sources, mlx, rule, layer = row[0], row[1], row[2], row[4]
        if layer == "Linear" and len(sources) == 1 and sources[0].endswith(".weight") and mlx:
            if rule == "identity":
                out[sources[0][: -len(".weight")]] = mlx[: -len(".weight")]
    return out


def mapper(config: dict | None, to: str):
    """``f(path) -> path`` from transformers' names to MLX's (``to="mlx"``) or back, and a note."""
    from ..analysis.known import _fill, pattern

    table = linear_names(config)
    if table is None:
        what = "no base config.json" if config is None else f"no name rules kept for {config.get('architectures')}"
        return (lambda p: p), f"module names kept as they are ({what}; transformers and mlx-lm share most LLMs' names)"
    if to == "torch":
        table = {v: k for k, v in table.items()}
    arch = (config or {}).get("architectures", ["?"])[0]

    def f(path: str) -> str:
        pat = pattern(path)
        if pat not in table:
            raise Torch2MLXError(f"{path}: not a Linear of {arch} with an MLX name")
        nums = [p for p in path.split(".") if p.isdigit()]
        return _fill(table[pat], nums) if "*" in table[pat] else table[pat]

    return f, None
