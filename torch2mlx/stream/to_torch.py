"""``to_torch(src, out)``: MLX weights back to PyTorch names, layouts and dtypes.

``torch2mlx.to_torch`` and ``torch2mlx.stream.to_torch`` are this one function. Without ``out``
the reverse plan's ops are computed in memory into torch tensors (made through ``core.model_rules``,
so this module never imports torch). With ``out``, the same pipeline as the forward stream with a
reverse plan (``reverse_plan``): readers -> plan -> threaded executor -> sharded safetensors with metadata
``{"format": "pt"}`` and ``model.safetensors.index.json``, or ``--format bin``:
``pytorch_model-0000i-of-0000N.bin`` zip pickles written sequentially and
``pytorch_model.bin.index.json``. The manifest ``torch2mlx.json`` says ``"to": "torch"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

from ..core import model_rules
from ..core.reverse import reverse_specs
from ..core.spec import RuleSpec
from ..errors import Torch2MLXError
from ..formats import remote
from ..formats.checkpoint import OUR_FILES, SIDECAR_SUFFIXES, Checkpoint
from ..formats.data import DataReader
from . import card, reverse_plan, sinks
from . import manifest as manifest_mod
from . import resume as resume_mod
from .execute import compute_block
from .manifest import Manifest
from .memory import is_module, names_only
from .options import Options
from .result import Result
from .sources import model_choice, open_source
from .writers import out_lock, output_dir
from .writers.target import Target


def _with_store_files(ck: Checkpoint) -> Checkpoint:
    """A zarr store keeps config and tokenizer files beside its arrays; the checkpoint reader lists none."""
    if ck.format != "zarr" or not os.path.isdir(ck.path):
        return ck
    names = sorted(n for n in os.listdir(ck.path) if os.path.isfile(os.path.join(ck.path, n)))
    sidecars = [
        os.path.join(ck.path, n)
        for n in names
        if n.endswith(SIDECAR_SUFFIXES) and n not in OUR_FILES and n != "zarr.json" and not n.startswith(".")
    ]
    config = None
    if "config.json" in names:
        import json

        try:
            with open(os.path.join(ck.path, "config.json"), "rb") as f:
                config = json.loads(f.read())
        except (OSError, ValueError):
            config = None
    return dataclasses.replace(ck, sidecars=sidecars, config=config if isinstance(config, dict) else None)


def to_torch(
    src,
    out=None,
    options: Options | None = None,
    *,
    model=None,
    model_kwargs=None,
    format: str = "safetensors",
    overwrite: bool = False,
    resume: bool = False,
    dry_run: bool = False,
    workers: int | None = None,
    progress: bool = False,
    strict: bool | None = None,
    **settings,
) -> Result | dict:
    """MLX weights (ours, mlx-lm's, quantized or not) back to PyTorch names, layouts and dtypes.

    ``torch2mlx.to_torch`` is this function. One reverse plan (``stream.reverse_plan``) for every source:
    quantized weights come back dequantized, and the torch dtypes a conversion's records name are restored.

    Args:
        src: an MLX checkpoint file or directory (or zarr store), a ``Checkpoint`` from ``stream.open``, or
            ``{name: array}`` in memory (e.g. an MLX module's ``dict(tree_flatten(parameters()))``).
        out: the output directory; ``None``: return the tensors in memory instead (or plan only, with
            ``dry_run``).
        options: settings as one ``Options``; or its fields as keyword ``**settings`` (``dtype``,
            ``max_shard_size``, ``strip_prefix``, ``exclude``, ``rules`` -- the forward layout to undo --,
            ``key``, ``drop_cache``). Quantization settings do not apply.
        model: where the forward rules come from (inverted here). ``None``: the conversion's
            ``torch2mlx.json`` next to ``src``, else a config.json transformers knows; ``False``: none (names
            and layouts kept); ``"pkg.mod:Class"`` with ``model_kwargs``; the torch ``nn.Module`` the weights
            belong to (its names, layouts and wrapper prefixes such as torch.compile's ``_orig_mod.``; buffers
            MLX does not keep, such as BatchNorm's ``num_batches_tracked``, are taken from it in memory); the
            ``Result`` of ``convert`` (its records, as its manifest holds them); an analyzer result or a list
            of forward ``RuleSpec``.
        model_kwargs: constructor keywords for a class path ``model``.
        format: ``"safetensors"`` (shards with ``{"format": "pt"}``) or ``"bin"`` (zip pickles
            ``torch.load(weights_only=True)`` reads); in memory, torch tensors of every torch dtype.
        overwrite, dry_run, workers, progress: as for ``stream.convert``.
        resume: refused (the output is written whole again each time).
        strict: every MLX tensor must have a place and every needed one must be there; default True in
            memory (what ``load_state_dict(strict=True)`` needs), off for a directory.

    Returns:
        ``{torch name: torch.Tensor}`` in the model's order when ``out`` is None (imports torch); else a
        ``Result`` as ``stream.convert``'s.

    Raises:
        Torch2MLXError: a source that is already PyTorch, an unfinished conversion, a manifest that does not
            describe the tensors, no rules for in-memory weights, missing or extra tensors with ``strict``,
            forward-only settings, a non-empty ``out`` without ``overwrite``.

    Example:
        >>> from torch2mlx import stream
        >>> res = stream.to_torch("./my-model-mlx", "./back", format="bin")  # doctest: +SKIP
        >>> state = torch2mlx.to_torch(dict(tree_flatten(mlx_model.parameters())), model=model)  # doctest: +SKIP
        >>> model.load_state_dict(state, strict=True)  # doctest: +SKIP
    """
    if resume:
        raise Torch2MLXError("resume does not apply to to_torch (it writes the whole output again)")
    opts = Options.resolve(options, settings)
    if opts.quantizing:
        raise Torch2MLXError("q_bits/q_recipe do not apply to to_torch (quantized weights come back dequantized)")
    if opts.target is not None:
        raise Torch2MLXError(
            f"target {opts.target} does not apply to to_torch (the source's manifest says how it was converted)"
        )
    if opts.adapter is not None:
        raise Torch2MLXError(
            "adapter does not apply to to_torch: fuse it in the conversion to MLX, or convert the adapter "
            "itself (t2mlx stream ADAPTER_DIR OUT --to torch)"
        )
    if opts.keep:
        raise Torch2MLXError("keep does not apply to to_torch (the way back drops no tensor by rule)")
    if opts.card is not True:
        raise Torch2MLXError("card does not apply to to_torch (a PyTorch output gets no model card)")
    if opts.zarr_compressor != "none":
        raise Torch2MLXError(
            f"zarr_compressor does not apply to to_torch (it writes {' or '.join(sinks.names(sinks.REVERSE))})"
        )
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise Torch2MLXError(f"out is the output directory, got {type(out).__name__} (the torch model goes in model=)")
    if out == "" and not dry_run:  # an empty path names nothing (None asks for the tensors in memory)
        raise Torch2MLXError("out is required (or dry_run=True)")
    sink = sinks.sink(format, sinks.REVERSE)
    if is_module(src):
        raise Torch2MLXError("src is the MLX weights; the torch model goes in model=")
    in_memory = out is None and not dry_run
    ck, label, _ = open_source(src, opts, False, label="<MLX weights>")
    ck = _with_store_files(ck)
    ck = dataclasses.replace(ck, sidecars=[p for p in ck.sidecars if not card.is_mlx_card(p)])
    rules = _rules(model, model_kwargs, ck, in_memory)
    if strict is None:
        strict = True if in_memory else None
    drop_cache = opts.drop_cache
    # Dequantized sources read through this reader; it lives as long as the conversion.
    with DataReader(drop_cache=drop_cache) as side, contextlib.ExitStack() as held:
        rp = reverse_plan.plan_reverse(
            ck,
            opts,
            side,
            specs=rules.specs,
            model=rules.path,
            model_kwargs=rules.model_kwargs,
            use_model=rules.use_model,
            conversion=rules.conversion,
            strict=strict,
            # in memory, "bin": a torch tensor holds every torch dtype, as a pickle does (safetensors lacks some)
            fmt="bin" if in_memory else format,
        )
        if in_memory:
            return _in_memory(rp.plan, side, rules.state, rules.drop)
        plan = rp.plan
        res = Result(label, None if dry_run else str(out), plan, ck, dry_run=dry_run, format=format)
        if sink.shard_name is not None:
            for i, sh in enumerate(plan.shards):
                sh.file = sink.shard_name(i, len(plan.shards))
        if dry_run:
            return res
        assert out is not None  # not in memory, not a dry run
        out = os.fspath(out)
        if ck.remote:
            res.source_files = remote.remote_identity(ck.files)
        else:
            res.source_files = resume_mod.source_identity(ck.path, ck.files)
        output_dir.check_target(out, ck.files)
        existed = os.path.isdir(out)  # before the lock creates it
        held.enter_context(out_lock.locked(out))  # until the index is written
        # not resumable: a failure leaves OUT as it was (overwrite: the old output, whole)
        with Target(out, overwrite=overwrite, src_paths=ck.files, shards=len(plan.shards), existed=existed) as target:
            sink.write(
                sinks.Run(
                    res,
                    opts,
                    target.dir,
                    progress=progress,
                    workers=workers,
                    rewrite={"config.json": rp.config} if rp.config else None,
                    reader=side,
                    to_torch=dict(
                        format=format, model=rules.path, model_kwargs=rules.model_kwargs, use_model=rules.use_model
                    ),
                )
            )
    return res


@dataclasses.dataclass
class _Given:
    """What ``model=`` gives the reverse plan."""

    specs: list[RuleSpec] | None = None  # reverse specs, when given as objects
    path: str | None = None  # a model class path
    model_kwargs: object = None
    use_model: bool = False  # look for a config.json
    conversion: Manifest | None = None  # a Result's records
    state: dict | None = None  # a live model's state dict
    drop: dict = dataclasses.field(default_factory=dict)  # its tensors MLX does not keep


def _rules(model, model_kwargs, ck: Checkpoint, in_memory: bool) -> _Given:
    if is_module(model):
        state = model.state_dict()
        got = model_rules.module_inputs(names_only(state), model)
        return _Given(_inverted(got.specs or []), state=state, drop=dict(got.drop))
    if hasattr(model, "plan") and hasattr(model, "checkpoint"):  # a conversion's Result
        dropped = [{"source": n, "why": w} for n, w in model.plan.dropped]
        return _Given(conversion=Manifest(tensors=model.plan.tensor_records(), dropped=dropped))
    path, model_kwargs, use_model, inputs = model_choice(model, model_kwargs)
    if inputs is not None:
        return _Given(_inverted(inputs.specs or []))
    has_manifest = ck.folder is not None and os.path.isfile(manifest_mod.path(ck.folder))
    if in_memory and model is None and not has_manifest and ck.config is None:
        raise Torch2MLXError(
            "to_torch needs the torch model (or its rules) unless the source is a "
            f"conversion directory with {manifest_mod.NAME}"
        )
    return _Given(path=path, model_kwargs=model_kwargs, use_model=use_model)


def _inverted(forward: list[RuleSpec]) -> list[RuleSpec]:
    if not forward:
        raise Torch2MLXError("no tensors to convert back (the rules are empty)")
    return reverse_specs(forward)


def _in_memory(plan, reader: DataReader, state: dict | None, drop: dict) -> dict:
    """The plan's tensors computed in memory as torch tensors (bfloat16 bit-exact), in the model's order."""
    if not plan.ops:
        raise Torch2MLXError("no tensors to convert back (the rules are empty)")
    out = {}
    for op in plan.ops:
        o = op.outputs[0]
        arr = compute_block(op, reader, 0, o.shape[0] if o.shape else 1).reshape(o.shape)
        out[o.name] = model_rules.torch_tensor(arr, o.dtype)
    if state is None:
        return out
    for name in drop:
        t = state[name]
        out[name] = t.detach().clone() if t.device.type != "meta" else t.new_zeros(t.shape, device="cpu")
    order = {n: i for i, n in enumerate(state)}
    return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))
