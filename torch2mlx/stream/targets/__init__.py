"""Output targets: which MLX tool the converted directory is laid out for.

``mlx`` (plain MLX names, the default for anything else) and ``mlx-lm`` (causal LMs) are the
converter's own behaviour and have no module. ``mlx-whisper`` and ``mlx-vlm`` each have one,
imported only when chosen or asked, exposing:

- ``matches(config) -> bool``: config.json (a dict) describes a model this target loads;
  ``choose`` asks it when no target is requested.
- ``apply(ck, opts, plan) -> list[str]``: called after planning, before writing. May rename outputs,
  change ops' rules and dtypes, drop ops (recording them in ``plan.dropped``) and re-cut shards;
  returns notes for the report.
- ``config(source_config, opts) -> dict``: the output config.json, given config.json as the plain
  conversion would write it (its ``quantization`` block included when quantizing).
- optional ``source_config(ck) -> dict | None``: a config for a source that has no config.json
  (e.g. OpenAI's Whisper ``.pt`` keeps its dimensions in the pickle); used for ``choose`` and ``config``.
- optional ``options(opts, ck) -> (opts, notes)``: options the plan is made with (called before planning;
  the manifest keeps the options as given, and re-planning from them chooses the same).
- optional ``mismatch(config) -> str``: why ``matches`` said no (default: what config.json describes).
- optional ``sidecars(names, opts) -> list[str]``: which of the source's sidecar file names to copy.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ...errors import Torch2MLXError

TARGETS = ("mlx", "mlx-lm", "mlx-whisper", "mlx-vlm")
MODULES = {"mlx-whisper": "mlx_whisper", "mlx-vlm": "mlx_vlm"}  # target -> module in this package
_DEFAULT_ORDER = ("mlx-whisper", "mlx-vlm")  # asked in this order before the causal-LM check


def module(target: str) -> ModuleType | None:
    """The target's module (imported now), None for mlx/mlx-lm.

    Raises:
        Torch2MLXError: an unknown target, or one whose module is not in this version.
    """
    if target not in TARGETS:
        raise Torch2MLXError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    name = MODULES.get(target)
    if name is None:
        return None
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise Torch2MLXError(f"target {target} is not available in this version of torch2mlx") from None


def _available(target: str) -> ModuleType | None:
    try:
        return module(target)
    except Torch2MLXError:
        return None


def is_causal_lm(config: dict) -> bool:
    archs = config.get("architectures") or []
    return any(isinstance(a, str) and a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def describe(config: dict | None) -> str:
    """What config.json says the model is, for errors."""
    if not config:
        return "no config.json"
    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    kind = config.get("model_type")
    return f"config.json describes {kind or 'an unnamed model type'}" + (f" ({', '.join(archs)})" if archs else "")


def choose(config: dict | None, requested: str | None) -> str:
    """The target: ``requested`` (checked against config.json when it has a module), else chosen from
    config.json: Whisper -> mlx-whisper, vision-language models mlx-vlm loads -> mlx-vlm, causal LMs ->
    mlx-lm, anything else (or no config.json) -> mlx.

    Raises:
        Torch2MLXError: an unknown or unavailable target, or one config.json says does not fit.
    """
    if requested is not None:
        mod = module(requested)
        if mod is not None and config is not None and not mod.matches(config):
            why = getattr(mod, "mismatch", describe)(config)
            raise Torch2MLXError(f"target {requested} does not fit this model: {why}")
        return requested
    if config is None:
        return "mlx"
    for target in _DEFAULT_ORDER:
        mod = _available(target)
        if mod is not None and mod.matches(config):
            return target
    return "mlx-lm" if is_causal_lm(config) else "mlx"


def source_config(ck) -> dict | None:
    """config.json's value, or what a target module reads from a source without one."""
    if ck.config is not None:
        return ck.config
    for target in _DEFAULT_ORDER:
        mod = _available(target)
        found = getattr(mod, "source_config", None)
        cfg = found(ck) if found is not None else None
        if cfg is not None:
            return cfg
    return None
