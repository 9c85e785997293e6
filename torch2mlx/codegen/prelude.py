"""Helpers a generated file defines when its code uses them: MLX source text, emitted once, in order.

Each helper is plain MLX code with torch's calling convention, so a traced call
translates one to one. The names start with an underscore or are torch's layer
names (``MultiheadAttention``); the generator keeps its own classes clear of them.
"""

from __future__ import annotations

# name -> (source, helpers it uses)
HELPERS: dict[str, tuple[str, tuple[str, ...]]] = {}


def _helper(name: str, source: str, *uses: str) -> None:
    HELPERS[name] = (source.strip("\n"), uses)


_helper(
    "_cl",
    '''
def _cl(x):
    """torch's channels-first (N, C, *spatial) as MLX's channels-last (N, *spatial, C)."""
    return mx.moveaxis(x, 1, -1) if x.ndim > 2 else x
''',
)

_helper(
    "_cf",
    '''
def _cf(x):
    """MLX's channels-last (N, *spatial, C) back to torch's channels-first (N, C, *spatial)."""
    return mx.moveaxis(x, -1, 1) if x.ndim > 2 else x
''',
)

_helper(
    "_todo",
    '''
def _todo(what, *args, **kwargs):
    """A torch construct with no translation yet: port it by hand (see the TODO of the class)."""
    raise NotImplementedError(f"no MLX translation for {what}")
''',
)

_helper(
    "_Output",
    '''
class _Output(dict):
    """What a transformers module returns (a ModelOutput): fields by name or attribute, in order by index."""

    def __getattr__(self, name):
        return self.get(name)

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return tuple(self.values())[key]
        return super().__getitem__(key)
''',
)

_helper(
    "_expand",
    '''
def _expand(x, *sizes):
    """torch's Tensor.expand: -1 keeps a size; new leading axes may be added."""
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    lead = len(sizes) - x.ndim
    shape = [x.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes)]
    return mx.broadcast_to(x, shape)
''',
)

_helper(
    "_split",
    '''
def _split(x, size, axis=0):
    """torch.split: pieces of ``size`` along ``axis`` (the last may be shorter), or a list of sizes."""
    n = x.shape[axis]
    if isinstance(size, int):
        cuts = list(range(size, n, size))
    else:
        cuts, total = [], 0
        for s in size[:-1]:
            total += s
            cuts.append(total)
    return mx.split(x, cuts, axis=axis)
''',
)

_helper(
    "_chunk",
    '''
def _chunk(x, chunks, axis=0):
    """torch.chunk: pieces of ceil(n / chunks) along ``axis``."""
    size = -(-x.shape[axis] // chunks)
    return mx.split(x, list(range(size, x.shape[axis], size)), axis=axis)
''',
)

_helper(
    "_unbind",
    '''
def _unbind(x, axis=0):
    """torch.unbind: the slices along ``axis``, that axis removed."""
    return tuple(mx.take(x, i, axis=axis) for i in range(x.shape[axis]))
''',
)

_helper(
    "_pad",
    '''
def _pad(x, pad, mode="constant", value=0.0):
    """torch.nn.functional.pad: ``pad`` lists (before, after) pairs from the last axis backwards."""
    pairs = [(pad[i], pad[i + 1]) for i in range(0, len(pad), 2)]
    widths = [(0, 0)] * (x.ndim - len(pairs)) + pairs[::-1]
    mode = {"replicate": "edge", "reflect": "reflect", "constant": "constant"}[mode]
    if mode == "constant":
        return mx.pad(x, widths, mode=mode, constant_values=0.0 if value is None else value)
    return mx.pad(x, widths, mode=mode)
''',
)

