"""Layout rules: how a torch tensor becomes an MLX tensor, forward and reverse (numpy only).

A rule maps one or more source arrays to one output array. Every rule can be
applied to a block of output rows (a slice along axis 0) from matching
source slices, which is how the stream converts a tensor larger than memory:
``source_slices`` says which slice of each source a block of output rows
needs, ``apply`` computes the block.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


@dataclass(frozen=True)
class Rule:
    name: str
    doc: str
    reverse_name: str | None = None   # the rule that undoes this one (MLX -> torch)

    n_sources: int = 1

    def check(self, shapes: list[tuple[int, ...]], args: dict) -> str | None:
        """Why this rule cannot apply to sources of these shapes (None when it can)."""
        return None

    def out_shape(self, shapes: list[tuple[int, ...]], args: dict) -> tuple[int, ...]:
        return tuple(shapes[0])

    def source_slices(self, r0: int, r1: int, shapes, args) -> list[tuple[int, int, int]]:
        """(axis, start, stop) of each source needed for output rows [r0, r1)."""
        return [(0, r0, r1) for _ in shapes]

    def apply(self, blocks: list[np.ndarray], args: dict, r0: int = 0) -> np.ndarray:
        """Output rows starting at ``r0`` from the source blocks ``source_slices`` named."""
        return blocks[0]

    @property
    def elementwise(self) -> bool:
        """Output element i is a function of source element i (blocks may cut anywhere)."""
        return False

    def forward(self, arrays: list[np.ndarray], args: dict | None = None) -> np.ndarray:
        """Apply the rule to whole arrays."""
        args = args or {}
        shapes = [a.shape for a in arrays]
        rows = self.out_shape(shapes, args)
        if not rows:
            return self.apply([a.reshape(()) for a in arrays], args)
        idx = []
        for arr, (axis, s, e) in zip(arrays, self.source_slices(0, rows[0], shapes, args)):
            sl = [slice(None)] * arr.ndim
            if arr.ndim:
                sl[axis] = slice(s, e)
            idx.append(arr[tuple(sl)])
        return self.apply(idx, args)


class Identity(Rule):
    @property
    def elementwise(self) -> bool:
        return True


@dataclass(frozen=True)
class Permute(Rule):
    perm: tuple[int, ...] = ()

    def check(self, shapes, args):
        if len(shapes[0]) != len(self.perm):
            return f"{self.name} needs a {len(self.perm)}-D tensor, got shape {list(shapes[0])}"
        return None

    def out_shape(self, shapes, args):
        return tuple(shapes[0][p] for p in self.perm)

    def source_slices(self, r0, r1, shapes, args):
        return [(self.perm[0], r0, r1)]

    def apply(self, blocks, args, r0=0):
        return np.ascontiguousarray(blocks[0].transpose(self.perm))


@dataclass(frozen=True)
class Split(Rule):
    """Output ``args['index']`` of ``args['parts']`` equal slices along axis 0 (MHA in_proj)."""

    def check(self, shapes, args):
        n, parts = shapes[0][0] if shapes[0] else 0, args.get("parts", 0)
        if not shapes[0] or parts <= 0 or n % parts or not 0 <= args.get("index", -1) < parts:
            return f"cannot split shape {list(shapes[0])} into {parts} equal parts"
        return None

    def out_shape(self, shapes, args):
        return (shapes[0][0] // args["parts"],) + tuple(shapes[0][1:])

    def source_slices(self, r0, r1, shapes, args):
        base = args["index"] * (shapes[0][0] // args["parts"])
        return [(0, base + r0, base + r1)]


@dataclass(frozen=True)
class Concat(Rule):
    """Sources stacked along axis 0 (reverse of split)."""

    n_sources: int = -1

    def check(self, shapes, args):
        if len({tuple(s[1:]) for s in shapes}) != 1 or any(not s for s in shapes):
            return f"cannot concatenate shapes {[list(s) for s in shapes]} along axis 0"
        return None

    def out_shape(self, shapes, args):
        return (sum(s[0] for s in shapes),) + tuple(shapes[0][1:])

    def source_slices(self, r0, r1, shapes, args):
        out, base = [], 0
        for s in shapes:
            lo, hi = max(r0 - base, 0), min(r1 - base, s[0])
            out.append((0, lo, max(lo, hi)))
            base += s[0]
        return out

    def apply(self, blocks, args, r0=0):
        return np.concatenate(blocks, axis=0)


@dataclass(frozen=True)
class Sum(Rule):
    """Elementwise sum of same-shaped sources (torch's two LSTM/RNN biases -> MLX's one)."""

    n_sources: int = -1

    def check(self, shapes, args):
        if len({tuple(s) for s in shapes}) != 1:
            return f"cannot sum differently shaped tensors {[list(s) for s in shapes]}"
        return None

    def apply(self, blocks, args, r0=0):
        # Sum in the sources' own dtype, left to right, as torch's b_ih + b_hh does.
        out = blocks[0].copy()
        for b in blocks[1:]:
            out += b
        return out

    @property
    def elementwise(self) -> bool:
        return True


@dataclass(frozen=True)
class GRUInputBias(Rule):
    """MLX GRU ``b`` = torch ``b_ih + [b_hh_r, b_hh_z, 0]``; b_hh's new-gate third becomes ``bhn``."""

    n_sources: int = 2

    def check(self, shapes, args):
        if len(shapes) != 2 or shapes[0] != shapes[1] or len(shapes[0]) != 1 or shapes[0][0] % 3:
            return f"GRU biases must be two equal 1-D tensors of 3*H, got {[list(s) for s in shapes]}"
        return None

    def apply(self, blocks, args, r0=0):
        out = blocks[0].copy()
        rows = np.arange(r0, r0 + len(out))
        keep = rows < 2 * args["hidden"]
        out[keep] += blocks[1][keep]
        return out

    @property
    def elementwise(self) -> bool:
        return True


