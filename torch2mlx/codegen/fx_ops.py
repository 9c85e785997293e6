"""fx ``call_function`` / ``call_method`` nodes as MLX expressions.

The MLX function and the keyword renames (``dim`` -> ``axis``, ``keepdim`` ->
``keepdims``, ...) come from the op table, ``torch2mlx.core.ops``; this module adds
what a translation needs beyond it: torch's parameter order (to bind positional
arguments), which arguments MLX takes positionally, and the ops whose results or
argument order differ (the table's notes). Python operators, ``getattr`` on
tensors and the tensor methods that are no op at all (``.contiguous()``,
``.size()``, ``.to(dtype)``) are handled here too.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable

from ..core import ops
from .nodes import Alias, Out, Untranslated, Val

_REQ = object()
# torch keywords with no MLX meaning: where a tensor lives, how it is stored, autograd, in-place flags.
_IGNORED = {
    "device",
    "layout",
    "pin_memory",
    "requires_grad",
    "memory_format",
    "out",
    "_stacklevel",
    "inplace",
    "generator",
    "non_blocking",
    "copy",
}
# numpy spellings torch accepts for its own keywords.
_ALIASES = {"axis": "dim", "keepdims": "keepdim", "x": "input", "a": "input"}


def _parse(spec: str):
    params = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if part.startswith("*"):
            params.append((part[1:], _REQ, True))
            continue
        name, eq, default = part.partition("=")
        params.append((name, eval(default) if eq else _REQ, False))  # noqa: S307 - our own literal specs
    return params


class Bound(dict):
    """Arguments by torch parameter name; ``given`` says which the call wrote (others hold defaults),
    ``pos`` which it wrote positionally, in order."""

    def __init__(self, values, given, pos):
        super().__init__(values)
        self.given = given
        self.pos = pos


def bind(params, args, kwargs) -> Bound:
    values, given, pos = {}, set(), []
    args = list(args)
    for name, default, var in params:
        if var:
            values[name] = tuple(args)
            if args:
                given.add(name)
            args = []
        elif args:
            values[name] = args.pop(0)
            given.add(name)
            pos.append(name)
        else:
            values[name] = default
    if args:
        raise Untranslated("more positional arguments than torch's signature has")
    names = {p[0] for p in params}
    for k, v in kwargs.items():
        k = k if k in names else _ALIASES.get(k, k)
        if k in _IGNORED:
            continue
        if k not in names:
            raise Untranslated(f"keyword argument {k!r}")
        values[k] = v
        given.add(k)
    missing = [n for n, d, var in params if d is _REQ and not var and n not in given]
    if missing:
        raise Untranslated(f"missing argument {missing[0]!r}")
    return Bound(values, given, pos)


@dataclass
class FxOp:
    key: str  # the op table entry, or the tensor method
    params: list
    emit: Callable  # (translator, Bound, key) -> Out | Alias | Val


def mlx_name(path: str) -> str:
    """``mlx.core.fast.layer_norm`` -> ``mx.fast.layer_norm``; ``mlx.nn.gelu`` -> ``nn.gelu``."""
    return path.replace("mlx.core.", "mx.", 1).replace("mlx.nn.", "nn.", 1)


def _dims(v):
    """A torch dims argument given as varargs ``(0, 2, 1)`` or as one sequence ``((0, 2, 1),)``."""
    if not isinstance(v, (tuple, list)):
        return v
    if len(v) == 1 and (isinstance(v[0], (tuple, list)) or type(v[0]).__name__ in ("Size", "Node")):
        return v[0]
    return tuple(v)


# ---- generic emitters -------------------------------------------------------------------------------------


def table(layout_free=False):
    """The op table's MLX function, arguments passed as the torch code passed them: positional ones in
    place (the table lists only keywords that change name), keywords renamed (``dim`` -> ``axis``).

    ``layout_free``: an elementwise op of one tensor (runs channels-last when its input is).
    """

    def emit(tr, b, key):
        op = ops.get(key)
        first = b.pos[0] if b.pos else None
        layout, rank = tr.elementwise(b[first]) if layout_free and first else ("cf", None)
        args = [tr.tensor(b[p], layout) if p == first and _is_node(b[p]) else tr.value(b[p]) for p in b.pos]
        kw = op.rename({k: b[k] for k in b if k in b.given and k not in b.pos})
        parts = args + [f"{k}={_kw_value(tr, k, v)}" for k, v in kw.items()]
        return Out(f"{mlx_name(op.mlx)}({', '.join(parts)})", layout, rank)

    return emit


def positional(tr, b, key):
    """The op table's MLX function with every argument given passed positionally, in torch's order
    (MLX takes these positionally only: ``mx.roll(a, shift, axis, /)``)."""
    op = ops.get(key)
    names = [n for n in b if n in b.given]
    return Out(f"{mlx_name(op.mlx)}({', '.join(tr.value(b[n]) for n in names)})")


def _kw_value(tr, k, v):
    return tr.value(tuple(v) if isinstance(v, list) and k in ("axis", "axes") else v)


def _is_node(a) -> bool:
    return type(a).__name__ == "Node"


def infix(symbol: str, reverse=False):
    def emit(tr, b, key):
        a, c = (b["other"], b["input"]) if reverse else (b["input"], b["other"])
        return _binary(tr, a, c, symbol)

    return emit


def _binary(tr, a, c, symbol):
    layout, rank = tr.elementwise(a, c)
    kinds = {tr.kind(a), tr.kind(c)}
    kind = (
        "tensor"
        if "tensor" in kinds or "any" in kinds
        else ("shape" if "shape" in kinds or "seq" in kinds else "scalar")
    )
    left = tr.tensor(a, layout) if _is_node(a) else tr.value(a)
    right = tr.tensor(c, layout) if _is_node(c) else tr.value(c)
    return Out(f"{_paren(left)} {symbol} {_paren(right)}", layout, rank, kind)


def _paren(s: str) -> str:
    return (
        s
        if s.replace("_", "").replace(".", "").isalnum()
        or s.startswith("(")
        and s.endswith(")")
        or (s.endswith(")") and s.split("(")[0].replace(".", "").replace("_", "").isalnum() and s.count("(") == 1)
        else f"({s})"
    )


def unary_expr(template: str):
    """An elementwise expression in MLX with ``{x}`` for the input: keeps the input's layout."""

    def emit(tr, b, key):
        layout, rank = tr.elementwise(b["input"])
        return Out(template.format(x=tr.tensor(b["input"], layout)), layout, rank)

    return emit