_helper(
    "_diff",
    '''
def _diff(x, n=1, axis=-1, prepend=None, append=None):
    """torch.diff: n-th differences along ``axis``, after ``prepend`` / ``append``."""
    parts = [p for p in (prepend, x, append) if p is not None]
    x = mx.concatenate(parts, axis=axis) if len(parts) > 1 else x
    for _ in range(n):
        m = x.shape[axis]
        x = mx.take(x, mx.arange(1, m), axis=axis) - mx.take(x, mx.arange(0, m - 1), axis=axis)
    return x
''',
)

_helper(
    "_topk",
    '''
def _topk(x, k, axis=-1, largest=True, sorted=True):
    """torch.topk: (values, indices), largest first (MLX's mx.topk gives values only, unordered)."""
    order = mx.argsort(-x if largest else x, axis=axis)
    indices = mx.take(order, mx.arange(k), axis=axis)
    return mx.take_along_axis(x, indices, axis=axis), indices
''',
)

_helper(
    "_max",
    '''
def _max(x, axis, keepdims=False):
    """torch.max(x, dim): (values, indices)."""
    return mx.max(x, axis=axis, keepdims=keepdims), mx.argmax(x, axis=axis, keepdims=keepdims)
''',
)

_helper(
    "_min",
    '''
def _min(x, axis, keepdims=False):
    """torch.min(x, dim): (values, indices)."""
    return mx.min(x, axis=axis, keepdims=keepdims), mx.argmin(x, axis=axis, keepdims=keepdims)
''',
)

_helper(
    "_squeeze",
    '''
def _squeeze(x, axis=None):
    """torch.squeeze: an axis whose size is not 1 is left alone (MLX would raise)."""
    if axis is None:
        return mx.squeeze(x)
    axes = [a for a in (axis if isinstance(axis, (tuple, list)) else (axis,)) if x.shape[a] == 1]
    return mx.squeeze(x, axes) if axes else x
''',
)

_helper(
    "_attention_mask",
    '''
def _attention_mask(mask, dtype):
    """torch's attention masks as an additive MLX mask: boolean True means 'do not attend' in torch."""
    if mask is None or mask.dtype != mx.bool_:
        return mask
    return mx.where(mask, mx.array(-mx.inf, dtype), mx.array(0, dtype))
''',
)

_helper(
    "_sdpa_mask",
    '''
def _sdpa_mask(mask, dtype):
    """F.scaled_dot_product_attention's mask as MLX's: boolean True means 'attend' in both; floats add."""
    if mask is None or mask.dtype == mx.bool_:
        return mask
    return mask.astype(dtype)
''',
)

_helper(
    "_causal",
    '''
def _causal(q, k):
    """torch's is_causal mask (top-left aligned, as F.scaled_dot_product_attention builds it)."""
    lq, lk = q.shape[-2], k.shape[-2]
    return mx.tril(mx.ones((lq, lk), dtype=mx.bool_))
''',
)

_helper(
    "MultiheadAttention",
    '''
class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention: same arguments and results (output, averaged weights or None).

    Its projections are named as torch2mlx converts torch's packed ``in_proj_weight``:
    ``query_proj``, ``key_proj``, ``value_proj`` and ``out_proj``.
    """

    def __init__(self, embed_dim, num_heads, bias=True, kdim=None, vdim=None, batch_first=False):
        super().__init__()
        self.num_heads = num_heads
        self.batch_first = batch_first
        self.query_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.key_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.value_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def __call__(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                 average_attn_weights=True, is_causal=False):
        if not self.batch_first:
            query, key, value = (mx.swapaxes(t, 0, 1) for t in (query, key, value))
        n, lq, lk, h = query.shape[0], query.shape[1], key.shape[1], self.num_heads
        q = self.query_proj(query).reshape(n, lq, h, -1).transpose(0, 2, 1, 3)
        k = self.key_proj(key).reshape(n, lk, h, -1).transpose(0, 2, 1, 3)
        v = self.value_proj(value).reshape(n, lk, h, -1).transpose(0, 2, 1, 3)
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(0, 1, 3, 2)
        mask = _attention_mask(attn_mask, scores.dtype)
        if mask is not None:
            scores = scores + (mask.reshape(n, h, lq, lk) if mask.ndim == 3 else mask)
        if key_padding_mask is not None:
            scores = scores + _attention_mask(key_padding_mask, scores.dtype)[:, None, None, :]
        weights = mx.softmax(scores, axis=-1)
        out = self.out_proj((weights @ v).transpose(0, 2, 1, 3).reshape(n, lq, -1))
        if not self.batch_first:
            out = mx.swapaxes(out, 0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(axis=1) if average_attn_weights else weights
''',
    "_attention_mask",
)

