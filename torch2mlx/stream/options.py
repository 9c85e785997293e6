"""Conversion options shared by the CLI and the library, with parsing of user-facing strings."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..core import rules as _rules
from ..errors import Torch2MLXError

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
OUT_DTYPES = ("keep", "float16", "bfloat16", "float32")
Q_MODES = ("affine", "mxfp4", "nvfp4", "mxfp8")


def parse_size(text, what: str = "max_shard_size") -> int:
    """'5GB' -> 5_000_000_000, '512MiB' -> 536870912; plain integers are bytes. ``what`` names it in errors."""
    if isinstance(text, int):
        n = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(text).upper())
        if not m or m.group(2) not in _UNITS:
            raise Torch2MLXError(f"{what}: cannot read size {text!r} (use e.g. 5GB, 500MB, 2GiB)")
        n = int(float(m.group(1)) * _UNITS[m.group(2)])
    if n <= 0:
        raise Torch2MLXError(f"{what}: size must be positive, got {text!r}")
    return n


def parse_rule(text: str) -> tuple[re.Pattern, str]:
    """'REGEX=RULE' -> (compiled regex, rule name)."""
    pattern, sep, rule = str(text).rpartition("=")
    if not sep or not pattern:
        raise Torch2MLXError(f"rules: REGEX=RULE expected, got {text!r}")
    if rule not in _rules.LAYOUT_RULES:
        raise Torch2MLXError(f"rules: {text!r}: unknown rule {rule!r} (known: {', '.join(_rules.LAYOUT_RULES)})")
    return _regex(pattern, "rules:"), rule


def _rule_pair(r) -> tuple[re.Pattern, str]:
    """A rule given as 'REGEX=RULE' or as a (regex, rule) pair."""
    if isinstance(r, tuple) and len(r) == 2:
        pattern, rule = r
        return parse_rule(f"{pattern.pattern if isinstance(pattern, re.Pattern) else pattern}={rule}")
    return parse_rule(r)


def _adapter(path, scale, sha256) -> tuple[str | None, float, str | None]:
    """The adapter directory, its scale multiplier and its files' digest (a recorded one must still match)."""
    import math
    import os

    if path is None:
        if scale is not None:
            raise Torch2MLXError(f"adapter_scale {scale} has no effect without adapter")
        return None, 1.0, None
    from .lora.load import detect, load_digest

    path = os.fspath(path)
    if detect(path) is None:
        raise Torch2MLXError(
            f"adapter: {path} is not a LoRA adapter directory (adapter_config.json with "
            "adapter_model.safetensors/.bin (PEFT) or adapters.safetensors (mlx-lm))"
        )
    try:
        scale = 1.0 if scale is None else float(scale)
    except (TypeError, ValueError):
        raise Torch2MLXError(f"adapter_scale must be a number, got {scale!r}") from None
    if not math.isfinite(scale):
        raise Torch2MLXError(f"adapter_scale must be finite, got {scale!r}")
    digest = load_digest(path)
    if sha256 is not None and sha256 != digest:
        raise Torch2MLXError(
            f"adapter: {path} changed since it was recorded (sha256 {digest[:12]}..., was {sha256[:12]}...)"
        )
    return path, scale, digest