_PERMS = {
    "conv1d": ((0, 2, 1), "torch Conv1d (O, I, K) -> MLX (O, K, I)"),
    "conv2d": ((0, 2, 3, 1), "torch Conv2d (O, I, H, W) -> MLX (O, H, W, I)"),
    "conv3d": ((0, 2, 3, 4, 1), "torch Conv3d (O, I, D, H, W) -> MLX (O, D, H, W, I)"),
    "conv_transpose1d": ((1, 2, 0), "torch ConvTranspose1d (I, O, K) -> MLX (O, K, I)"),
    "conv_transpose2d": ((1, 2, 3, 0), "torch ConvTranspose2d (I, O, H, W) -> MLX (O, H, W, I)"),
    "conv_transpose3d": ((1, 2, 3, 4, 0), "torch ConvTranspose3d (I, O, D, H, W) -> MLX (O, D, H, W, I)"),
    "linear_transposed": ((1, 0), "HF Conv1D (in, out) -> MLX Linear (out, in)"),
}

RULES: dict[str, Rule] = {"identity": Identity("identity", "unchanged", "identity")}
for _name, (_perm, _doc) in _PERMS.items():
    RULES[_name] = Permute(_name, _doc, _name + ".reverse", perm=_perm)
    RULES[_name + ".reverse"] = Permute(_name + ".reverse", "undo " + _name, _name, perm=_inverse(_perm))
RULES["split"] = Split("split", "one of N equal slices along axis 0 (MHA in_proj -> q/k/v)", "concat")
RULES["concat"] = Concat("concat", "sources stacked along axis 0", "split")
RULES["sum"] = Sum("sum", "elementwise sum of sources (LSTM/RNN b_ih + b_hh)", None)
RULES["gru_input_bias"] = GRUInputBias("gru_input_bias", "GRU b_ih + b_hh with the new-gate third of b_hh left out", None)

# Rules a user may name on the command line (--rule REGEX=RULE).
LAYOUT_RULES = ("identity",) + tuple(_PERMS)


def get(name: str) -> Rule:
    try:
        return RULES[name]
    except KeyError:
        raise KeyError(f"unknown rule {name!r} (known: {', '.join(LAYOUT_RULES)})") from None


def infer(name: str, shape: tuple[int, ...], is_float: bool) -> str | None:
    """Best guess for a tensor with no model information: a 3/4/5-D float ``*.weight`` is a conv."""
    if is_float and name.endswith("weight") and len(shape) in (3, 4, 5):
        return {3: "conv1d", 4: "conv2d", 5: "conv3d"}[len(shape)]
    return None
