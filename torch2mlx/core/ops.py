"""Op table: torch functions and tensor methods -> MLX, with the keyword arguments that change name.

Used by the support matrix and by code generation. ``args`` lists only the
keywords a call must rename (``dim`` -> ``axis``); arguments both libraries
take positionally in the same order are left out. ``note`` says what else
differs (return values, layouts, argument order).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class OpMap:
    torch: str  # "torch.cat", "torch.nn.functional.gelu", "torch.Tensor.view"
    mlx: str  # "mlx.core.concatenate", "mlx.nn.gelu", "mlx.core.fast.layer_norm"
    args: dict = field(default_factory=dict)  # torch keyword -> MLX keyword
    note: str = ""

    def rename(self, kwargs: dict) -> dict:
        """torch keyword arguments as MLX spells them."""
        return {self.args.get(k, k): v for k, v in kwargs.items()}


_DIM = {"dim": "axis"}
_REDUCE = {"dim": "axis", "keepdim": "keepdims"}
_F = "torch.nn.functional."
_MX = "mlx.core."

OPS: tuple[OpMap, ...] = (
    # elementwise arithmetic
    *[
        OpMap(f"torch.{t}", _MX + m)
        for t, m in (
            ("add", "add"),
            ("sub", "subtract"),
            ("mul", "multiply"),
            ("div", "divide"),
            ("pow", "power"),
            ("maximum", "maximum"),
            ("minimum", "minimum"),
            ("remainder", "remainder"),
            ("floor_divide", "floor_divide"),
            ("eq", "equal"),
            ("gt", "greater"),
            ("lt", "less"),
            ("exp", "exp"),
            ("log", "log"),
            ("log1p", "log1p"),
            ("sqrt", "sqrt"),
            ("rsqrt", "rsqrt"),
            ("abs", "abs"),
            ("sign", "sign"),
            ("square", "square"),
            ("sin", "sin"),
            ("cos", "cos"),
            ("tanh", "tanh"),
            ("sigmoid", "sigmoid"),
            ("erf", "erf"),
            ("floor", "floor"),
            ("ceil", "ceil"),
            ("isnan", "isnan"),
            ("isinf", "isinf"),
            ("logical_not", "logical_not"),
            ("logaddexp", "logaddexp"),
            ("zeros_like", "zeros_like"),
            ("ones_like", "ones_like"),
            ("neg", "negative"),
            ("reciprocal", "reciprocal"),
            ("ne", "not_equal"),
            ("ge", "greater_equal"),
            ("le", "less_equal"),
        )
    ],
    OpMap("torch.round", _MX + "round", note="same keyword: decimals"),
    OpMap("torch.clamp", _MX + "clip", {"min": "a_min", "max": "a_max"}),
    OpMap("torch.where", _MX + "where", note="condition, x, y are positional in MLX"),
    OpMap("torch.masked_fill", _MX + "where", note="masked_fill(x, mask, v) is where(mask, v, x)"),
    # linear algebra
    OpMap("torch.matmul", _MX + "matmul"),
    OpMap("torch.mm", _MX + "matmul"),
    OpMap("torch.bmm", _MX + "matmul"),
    OpMap("torch.addmm", _MX + "addmm", note="addmm(c, a, b, alpha, beta): the same order, MLX names"),
    OpMap("torch.baddbmm", _MX + "addmm", note="batched: beta * input + alpha * (batch1 @ batch2)"),
    OpMap("torch.einsum", _MX + "einsum"),
    OpMap("torch.outer", _MX + "outer"),
    OpMap("torch.tensordot", _MX + "tensordot", {"dims": "axes"}),
    OpMap("torch.linalg.norm", _MX + "linalg.norm", _REDUCE),
    # reductions
    *[
        OpMap(f"torch.{t}", _MX + m, _REDUCE)
        for t, m in (
            ("sum", "sum"),
            ("mean", "mean"),
            ("amax", "max"),
            ("amin", "min"),
            ("prod", "prod"),
            ("logsumexp", "logsumexp"),
            ("all", "all"),
            ("any", "any"),
            ("argmax", "argmax"),
            ("argmin", "argmin"),
        )
    ],
    OpMap("torch.max", _MX + "max", _REDUCE, note="with dim, torch also returns the indices (mx.argmax)"),
    OpMap("torch.min", _MX + "min", _REDUCE, note="with dim, torch also returns the indices (mx.argmin)"),
    OpMap("torch.var", _MX + "var", {**_REDUCE, "correction": "ddof"}, note="torch defaults to correction=1"),
    OpMap("torch.std", _MX + "std", {**_REDUCE, "correction": "ddof"}, note="torch defaults to correction=1"),
    OpMap("torch.cumsum", _MX + "cumsum", _DIM),
    OpMap("torch.cumprod", _MX + "cumprod", _DIM),
    OpMap("torch.softmax", _MX + "softmax", _DIM),
    # shapes and indexing
    OpMap("torch.cat", _MX + "concatenate", _DIM),
    OpMap("torch.stack", _MX + "stack", _DIM),
    OpMap("torch.split", _MX + "split", _DIM, note="torch takes section sizes, MLX split indices or a count"),
    OpMap("torch.chunk", _MX + "split", _DIM, note="chunk(x, n) is split(x, n)"),
    OpMap("torch.unbind", _MX + "split", note="split into size-1 pieces, each squeezed"),
    OpMap("torch.reshape", _MX + "reshape"),
    OpMap("torch.Tensor.view", _MX + "reshape", note="MLX arrays have no views: a reshape"),
    OpMap("torch.permute", _MX + "transpose", {"dims": "axes"}),
    OpMap("torch.transpose", _MX + "swapaxes", {"dim0": "axis1", "dim1": "axis2"}),
    OpMap("torch.movedim", _MX + "moveaxis"),
    OpMap("torch.flatten", _MX + "flatten", {"start_dim": "start_axis", "end_dim": "end_axis"}),
    OpMap("torch.unflatten", _MX + "unflatten", {"dim": "axis", "sizes": "shape"}),
    OpMap("torch.unsqueeze", _MX + "expand_dims", _DIM),
    OpMap("torch.squeeze", _MX + "squeeze", _DIM),
    OpMap("torch.Tensor.expand", _MX + "broadcast_to", note="-1 keeps a size in torch; MLX needs the size"),
    OpMap("torch.Tensor.repeat", _MX + "tile"),
    OpMap("torch.repeat_interleave", _MX + "repeat", _DIM),
    OpMap("torch.roll", _MX + "roll", note="shifts, dims are positional in MLX (shift, axis)"),
    OpMap("torch.flip", _MX + "flip", {"dims": "axis"}),
    OpMap("torch.tril", _MX + "tril", {"diagonal": "k"}),
    OpMap("torch.triu", _MX + "triu", {"diagonal": "k"}),
    OpMap("torch.diag", _MX + "diag", {"diagonal": "k"}),
    OpMap(
        "torch.gather",
        _MX + "take_along_axis",
        {"dim": "axis", "index": "indices"},
        note="argument order: gather(x, dim, index) is take_along_axis(x, index, axis)",
    ),
    OpMap(
        "torch.index_select",
        _MX + "take",
        {"dim": "axis", "index": "indices"},
        note="argument order: index_select(x, dim, index) is take(x, index, axis)",
    ),
    OpMap("torch.topk", _MX + "topk", _DIM, note="MLX returns the values only, unsorted"),
    OpMap("torch.sort", _MX + "sort", _DIM, note="MLX returns the values only (mx.argsort for indices)"),
    OpMap("torch.argsort", _MX + "argsort", _DIM),
    # creation
    OpMap("torch.zeros", _MX + "zeros", {"size": "shape"}),
    OpMap("torch.ones", _MX + "ones", {"size": "shape"}),
    OpMap("torch.full", _MX + "full", {"size": "shape", "fill_value": "vals"}),
    OpMap("torch.empty", _MX + "zeros", {"size": "shape"}, note="MLX has no uninitialized arrays"),
    OpMap("torch.full_like", _MX + "full", note="full_like(x, v) is full(x.shape, v, dtype=x.dtype)"),
    OpMap("torch.tensor", _MX + "array"),
    OpMap("torch.arange", _MX + "arange", {"end": "stop"}),
    OpMap("torch.linspace", _MX + "linspace", {"end": "stop", "steps": "num"}),
    OpMap("torch.eye", _MX + "eye"),
    OpMap("torch.meshgrid", _MX + "meshgrid", note="torch defaults to indexing='ij', MLX to 'xy'"),
    # neural-network functions
    OpMap(_F + "relu", "mlx.nn.relu"),
    *[
        OpMap(_F + t, m)
        for t, m in (
            ("relu6", "mlx.nn.relu6"),
            ("hardswish", "mlx.nn.hardswish"),
            ("mish", "mlx.nn.mish"),
            ("softsign", "mlx.nn.softsign"),
            ("logsigmoid", "mlx.nn.log_sigmoid"),
            ("sigmoid", _MX + "sigmoid"),
            ("tanh", _MX + "tanh"),
        )
    ],
    OpMap(_F + "hardsigmoid", "mlx.nn.relu6", note="hardsigmoid(x) is relu6(x + 3) / 6"),
    OpMap(_F + "dropout", "mlx.nn.Dropout", note="a no-op at inference (training=False)"),
    OpMap(_F + "normalize", _MX + "linalg.norm", note="x / max(norm(x, p, dim, keepdims), eps)"),
    OpMap(_F + "silu", "mlx.nn.silu"),
    OpMap(_F + "gelu", "mlx.nn.gelu", note="approximate='tanh' is mlx.nn.gelu_approx"),
    OpMap(_F + "leaky_relu", "mlx.nn.leaky_relu"),
    OpMap(_F + "elu", "mlx.nn.elu"),
    OpMap(_F + "softplus", "mlx.nn.softplus", note="torch's beta and threshold are not taken"),
    OpMap(_F + "glu", "mlx.nn.glu", _DIM),
    OpMap(_F + "softmax", _MX + "softmax", _DIM),
    OpMap(_F + "log_softmax", "mlx.nn.log_softmax", _DIM),
    OpMap(
        _F + "layer_norm",
        _MX + "fast.layer_norm",
        {"input": "x"},
        note="normalized_shape is implied (the last axis); eps is required",
    ),
    OpMap(
        _F + "rms_norm",
        _MX + "fast.rms_norm",
        {"input": "x"},
        note="normalized_shape is implied (the last axis); eps is required",
    ),
    OpMap(
        _F + "scaled_dot_product_attention",
        _MX + "fast.scaled_dot_product_attention",
        {"query": "q", "key": "k", "value": "v", "attn_mask": "mask"},
        note="is_causal=True is mask='causal'; scale is required; MLX takes (B, heads, L, D) as torch does",
    ),
    OpMap(_F + "conv1d", _MX + "conv1d", note="channels-last input and weight (see the conv1d rule); add bias"),
    OpMap(_F + "conv2d", _MX + "conv2d", note="channels-last input and weight (see the conv2d rule); add bias"),
    OpMap(_F + "conv3d", _MX + "conv3d", note="channels-last input and weight (see the conv3d rule); add bias"),
    OpMap(_F + "conv_transpose2d", _MX + "conv_transpose2d", note="channels-last; weight as conv_transpose2d"),
    *[
        OpMap(f"{_F}{k}_pool{d}d", f"mlx.nn.{c}Pool{d}d", note="a layer in MLX; channels-last input")
        for k, c in (("max", "Max"), ("avg", "Avg"))
        for d in (1, 2, 3)
    ],
    *[
        OpMap(f"{_F}adaptive_{k}_pool{d}d", _MX + m, note="output size 1: a reduction over the spatial axes")
        for k, m in (("avg", "mean"), ("max", "max"))
        for d in (1, 2, 3)
    ],
    OpMap(_F + "interpolate", "mlx.nn.Upsample", note="by scale_factor; channels-last; bilinear is mode='linear'"),
    OpMap(_F + "linear", _MX + "addmm", note="linear(x, w, b) is addmm(b, x, w.T)"),
    OpMap(_F + "embedding", _MX + "take", note="embedding(ids, w) is take(w, ids, axis=0)"),
    OpMap(
        _F + "pad",
        _MX + "pad",
        {"pad": "pad_width", "value": "constant_values"},
        note="torch lists (before, after) pairs from the last axis backwards; mode 'replicate' is 'edge'",
    ),
)

_BY_TORCH = {o.torch: o for o in OPS}
if len(_BY_TORCH) != len(OPS):
    raise RuntimeError("two op table entries for one torch op")


def get(torch_name: str) -> OpMap | None:
    return _BY_TORCH.get(torch_name)
