"""Registry layers as MLX code: the constructor, from the torch module's attributes, and the call.

Keyed by the registry's entry (``torch.nn.Conv2d``, ``transformers.pytorch_utils.Conv1D``):
the MLX class is the registry's (``entry.mlx``); torch's composite layers whose MLX
class differs in arguments or results (MultiheadAttention, the Transformer layers,
the recurrent layers) use helper classes with torch's calling convention, whose
children carry the registry's names. A layer with nothing to hold (the adaptive
pools, Flatten, ...) has no constructor: its call is written inline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .nodes import Alias, Out, Untranslated
from .render import Call, ListE, Raw, call


@dataclass
class LeafCode:
    init: object | None  # constructor expression; None: nothing to construct
    call: Callable  # (translator, node, self expression) -> Out | Alias
    helpers: set = field(default_factory=set)  # helper classes the constructor uses


def _mlx(entry) -> str:
    return entry.mlx.replace("mlx.nn.", "nn.", 1)


def _tuple1(v):
    """torch stores ints as 1-tuples for 1-d layers; MLX takes the int."""
    if isinstance(v, (tuple, list)) and len(set(v)) == 1:
        return v[0]
    return tuple(v) if isinstance(v, list) else v


def _kw(value, default):
    return None if value == default else value


# ---- calls ------------------------------------------------------------------------------------------------


def passthrough(tr, node, me):
    args = [tr.value(a) for a in node.args] + [f"{k}={tr.value(v)}" for k, v in node.kwargs.items()]
    return Out(f"{me}({', '.join(args)})", kind="any")


def _input(node):
    if node.args:
        return node.args[0]
    if len(node.kwargs) == 1:
        return next(iter(node.kwargs.values()))
    raise Untranslated(f"call of {node.target} with keyword arguments")


def channels_last(rank):
    def emit(tr, node, me):
        return Out(f"{me}({tr.tensor(_input(node), 'cl', rank)})", "cl", rank)

    return emit


def elementwise(tr, node, me):
    x = _input(node)
    layout, rank = tr.elementwise(x)
    return Out(f"{me}({tr.tensor(x, layout)})", layout, rank)


def inline(template: str, layout: str = "cf", rank=None, helpers=()):
    """A layer with no MLX object: ``{x}`` is the input, in ``layout`` ("same": elementwise, either)."""

    def emit(tr, node, me):
        x = _input(node)
        tr.helpers.update(helpers)
        if layout == "same":
            lay, r = tr.elementwise(x)
            return Out(template.format(x=tr.tensor(x, lay)), lay, r)
        return Out(template.format(x=tr.tensor(x, layout)), layout, rank)

    return emit


def identity(tr, node, me):
    return Alias(_input(node))


# ---- constructors -----------------------------------------------------------------------------------------


def _linear(m, entry, build):
    return LeafCode(call("nn.Linear", m.in_features, m.out_features, bias=_kw(m.bias is not None, True)), passthrough)


def _hf_conv1d(m, entry, build):
    n_in, n_out = m.weight.shape
    return LeafCode(call("nn.Linear", n_in, n_out, bias=_kw(m.bias is not None, True)), passthrough)


def _bilinear(m, entry, build):
    return LeafCode(
        call("nn.Bilinear", m.in1_features, m.in2_features, m.out_features, bias=_kw(m.bias is not None, True)),
        passthrough,
    )


def _embedding(m, entry, build):
    return LeafCode(call("nn.Embedding", m.num_embeddings, m.embedding_dim), passthrough)


def _conv_padding(m, d):
    pad = m.padding
    if isinstance(pad, str):
        if pad == "valid":
            return 0
        ks, dil = m.kernel_size, m.dilation
        total = [di * (k - 1) for k, di in zip(ks, dil, strict=True)]
        if any(t % 2 for t in total):
            raise Untranslated("padding='same' with an even receptive field (torch pads one side more)")
        return _tuple1(tuple(t // 2 for t in total))
    return _tuple1(pad)


def _conv(d):
    def make(m, entry, build):
        padding = _conv_padding(m, d)
        mode = getattr(m, "padding_mode", "zeros")
        args = dict(
            stride=_kw(_tuple1(m.stride), 1),
            padding=_kw(padding if mode == "zeros" else 0, 0),
            dilation=_kw(_tuple1(m.dilation), 1),
            groups=_kw(m.groups, 1),
            bias=_kw(m.bias is not None, True),
        )
        init = call(f"nn.Conv{d}d", m.in_channels, m.out_channels, _tuple1(m.kernel_size), **args)
        if mode == "zeros":
            return LeafCode(init, channels_last(d + 2))
        if mode == "circular":
            raise Untranslated("padding_mode='circular'")
        pads = []
        for p in reversed(padding if isinstance(padding, tuple) else (padding,) * d):
            pads += [p, p]
        torch_mode = {"reflect": "reflect", "replicate": "replicate"}[mode]

        def emit(tr, node, me):
            # torch pads by padding_mode first, then convolves without padding
            tr.helpers.add("_pad")
            x = tr.tensor(_input(node))
            tr.helpers.add("_cl")
            return Out(f"{me}(_cl(_pad({x}, {tuple(pads)}, {torch_mode!r})))", "cl", d + 2)

        return LeafCode(init, emit)

    return make


def _conv_transpose(d):
    def make(m, entry, build):
        init = call(
            f"nn.ConvTranspose{d}d",
            m.in_channels,
            m.out_channels,
            _tuple1(m.kernel_size),
            stride=_kw(_tuple1(m.stride), 1),
            padding=_kw(_tuple1(m.padding), 0),
            dilation=_kw(_tuple1(m.dilation), 1),
            output_padding=_kw(_tuple1(m.output_padding), 0),
            bias=_kw(m.bias is not None, True),
        )
        return LeafCode(init, channels_last(d + 2))

    return make


def _batch_norm(d):
    def make(m, entry, build):
        init = call(
            "nn.BatchNorm",
            m.num_features,
            eps=_kw(m.eps, 1e-5),
            momentum=_kw(m.momentum if m.momentum is not None else 0.1, 0.1),
            affine=_kw(m.affine, True),
            track_running_stats=_kw(m.track_running_stats, True),
        )
        if d == 3:
            # MLX BatchNorm takes at most 4-D input: the spatial axes flattened, then restored
            return LeafCode(
                init, inline_layer("{me}({x}.reshape({x}.shape[0], -1, {x}.shape[-1])).reshape({x}.shape)", "cl", 5)
            )
        return LeafCode(init, channels_last(4 if d == 2 else None))

    return make


def inline_layer(template, layout, rank):
    def emit(tr, node, me):
        x = tr.tensor(_input(node), layout)
        return Out(template.format(me=me, x=x), layout, rank)

    return emit


def _layer_norm(m, entry, build):
    (dims,) = m.normalized_shape
    bias = getattr(m, "bias", None) is not None
    return LeafCode(
        call(
            "nn.LayerNorm",
            dims,
            eps=_kw(m.eps, 1e-5),
            affine=_kw(m.elementwise_affine, True),
            bias=_kw(bias or not m.elementwise_affine, True),
        ),
        passthrough,
    )


def _rms_norm(m, entry, build):
    (dims,) = m.normalized_shape
    eps = m.eps
    if not m.elementwise_affine:
        eps_src = repr(eps) if eps is not None else "mx.finfo({x}.dtype).eps"
        return LeafCode(None, inline(f"mx.fast.rms_norm({{x}}, None, {eps_src})"))
    if eps is None:  # torch: the input dtype's machine epsilon; the float32 value here
        eps = 1.1920928955078125e-07
    return LeafCode(call("nn.RMSNorm", dims, eps=_kw(eps, 1e-5)), passthrough)


def _group_norm(m, entry, build):
    init = call(
        "nn.GroupNorm",
        m.num_groups,
        m.num_channels,
        eps=_kw(m.eps, 1e-5),
        affine=_kw(m.affine, True),
        pytorch_compatible=True,
    )
    return LeafCode(init, channels_last(None))


def _instance_norm(d):
    def make(m, entry, build):
        init = call("nn.InstanceNorm", m.num_features, eps=_kw(m.eps, 1e-5), affine=_kw(m.affine, False))
        return LeafCode(init, channels_last(d + 2))

    return make


def _prelu(m, entry, build):
    init = call("nn.PReLU", num_parameters=_kw(m.num_parameters, 1))
    return LeafCode(init, channels_last(None) if m.num_parameters > 1 else elementwise)


def _mha(m, entry, build):
    bias = m.in_proj_bias is not None
    init = call(
        "MultiheadAttention",
        m.embed_dim,
        m.num_heads,
        bias=_kw(bias, True),
        kdim=_kw(m.kdim, m.embed_dim),
        vdim=_kw(m.vdim, m.embed_dim),
        batch_first=_kw(m.batch_first, False),
    )
    return LeafCode(init, passthrough, {"MultiheadAttention"})


def _activation_of(layer, build):
    """The activation of a torch Transformer layer: a function (F.relu, F.gelu) or a module."""
    import torch.nn.functional as F

    act = layer.activation
    if act is F.relu:
        return None
    if act is F.gelu:
        return call("nn.GELU")
    if hasattr(act, "_parameters"):
        expr = build(act)
        if expr is not None:
            return expr
    raise Untranslated(f"activation {getattr(act, '__name__', type(act).__name__)}")


def _transformer_layer(kind):
    def make(m, entry, build):
        init = call(
            kind,
            m.self_attn.embed_dim,
            m.self_attn.num_heads,
            m.linear1.out_features,
            dropout=_kw(m.dropout.p, 0.1),
            activation=_activation_of(m, build),
            layer_norm_eps=_kw(m.norm1.eps, 1e-5),
            batch_first=_kw(m.self_attn.batch_first, False),
            norm_first=_kw(m.norm_first, False),
            bias=_kw(m.linear1.bias is not None, True),
        )
        return LeafCode(init, passthrough, {kind})

    return make


def _transformer_stack(kind):
    def make(m, entry, build):
        layers = ListE(tuple(build(layer) for layer in m.layers))
        init = call(kind, layers, norm=build(m.norm) if m.norm is not None else None)
        return LeafCode(init, passthrough, {kind})

    return make


def _transformer(m, entry, build):
    return LeafCode(call("Transformer", build(m.encoder), build(m.decoder)), passthrough, {"Transformer"})


def _recurrent(kind):
    def make(m, entry, build):
        def layer(n_in):
            extra = {"nonlinearity": Raw("nn.relu")} if kind == "RNN" and m.nonlinearity == "relu" else {}
            return call(f"nn.{kind}", n_in, m.hidden_size, bias=_kw(m.bias, True), **extra)

        if m.num_layers == 1:
            init, cells = layer(m.input_size), "[{me}]"
            helpers = set()
        else:
            init = call(
                "_Stack", ListE(tuple(layer(m.input_size if k == 0 else m.hidden_size) for k in range(m.num_layers)))
            )
            cells, helpers = "{me}.layers", {"_Stack"}

        def emit(tr, node, me):
            tr.helpers.add("_recurrent")
            args = [tr.value(a) for a in node.args[1:]] + [f"{k}={tr.value(v)}" for k, v in node.kwargs.items()]
            hx = f", {args[0]}" if args else ""
            return Out(
                f"_recurrent({cells.format(me=me)}, {tr.tensor(node.args[0])}{hx}, batch_first={m.batch_first})",
                kind="seq",
            )

        return LeafCode(init, emit, helpers)

    return make


def _cell(kind):
    def make(m, entry, build):
        extra = {"nonlinearity": Raw("nn.relu")} if kind == "RNN" and getattr(m, "nonlinearity", "") == "relu" else {}
        init = call(f"nn.{kind}", m.input_size, m.hidden_size, bias=_kw(m.bias, True), **extra)

        def emit(tr, node, me):
            tr.helpers.add("_recurrent_cell")
            hx = f", {tr.value(node.args[1])}" if len(node.args) > 1 else ""
            return Out(
                f"_recurrent_cell({me}, {tr.tensor(node.args[0])}{hx})", kind="seq" if kind == "LSTM" else "tensor"
            )

        return LeafCode(init, emit)

    return make


def _simple(cls: str, *attrs, layout=elementwise):
    """A weightless MLX layer built from torch attributes (``("negative_slope", 0.01)`` pairs: name, default)."""

    def make(m, entry, build):
        kwargs = {}
        for spec in attrs:
            torch_name, mlx_name, default = spec if len(spec) == 3 else (spec[0], spec[0], spec[1])
            kwargs[mlx_name] = _kw(getattr(m, torch_name), default)
        return LeafCode(call(cls, **kwargs), layout)

    return make


def _gelu(m, entry, build):
    return LeafCode(call("nn.GELU", approx="precise" if m.approximate == "tanh" else None), elementwise)


def _inline_only(template_of, layout="cf", rank=None):
    """A layer written inline: ``template_of(module)`` gives the expression, ``{x}`` the input."""

    def make(m, entry, build):
        return LeafCode(None, inline(template_of(m), layout, rank))

    return make


def _softmax(fn, negate=False):
    def make(m, entry, build):
        dim = m.dim if m.dim is not None else -1
        return LeafCode(None, inline(f"{fn}({'-' if negate else ''}{{x}}, axis={dim})"))

    return make


def _hardtanh(m, entry, build):
    if (m.min_val, m.max_val) == (-1.0, 1.0):
        return LeafCode(call("nn.HardTanh"), elementwise)
    return LeafCode(None, inline(f"mx.clip({{x}}, {m.min_val!r}, {m.max_val!r})", "same"))


def _softplus(m, entry, build):
    if m.beta == 1:
        return LeafCode(call("nn.Softplus"), elementwise)
    return LeafCode(None, inline(f"nn.softplus({m.beta!r} * {{x}}) / {m.beta!r}", "same"))


def _pool(kind, d):
    def make(m, entry, build):
        stride = m.stride if m.stride is not None else m.kernel_size
        init = call(
            f"nn.{kind}{d}d",
            _tuple1(m.kernel_size),
            stride=_kw(_tuple1(stride), _tuple1(m.kernel_size)),
            padding=_kw(_tuple1(m.padding), 0),
        )
        return LeafCode(init, channels_last(d + 2))

    return make


def _adaptive(fn, d):
    axes = tuple(range(1, d + 1))
    return _inline_only(lambda m: f"mx.{fn}({{x}}, axis={axes}, keepdims=True)", "cl", d + 2)


def _dropout(cls, layout=elementwise):
    def make(m, entry, build):
        return LeafCode(call(cls, _kw(m.p, 0.5)), layout)

    return make


_MODES = {"nearest": "nearest", "linear": "linear", "bilinear": "linear", "trilinear": "linear", "bicubic": "cubic"}


def _upsample(m, entry, build):
    scale = m.scale_factor
    init = call(
        "nn.Upsample",
        scale_factor=tuple(scale) if isinstance(scale, (list, tuple)) else scale,
        mode=_kw(_MODES[m.mode], "nearest"),
        align_corners=_kw(bool(m.align_corners), False),
    )
    return LeafCode(init, channels_last(None))


def _flatten(m, entry, build):
    return LeafCode(None, inline(f"mx.flatten({{x}}, {m.start_dim}, {m.end_dim})"))


def _unflatten(m, entry, build):
    return LeafCode(None, inline(f"mx.unflatten({{x}}, {m.dim}, {tuple(m.unflattened_size)!r})"))


def _padding(mode):
    def make(m, entry, build):
        value = f", value={m.value!r}" if mode == "constant" and getattr(m, "value", 0) else ""
        return LeafCode(None, inline(f"_pad({{x}}, {tuple(m.padding)!r}, {mode!r}{value})", helpers=("_pad",)))

    return make


def _pixel_shuffle(m, entry, build):
    r = m.upscale_factor
    return LeafCode(
        None,
        inline(
            f"mx.transpose({{x}}.reshape({{x}}.shape[0], -1, {r}, {r}, *{{x}}.shape[2:]), (0, 1, 4, 2, 5, 3))"
            f".reshape({{x}}.shape[0], -1, {{x}}.shape[2] * {r}, {{x}}.shape[3] * {r})"
        ),
    )


def _pixel_unshuffle(m, entry, build):
    r = m.downscale_factor
    return LeafCode(
        None,
        inline(
            f"mx.transpose({{x}}.reshape({{x}}.shape[0], {{x}}.shape[1], {{x}}.shape[2] // {r}, {r}, "
            f"{{x}}.shape[3] // {r}, {r}), (0, 1, 3, 5, 2, 4)).reshape({{x}}.shape[0], -1, {{x}}.shape[2] // {r}, "
            f"{{x}}.shape[3] // {r})"
        ),
    )


def _channel_shuffle(m, entry, build):
    g = m.groups
    return LeafCode(
        None,
        inline(f"mx.swapaxes({{x}}.reshape({{x}}.shape[0], {g}, -1, *{{x}}.shape[2:]), 1, 2).reshape({{x}}.shape)"),
    )


def _identity(m, entry, build):
    return LeafCode(call("nn.Identity"), identity)


_ACT = {
    "ReLU": _simple("nn.ReLU"),
    "ReLU6": _simple("nn.ReLU6"),
    "SELU": _simple("nn.SELU"),
    "SiLU": _simple("nn.SiLU"),
    "Sigmoid": _simple("nn.Sigmoid"),
    "Tanh": _simple("nn.Tanh"),
    "Softsign": _simple("nn.Softsign"),
    "Hardswish": _simple("nn.Hardswish"),
    "Mish": _simple("nn.Mish"),
    "LogSigmoid": _simple("nn.LogSigmoid"),
    "LeakyReLU": _simple("nn.LeakyReLU", ("negative_slope", 0.01)),
    "ELU": _simple("nn.ELU", ("alpha", 1.0)),
    "CELU": _simple("nn.CELU", ("alpha", 1.0)),
    "Softshrink": _simple("nn.Softshrink", ("lambd", 0.5)),
    "Hardshrink": _simple("nn.HardShrink", ("lambd", 0.5)),
    "GELU": _gelu,
    "Softplus": _softplus,
    "Hardtanh": _hardtanh,
    "GLU": _simple("nn.GLU", ("dim", "axis", -1), layout=passthrough),
    "PReLU": _prelu,
    "Softmax": _softmax("mx.softmax"),
    "LogSoftmax": _softmax("nn.log_softmax"),
    "Softmin": _softmax("mx.softmax", negate=True),
    "Hardsigmoid": _inline_only(lambda m: "nn.relu6({x} + 3) / 6", "same"),
    "Tanhshrink": _inline_only(lambda m: "{x} - mx.tanh({x})", "same"),
    "Threshold": _inline_only(lambda m: f"mx.where({{x}} > {m.threshold!r}, {{x}}, {m.value!r})", "same"),
    "RReLU": _inline_only(lambda m: f"nn.leaky_relu({{x}}, {(m.lower + m.upper) / 2!r})", "same"),
    "Softmax2d": _inline_only(lambda m: "mx.softmax({x}, axis=-3)"),
}

LEAVES: dict[str, Callable] = {
    "torch.nn.Linear": _linear,
    "torch.nn.Bilinear": _bilinear,
    "torch.nn.Identity": _identity,
    "torch.nn.Embedding": _embedding,
    "transformers.pytorch_utils.Conv1D": _hf_conv1d,
    **{f"torch.nn.Conv{d}d": _conv(d) for d in (1, 2, 3)},
    **{f"torch.nn.ConvTranspose{d}d": _conv_transpose(d) for d in (1, 2, 3)},
    **{f"torch.nn.BatchNorm{d}d": _batch_norm(d) for d in (1, 2, 3)},
    "torch.nn.SyncBatchNorm": _batch_norm(2),
    "torch.nn.LayerNorm": _layer_norm,
    "torch.nn.RMSNorm": _rms_norm,
    "torch.nn.GroupNorm": _group_norm,
    **{f"torch.nn.InstanceNorm{d}d": _instance_norm(d) for d in (1, 2, 3)},
    "torch.nn.MultiheadAttention": _mha,
    "torch.nn.TransformerEncoderLayer": _transformer_layer("TransformerEncoderLayer"),
    "torch.nn.TransformerDecoderLayer": _transformer_layer("TransformerDecoderLayer"),
    "torch.nn.TransformerEncoder": _transformer_stack("TransformerEncoder"),
    "torch.nn.TransformerDecoder": _transformer_stack("TransformerDecoder"),
    "torch.nn.Transformer": _transformer,
    **{f"torch.nn.{k}": _recurrent(k) for k in ("LSTM", "GRU", "RNN")},
    **{f"torch.nn.{k}Cell": _cell(k) for k in ("LSTM", "GRU", "RNN")},
    **{f"torch.nn.{k}": v for k, v in _ACT.items()},
    **{f"torch.nn.MaxPool{d}d": _pool("MaxPool", d) for d in (1, 2, 3)},
    **{f"torch.nn.AvgPool{d}d": _pool("AvgPool", d) for d in (1, 2, 3)},
    **{f"torch.nn.AdaptiveAvgPool{d}d": _adaptive("mean", d) for d in (1, 2, 3)},
    **{f"torch.nn.AdaptiveMaxPool{d}d": _adaptive("max", d) for d in (1, 2, 3)},
    "torch.nn.Dropout": _dropout("nn.Dropout"),
    "torch.nn.Dropout1d": _dropout("nn.Dropout"),
    "torch.nn.Dropout2d": _dropout("nn.Dropout2d", channels_last(4)),
    "torch.nn.Dropout3d": _dropout("nn.Dropout3d", channels_last(5)),
    "torch.nn.AlphaDropout": _identity,
    "torch.nn.FeatureAlphaDropout": _identity,
    "torch.nn.Upsample": _upsample,
    "torch.nn.UpsamplingNearest2d": _upsample,
    "torch.nn.UpsamplingBilinear2d": _upsample,
    "torch.nn.PixelShuffle": _pixel_shuffle,
    "torch.nn.PixelUnshuffle": _pixel_unshuffle,
    "torch.nn.ChannelShuffle": _channel_shuffle,
    "torch.nn.Flatten": _flatten,
    "torch.nn.Unflatten": _unflatten,
    **{
        f"torch.nn.{p}Pad{d}d": _padding(m)
        for p, m in (
            ("Zero", "constant"),
            ("Constant", "constant"),
            ("Reflection", "reflect"),
            ("Replication", "replicate"),
        )
        for d in (1, 2, 3)
    },
}


def leaf_code(module, entry, build) -> LeafCode | None:
    """The MLX code of a registry layer, or None when the registry entry is none we write as a leaf."""
    make = LEAVES.get(entry.torch) if entry is not None else None
    return make(module, entry, build) if make is not None else None


# ---- MLX classes a model's own subclass of a registry layer extends -------------------------------------------


def _eps(m, default=1e-5):
    for name in ("eps", "variance_epsilon", "epsilon", "layer_norm_eps", "norm_eps"):
        v = getattr(m, name, None)
        if isinstance(v, float):
            return v
    return default


def base_constructor(module, entry, tensors: dict) -> Call | None:
    """``super().__init__`` arguments for a model's own class the registry maps to an mlx.nn class.

    Read from the tensors' shapes and the usual attribute names, as the registry recognises
    the class: a ``*RMSNorm`` holds ``weight``, a ``*LayerNorm`` ``weight`` and maybe ``bias``.
    """
    mlx = entry.mlx or ""
    w = tensors.get("weight")
    if mlx == "mlx.nn.RMSNorm" and w is not None:
        return call("nn.RMSNorm", w.shape[0], eps=_kw(_eps(module), 1e-5))
    if mlx == "mlx.nn.LayerNorm" and w is not None:
        return call("nn.LayerNorm", w.shape[0], eps=_kw(_eps(module), 1e-5), bias=_kw("bias" in tensors, True))
    if mlx == "mlx.nn.Embedding" and w is not None:
        return call("nn.Embedding", w.shape[0], w.shape[1])
    if mlx == "mlx.nn.Linear" and w is not None and w.ndim == 2:
        return call("nn.Linear", w.shape[1], w.shape[0], bias=_kw("bias" in tensors, True))
    return None