def alias(tr, b, key):
    return Alias(b["input"])


# ---- ops whose MLX form differs from a renamed call -----------------------------------------------------------


def _reshape(tr, b, key):
    shape = _dims(b["shape"])
    if type(shape).__name__ == "dtype":
        return Out(f"{tr.tensor(b['input'])}.view({tr.value(shape)})")
    return Out(f"mx.reshape({tr.tensor(b['input'])}, {tr.value(tuple(shape) if isinstance(shape, list) else shape)})")


def _permute(tr, b, key):
    return Out(f"mx.transpose({tr.tensor(b['input'])}, {tr.value(tuple(_dims(b['dims'])))})")


def _expand(tr, b, key):
    tr.helpers.add("_expand")
    sizes = _dims(b["size"])
    return Out(f"_expand({tr.tensor(b['input'])}, {tr.value(tuple(sizes) if isinstance(sizes, list) else sizes)})")


def _repeat(tr, b, key):
    return Out(f"mx.tile({tr.tensor(b['input'])}, {tr.value(tuple(_dims(b['repeats'])))})")


def _creation(fn, source="size"):
    """torch.zeros/ones/full (a size), ``*_like`` (another tensor's shape and dtype), ``Tensor.new_*``
    (a size, the tensor's dtype): ``mx.zeros`` / ``mx.ones`` / ``mx.full``."""

    def emit(tr, b, key):
        x = tr.tensor(b["input"]) if source != "size" else None
        if source == "like":
            shape = f"{x}.shape"
        else:
            size = _dims(b["size"])
            shape = tr.value(tuple(size) if isinstance(size, list) else size)
        dtype = tr.value(b["dtype"]) if b.get("dtype") is not None else f"{x}.dtype" if x else None
        args = [shape] + ([tr.value(b["fill_value"])] if fn == "full" else [])
        return Out(f"mx.{fn}({', '.join(args)}{', dtype=' + dtype if dtype else ''})")

    return emit


def _arange(tr, b, key):
    args = [b["start"]] + ([b["end"]] if "end" in b.given else []) + ([b["step"]] if "step" in b.given else [])
    dtype = f", dtype={tr.value(b['dtype'])}" if b.get("dtype") is not None else ""
    return Out(f"mx.arange({', '.join(tr.value(a) for a in args)}{dtype})")


def _astype(dtype: str):
    def emit(tr, b, key):
        layout, rank = tr.elementwise(b["input"])
        return Out(f"{tr.tensor(b['input'], layout)}.astype({dtype})", layout, rank)

    return emit


def _to(tr, b, key):
    """``.to(dtype)``, ``.to(other)``, ``.to(device)``, ``.to(device, dtype)``, ``.type(dtype)``."""
    x = b["input"]
    targets = list(b["args"]) + [b[k] for k in ("dtype",) if b.get(k) is not None]
    for t in targets:
        kind = tr.kind(t)
        if kind == "dtype":
            layout, rank = tr.elementwise(x)
            return Out(f"{tr.tensor(x, layout)}.astype({tr.value(t)})", layout, rank)
        if kind == "tensor":
            return Out(f"{tr.tensor(x)}.astype({tr.tensor(t)}.dtype)")
    return Alias(x)


def _type_as(tr, b, key):
    return Out(f"{tr.tensor(b['input'])}.astype({tr.tensor(b['other'])}.dtype)")


def _size(tr, b, key):
    x = tr.tensor(b["input"])
    if b.get("dim") is None:
        return Out(f"{x}.shape", kind="shape")
    return Out(f"{x}.shape[{tr.value(b['dim'])}]", kind="scalar")


def _masked_fill(tr, b, key):
    return Out(f"mx.where({tr.tensor(b['mask'])}, {tr.value(b['value'])}, {tr.tensor(b['input'])})")