_helper(
    "TransformerEncoderLayer",
    '''
class TransformerEncoderLayer(nn.Module):
    """torch.nn.TransformerEncoderLayer, post-norm or pre-norm (``norm_first``), with torch's arguments.

    Names as torch2mlx converts torch's: ``attention``, ``linear1``, ``linear2``, ``ln1``, ``ln2``.
    """

    def __init__(self, d_model, nhead, dim_feedforward, dropout=0.1, activation=None, layer_norm_eps=1e-5,
                 batch_first=False, norm_first=False, bias=True):
        super().__init__()
        self.attention = MultiheadAttention(d_model, nhead, bias=bias, batch_first=batch_first)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias)
        self.ln1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.ln2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = nn.ReLU() if activation is None else activation
        self.norm_first = norm_first

    def _attend(self, x, mask, key_padding_mask):
        return self.dropout1(self.attention(x, x, x, key_padding_mask, False, mask)[0])

    def _feed_forward(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def __call__(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if self.norm_first:
            x = x + self._attend(self.ln1(x), src_mask, src_key_padding_mask)
            return x + self._feed_forward(self.ln2(x))
        x = self.ln1(x + self._attend(x, src_mask, src_key_padding_mask))
        return self.ln2(x + self._feed_forward(x))
''',
    "MultiheadAttention",
)

_helper(
    "TransformerEncoder",
    '''
class TransformerEncoder(nn.Module):
    """torch.nn.TransformerEncoder: its ``layers`` in turn, then the optional final norm (``ln``)."""

    def __init__(self, layers, norm=None):
        super().__init__()
        self.layers = layers
        if norm is not None:
            self.ln = norm

    def __call__(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        x = src
        for layer in self.layers:
            x = layer(x, mask, src_key_padding_mask)
        return self.ln(x) if "ln" in self else x
''',
)

_helper(
    "TransformerDecoderLayer",
    '''
class TransformerDecoderLayer(nn.Module):
    """torch.nn.TransformerDecoderLayer with torch's arguments; names as torch2mlx converts torch's:
    ``self_attention``, ``cross_attention``, ``linear1``, ``linear2``, ``ln1``, ``ln2``, ``ln3``."""

    def __init__(self, d_model, nhead, dim_feedforward, dropout=0.1, activation=None, layer_norm_eps=1e-5,
                 batch_first=False, norm_first=False, bias=True):
        super().__init__()
        self.self_attention = MultiheadAttention(d_model, nhead, bias=bias, batch_first=batch_first)
        self.cross_attention = MultiheadAttention(d_model, nhead, bias=bias, batch_first=batch_first)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias)
        self.ln1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.ln2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.ln3 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = nn.ReLU() if activation is None else activation
        self.norm_first = norm_first

    def _self(self, x, mask, padding):
        return self.dropout1(self.self_attention(x, x, x, padding, False, mask)[0])

    def _cross(self, x, memory, mask, padding):
        return self.dropout2(self.cross_attention(x, memory, memory, padding, False, mask)[0])

    def _feed_forward(self, x):
        return self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def __call__(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                 memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False):
        x = tgt
        if self.norm_first:
            x = x + self._self(self.ln1(x), tgt_mask, tgt_key_padding_mask)
            x = x + self._cross(self.ln2(x), memory, memory_mask, memory_key_padding_mask)
            return x + self._feed_forward(self.ln3(x))
        x = self.ln1(x + self._self(x, tgt_mask, tgt_key_padding_mask))
        x = self.ln2(x + self._cross(x, memory, memory_mask, memory_key_padding_mask))
        return self.ln3(x + self._feed_forward(x))
''',
    "MultiheadAttention",
)

