"""Read converted weights back as MLX arrays, flat (for ``load_weights``) or nested (for ``update``)."""

from __future__ import annotations

import json
import os

from ..errors import Torch2MLXError
from ..stream.writers.output_dir import INDEX


def _shards(path: str) -> list[str]:
    """The files holding a conversion's tensors; a directory counts only once its index is written."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise Torch2MLXError(f"{path}: no such file or directory")
    index = os.path.join(path, INDEX)
    if not os.path.isfile(index):
        raise Torch2MLXError(f"{path}: has no {INDEX} (not a conversion, or an unfinished one)")
    try:
        with open(index, "rb") as f:
            weight_map = json.loads(f.read())["weight_map"]
        files = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise Torch2MLXError(f"{index}: unreadable index ({e})") from None
    for f in files:
        if os.path.isabs(f) or ".." in f.replace("\\", "/").split("/") or not os.path.isfile(os.path.join(path, f)):
            raise Torch2MLXError(f"{index}: names shard {f!r}, which is not in {path}")
    return [os.path.join(path, f) for f in files]


def load_converted(path, *, prefix: str = "", nested: bool = False) -> dict:
    """``{name: mx.array}`` of a conversion, ready for ``mlx_module.load_weights``.

    ``torch2mlx.load_converted`` is this function.

    Args:
        path: a ``.safetensors`` / ``.npz`` file or an output directory (all its shards).
        prefix: put before every name (a bare torch ``nn.Sequential`` names its children ``0.``,
            an MLX list of layers ``layers.0.``).
        nested: the nested tree ``mlx_module.update`` takes instead of flat names (see ``to_nested``).

    Returns:
        dict: ``{name: mx.array}`` (or the nested tree).

    Raises:
        Torch2MLXError: no such file, or a directory without weights.

    Example:
        >>> weights = torch2mlx.load_converted("conv.safetensors")  # doctest: +SKIP
        >>> mlx_conv.load_weights(list(weights.items()), strict=True)  # doctest: +SKIP
    """
    import mlx.core as mx

    path = os.fspath(path)
    weights: dict = {}
    for f in _shards(path):
        try:
            got = mx.load(f)
        except (RuntimeError, ValueError) as e:
            raise Torch2MLXError(f"{f}: MLX cannot read it ({e})") from None
        if not isinstance(got, dict):
            raise Torch2MLXError(f"{f}: holds a single array, not named weights")
        weights.update({prefix + k: v for k, v in got.items()})
    return to_nested(weights) if nested else weights


def to_nested(flat: dict):
    """``{"a.0.b": x}`` -> ``{"a": [{"b": x}]}``: dotted names as the dicts and lists of an MLX module tree.

    Integer components become list indices, as ``mlx.utils.tree_unflatten`` makes them.
    """
    from mlx.utils import tree_unflatten

    return tree_unflatten(list(flat.items()))