def _minmax(name):
    """torch.max / torch.min: of all elements, along a dim (values and indices), or of two tensors."""

    def emit(tr, b, key):
        other = b.get("dim")
        x = tr.tensor(b["input"])
        if other is None:
            return Out(f"mx.{name}({x})")
        if tr.kind(other) == "tensor":
            return _binary_fn(tr, b["input"], other, "mx.maximum" if name == "max" else "mx.minimum")
        tr.helpers.add(f"_{name}")
        keep = f", keepdims={tr.value(b['keepdim'])}" if "keepdim" in b.given else ""
        return Out(f"_{name}({x}, {tr.value(other)}{keep})", kind="seq")

    return emit


def _binary_fn(tr, a, c, fn):
    layout, rank = tr.elementwise(a, c)
    args = [tr.tensor(x, layout) if _is_node(x) else tr.value(x) for x in (a, c)]
    return Out(f"{fn}({args[0]}, {args[1]})", layout, rank)


def _var_std(name):
    def emit(tr, b, key):
        x = tr.tensor(b["input"])
        ddof = 1
        if "correction" in b.given:
            ddof = b["correction"]
        elif "unbiased" in b.given:
            ddof = int(bool(b["unbiased"]))
        parts = (
            [x]
            + ([f"axis={tr.value(b['dim'])}"] if b.get("dim") is not None else [])
            + ([f"keepdims={tr.value(b['keepdim'])}"] if "keepdim" in b.given else [])
            + [f"ddof={tr.value(ddof)}"]
        )
        return Out(f"mx.{name}({', '.join(parts)})")

    return emit


def _split(tr, b, key):
    tr.helpers.add("_split")
    return Out(f"_split({tr.tensor(b['input'])}, {tr.value(b['split_size'])}, {tr.value(b['dim'])})", kind="seq")


def _chunk(tr, b, key):
    tr.helpers.add("_chunk")
    return Out(f"_chunk({tr.tensor(b['input'])}, {tr.value(b['chunks'])}, {tr.value(b['dim'])})", kind="seq")


def _unbind(tr, b, key):
    tr.helpers.add("_unbind")
    return Out(f"_unbind({tr.tensor(b['input'])}, {tr.value(b['dim'])})", kind="seq")


def _squeeze(tr, b, key):
    tr.helpers.add("_squeeze")
    dim = b.get("dim")
    return Out(f"_squeeze({tr.tensor(b['input'])}{'' if dim is None else ', ' + tr.value(dim)})")


def _diff(tr, b, key):
    tr.helpers.add("_diff")
    extra = "".join(
        f", {m}={tr.value(b[t])}"
        for t, m in (("n", "n"), ("dim", "axis"), ("prepend", "prepend"), ("append", "append"))
        if t in b.given
    )
    return Out(f"_diff({tr.tensor(b['input'])}{extra})")


def _topk(tr, b, key):
    tr.helpers.add("_topk")
    extra = "".join(f", {m}={tr.value(b[t])}" for t, m in (("dim", "axis"), ("largest", "largest")) if t in b.given)
    return Out(f"_topk({tr.tensor(b['input'])}, {tr.value(b['k'])}{extra})", kind="seq")


def _baddbmm(tr, b, key):
    x, b1, b2 = (tr.tensor(b[n]) for n in ("input", "batch1", "batch2"))
    beta, alpha = b.get("beta", 1), b.get("alpha", 1)
    left = x if beta == 1 else f"{tr.value(beta)} * {x}"
    right = f"{_paren(b1)} @ {_paren(b2)}" if alpha == 1 else f"{tr.value(alpha)} * ({b1} @ {b2})"
    return Out(f"{left} + {right}")


def _matmul(tr, b, key):
    return _binary(tr, b["input"], b["other"], "@")


def _transpose_2d(tr, b, key):
    return Out(f"{tr.tensor(b['input'])}.T")


def _einsum(tr, b, key):
    operands = b["operands"]
    if len(operands) == 1 and isinstance(operands[0], (tuple, list)):
        operands = operands[0]
    elif len(operands) == 1 and tr.kind(operands[0]) == "seq":  # a list the graph built: spread it
        return Out(f"mx.einsum({tr.value(b['equation'])}, *{tr.value(operands[0])})")
    return Out(f"mx.einsum({tr.value(b['equation'])}, {', '.join(tr.value(o) for o in operands)})")


def _gather(tr, b, key):
    return Out(f"mx.take_along_axis({tr.tensor(b['input'])}, {tr.tensor(b['index'])}, axis={tr.value(b['dim'])})")


def _index_select(tr, b, key):
    return Out(f"mx.take({tr.tensor(b['input'])}, {tr.tensor(b['index'])}, axis={tr.value(b['dim'])})")


def _where(tr, b, key):
    if b.get("input") is None:
        raise Untranslated("torch.where(condition) (the indices of nonzero elements: a data-dependent shape)")
    layout, rank = tr.elementwise(b["condition"], b["input"], b["other"])
    args = [tr.tensor(a, layout) if _is_node(a) else tr.value(a) for a in (b["condition"], b["input"], b["other"])]
    return Out(f"mx.where({', '.join(args)})", layout, rank)


