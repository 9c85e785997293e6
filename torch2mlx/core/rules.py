"""Layout rules: how a torch tensor becomes an MLX tensor, forward and reverse (numpy only).

A rule maps one or more source arrays to one output array. Every rule can be
applied to a block of output rows (a slice along axis 0) from matching
source slices, which is how the stream converts a tensor larger than memory:
``source_slices`` says which slice of each source a block of output rows
needs, ``apply`` computes the block.

Most rules only move elements, so they work on the raw bits the stream
carries bfloat16 and float8 in. A rule that computes (``arithmetic``) is
handed values instead: the executor widens such blocks to float32 first.
"""

from __future__ import annotations

import math
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
    reverse_name: str | None = None  # the rule that undoes this one (MLX -> torch)

    n_sources: int = 1

    #: The rule computes with element values (sums, norms), so raw-bit carriers must be widened first.
    arithmetic = False

    def check(self, shapes: list[tuple[int, ...]], args: dict) -> str | None:
        """Why this rule cannot apply to sources of these shapes (None when it can)."""
        return None

    def out_shape(self, shapes: list[tuple[int, ...]], args: dict) -> tuple[int, ...]:
        return tuple(shapes[0])

    def source_slices(self, r0: int, r1: int, shapes, args) -> list[tuple[int, int, int]]:
        """(axis, start, stop) of each source needed for output rows [r0, r1)."""
        return [(0, r0, r1) for _ in shapes]

    def apply(self, blocks: list[np.ndarray], args: dict, r0: int = 0, r1: int | None = None) -> np.ndarray:
        """Output rows ``[r0, r1)`` from the source blocks ``source_slices`` named."""
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
        for arr, (axis, s, e) in zip(arrays, self.source_slices(0, rows[0], shapes, args), strict=True):
            sl = [slice(None)] * arr.ndim
            if arr.ndim:
                sl[axis] = slice(s, e)
            idx.append(arr[tuple(sl)])
        return self.apply(idx, args, 0, rows[0])


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

    def apply(self, blocks, args, r0=0, r1=None):
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

    def apply(self, blocks, args, r0=0, r1=None):
        return np.concatenate(blocks, axis=0)


@dataclass(frozen=True)
class Sum(Rule):
    """Elementwise sum of same-shaped sources (torch's two LSTM/RNN biases -> MLX's one)."""

    n_sources: int = -1
    arithmetic = True

    def check(self, shapes, args):
        if len({tuple(s) for s in shapes}) != 1:
            return f"cannot sum differently shaped tensors {[list(s) for s in shapes]}"
        return None

    def apply(self, blocks, args, r0=0, r1=None):
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
    arithmetic = True

    def check(self, shapes, args):
        if len(shapes) != 2 or shapes[0] != shapes[1] or len(shapes[0]) != 1 or shapes[0][0] % 3:
            return f"GRU biases must be two equal 1-D tensors of 3*H, got {[list(s) for s in shapes]}"
        return None

    def apply(self, blocks, args, r0=0, r1=None):
        out = blocks[0].copy()
        rows = np.arange(r0, r0 + len(out))
        keep = rows < 2 * args["hidden"]
        out[keep] += blocks[1][keep]
        return out

    @property
    def elementwise(self) -> bool:
        return True


@dataclass(frozen=True)
class SumReverse(Rule):
    """Undo ``sum`` into source ``args['index']``: the first gets the whole sum, the others zeros.

    A sum cannot be split back into its terms, but any split with the same
    total computes the same thing (torch adds ``b_ih`` and ``b_hh`` again).
    """

    def apply(self, blocks, args, r0=0, r1=None):
        return blocks[0] if args.get("index", 0) == 0 else np.zeros_like(blocks[0])

    @property
    def elementwise(self) -> bool:
        return True


