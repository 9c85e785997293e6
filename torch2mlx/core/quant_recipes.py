"""Which weights get quantized, at what bits, and the config block mlx-lm reads back.

Pure functions over names, shapes and dtypes: the plan decides quantization
without reading a weight byte. They mirror mlx-lm's ``convert`` (checked
against mlx-lm 0.32):

- mlx-lm quantizes every module that has ``to_quantized`` (``nn.Linear``,
  ``nn.Embedding``, MoE ``SwitchLinear``, MLA ``MultiLinear``) whose
  ``weight.shape[-1]`` divides by the *default* group size; only the module's
  ``weight`` is quantized, a Linear's ``bias`` is kept as is. It stores
  ``<p>.weight`` (uint32), ``<p>.scales`` and ``<p>.biases``.
- ``config["quantization"] = {"group_size": g, "bits": b, "mode": "affine"}``,
  plus ``config["quantization"][<module path>] = {...}`` for every layer a
  per-layer predicate (a ``mixed_*`` recipe) returned parameters for;
  ``config["quantization_config"]`` is the same block. At load time mlx-lm
  uses a per-layer entry when there is one, else infers bits/group size from
  the shapes of ``<p>.weight`` and ``<p>.scales``, and leaves a module without
  ``<p>.scales`` unquantized.

Model-specific ``quant_predicate``s of some mlx-lm models (e.g. Qwen3-MoE
router gates at 8 bits) are not reproduced here; a ``Recipe.per_layer``
callable can express them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Union

from . import dtypes
from .dtypes import DType

DEFAULT_GROUP_SIZE = 64
DEFAULT_BITS = 4

# MLX / mlx-lm module classes with ``to_quantized``, and torch classes that become
# one of them (HF's GPT-2 ``Conv1D`` is a transposed Linear).
QUANTIZABLE_MODULES = frozenset(
    {
        "Linear",
        "Embedding",
        "SwitchLinear",
        "MultiLinear",
        "NonDynamicallyQuantizableLinear",
        "Conv1D",
    }
)


@dataclass(frozen=True)
class QuantSpec:
    """How one module is quantized; ``as_config()`` is its entry in mlx-lm's config."""

    group_size: int = DEFAULT_GROUP_SIZE
    bits: int = DEFAULT_BITS
    mode: str = "affine"

    def as_config(self) -> dict:
        return {"group_size": self.group_size, "bits": self.bits, "mode": self.mode}


# A per-layer rule: module path -> QuantSpec (recorded in the config), True (the
# default, not recorded) or False (kept in float).
PerLayer = Callable[[str], Union[QuantSpec, bool]]


@dataclass(frozen=True)
class Recipe:
    """A default spec plus an optional per-layer rule, as mlx-lm's ``quant_predicate``."""

    default: QuantSpec = QuantSpec()
    per_layer: PerLayer | None = None
    name: str = "uniform"


def module_path(name: str) -> str | None:
    """``a.b.weight`` -> ``a.b`` (a bare ``weight``: the root module, ``""``); None for other tensors."""
    if name == "weight":
        return ""
    return name[: -len(".weight")] if name.endswith(".weight") else None


# mlx-lm's MoE models stack per-expert weights into one SwitchLinear per projection
# when they load (their ``sanitize``): ``<p>.experts.<e>.<proj>`` becomes
# ``<p>.switch_mlp.<proj>``, with Mixtral's w1/w2/w3 renamed gate/down/up_proj.
_EXPERT = re.compile(r"^(.+)\.experts\.\d+\.([^.]+)$")
_MIXTRAL_PROJ = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}


def loaded_module_path(path: str) -> str:
    """The path mlx-lm's model gives module ``path`` once loaded (recipes and config entries use it)."""
    m = _EXPERT.match(path)
    if m is None:
        return path
    return f"{m[1]}.switch_mlp.{_MIXTRAL_PROJ.get(m[2], m[2])}"


