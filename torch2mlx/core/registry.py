"""Layer registry: each torch layer type, its MLX equivalent and how its tensors become MLX tensors.

An entry answers three questions about a torch module type: what is it in
MLX (``mlx``; None when MLX has nothing equivalent), which rule turns each of
its own parameters and buffers into MLX layout (and under which name), and
which buffers MLX does not keep. Layers whose tensors do not map one to one
(MultiheadAttention's packed projection, the recurrent layers' per-layer
weights and paired biases) have an ``expand`` function over the module's
attributes. A ``check`` names a configuration MLX's layer cannot express.

Nothing here imports torch: entries are keyed by class path, and the
functions read plain attributes of a module handed to them by the analyzer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import rules as _rules


@dataclass(frozen=True)
class TensorMap:
    """One MLX tensor made from one or more tensors of the same module (names relative to it)."""

    mlx: str
    sources: tuple[str, ...]
    rule: str = "identity"
    args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Layer:
    torch: str  # "torch.nn.Conv2d", "transformers.pytorch_utils.Conv1D", ...
    mlx: str | None  # the MLX equivalent; None: MLX has none
    kind: str  # section of the support matrix
    rules: dict = field(default_factory=dict)  # torch tensor -> rule (default identity)
    renames: dict = field(default_factory=dict)  # torch tensor or child module -> MLX name
    dropped: dict = field(default_factory=dict)  # torch buffer -> why MLX does not keep it
    note: str = ""
    expand: Callable | None = None  # (module, tensor names) -> [TensorMap] for tensors that are not 1:1
    check: Callable | None = None  # module -> why this configuration has no MLX equivalent, or None
    tensors_doc: str = ""  # how the tensors map, for layers with ``expand``

    @property
    def supported(self) -> bool:
        return self.mlx is not None

    def child_name(self, name: str) -> str:
        return self.renames.get(name, name)

    def tensor_maps(self, module, names: list[str]) -> tuple[list[TensorMap], dict[str, str]]:
        """The module's own tensors (``names``) as MLX tensors, and the buffers dropped with a reason."""
        maps = list(self.expand(module, names)) if self.expand else []
        handled = {s for m in maps for s in m.sources}
        dropped = {}
        for n in names:
            if n in handled:
                continue
            if n in self.dropped:
                dropped[n] = self.dropped[n]
            else:
                maps.append(TensorMap(self.renames.get(n, n), (n,), self.rules.get(n, "identity")))
        return maps, dropped

    def describe_tensors(self) -> str:
        parts = [self.tensors_doc] if self.tensors_doc else []
        parts += [f"`{t}`: {r}" for t, r in self.rules.items()]
        parts += [f"`{t}` -> `{m}`" for t, m in self.renames.items()]
        parts += [f"`{t}` dropped" for t in self.dropped]
        return "; ".join(parts)


@dataclass(frozen=True)
class Family:
    """Entries for many classes of one library recognised by name and tensors (every ``*RMSNorm`` of transformers).

    The tensors matter: a rotary ``*Embedding`` holds none and is no embedding table.
    """

    layer: Layer
    module_prefix: str
    suffix: str
    tensors: frozenset | None = None  # the module's own tensors are among these; None: any, but some

    def matches(self, cls, names) -> bool:
        if not names or (self.tensors is not None and not set(names) <= self.tensors):
            return False
        return cls.__module__.startswith(self.module_prefix) and cls.__name__.endswith(self.suffix)


#: What the analyzer does with a module type the registry does not name but that holds tensors itself.
CUSTOM = Layer(
    "(any other module holding parameters)",
    "its parameters kept as they are",
    "custom",
    note="class tokens, layer scales, position biases, expert stacks: the parameters keep their "
    "layout (a parameter the module passes to a functional convolution gets the conv rule)",
)


# --- checks and expansions -------------------------------------------------------------------------------


def _attr(module, name, default=None):
    return getattr(module, name, default)


def _padding_mode(module):
    """not expressible: padding_mode='circular'."""
    mode = _attr(module, "padding_mode", "zeros")
    if mode == "circular":
        return "padding_mode='circular' (MLX's mx.pad has no circular mode)"
    return None