_helper(
    "TransformerDecoder",
    '''
class TransformerDecoder(nn.Module):
    """torch.nn.TransformerDecoder: its ``layers`` in turn, then the optional final norm (``ln``)."""

    def __init__(self, layers, norm=None):
        super().__init__()
        self.layers = layers
        if norm is not None:
            self.ln = norm

    def __call__(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                 memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False):
        x = tgt
        for layer in self.layers:
            x = layer(x, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask)
        return self.ln(x) if "ln" in self else x
''',
)

_helper(
    "Transformer",
    '''
class Transformer(nn.Module):
    """torch.nn.Transformer: ``encoder`` then ``decoder``, with torch's arguments."""

    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def __call__(self, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None, src_key_padding_mask=None,
                 tgt_key_padding_mask=None, memory_key_padding_mask=None, src_is_causal=None, tgt_is_causal=None,
                 memory_is_causal=False):
        memory = self.encoder(src, src_mask, src_key_padding_mask)
        return self.decoder(tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask)
''',
)

_helper(
    "_Stack",
    '''
class _Stack(nn.Module):
    """Layers under ``layers``: a torch recurrent module with num_layers > 1, one MLX layer per torch layer."""

    def __init__(self, layers):
        super().__init__()
        self.layers = layers
''',
)

_helper(
    "_recurrent",
    '''
def _recurrent(cells, x, hx=None, batch_first=False):
    """torch's LSTM / GRU / RNN call on MLX layers (one per torch layer): (output, h_n) or (output, (h_n, c_n))."""
    unbatched = x.ndim == 2
    x = x[None] if unbatched else (x if batch_first else mx.swapaxes(x, 0, 1))
    lstm = isinstance(cells[0], nn.LSTM)
    h0, c0 = (hx if lstm else (hx, None)) if hx is not None else (None, None)
    hs, cs = [], []
    for i, cell in enumerate(cells):
        state = None if h0 is None else (h0[i][None] if unbatched else h0[i])
        if lstm:
            x, c = cell(x, hidden=state, cell=None if c0 is None else (c0[i][None] if unbatched else c0[i]))
            cs.append(c[:, -1])
        else:
            x = cell(x, hidden=state)
        hs.append(x[:, -1])
    h = mx.stack(hs)
    out = x[0] if unbatched else (x if batch_first else mx.swapaxes(x, 0, 1))
    h = h[:, 0] if unbatched else h
    if lstm:
        c = mx.stack(cs)
        return out, (h, c[:, 0] if unbatched else c)
    return out, h
''',
)

_helper(
    "_recurrent_cell",
    '''
def _recurrent_cell(cell, x, hx=None):
    """torch's LSTMCell / GRUCell / RNNCell: one step of an MLX layer (a length-1 sequence)."""
    if isinstance(cell, nn.LSTM):
        h0, c0 = hx if hx is not None else (None, None)
        h, c = cell(x[:, None], hidden=h0, cell=c0)
        return h[:, 0], c[:, 0]
    return cell(x[:, None], hidden=hx)[:, 0]
''',
)


def render(names: set[str]) -> list[str]:
    """The sources of ``names`` and of the helpers they use, each once, dependencies first."""
    order: list[str] = []

    def add(name):
        if name in order:
            return
        for dep in HELPERS[name][1]:
            add(dep)
        order.append(name)

    for name in sorted(names):
        add(name)
    return [HELPERS[n][0] for n in order]


def closure(names: set[str]) -> set[str]:
    out: set[str] = set()
    stack = list(names)
    while stack:
        n = stack.pop()
        if n not in out:
            out.add(n)
            stack.extend(HELPERS[n][1])
    return out