@dataclass(frozen=True)
class GRUHiddenBias(Rule):
    """torch GRU ``b_hh`` from MLX ``bhn``: zeros for the reset and update gates, then ``bhn``."""

    def check(self, shapes, args):
        if len(shapes[0]) != 1:
            return f"bhn must be 1-D, got shape {list(shapes[0])}"
        return None

    def out_shape(self, shapes, args):
        return (3 * shapes[0][0],)

    def source_slices(self, r0, r1, shapes, args):
        h2 = 2 * shapes[0][0]
        return [(0, max(r0 - h2, 0), max(r1 - h2, 0))]

    def apply(self, blocks, args, r0=0, r1=None):
        n = (r1 if r1 is not None else r0 + len(blocks[0])) - r0
        out = np.zeros((n,), dtype=blocks[0].dtype)
        if len(blocks[0]):
            out[n - len(blocks[0]) :] = blocks[0]
        return out


def _norm_except(v: np.ndarray, dim: int) -> np.ndarray:
    """torch's ``norm_except_dim(v, 2, dim)``: the 2-norm over every axis but ``dim`` (all axes for -1)."""
    axes = tuple(a for a in range(v.ndim) if dim == -1 or a != dim)
    return np.sqrt(np.sum(np.square(v.astype(np.float64)), axis=axes, keepdims=True))


@dataclass(frozen=True)
class WeightNorm(Rule):
    """``weight_norm``'s two tensors (g, v) -> the weight ``v * g / ||v||``, then ``args['layout']``.

    The norm spans whole axes, so every block reads the full ``v`` (weight-normed
    layers are small: a positional convolution, a vocoder's kernels).
    """

    n_sources: int = 2
    arithmetic = True

    def _layout(self, args) -> Rule:
        return RULES[args.get("layout", "identity")]

    def check(self, shapes, args):
        if len(shapes) != 2:
            return "weight_norm needs two sources: g and v"
        g, v = shapes
        dim = args.get("dim", 0)
        want = tuple(1 if dim == -1 or a != dim else n for a, n in enumerate(v))
        if math.prod(g) != math.prod(want):
            return f"g of shape {list(g)} does not fit v of shape {list(v)} with dim={dim}"
        return self._layout(args).check([v], {})

    def out_shape(self, shapes, args):
        return self._layout(args).out_shape([shapes[1]], {})

    def source_slices(self, r0, r1, shapes, args):
        return [(0, 0, s[0]) for s in shapes]

    def apply(self, blocks, args, r0=0, r1=None):
        g, v = blocks
        dim = args.get("dim", 0)
        norm = _norm_except(v, dim)
        w = (v.astype(np.float64) * (g.astype(np.float64).reshape(norm.shape) / norm)).astype(v.dtype)
        out = self._layout(args).forward([w])
        return out[r0:r1] if out.ndim else out


@dataclass(frozen=True)
class WeightNormReverse(Rule):
    """MLX weight -> torch ``weight_norm`` tensor ``args['index']``: 0 is g (the norm), 1 is v (the weight)."""

    arithmetic = True

    def _undo(self, args) -> Rule:
        return RULES[reverse_of(args.get("layout", "identity"))]

    def _torch_weight(self, w: np.ndarray, args) -> np.ndarray:
        return self._undo(args).forward([w])

    def out_shape(self, shapes, args):
        undo = self._undo(args)
        v = undo.out_shape(shapes, {})
        if args.get("index", 1) == 1:
            return v
        dim = args.get("dim", 0)
        return tuple(1 if dim == -1 or a != dim else n for a, n in enumerate(v))

    def source_slices(self, r0, r1, shapes, args):
        return [(0, 0, shapes[0][0])]

    def apply(self, blocks, args, r0=0, r1=None):
        v = self._torch_weight(blocks[0], args)
        out = v if args.get("index", 1) == 1 else _norm_except(v, args.get("dim", 0)).astype(v.dtype)
        return out[r0:r1]