def _clamp(tr, b, key):
    layout, rank = tr.elementwise(b["input"])
    lo = tr.value(b.get("min")) if b.get("min") is not None else "None"
    hi = tr.value(b.get("max")) if b.get("max") is not None else "None"
    return Out(f"mx.clip({tr.tensor(b['input'], layout)}, {lo}, {hi})", layout, rank)


def _pow(tr, b, key):
    return _binary(tr, b["input"], b["exponent"], "**")


def _add_sub(symbol):
    def emit(tr, b, key):
        other = b["other"]
        if b.get("alpha", 1) != 1:
            layout, _ = tr.elementwise(b["input"], other)
            return Out(
                f"{tr.tensor(b['input'], layout)} {symbol} {tr.value(b['alpha'])} * {_paren(tr.tensor(other, layout))}",
                layout,
            )
        return _binary(tr, b["input"], other, symbol)

    return emit


def _div(tr, b, key):
    mode = b.get("rounding_mode")
    if mode == "floor":
        return _binary(tr, b["input"], b["other"], "//")
    if mode == "trunc":
        out = _binary(tr, b["input"], b["other"], "/")
        return Out(f"mx.floor(mx.abs({out.expr})) * mx.sign({out.expr})", out.layout, out.rank)
    return _binary(tr, b["input"], b["other"], "/")


# ---- neural-network functions ---------------------------------------------------------------------------------


def _gelu(tr, b, key):
    fn = "nn.gelu_approx" if b.get("approximate") == "tanh" else "nn.gelu"
    layout, rank = tr.elementwise(b["input"])
    return Out(f"{fn}({tr.tensor(b['input'], layout)})", layout, rank)


def _softplus(tr, b, key):
    layout, rank = tr.elementwise(b["input"])
    x, beta = tr.tensor(b["input"], layout), b.get("beta", 1)
    if beta == 1:
        return Out(f"nn.softplus({x})", layout, rank)
    return Out(f"nn.softplus({tr.value(beta)} * {x}) / {tr.value(beta)}", layout, rank)


def _dropout(tr, b, key):
    # Traced in eval mode, code passing training=self.training passes False: no dropout at inference.
    if b.get("training") is not False:
        raise Untranslated(f"{key} with training=True (dropout even at inference)")
    return Alias(b["input"])


def _linear(tr, b, key):
    x, w = tr.tensor(b["input"]), tr.tensor(b["weight"])
    if b.get("bias") is None:
        return Out(f"{x} @ {_paren(w)}.T")
    return Out(f"mx.addmm({tr.tensor(b['bias'])}, {x}, {_paren(w)}.T)")


def _embedding(tr, b, key):
    return Out(f"mx.take({tr.tensor(b['weight'])}, {tr.tensor(b['input'])}, axis=0)")


def _layer_norm(tr, b, key):
    shape = b["normalized_shape"]
    if isinstance(shape, (tuple, list)) and len(shape) > 1:
        raise Untranslated("F.layer_norm over more than one axis")
    args = [tr.tensor(b["input"])] + [tr.value(b.get(k)) for k in ("weight", "bias")] + [tr.value(b.get("eps"))]
    return Out(f"mx.fast.layer_norm({', '.join(args)})")


def _rms_norm(tr, b, key):
    eps = b.get("eps")
    eps = tr.value(eps) if eps is not None else f"{_finfo_eps(tr, b['input'])}"
    return Out(f"mx.fast.rms_norm({tr.tensor(b['input'])}, {tr.value(b.get('weight'))}, {eps})")


def _finfo_eps(tr, x):
    return f"mx.finfo({tr.tensor(x)}.dtype).eps"


def _sdpa(tr, b, key):
    q, k, v = (tr.tensor(b[n]) for n in ("query", "key", "value"))
    scale = f"{q}.shape[-1] ** -0.5" if b.get("scale") is None else tr.value(b["scale"])
    mask = b.get("attn_mask")
    causal = b.get("is_causal", False)
    if _is_node(causal):
        raise Untranslated("scaled_dot_product_attention with is_causal computed at run time")
    if mask is not None:
        tr.helpers.add("_sdpa_mask")
        mask_src = f"_sdpa_mask({tr.tensor(mask)}, {q}.dtype)"
    elif causal:
        mask_src = '"causal"'
    else:
        mask_src = None
    tail = f", mask={mask_src}" if mask_src else ""
    return Out(f"mx.fast.scaled_dot_product_attention({q}, {k}, {v}, scale={scale}{tail})")


def _conv(d):
    def emit(tr, b, key):
        padding = b.get("padding", 0)
        if isinstance(padding, str):
            if padding != "valid":
                raise Untranslated(f"F.conv{d}d with padding={padding!r}")
            padding = 0
        x, w = tr.tensor(b["input"], "cl"), tr.tensor(b["weight"], "cl")
        kw = [f"{name}={tr.value(b[name])}" for name in ("stride", "dilation", "groups") if name in b.given] + (
            [f"padding={tr.value(padding)}"] if padding else []
        )
        expr = f"mx.conv{d}d({', '.join([x, w] + kw)})"
        if b.get("bias") is not None:
            expr = f"{expr} + {tr.tensor(b['bias'])}"
        return Out(expr, "cl", d + 2)

    return emit