def _regex(pattern: str, what: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise Torch2MLXError(f"{what} {pattern!r} is not a valid regular expression ({e})") from None


@dataclass
class Options:
    """Every setting of a conversion: what the manifest records (``to_dict``) and how the run reads and writes.

    Build it with ``Options.make(...)`` from user-facing values (``"5GB"``, ``"REGEX=RULE"``),
    then pass it whole: ``stream.convert(src, out, options=opts)``. ``stream.convert`` and
    ``stream.to_torch`` also take the same names as keywords and build it themselves.
    ``allow_globals`` (pickle globals accepted as inert placeholders), ``zarr_compressor``,
    ``drop_cache`` (drop converted pages from the page cache) and ``card`` (the model card) are run
    settings the manifest does not replay. ``keep`` (regexes) writes tensors the model's rules would drop (recorded only
    when given). ``adapter`` (with ``adapter_scale`` and the adapter files' ``adapter_sha256``)
    is recorded only when given, so other runs' manifests are unchanged.
    """

    dtype: str = "keep"
    max_shard_size: int = 5 * 10**9
    strip_prefix: list[str] = field(default_factory=list)
    exclude: list[re.Pattern] = field(default_factory=list)
    rules: list[tuple[re.Pattern, str]] = field(default_factory=list)
    key: str | None = None
    q_bits: int | None = None
    q_group_size: int = 64
    q_recipe: str | None = None
    q_mode: str = "affine"
    dequantize: bool = False
    allow_globals: tuple[str, ...] = ()
    zarr_compressor: str = "none"
    drop_cache: bool = True
    adapter: str | None = None  # a LoRA adapter directory fused into the weights (PEFT's or mlx-lm's)
    adapter_scale: float = 1.0  # multiplies the adapter's own scale(s)
    adapter_sha256: str | None = None  # of the adapter's files, as read when the options were made
    gguf_scales: str = "float32"  # scales/biases of GGUF blocks repacked to MLX (float32: exact)
    target: str | None = None  # the MLX tool the output is for (stream/targets); None: chosen from config.json
    keep: list[re.Pattern] = field(default_factory=list)  # tensors the model's rules drop, written anyway
    card: bool | str = True  # a model card (naming the library call, or this command); False: none

    @property
    def quantizing(self) -> bool:
        return self.q_bits is not None or self.q_recipe is not None

    def to_dict(self) -> dict:
        """The options as ``make`` takes them (recorded in the manifest, so verify can re-plan)."""
        return (
            {
                "dtype": self.dtype,
                "max_shard_size": self.max_shard_size,
                "strip_prefix": self.strip_prefix,
                "exclude": [p.pattern for p in self.exclude],
                "rules": [f"{p.pattern}={r}" for p, r in self.rules],
                "key": self.key,
                "q_bits": self.q_bits,
                "q_group_size": self.q_group_size if self.quantizing else None,
                "q_recipe": self.q_recipe,
                "q_mode": self.q_mode if self.quantizing else None,
                "dequantize": self.dequantize,
            }
            | (
                # only with an adapter: the manifests of other runs stay byte for byte as before
                {"adapter": self.adapter, "adapter_scale": self.adapter_scale, "adapter_sha256": self.adapter_sha256}
                if self.adapter is not None
                else {}
            )
            | ({"gguf_scales": self.gguf_scales} if self.gguf_scales != "float32" else {})
            | ({"target": self.target} if self.target is not None else {})
            | ({"keep": [p.pattern for p in self.keep]} if self.keep else {})
        )

    @classmethod
    def make(
        cls,
        *,
        dtype="keep",
        max_shard_size="5GB",
        strip_prefix=(),
        exclude=(),
        rules=(),
        key=None,
        q_bits=None,
        q_group_size=None,
        q_recipe=None,
        q_mode=None,
        dequantize=False,
        allow_globals=(),
        zarr_compressor="none",
        drop_cache=True,
        adapter=None,
        adapter_scale=None,
        adapter_sha256=None,
        gguf_scales="float32",
        target=None,
        keep=(),
        card=True,
    ) -> "Options":
        """Build options from user-facing values (strings as the CLI takes them).

        Raises:
            Torch2MLXError: a value out of its choices, naming the parameter (``dtype must be one of ...``);
                ``q_group_size`` without ``q_bits`` or ``q_recipe`` (it would change nothing);
                a ``q_mode`` other than affine with a ``q_recipe`` (mlx-lm's recipes mix affine bit
                widths) or with bits/group size the mode does not have; ``dequantize`` with quantizing.
        """
        from ..core import quant, quant_fp, quant_recipes

        if q_mode not in (None, *Q_MODES):
            raise Torch2MLXError(f"q_mode must be one of {', '.join(Q_MODES)}, got {q_mode!r}")
        if q_mode == "affine" and q_bits is None and q_recipe is None:
            raise Torch2MLXError("q_mode affine has no effect without q_bits or q_recipe")
        if q_mode in quant_fp.MODES:
            if q_recipe is not None:
                raise Torch2MLXError(
                    f"q_recipe {q_recipe} mixes affine bit widths; it does not combine with q_mode {q_mode}"
                )
            gs, bits = quant_fp.MODES[q_mode]
            wrong = [f"q_bits {q_bits}"] if q_bits not in (None, bits) else []
            wrong += [f"q_group_size {q_group_size}"] if q_group_size not in (None, gs) else []
            if wrong:
                verb = "does" if len(wrong) == 1 else "do"
                raise Torch2MLXError(
                    f"q_mode {q_mode} quantizes {bits}-bit codes in groups of {gs}; "
                    f"{' and '.join(wrong)} {verb} not fit"
                )
            q_bits, q_group_size = bits, gs
        if dequantize and (q_bits is not None or q_recipe is not None):
            raise Torch2MLXError("dequantize writes float weights; it does not combine with q_bits/q_recipe/q_mode")

        if dtype not in OUT_DTYPES:
            raise Torch2MLXError(f"dtype must be one of {', '.join(OUT_DTYPES)}, got {dtype!r}")
        if q_bits is not None and q_bits not in quant.BITS:
            raise Torch2MLXError(f"q_bits must be one of {', '.join(map(str, quant.BITS))}, got {q_bits!r}")
        if q_group_size is None:
            q_group_size = 64
        elif q_bits is None and q_recipe is None:
            raise Torch2MLXError(f"q_group_size {q_group_size} has no effect without q_bits or q_recipe")
        if q_group_size not in quant.GROUP_SIZES and q_mode not in quant_fp.MODES:
            raise Torch2MLXError(
                f"q_group_size must be one of {', '.join(map(str, quant.GROUP_SIZES))}, got {q_group_size!r}"
            )
        if q_recipe is not None and q_recipe not in quant_recipes.MIXED_RECIPES:
            raise Torch2MLXError(
                f"q_recipe must be one of {', '.join(sorted(quant_recipes.MIXED_RECIPES))}, got {q_recipe!r}"
            )
        if gguf_scales not in quant.SCALE_DTYPES:
            raise Torch2MLXError(f"gguf_scales must be one of {', '.join(quant.SCALE_DTYPES)}, got {gguf_scales!r}")
        if target is not None:
            from .targets import TARGETS

            if target not in TARGETS:
                raise Torch2MLXError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        if not isinstance(card, (bool, str)):
            raise Torch2MLXError(f"card must be True, False or the command to name, got {type(card).__name__}")
        parsed_rules = [_rule_pair(r) for r in rules]
        adapter, adapter_scale, adapter_sha256 = _adapter(adapter, adapter_scale, adapter_sha256)
        return cls(
            dtype=dtype,
            max_shard_size=parse_size(max_shard_size),
            strip_prefix=[p for p in strip_prefix if p],
            exclude=[x if isinstance(x, re.Pattern) else _regex(x, "exclude:") for x in exclude],
            rules=parsed_rules,
            key=key,
            q_bits=q_bits,
            q_group_size=q_group_size,
            q_recipe=q_recipe,
            q_mode=q_mode or "affine",
            dequantize=bool(dequantize),
            allow_globals=tuple(allow_globals),
            zarr_compressor=zarr_compressor,
            drop_cache=drop_cache,
            adapter=adapter,
            adapter_scale=adapter_scale,
            adapter_sha256=adapter_sha256,
            gguf_scales=gguf_scales,
            target=target,
            keep=[x if isinstance(x, re.Pattern) else _regex(x, "keep:") for x in keep],
            card=card,
        )

    @classmethod
    def resolve(cls, options: "Options | None", settings: dict) -> "Options":
        """``options`` as given, or built from keyword ``settings``; both at once is refused (which would win?)."""
        if options is None:
            return cls.make(**settings)
        if settings:
            raise Torch2MLXError(
                f"give options=Options(...) or keyword settings, not both "
                f"(got options and {', '.join(sorted(settings))})"
            )
        if not isinstance(options, cls):
            raise Torch2MLXError(f"options must be an Options, got {type(options).__name__}")
        return options