def _conv3d(module):
    """not expressible: groups > 1, padding_mode='circular'."""
    if _attr(module, "groups", 1) != 1:
        return f"groups={module.groups} (MLX Conv3d has no groups)"
    return _padding_mode(module)


def _conv_transpose(module):
    """not expressible: groups > 1, padding_mode='circular'."""
    if _attr(module, "groups", 1) != 1:
        return f"groups={module.groups} (MLX ConvTranspose has no groups)"
    return _padding_mode(module)


def _trailing_axes(module):
    """not expressible: normalized_shape over more than one axis."""
    shape = _attr(module, "normalized_shape", ()) or ()
    if len(tuple(shape)) > 1:
        return f"normalizes over {len(tuple(shape))} trailing axes (MLX normalizes the last axis only)"
    return None


def _instance_norm(module):
    """not expressible: track_running_stats=True."""
    if _attr(module, "track_running_stats", False):
        return "track_running_stats=True (torch uses running statistics in eval; MLX InstanceNorm never does)"
    return None


def _embedding(module):
    """not expressible: max_norm."""
    if _attr(module, "max_norm") is not None:
        return "max_norm renormalizes rows at lookup time (MLX Embedding does not)"
    return None


def _adaptive_pool(module):
    """not expressible: output_size other than 1."""
    size = _attr(module, "output_size", 1)
    sizes = size if isinstance(size, (tuple, list)) else (size,)
    if any(s not in (1, None) for s in sizes):
        return f"output_size={size} (only global pooling, output size 1, is a plain reduction in MLX)"
    return None


def _avg_pool(module):
    """not expressible: ceil_mode=True; count_include_pad=False with padding."""
    if _attr(module, "ceil_mode", False):
        return "ceil_mode=True (MLX pooling floors the output size)"
    pad = _attr(module, "padding", 0)
    if not _attr(module, "count_include_pad", True) and any(p for p in (pad if isinstance(pad, tuple) else (pad,))):
        return "count_include_pad=False with padding (MLX averages over the zero padding)"
    return None


def _max_pool(module):
    """not expressible: ceil_mode=True, dilation > 1, return_indices=True."""
    if _attr(module, "ceil_mode", False):
        return "ceil_mode=True (MLX pooling floors the output size)"
    dil = _attr(module, "dilation", 1)
    if any(d != 1 for d in (dil if isinstance(dil, tuple) else (dil,))):
        return "dilation > 1 (MLX pooling has no dilation)"
    if _attr(module, "return_indices", False):
        return "return_indices=True (MLX pooling returns values only)"
    return None


def _upsample(module):
    """not expressible: mode 'area' / 'nearest-exact'; a fixed output size."""
    if _attr(module, "mode", "nearest") not in ("nearest", "linear", "bilinear", "trilinear", "bicubic"):
        return f"mode={module.mode!r} (MLX Upsample has nearest, linear and cubic)"
    if _attr(module, "scale_factor") is None:
        return "a fixed output size (MLX Upsample takes a scale factor)"
    return None


def _mha(module):
    """not expressible: add_bias_kv=True, add_zero_attn=True."""
    if _attr(module, "bias_k") is not None:
        return "add_bias_kv=True (MLX MultiHeadAttention has no learned key/value bias rows)"
    if _attr(module, "add_zero_attn", False):
        return "add_zero_attn=True (MLX MultiHeadAttention has no zero attention row)"
    return None


def _expand_mha(module, names):
    maps = []
    if "in_proj_weight" in names:
        maps += [
            TensorMap(f"{p}.weight", ("in_proj_weight",), "split", {"parts": 3, "index": i})
            for i, p in enumerate(_MHA_PROJ)
        ]
    for t, p in zip(("q_proj_weight", "k_proj_weight", "v_proj_weight"), _MHA_PROJ, strict=True):
        if t in names:
            maps.append(TensorMap(f"{p}.weight", (t,)))
    if "in_proj_bias" in names:
        maps += [
            TensorMap(f"{p}.bias", ("in_proj_bias",), "split", {"parts": 3, "index": i})
            for i, p in enumerate(_MHA_PROJ)
        ]
    return maps


_MHA_PROJ = ("query_proj", "key_proj", "value_proj")
# MLX parameter names per recurrent kind: input weights, hidden weights, bias.
_RNN_NAMES = {"LSTM": ("Wx", "Wh", "bias"), "GRU": ("Wx", "Wh", "b"), "RNN": ("Wxh", "Whh", "bias")}