def _pool(kind, d):
    def emit(tr, b, key):
        if b.get("ceil_mode") or b.get("return_indices") or b.get("dilation", 1) not in (1, (1,) * d):
            raise Untranslated(f"F.{kind}_pool{d}d with ceil_mode, dilation or return_indices")
        if kind == "avg" and (b.get("count_include_pad") is False or b.get("divisor_override") is not None):
            raise Untranslated(f"F.avg_pool{d}d with count_include_pad=False or divisor_override")
        cls = "MaxPool" if kind == "max" else "AvgPool"
        stride = b.get("stride")
        args = (
            [tr.value(b["kernel_size"])]
            + ([f"stride={tr.value(stride)}"] if stride not in (None, (), []) else [])
            + ([f"padding={tr.value(b['padding'])}"] if b.get("padding") else [])
        )
        return Out(f"nn.{cls}{d}d({', '.join(args)})({tr.tensor(b['input'], 'cl')})", "cl", d + 2)

    return emit


def _adaptive(kind, d):
    def emit(tr, b, key):
        size = b["output_size"]
        sizes = size if isinstance(size, (tuple, list)) else (size,)
        if any(s != 1 for s in sizes):
            raise Untranslated(f"F.adaptive_{kind}_pool{d}d to an output size other than 1")
        axes = tuple(range(1, d + 1))
        return Out(
            f"mx.{'mean' if kind == 'avg' else 'max'}({tr.tensor(b['input'], 'cl')}, axis={axes}, keepdims=True)",
            "cl",
            d + 2,
        )

    return emit


def _interpolate(tr, b, key):
    scale = b.get("scale_factor")
    if scale is None or b.get("size") is not None:
        raise Untranslated("F.interpolate to a fixed size")
    mode = {
        "nearest": "nearest",
        "linear": "linear",
        "bilinear": "linear",
        "trilinear": "linear",
        "bicubic": "cubic",
    }.get(b.get("mode", "nearest"))
    if mode is None:
        raise Untranslated(f"F.interpolate mode {b.get('mode')!r}")
    corners = ", align_corners=True" if b.get("align_corners") else ""
    return Out(
        f"nn.Upsample(scale_factor={tr.value(scale)}, mode={mode!r}{corners})({tr.tensor(b['input'], 'cl')})", "cl"
    )


def _pad(tr, b, key):
    tr.helpers.add("_pad")
    mode = b.get("mode", "constant")
    if mode == "circular":
        raise Untranslated("F.pad with mode='circular'")
    value = "" if b.get("value") is None else f", value={tr.value(b['value'])}"
    return Out(f"_pad({tr.tensor(b['input'])}, {tr.value(tuple(b['pad']))}, {mode!r}{value})")


def _normalize(tr, b, key):
    x = tr.tensor(b["input"])
    p, dim, eps = (tr.value(b.get(k)) for k in ("p", "dim", "eps"))
    return Out(f"{x} / mx.maximum(mx.linalg.norm({x}, ord={p}, axis={dim}, keepdims=True), {eps})")


def _softmax(fn):
    def emit(tr, b, key):
        x = tr.tensor(b["input"])
        if b.get("dtype") is not None:
            x = f"{x}.astype({tr.value(b['dtype'])})"
        if b.get("dim") is None:
            raise Untranslated(f"{key} without dim (torch's implicit choice of axis)")
        return Out(f"{fn}({x}, axis={tr.value(b['dim'])})")

    return emit


# ---- the tables -------------------------------------------------------------------------------------------------

_UNARY_TABLE = (
    "exp",
    "log",
    "log1p",
    "sqrt",
    "rsqrt",
    "abs",
    "sign",
    "square",
    "sin",
    "cos",
    "tanh",
    "sigmoid",
    "erf",
    "floor",
    "ceil",
    "isnan",
    "isinf",
    "logical_not",
    "round",
    "neg",
    "reciprocal",
)
_REDUCE = "input, dim=None, keepdim=False, dtype=None"

FUNCTIONS: dict[str, FxOp] = {}


def _add(key, spec, emit, *aliases):
    op = FxOp(key, _parse(spec), emit)
    for k in (key,) + aliases:
        FUNCTIONS[k] = op


for _n in _UNARY_TABLE:
    _add(f"torch.{_n}", "input", table(layout_free=True))
_add("torch.nn.functional.sigmoid", "input", table(layout_free=True))
_add("torch.nn.functional.tanh", "input", table(layout_free=True))
_add("torch.add", "input, other, alpha=1", _add_sub("+"))
_add("torch.sub", "input, other, alpha=1", _add_sub("-"))
_add("torch.mul", "input, other", infix("*"))
_add("torch.div", "input, other, rounding_mode=None", _div)
_add("torch.pow", "input, exponent", _pow)
_add("torch.remainder", "input, other", infix("%"))
_add("torch.floor_divide", "input, other", infix("//"))
for _n, _s in (("eq", "=="), ("ne", "!="), ("gt", ">"), ("lt", "<"), ("ge", ">="), ("le", "<=")):
    _add(f"torch.{_n}", "input, other", infix(_s))
