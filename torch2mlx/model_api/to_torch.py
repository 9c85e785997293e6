"""``torch2mlx.to_torch``: MLX weights back to a PyTorch state dict (names and layouts undone).

The forward specs (torch -> MLX) come from the torch model through the analyzer,
exactly as ``convert`` computed them, or from a conversion's records (its
manifest or ``Result``). ``stream.reverse_plan`` -- the plan ``stream.to_torch`` writes
to disk -- inverts them, dequantizes and restores dtypes; here its ops are computed in
memory, so bfloat16 stays bit-exact and sums are split the way ``torch2mlx.core.reverse`` documents.
"""

from __future__ import annotations

import os

from ..core import dtypes
from ..errors import Torch2MLXError
from ..core.reverse import reverse_specs
from ..formats.checkpoint import Checkpoint, open_checkpoint
from ..core.entry import TensorEntry
from ..core.spec import RuleSpec
from ..stream import manifest
from ..stream.manifest import Manifest
from .memory import is_module, memory_checkpoint


def _names_only(state: dict) -> Checkpoint:
    """The model's tensor names, dtypes and shapes: all the analyzer's matching needs (meta tensors too)."""
    entries = []
    for n, t in state.items():
        dt = dtypes.by_name(str(t.dtype))
        if dt is None:
            raise Torch2MLXError(f"{n}: dtype {t.dtype} has no MLX counterpart")
        entries.append(TensorEntry(n, dt, tuple(t.shape)))
    return Checkpoint("<model>", entries, [], "memory")


def _rules(model_or_rules, path: str | None) -> tuple[list[RuleSpec] | None, dict, dict | None, Manifest | None]:
    """``(reverse specs or None, dropped torch names, the model's state dict or None, an in-memory manifest)``.

    ``None`` specs: the conversion's manifest (on disk next to ``path``, or ``conversion``) gives them,
    inverted by ``reverse_plan`` exactly as for ``stream.to_torch``.
    """
    if is_module(model_or_rules):
        from ..analysis.stream_inputs import module_inputs

        state = model_or_rules.state_dict()
        got = module_inputs(_names_only(state), model_or_rules)
        return _inverted(got.specs or []), dict(got.drop), state, None
    if model_or_rules is None:
        if not path or not os.path.isfile(manifest.path(path)):
            raise Torch2MLXError(
                "to_torch needs the torch model (or its rules) unless the source is a "
                f"conversion directory with {manifest.NAME}"
            )
        return None, {}, None, None
    plan = getattr(model_or_rules, "plan", None)
    if plan is not None:  # a conversion's Result: its records, as its manifest holds them
        dropped = [{"source": n, "why": w} for n, w in plan.dropped]
        return None, {}, None, manifest.Manifest(tensors=plan.tensor_records(), dropped=dropped)
    specs = list(model_or_rules)
    if not all(isinstance(s, RuleSpec) for s in specs):
        raise Torch2MLXError("model_or_rules must be an nn.Module, a conversion Result or a list of RuleSpec")
    return _inverted(specs), {}, None, None


def _inverted(forward: list[RuleSpec]) -> list[RuleSpec]:
    if not forward:
        raise Torch2MLXError("no tensors to convert back (the rules are empty)")
    return reverse_specs(forward)


def _to_tensor(arr, dt):
    import torch

    t = torch.from_numpy(arr)
    return t if dt.exact_numpy else t.view(getattr(torch, dt.name))


def to_torch(path_or_dict, model_or_rules=None, *, strict: bool = True, dtype: str = "keep") -> dict:
    """A PyTorch state dict from MLX weights: a conversion (file or directory) or ``{name: array}``.

    ``model_or_rules``: the torch model the weights belong to (its names, layouts and
    wrapper prefixes such as torch.compile's ``_orig_mod.``), the ``Result`` of
    ``convert``, or forward ``RuleSpec``s; optional for a directory with a manifest.
    With a model, buffers MLX does not keep (BatchNorm's ``num_batches_tracked``) are
    taken from the model, so ``model.load_state_dict(sd, strict=True)`` accepts the result.
    ``strict``: every MLX tensor must have a place and every needed one must be there.

    The same reverse plan as ``stream.to_torch`` (``stream.reverse_plan``), run in memory: a
    conversion's quantized weights come back dequantized and the torch dtypes its records
    name are restored.
    """
    from ..formats.data import DataReader
    from ..stream.execute import compute_block
    from ..stream.options import Options
    from ..stream.reverse_plan import plan_reverse

    path = os.fspath(path_or_dict) if isinstance(path_or_dict, (str, os.PathLike)) else None
    ck = open_checkpoint(path) if path is not None else memory_checkpoint(path_or_dict, "<MLX weights>")
    back, dropped, state, conversion = _rules(model_or_rules, path)
    out = {}
    with DataReader() as reader:
        # fmt "bin": a torch tensor holds every torch dtype, as a pickle does (safetensors lacks some)
        rp = plan_reverse(
            ck,
            Options.make(dtype=dtype),
            reader,
            specs=back,
            use_model=False,
            conversion=conversion,
            strict=strict,
            fmt="bin",
        )
        if not rp.plan.ops:
            raise Torch2MLXError("no tensors to convert back (the rules are empty)")
        for op in rp.plan.ops:
            o = op.outputs[0]
            arr = compute_block(op, reader, 0, o.shape[0] if o.shape else 1).reshape(o.shape)
            out[o.name] = _to_tensor(arr, o.dtype)
    if state is None:
        return out
    for name in dropped:
        t = state[name]
        out[name] = t.detach().clone() if t.device.type != "meta" else _zeros_like(t)
    order = {n: i for i, n in enumerate(state)}
    return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))


def _zeros_like(t):
    import torch

    return torch.zeros(t.shape, dtype=t.dtype)