def _recurrent(module):
    """not expressible: bidirectional=True (reported as a blocker), proj_size > 0."""
    if _attr(module, "bidirectional", False):
        return "bidirectional=True (MLX recurrent layers run one direction; the reverse weights get reverse.* names)"
    if _attr(module, "proj_size", 0):
        return f"proj_size={module.proj_size} (MLX LSTM has no hidden-state projection)"
    return None


def _recurrent_expander(kind: str):
    wx, wh, bias = _RNN_NAMES[kind]

    def expand(module, names):
        layers = _attr(module, "num_layers", 1)
        groups = [("", "")] if "weight_ih" in names else []  # a cell
        for k in range(layers):
            for rev in (False, True):
                tag = f"_l{k}" + ("_reverse" if rev else "")
                if "weight_ih" + tag in names:
                    stem = (
                        f"{'reverse_layers' if rev else 'layers'}.{k}." if layers > 1 else ("reverse." if rev else "")
                    )
                    groups.append((tag, stem))
        maps = []
        for tag, stem in groups:
            maps += [TensorMap(stem + wx, ("weight_ih" + tag,)), TensorMap(stem + wh, ("weight_hh" + tag,))]
            b_ih, b_hh = "bias_ih" + tag, "bias_hh" + tag
            if b_ih not in names or b_hh not in names:
                continue
            if kind == "GRU":
                maps.append(TensorMap(stem + bias, (b_ih, b_hh), "gru_input_bias", {"hidden": module.hidden_size}))
                maps.append(TensorMap(stem + "bhn", (b_hh,), "split", {"parts": 3, "index": 2}))
            else:
                maps.append(TensorMap(stem + bias, (b_ih, b_hh), "sum"))
        return maps

    return expand


_RNN_DOC = {
    "LSTM": "`weight_ih_lK` -> `Wx`, `weight_hh_lK` -> `Wh`, `bias_ih_lK + bias_hh_lK` -> `bias` (sum); "
    "with num_layers > 1 each layer under `layers.K.`",
    "GRU": "`weight_ih_lK` -> `Wx`, `weight_hh_lK` -> `Wh`, `bias_ih_lK` + reset/update thirds of `bias_hh_lK` "
    "-> `b` (gru_input_bias), new-gate third of `bias_hh_lK` -> `bhn` (split); "
    "with num_layers > 1 each layer under `layers.K.`",
    "RNN": "`weight_ih_lK` -> `Wxh`, `weight_hh_lK` -> `Whh`, `bias_ih_lK + bias_hh_lK` -> `bias` (sum); "
    "with num_layers > 1 each layer under `layers.K.`",
}


# --- entries -----------------------------------------------------------------------------------------------

_CHANNELS_LAST = "MLX convolutions take channels-last input (N, *spatial, C)"
_EVAL_NOOP = "a no-op at inference"