for _n in ("maximum", "minimum", "logaddexp"):
    _add(f"torch.{_n}", "input, other", table())
_add("torch.clamp", "input, min=None, max=None", _clamp)
_add("torch.where", "condition, input=None, other=None", _where)
_add("torch.masked_fill", "input, mask, value", _masked_fill)
_add("torch.matmul", "input, other", _matmul)
_add("torch.mm", "input, other", _matmul)
_add("torch.bmm", "input, other", _matmul)
_add("torch.addmm", "input, mat1, mat2, beta=1, alpha=1", table())
_add("torch.einsum", "equation, *operands", _einsum)
_add("torch.baddbmm", "input, batch1, batch2, beta=1, alpha=1", _baddbmm)
_add("torch.diff", "input, n=1, dim=-1, prepend=None, append=None", _diff)
_add("torch.topk", "input, k, dim=-1, largest=True, sorted=True", _topk)
_add("torch.outer", "input, vec2", table())
for _n in ("sum", "mean", "amax", "amin", "prod", "logsumexp", "all", "any", "argmax", "argmin"):
    _add(f"torch.{_n}", _REDUCE if _n in ("sum", "mean", "prod") else "input, dim=None, keepdim=False", table())
_add("torch.max", "input, dim=None, keepdim=False", _minmax("max"))
_add("torch.min", "input, dim=None, keepdim=False", _minmax("min"))
_add("torch.var", "input, dim=None, unbiased=True, keepdim=False, correction=None", _var_std("var"))
_add("torch.std", "input, dim=None, unbiased=True, keepdim=False, correction=None", _var_std("std"))
_add("torch.cumsum", "input, dim, dtype=None", table())
_add("torch.cumprod", "input, dim, dtype=None", table())
_add("torch.softmax", "input, dim=None, dtype=None", _softmax("mx.softmax"))
_add("torch.cat", "tensors, dim=0", table(), "torch.concat", "torch.concatenate")
_add("torch.stack", "tensors, dim=0", table())
_add("torch.split", "input, split_size, dim=0", _split)
_add("torch.chunk", "input, chunks, dim=0", _chunk)
_add("torch.unbind", "input, dim=0", _unbind)
_add("torch.reshape", "input, *shape", _reshape)
_add("torch.Tensor.view", "input, *shape", _reshape)
_add("torch.permute", "input, *dims", _permute)
_add("torch.transpose", "input, dim0, dim1", table())
_add("torch.movedim", "input, source, destination", table())
_add("torch.flatten", "input, start_dim=0, end_dim=-1", table())
_add("torch.unflatten", "input, dim, sizes", table())
_add("torch.unsqueeze", "input, dim", table())
_add("torch.squeeze", "input, dim=None", _squeeze)
_add("torch.Tensor.expand", "input, *size", _expand)
_add("torch.Tensor.repeat", "input, *repeats", _repeat)
_add("torch.repeat_interleave", "input, repeats, dim=None", table())
_add("torch.roll", "input, shifts, dims=None", positional)
_add("torch.flip", "input, dims", table())
_add("torch.eye", "n, m=None, dtype=None", table())
_add("torch.tril", "input, diagonal=0", table())
_add("torch.triu", "input, diagonal=0", table())
_add("torch.gather", "input, dim, index", _gather)
_add("torch.index_select", "input, dim, index", _index_select)
_add("torch.zeros", "*size, dtype=None", _creation("zeros"))
_add("torch.ones", "*size, dtype=None", _creation("ones"))
_add("torch.empty", "*size, dtype=None", _creation("zeros"))
_add("torch.full", "size, fill_value, dtype=None", _creation("full"))
_add("torch.zeros_like", "input, dtype=None", _creation("zeros", "like"))
_add("torch.ones_like", "input, dtype=None", _creation("ones", "like"))
_add("torch.full_like", "input, fill_value, dtype=None", _creation("full", "like"))
_add("torch.arange", "start, end=None, step=1, dtype=None", _arange)
_add(
    "torch.tensor",
    "data, dtype=None",
    lambda tr, b, k: Out(
        f"mx.array({tr.value(b['data'])}{', dtype=' + tr.value(b['dtype']) if b.get('dtype') is not None else ''})"
    ),
)
# neural-network functions
_F = "torch.nn.functional."
for _n in ("relu", "silu", "relu6", "hardswish", "mish", "softsign"):
    _add(_F + _n, "input, inplace=False", table(layout_free=True), *(("torch.relu",) if _n == "relu" else ()))
