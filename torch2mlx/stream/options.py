"""Conversion options shared by the CLI and the library, with parsing of user-facing strings."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import Torch2MLXError
from .. import rules as _rules

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
OUT_DTYPES = ("keep", "float16", "bfloat16", "float32")


def parse_size(text) -> int:
    """'5GB' -> 5_000_000_000, '512MiB' -> 536870912; plain integers are bytes."""
    if isinstance(text, int):
        n = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(text).upper())
        if not m or m.group(2) not in _UNITS:
            raise Torch2MLXError(f"cannot read size {text!r} (use e.g. 5GB, 500MB, 2GiB)")
        n = int(float(m.group(1)) * _UNITS[m.group(2)])
    if n <= 0:
        raise Torch2MLXError(f"size must be positive, got {text!r}")
    return n


def parse_rule(text: str) -> tuple[re.Pattern, str]:
    """'REGEX=RULE' -> (compiled regex, rule name)."""
    pattern, sep, rule = str(text).rpartition("=")
    if not sep or not pattern:
        raise Torch2MLXError(f"--rule needs REGEX=RULE, got {text!r}")
    if rule not in _rules.LAYOUT_RULES:
        raise Torch2MLXError(f"--rule {text!r}: unknown rule {rule!r} (known: {', '.join(_rules.LAYOUT_RULES)})")
    return _regex(pattern, "--rule"), rule


def _regex(pattern: str, what: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise Torch2MLXError(f"{what} {pattern!r} is not a valid regular expression ({e})") from None


@dataclass
class Options:
    dtype: str = "keep"
    max_shard_size: int = 5 * 10**9
    strip_prefix: list[str] = field(default_factory=list)
    exclude: list[re.Pattern] = field(default_factory=list)
    rules: list[tuple[re.Pattern, str]] = field(default_factory=list)
    key: str | None = None

    @classmethod
    def make(cls, *, dtype="keep", max_shard_size="5GB", strip_prefix=(), exclude=(), rules=(), key=None) -> "Options":
        """Build options from user-facing values (strings as the CLI takes them)."""
        if dtype not in OUT_DTYPES:
            raise Torch2MLXError(f"--dtype must be one of {', '.join(OUT_DTYPES)}, got {dtype!r}")
        parsed_rules = []
        for r in rules:
            parsed_rules.append(r if isinstance(r, tuple) else parse_rule(r))
        return cls(dtype=dtype, max_shard_size=parse_size(max_shard_size),
                   strip_prefix=[p for p in strip_prefix if p],
                   exclude=[x if isinstance(x, re.Pattern) else _regex(x, "--exclude") for x in exclude],
                   rules=parsed_rules, key=key)