LAYERS: list[Layer] = [
    # linear and embeddings
    Layer("torch.nn.Linear", "mlx.nn.Linear", "linear"),
    Layer("torch.nn.Bilinear", "mlx.nn.Bilinear", "linear", rules={"weight": "bilinear"}),
    Layer("torch.nn.Identity", "mlx.nn.Identity", "linear"),
    Layer("torch.nn.LazyLinear", None, "linear", note="uninitialized; run one forward pass first"),
    Layer(
        "torch.nn.Embedding",
        "mlx.nn.Embedding",
        "embedding",
        check=_embedding,
        note="padding_idx only affects gradients",
    ),
    Layer("torch.nn.EmbeddingBag", None, "embedding", note="bagged lookups: gather rows and reduce by hand"),
    # convolutions
    *[
        Layer(
            f"torch.nn.Conv{d}d",
            f"mlx.nn.Conv{d}d",
            "convolution",
            rules={"weight": f"conv{d}d"},
            check=_conv3d if d == 3 else _padding_mode,
            note=_CHANNELS_LAST,
        )
        for d in (1, 2, 3)
    ],
    *[
        Layer(
            f"torch.nn.ConvTranspose{d}d",
            f"mlx.nn.ConvTranspose{d}d",
            "convolution",
            rules={"weight": f"conv_transpose{d}d"},
            check=_conv_transpose,
            note=_CHANNELS_LAST,
        )
        for d in (1, 2, 3)
    ],
    *[
        Layer(f"torch.nn.Lazy{c}{d}d", None, "convolution", note="uninitialized; run one forward pass first")
        for c in ("Conv", "ConvTranspose")
        for d in (1, 2, 3)
    ],
    Layer("torch.nn.Fold", None, "convolution", note="col2im; no MLX counterpart"),
    Layer("torch.nn.Unfold", None, "convolution", note="im2col; no MLX counterpart"),
    # normalization
    *[
        Layer(
            f"torch.nn.BatchNorm{d}d",
            "mlx.nn.BatchNorm",
            "normalization",
            dropped={"num_batches_tracked": "a training step counter; MLX BatchNorm has none"},
            note="normalizes the last (channels-last) axis"
            + (
                "; MLX BatchNorm takes at most 4-D input: flatten the spatial axes (N, D*H*W, C) and back"
                if d == 3
                else ""
            ),
        )
        for d in (1, 2, 3)
    ],
    Layer(
        "torch.nn.SyncBatchNorm",
        "mlx.nn.BatchNorm",
        "normalization",
        dropped={"num_batches_tracked": "a training step counter; MLX BatchNorm has none"},
    ),
    *[Layer(f"torch.nn.LazyBatchNorm{d}d", None, "normalization", note="uninitialized") for d in (1, 2, 3)],
    Layer("torch.nn.LayerNorm", "mlx.nn.LayerNorm", "normalization", check=_trailing_axes),
    Layer("torch.nn.RMSNorm", "mlx.nn.RMSNorm", "normalization", check=_trailing_axes),
    Layer("torch.nn.GroupNorm", "mlx.nn.GroupNorm", "normalization", note="construct with pytorch_compatible=True"),
    *[
        Layer(
            f"torch.nn.InstanceNorm{d}d",
            "mlx.nn.InstanceNorm",
            "normalization",
            check=_instance_norm,
            dropped={"num_batches_tracked": "a training step counter; MLX InstanceNorm has none"},
        )
        for d in (1, 2, 3)
    ],
    *[Layer(f"torch.nn.LazyInstanceNorm{d}d", None, "normalization", note="uninitialized") for d in (1, 2, 3)],
    Layer("torch.nn.LocalResponseNorm", None, "normalization"),
    Layer("torch.nn.CrossMapLRN2d", None, "normalization"),
    # attention and transformer blocks
    Layer(
        "torch.nn.MultiheadAttention",
        "mlx.nn.MultiHeadAttention",
        "attention",
        expand=_expand_mha,
        check=_mha,
        tensors_doc="`in_proj_weight`/`in_proj_bias` -> `query_proj`/`key_proj`/`value_proj` (split in 3); "
        "`q/k/v_proj_weight` -> `query/key/value_proj.weight`",
        note="construct with bias=True when torch has biases; MLX takes batch-first input",
    ),
    Layer(
        "torch.nn.TransformerEncoderLayer",
        "mlx.nn.TransformerEncoderLayer",
        "attention",
        renames={"self_attn": "attention", "norm1": "ln1", "norm2": "ln2"},
        note="MLX builds its attention without biases and defaults to norm_first=True",
    ),
    Layer(
        "torch.nn.TransformerDecoderLayer",
        "mlx.nn.TransformerDecoderLayer",
        "attention",
        renames={
            "self_attn": "self_attention",
            "multihead_attn": "cross_attention",
            "norm1": "ln1",
            "norm2": "ln2",
            "norm3": "ln3",
        },
        note="MLX builds its attention without biases and defaults to norm_first=True",
    ),
    Layer("torch.nn.TransformerEncoder", "mlx.nn.TransformerEncoder", "attention", renames={"norm": "ln"}),
    Layer("torch.nn.TransformerDecoder", "mlx.nn.TransformerDecoder", "attention", renames={"norm": "ln"}),
    Layer("torch.nn.Transformer", "mlx.nn.Transformer", "attention"),
    # recurrent
    *[
        Layer(
            f"torch.nn.{k}",
            f"mlx.nn.{k}",
            "recurrent",
            expand=_recurrent_expander(k),
            check=_recurrent,
            tensors_doc=_RNN_DOC[k],
            note="MLX takes batch-first input"
            + ("; nonlinearity='relu' -> nonlinearity=nn.relu" if k == "RNN" else ""),
        )
        for k in ("LSTM", "GRU", "RNN")
    ],
    *[
        Layer(
            f"torch.nn.{k}Cell",
            f"mlx.nn.{k}",
            "recurrent",
            expand=_recurrent_expander(k),
            tensors_doc=_RNN_DOC[k].replace("_lK", "").split("; with")[0],
            note="one step: a length-1 sequence",
        )
        for k in ("LSTM", "GRU", "RNN")
    ],
    Layer("torch.nn.RNNBase", None, "recurrent", note="use RNN, LSTM or GRU"),
    Layer("torch.nn.RNNCellBase", None, "recurrent", note="use RNNCell, LSTMCell or GRUCell"),
    # activations
    *[
        Layer(f"torch.nn.{t}", f"mlx.nn.{m}", "activation")
        for t, m in (
            ("ReLU", "ReLU"),
            ("ReLU6", "ReLU6"),
            ("LeakyReLU", "LeakyReLU"),
            ("ELU", "ELU"),
            ("CELU", "CELU"),
            ("SELU", "SELU"),
            ("GELU", "GELU"),
            ("SiLU", "SiLU"),
            ("Sigmoid", "Sigmoid"),
            ("Tanh", "Tanh"),
            ("Softmax", "Softmax"),
            ("LogSoftmax", "LogSoftmax"),
            ("Softmin", "Softmin"),
            ("Softplus", "Softplus"),
            ("Softsign", "Softsign"),
            ("Softshrink", "Softshrink"),
            ("Hardshrink", "HardShrink"),
            ("Hardtanh", "HardTanh"),
            ("Hardswish", "Hardswish"),
            ("Mish", "Mish"),
            ("GLU", "GLU"),
            ("LogSigmoid", "LogSigmoid"),
            ("PReLU", "PReLU"),
        )
    ],
    Layer("torch.nn.Hardsigmoid", "mlx.nn.relu6(x + 3) / 6", "activation"),
    Layer("torch.nn.Tanhshrink", "x - mx.tanh(x)", "activation"),
    Layer("torch.nn.Threshold", "mx.where(x > threshold, x, value)", "activation"),
    Layer("torch.nn.RReLU", "mlx.nn.LeakyReLU((lower + upper) / 2)", "activation", note="its inference behaviour"),
    Layer("torch.nn.Softmax2d", "mlx.nn.Softmax over the channel axis", "activation"),
    # pooling
    *[Layer(f"torch.nn.MaxPool{d}d", f"mlx.nn.MaxPool{d}d", "pooling", check=_max_pool) for d in (1, 2, 3)],
    *[Layer(f"torch.nn.AvgPool{d}d", f"mlx.nn.AvgPool{d}d", "pooling", check=_avg_pool) for d in (1, 2, 3)],
    *[
        Layer(f"torch.nn.AdaptiveAvgPool{d}d", "mx.mean over the spatial axes", "pooling", check=_adaptive_pool)
        for d in (1, 2, 3)
    ],
    *[
        Layer(f"torch.nn.AdaptiveMaxPool{d}d", "mx.max over the spatial axes", "pooling", check=_adaptive_pool)
        for d in (1, 2, 3)
    ],
    *[Layer(f"torch.nn.LPPool{d}d", None, "pooling") for d in (1, 2, 3)],
    *[Layer(f"torch.nn.FractionalMaxPool{d}d", None, "pooling") for d in (2, 3)],
    *[Layer(f"torch.nn.MaxUnpool{d}d", None, "pooling") for d in (1, 2, 3)],
    # dropout
    Layer("torch.nn.Dropout", "mlx.nn.Dropout", "dropout"),
    Layer("torch.nn.Dropout1d", "mlx.nn.Dropout", "dropout", note=_EVAL_NOOP),
    Layer("torch.nn.Dropout2d", "mlx.nn.Dropout2d", "dropout"),
    Layer("torch.nn.Dropout3d", "mlx.nn.Dropout3d", "dropout"),
    Layer("torch.nn.AlphaDropout", "mlx.nn.Identity", "dropout", note=_EVAL_NOOP),
    Layer("torch.nn.FeatureAlphaDropout", "mlx.nn.Identity", "dropout", note=_EVAL_NOOP),
    # resampling, reshaping, padding
    Layer("torch.nn.Upsample", "mlx.nn.Upsample", "shape", check=_upsample),
    Layer("torch.nn.UpsamplingNearest2d", "mlx.nn.Upsample(mode='nearest')", "shape", check=_upsample),
    Layer(
        "torch.nn.UpsamplingBilinear2d", "mlx.nn.Upsample(mode='linear', align_corners=True)", "shape", check=_upsample
    ),
    Layer("torch.nn.PixelShuffle", "mx.reshape + mx.transpose", "shape"),
    Layer("torch.nn.PixelUnshuffle", "mx.reshape + mx.transpose", "shape"),
    Layer("torch.nn.ChannelShuffle", "mx.reshape + mx.swapaxes", "shape"),
    Layer("torch.nn.Flatten", "mx.flatten", "shape"),
    Layer("torch.nn.Unflatten", "mx.unflatten", "shape"),
    *[
        Layer(f"torch.nn.{p}Pad{d}d", f"mx.pad(mode='{m}')", "shape")
        for p, m in (("Zero", "constant"), ("Constant", "constant"), ("Reflection", "reflect"), ("Replication", "edge"))
        for d in (1, 2, 3)
    ],
    *[Layer(f"torch.nn.CircularPad{d}d", None, "shape", note="mx.pad has no circular mode") for d in (1, 2, 3)],
    Layer("torch.nn.CosineSimilarity", "x1 * x2 summed over the norms (mx ops)", "shape"),
    Layer("torch.nn.PairwiseDistance", "mx.linalg.norm(x1 - x2 + eps)", "shape"),
    # containers: torch names are kept (an MLX list attribute gives the same N. names; mlx.nn.Sequential
    # would put its children under layers.N.)
    Layer(
        "torch.nn.Sequential",
        "mlx.nn.Sequential / a list",
        "container",
        note="names kept; an mlx.nn.Sequential stores its children under `layers.`",
    ),
    Layer("torch.nn.ModuleList", "a list of modules", "container"),
    Layer("torch.nn.ModuleDict", "a dict of modules", "container"),
    Layer("torch.nn.ParameterList", "a list of arrays", "container"),
    Layer("torch.nn.ParameterDict", "a dict of arrays", "container"),
    Layer("torch.nn.Container", "a dict of modules", "container"),
    Layer("torch.nn.Module", "mlx.nn.Module", "container", note="a bare Module used as a namespace"),
    # losses (modules that appear inside models; MLX has them as functions)
    *[
        Layer(f"torch.nn.{t}", f"mlx.nn.losses.{m}" if m else None, "loss")
        for t, m in (
            ("CrossEntropyLoss", "cross_entropy"),
            ("NLLLoss", "nll_loss"),
            ("NLLLoss2d", "nll_loss"),
            ("MSELoss", "mse_loss"),
            ("L1Loss", "l1_loss"),
            ("BCELoss", "binary_cross_entropy"),
            ("BCEWithLogitsLoss", "binary_cross_entropy"),
            ("HuberLoss", "huber_loss"),
            ("SmoothL1Loss", "smooth_l1_loss"),
            ("KLDivLoss", "kl_div_loss"),
            ("GaussianNLLLoss", "gaussian_nll_loss"),
            ("MarginRankingLoss", "margin_ranking_loss"),
            ("TripletMarginLoss", "triplet_loss"),
            ("CosineEmbeddingLoss", None),
            ("HingeEmbeddingLoss", None),
            ("CTCLoss", None),
            ("PoissonNLLLoss", None),
            ("MultiMarginLoss", None),
            ("MultiLabelMarginLoss", None),
            ("MultiLabelSoftMarginLoss", None),
            ("SoftMarginLoss", None),
            ("TripletMarginWithDistanceLoss", None),
            ("AdaptiveLogSoftmaxWithLoss", None),
            ("LinearCrossEntropyLoss", None),
        )
    ],
    # transformers leaf types
    Layer(
        "transformers.pytorch_utils.Conv1D",
        "mlx.nn.Linear",
        "transformers",
        rules={"weight": "linear_transposed"},
        note="GPT-2's Conv1D is a Linear with its weight stored (in, out)",
    ),
    Layer(
        "transformers.models.t5.modeling_t5.T5LayerNorm",
        "mlx.nn.RMSNorm",
        "transformers",
        note="T5's LayerNorm has no mean and no bias: an RMSNorm",
    ),
    *[
        Layer(
            f"transformers.models.{m}.modeling_{m}.{c}",
            "mlx.nn.Embedding",
            "transformers",
            note="positions start at index 2 (the table has 2 extra rows)",
        )
        for m, c in (("bart", "BartLearnedPositionalEmbedding"), ("opt", "OPTLearnedPositionalEmbedding"))
    ],
]