def is_quantizable(
    name: str,
    shape: tuple[int, ...],
    dtype: DType | str,
    module_type: str | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> bool:
    """mlx-lm's default selection for one tensor.

    ``module_type`` is the class name of the owning module when known (the
    analyzer knows it). Without it, a 2-D float ``.weight`` is taken for a Linear
    or an Embedding (their weights are the only 2-D weights in common models); a
    3-D weight qualifies only when the caller says it is a ``SwitchLinear``
    (it could as well be a Conv1d).
    """
    dt = dtypes.get(dtype) if isinstance(dtype, str) else dtype
    if module_path(name) is None or not dt.is_float or not shape or shape[-1] % group_size:
        return False
    if module_type is not None:
        return module_type in QUANTIZABLE_MODULES
    return len(shape) == 2


def decide(
    name: str, shape: tuple[int, ...], dtype: DType | str, recipe: Recipe = Recipe(), module_type: str | None = None
) -> tuple[QuantSpec | None, bool]:
    """(spec or None to keep, whether the spec is a per-layer config entry) for one tensor."""
    if not is_quantizable(name, shape, dtype, module_type, recipe.default.group_size):
        return None, False
    choice: QuantSpec | bool = True
    if recipe.per_layer:
        path = module_path(name)
        assert path is not None  # is_quantizable refused every tensor outside a module
        choice = recipe.per_layer(loaded_module_path(path))
    if choice is False:
        return None, False
    spec, explicit = (recipe.default, False) if choice is True else (choice, True)
    if shape[-1] % spec.group_size:
        # mlx-lm checks only the default group size and would fail in mx.quantize.
        return None, False
    return spec, explicit


def quantization_config(recipe: Recipe, explicit: dict[str, QuantSpec]) -> dict:
    """The ``quantization`` block: default spec plus ``{module path: spec}`` entries."""
    block = recipe.default.as_config()
    for path, spec in explicit.items():
        block[path] = spec.as_config()
    return block


def with_quantization(config: dict, block: dict) -> dict:
    """A copy of ``config`` carrying ``block`` as ``quantization`` and ``quantization_config``."""
    out = dict(config)
    out["quantization"] = block
    out["quantization_config"] = dict(block)
    return out


# ---- mlx-lm's mixed_* recipes ----------------------------------------------------

MIXED_RECIPES = {  # name -> (low bits, high bits)
    "mixed_2_6": (2, 6),
    "mixed_3_4": (3, 4),
    "mixed_3_6": (3, 6),
    "mixed_4_6": (4, 6),
}


def layer_location(paths: Iterable[str]) -> int:
    """Position of the layer index in module paths, found as mlx-lm does.

    mlx-lm takes the first module whose path contains ``down_proj`` and the first
    all-digit component of that path (``model.layers.3.mlp.down_proj`` -> 2).
    """
    for p in paths:
        if "down_proj" in p:
            parts = p.split(".")
            return next((i for i, k in enumerate(parts) if k.isdigit()), len(parts) - 1)
    raise ValueError("Model does not have expected keys for mixed quant.")


def mixed_recipe(
    name: str, num_layers: int, location: int, group_size: int = DEFAULT_GROUP_SIZE, bits: int | None = None
) -> Recipe:
    """mlx-lm's ``mixed_*`` recipe (after llama.cpp's Q4_K_M choices).

    High bits for ``lm_head`` and for ``v_proj``/``v_a_proj``/``v_b_proj`` and
    ``down_proj`` in the first and last eighth of the layers and every third layer
    between; low bits elsewhere. Every quantized layer gets a config entry. The
    default block records ``bits`` or 4, as mlx-lm's does.
    """
    if name not in MIXED_RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(MIXED_RECIPES)}")
    low, high = MIXED_RECIPES[name]
    low_spec, high_spec = QuantSpec(group_size, low), QuantSpec(group_size, high)

    def per_layer(path: str) -> QuantSpec:
        parts = path.split(".")
        # mlx-lm raises on a non-numeric component there; such a module is no layer.
        index = int(parts[location]) if len(parts) > location and parts[location].isdigit() else 0
        more = index < num_layers // 8 or index >= 7 * num_layers // 8 or (index - num_layers // 8) % 3 == 2
        if more and ("v_proj" in path or "v_a_proj" in path or "v_b_proj" in path or "down_proj" in path):
            return high_spec
        if "lm_head" in path:
            return high_spec
        return low_spec

    return Recipe(QuantSpec(group_size, bits or DEFAULT_BITS), per_layer, name)