_add(_F + "gelu", "input, approximate='none'", _gelu)
_add(_F + "leaky_relu", "input, negative_slope=0.01, inplace=False", table(layout_free=True))
_add(_F + "elu", "input, alpha=1.0, inplace=False", table(layout_free=True))
_add(_F + "logsigmoid", "input", table(layout_free=True))
_add(_F + "hardsigmoid", "input, inplace=False", unary_expr("nn.relu6({x} + 3) / 6"))
_add(_F + "softplus", "input, beta=1.0, threshold=20.0", _softplus)
_add(_F + "glu", "input, dim=-1", table())
_add(_F + "softmax", "input, dim=None, _stacklevel=3, dtype=None", _softmax("mx.softmax"))
_add(_F + "log_softmax", "input, dim=None, _stacklevel=3, dtype=None", _softmax("nn.log_softmax"))
_add(_F + "dropout", "input, p=0.5, training=True, inplace=False", _dropout)
_add(_F + "linear", "input, weight, bias=None", _linear)
_add(
    _F + "embedding",
    "input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False, sparse=False",
    _embedding,
)
_add(_F + "layer_norm", "input, normalized_shape, weight=None, bias=None, eps=1e-05", _layer_norm)
_add(_F + "rms_norm", "input, normalized_shape, weight=None, eps=None", _rms_norm)
_add(
    _F + "scaled_dot_product_attention",
    "query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False",
    _sdpa,
)
for _d in (1, 2, 3):
    _add(f"{_F}conv{_d}d", "input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1", _conv(_d))
    _add(
        f"{_F}max_pool{_d}d",
        "input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False",
        _pool("max", _d),
    )
    _add(
        f"{_F}avg_pool{_d}d",
        "input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None",
        _pool("avg", _d),
    )
    _add(f"{_F}adaptive_avg_pool{_d}d", "input, output_size", _adaptive("avg", _d))
    _add(f"{_F}adaptive_max_pool{_d}d", "input, output_size, return_indices=False", _adaptive("max", _d))
_add(
    _F + "interpolate",
    "input, size=None, scale_factor=None, mode='nearest', align_corners=None, "
    "recompute_scale_factor=None, antialias=False",
    _interpolate,
)
_add(_F + "pad", "input, pad, mode='constant', value=None", _pad)
_add(_F + "normalize", "input, p=2.0, dim=1, eps=1e-12", _normalize)

# Tensor methods that are no op in MLX, or whose MLX form is an attribute or a cast.
METHODS: dict[str, FxOp] = {}


def _method(name, spec, emit):
    METHODS[name] = FxOp(f"torch.Tensor.{name}", _parse(spec), emit)


for _n in ("contiguous", "clone", "detach", "cpu", "cuda", "requires_grad_"):
    _method(_n, "input, *args", alias)
for _n, _t in (
    ("float", "mx.float32"),
    ("half", "mx.float16"),
    ("bfloat16", "mx.bfloat16"),
    ("double", "mx.float32"),
    ("long", "mx.int64"),
    ("int", "mx.int32"),
    ("bool", "mx.bool_"),
):
    _method(_n, "input", _astype(_t))
_method("to", "input, *args, dtype=None", _to)
_method("type", "input, *args, dtype=None", _to)
_method("type_as", "input, other", _type_as)
_method("size", "input, dim=None", _size)
_method("dim", "input", lambda tr, b, k: Out(f"{tr.tensor(b['input'])}.ndim", kind="scalar"))
_method("ndimension", "input", lambda tr, b, k: Out(f"{tr.tensor(b['input'])}.ndim", kind="scalar"))
_method("numel", "input", lambda tr, b, k: Out(f"{tr.tensor(b['input'])}.size", kind="scalar"))
_method("t", "input", _transpose_2d)
_method("reshape", "input, *shape", _reshape)
_method("view", "input, *shape", _reshape)
_method("permute", "input, *dims", _permute)
_method("expand", "input, *size", _expand)
_method(
    "expand_as",
    "input, other",
    lambda tr, b, k: Out(f"mx.broadcast_to({tr.tensor(b['input'])}, {tr.tensor(b['other'])}.shape)"),
)
_method("repeat", "input, *repeats", _repeat)
_method("split", "input, split_size, dim=0", _split)
_method("new_zeros", "input, *size, dtype=None", _creation("zeros", "new"))
_method("new_ones", "input, *size, dtype=None", _creation("ones", "new"))
_method("new_empty", "input, *size, dtype=None", _creation("zeros", "new"))
_method("new_full", "input, size, fill_value, dtype=None", _creation("full", "new"))
_method("masked_fill", "input, mask, value", _masked_fill)
_method("softmax", "input, dim=None, dtype=None", _softmax("mx.softmax"))
_method("log_softmax", "input, dim=None, dtype=None", _softmax("nn.log_softmax"))


# ---- dispatch -------------------------------------------------------------------------------------------------------

_OPERATORS = {
    operator.add: "+",
    operator.sub: "-",
    operator.mul: "*",
    operator.truediv: "/",
    operator.floordiv: "//",
    operator.mod: "%",
    operator.pow: "**",
    operator.matmul: "@",
    operator.eq: "==",
    operator.ne: "!=",
    operator.lt: "<",
    operator.le: "<=",
    operator.gt: ">",
    operator.ge: ">=",
    operator.and_: "&",
    operator.or_: "|",
    operator.xor: "^",
}
_INPLACE = {operator.iadd: "+", operator.isub: "-", operator.imul: "*", operator.itruediv: "/"}
_BY_ID: dict[int, str] | None = None


def _resolve(path: str):
    import importlib

    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p, None)
            if obj is None:
                return None
        return obj
    return None