FAMILIES: list[Family] = [
    Family(
        Layer(
            "transformers *RMSNorm",
            "mlx.nn.RMSNorm",
            "transformers",
            note="Gemma-style norms scale by (1 + weight): the analyzer notes those",
        ),
        "transformers.",
        "RMSNorm",
        frozenset({"weight"}),
    ),
    Family(
        Layer(
            "transformers *LayerNorm",
            "mlx.nn.LayerNorm",
            "transformers",
            note="a channels-first variant normalizes the channel axis, the last one in MLX; one whose "
            "forward subtracts no mean (T5's and its copies) is an RMSNorm: the analyzer reads that",
        ),
        "transformers.",
        "LayerNorm",
        frozenset({"weight", "bias"}),
    ),
    Family(
        Layer(
            "transformers *Embedding",
            "mlx.nn.Embedding",
            "transformers",
            note="scaled and positional variants: same table, scaling stays in the model code",
        ),
        "transformers.",
        "Embedding",
        frozenset({"weight"}),
    ),
    Family(
        Layer(
            "transformers *Experts",
            "stacked expert weights (mlx-lm SwitchGLU)",
            "transformers",
            note="fused (experts, 2*I, H) gate_up and (experts, H, I) down projections; checkpoints hold "
            "them per expert, kept so",
        ),
        "transformers.",
        "Experts",
    ),
    Family(
        Layer("transformers *Router", "mlx.nn.Linear", "transformers"),
        "transformers.",
        "Router",
        frozenset({"weight", "bias"}),
    ),
]