_PERMS = {
    "conv1d": ((0, 2, 1), "torch Conv1d (O, I, K) -> MLX (O, K, I)"),
    "conv2d": ((0, 2, 3, 1), "torch Conv2d (O, I, H, W) -> MLX (O, H, W, I)"),
    "conv3d": ((0, 2, 3, 4, 1), "torch Conv3d (O, I, D, H, W) -> MLX (O, D, H, W, I)"),
    "conv_transpose1d": ((1, 2, 0), "torch ConvTranspose1d (I, O, K) -> MLX (O, K, I)"),
    "conv_transpose2d": ((1, 2, 3, 0), "torch ConvTranspose2d (I, O, H, W) -> MLX (O, H, W, I)"),
    "conv_transpose3d": ((1, 2, 3, 4, 0), "torch ConvTranspose3d (I, O, D, H, W) -> MLX (O, D, H, W, I)"),
    "linear_transposed": ((1, 0), "HF Conv1D (in, out) -> MLX Linear (out, in)"),
    "bilinear": ((0, 2, 1), "torch Bilinear (O, I1, I2) -> MLX Bilinear (O, I2, I1)"),
}

RULES: dict[str, Rule] = {"identity": Identity("identity", "unchanged", "identity")}
for _name, (_perm, _doc) in _PERMS.items():
    RULES[_name] = Permute(_name, _doc, _name + ".reverse", perm=_perm)
    RULES[_name + ".reverse"] = Permute(_name + ".reverse", "undo " + _name, _name, perm=_inverse(_perm))
RULES["split"] = Split("split", "one of N equal slices along axis 0 (MHA in_proj -> q/k/v)", "concat")
RULES["concat"] = Concat("concat", "sources stacked along axis 0", "split")
RULES["sum"] = Sum("sum", "elementwise sum of sources (LSTM/RNN b_ih + b_hh)", "sum.reverse")
RULES["sum.reverse"] = SumReverse("sum.reverse", "undo sum: the whole sum into source 0, zeros into the others", "sum")
RULES["gru_input_bias"] = GRUInputBias(
    "gru_input_bias", "GRU b_ih + b_hh with the new-gate third of b_hh left out", "sum.reverse"
)
RULES["gru_hidden_bias"] = GRUHiddenBias("gru_hidden_bias", "undo GRU bhn: torch b_hh = [0, 0, bhn]", "split")
RULES["weight_norm"] = WeightNorm(
    "weight_norm", "weight_norm (g, v) -> weight v*g/||v||, then a layout rule", "weight_norm.reverse"
)
RULES["weight_norm.reverse"] = WeightNormReverse(
    "weight_norm.reverse", "weight -> weight_norm g (its norm) or v", "weight_norm"
)

# Rules a user may name on the command line (--rule REGEX=RULE): one source, one output, no arguments.
LAYOUT_RULES = ("identity",) + tuple(_PERMS)


def get(name: str) -> Rule:
    try:
        return RULES[name]
    except KeyError:
        raise KeyError(f"unknown rule {name!r} (known: {', '.join(LAYOUT_RULES)})") from None


def reverse_of(name: str) -> str:
    """The rule undoing layout rule ``name`` (each of LAYOUT_RULES has one)."""
    back = get(name).reverse_name
    assert back is not None, f"rule {name!r} has no reverse"
    return back


def infer(name: str, shape: tuple[int, ...], is_float: bool) -> str | None:
    """Best guess for a tensor with no model information: a 3/4/5-D float ``*.weight`` is a conv."""
    if is_float and name.endswith("weight") and len(shape) in (3, 4, 5):
        return {3: "conv1d", 4: "conv2d", 5: "conv3d"}[len(shape)]
    return None


def apply_specs(specs, arrays: dict) -> dict:
    """Whole-array conversion in memory: ``{spec.out: rule(spec.sources)}`` for specs (out, sources, rule, args).

    The stream does the same block by block from files; this is for tensors already in memory.
    """
    return {s.out: get(s.rule).forward([arrays[n] for n in s.sources], dict(s.args)) for s in specs}