def _by_id() -> dict[int, str]:
    """torch callables (by identity) -> their key in ``FUNCTIONS`` (an alias's key is its canonical op's)."""
    global _BY_ID
    if _BY_ID is None:
        found = {}
        for key in FUNCTIONS:
            obj = _resolve(key)
            if obj is not None:
                found.setdefault(id(obj), key)
        _BY_ID = found
    return _BY_ID


def function_key(target) -> str | None:
    return _by_id().get(id(target))


def is_guard(node) -> bool:
    """What fx adds for arguments traced as constants: ``_assert_is_none`` / ``_assert`` and their comparison."""
    if node.op != "call_function":
        return False
    name = getattr(node.target, "__name__", "")
    if name in ("_assert_is_none", "_assert"):
        return True
    return node.target is operator.eq and node.users and all(is_guard(u) for u in node.users)


def mutates(node) -> bool:
    if node.op == "call_function":
        return node.target is operator.setitem or node.target in _INPLACE
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.startswith("_") and name not in ("requires_grad_",)
    return False


def _getitem(tr, node):
    base, idx = node.args
    kind = tr.kind(base)
    if kind == "tensor":
        if (
            _is_node(idx)
            and tr.kind(idx) == "tensor"
            or isinstance(idx, tuple)
            and any(_is_node(i) and tr.kind(i) == "tensor" for i in idx)
        ):
            pass  # integer-array indexing MLX has too; a boolean mask it has not (reported by MLX at run time)
        return Out(f"{tr.tensor(base)}[{tr.index(idx)}]")
    out_kind = (
        "scalar"
        if kind == "shape" and not isinstance(idx, slice)
        else "shape"
        if kind == "shape"
        else "tensor"
        if kind == "seq"
        else "any"
    )
    return Out(f"{tr.tensor(base)}[{tr.index(idx)}]", kind=out_kind)


def _getattr(tr, node):
    base, name = node.args
    x = tr.tensor(base)
    if name == "shape":
        return Out(f"{x}.shape", kind="shape")
    if name == "dtype":
        return Out(f"{x}.dtype", kind="dtype")
    if name == "device":
        return Val({"cf": "None"}, kind="device")
    if name == "ndim":
        return Out(f"{x}.ndim", kind="scalar")
    if name == "T":
        return Out(f"{x}.T")
    if name == "mT":
        return Out(f"mx.swapaxes({x}, -1, -2)")
    if name in ("data",):
        return Alias(base)
    if name in ("values", "indices") and tr.kind(base) == "seq":
        return Out(f"{x}[{0 if name == 'values' else 1}]")
    if tr.kind(base) == "tensor":
        raise Untranslated(f"tensor attribute .{name}")
    return Out(f"{x}.{name}", kind="any")


def translate(tr, node):
    if node.op == "call_function":
        t = node.target
        if t is operator.getitem:
            return _getitem(tr, node)
        if t is getattr:
            return _getattr(tr, node)
        if t is operator.setitem:
            base, idx, value = node.args
            x = tr.tensor(base)
            tr.lines.append(f"{x}[{tr.index(idx)}] = {tr.value(value)}")
            v = tr.val(base)
            for f in [f for f in v.forms if f != "cf"]:
                del v.forms[f]
            return None
        if t in _OPERATORS:
            return _binary(tr, node.args[0], node.args[1], _OPERATORS[t])
        if t in _INPLACE:
            out = _binary(tr, node.args[0], node.args[1], _INPLACE[t])
            return tr.rebind(node.args[0], out.expr)
        if t is operator.neg:
            layout, rank = tr.elementwise(node.args[0])
            return Out(f"-{_paren(tr.tensor(node.args[0], layout))}", layout, rank, tr.kind(node.args[0]))
        if t is operator.invert or t is operator.not_:
            return Out(f"mx.logical_not({tr.tensor(node.args[0])})")
        key = function_key(t)
        if key is None:
            raise Untranslated(_name(t))
        op = FUNCTIONS[key]
        return op.emit(tr, bind(op.params, node.args, node.kwargs), op.key)
    # call_method
    name = str(node.target)
    inplace = name.endswith("_") and not name.startswith("_") and name not in METHODS
    base = name[:-1] if inplace else name
    op = (
        METHODS.get(base)
        or FUNCTIONS.get(f"torch.Tensor.{base}")
        or FUNCTIONS.get(f"torch.{base}")
        or FUNCTIONS.get(f"{_F}{base}")
    )
    if op is None:
        raise Untranslated(f"Tensor.{name}")
    out = op.emit(tr, bind(op.params, node.args, node.kwargs), op.key)
    if inplace:
        if not isinstance(out, Out):
            raise Untranslated(f"Tensor.{name}")
        if out.layout != "cf":
            out = Out(f"_cf({out.expr})")
            tr.helpers.add("_cf")
        return tr.rebind(node.args[0], out.expr)
    return out


def _name(t) -> str:
    mod = getattr(t, "__module__", None) or ""
    return f"{mod}.{getattr(t, '__qualname__', getattr(t, '__name__', repr(t)))}".lstrip(".")