_BY_KEY: dict[str, Layer] = {}
for _layer in LAYERS:
    if _layer.torch in _BY_KEY:
        raise RuntimeError(f"two registry entries for {_layer.torch}")
    _BY_KEY[_layer.torch] = _layer
for _layer in LAYERS:
    for _t, _r in _layer.rules.items():
        _rules.get(_r)  # every rule named here exists


def class_key(cls) -> str:
    """The registry key of a class: torch.nn layers by their public name, others by module path."""
    mod = cls.__module__
    if mod.startswith("torch.nn.modules."):
        return "torch.nn." + cls.__name__
    return f"{mod}.{cls.__qualname__}"


def is_torch_builtin(cls) -> bool:
    return cls.__module__.startswith("torch.")


def lookup(cls, names=()) -> Layer | None:
    """The entry for a module class: its own or its nearest registered base's, else a family's.

    ``names`` are the module's own tensors (families recognise classes by them too).
    """
    for base in cls.__mro__:
        if base is not cls and base.__name__ == "Module" and base.__module__ == "torch.nn.modules.module":
            break
        entry = _BY_KEY.get(class_key(base))
        if entry is not None:
            return entry
    for fam in FAMILIES:
        if fam.matches(cls, names):
            return fam.layer
    return None


def get(key: str) -> Layer:
    """The entry named ``key``: a class path, or a family's name ("transformers *RMSNorm")."""
    if key in _BY_KEY:
        return _BY_KEY[key]
    return next(f.layer for f in FAMILIES if f.layer.torch == key)


def counts() -> dict[str, int]:
    """The numbers the README quotes, computed here so nobody types them."""
    from . import dtypes, ops

    return {
        "layers": sum(1 for l in LAYERS if l.supported),
        "layers_listed": len(LAYERS),
        "families": len(FAMILIES),
        "ops": len(ops.OPS),
        "rules": len(_rules.RULES),
        "dtypes": len(dtypes.DTYPES),
    }
