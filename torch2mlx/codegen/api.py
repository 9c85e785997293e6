"""``generate``: build the model, walk it, trace it, write the file, check it against the converter's names."""

from __future__ import annotations

import os

from ..core.version import __version__
from ..errors import Torch2MLXError
from . import prelude
from .builder import Generator
from .trace import eval_mode, pattern_of, record_calls


def _build(x, model_kwargs):
    from ..analysis import build

    if isinstance(x, (str, os.PathLike)):
        path = os.fspath(x)
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise Torch2MLXError(f"{path}: has no config.json")
            why = build.why_not_config(path)
            if why is not None:
                raise Torch2MLXError(why.split(";")[0])
            return build.from_config_dir(path)
        if ":" in path and not os.path.exists(path):
            return build.from_class(path, model_kwargs, what="model class", kwargs_option="--kwargs")
        raise Torch2MLXError(f"{path}: give a model class pkg.mod:Class or a directory with config.json")
    if hasattr(x, "named_modules") and hasattr(x, "_parameters"):
        return build.from_module(x)
    raise Torch2MLXError(
        f"cannot generate code for a {type(x).__name__}: give an nn.Module, 'pkg.mod:Class' or a config directory"
    )


def _wrap(model):
    """A root that is a container or a single layer, inside a class ``Model``: its weights load under
    ``layers.``; its ``__call__`` takes what the layer's forward takes."""
    import inspect

    import torch

    from ..core import registry
    from .leaves import LEAVES
    from .render import literal

    entry = registry.lookup(type(model), list(model._parameters))
    layer = entry is not None and entry.torch in LEAVES and registry.class_key(type(model)) == entry.torch
    if not layer and (
        not registry.is_torch_builtin(type(model))
        or entry is None
        or entry.kind != "container"
        or entry.torch == "torch.nn.Module"
    ):
        return model, ""
    params, call = [], []
    for p in inspect.signature(model.forward).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        try:
            default = "" if p.default is p.empty else f"={literal(p.default)}"
        except ValueError:
            default = "=None"
        params.append(p.name + default)
        call.append(p.name)
    ns: dict = {}
    exec(f"def forward(self, {', '.join(params)}):\n    return self.layers({', '.join(call)})", ns)  # noqa: S102

    class Model(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.layers = inner

        forward = ns["forward"]

    return Model(model), "layers."


def generate_source(x, *, model_kwargs=None, class_name=None, example_inputs=None):
    from ..analysis.build import torch_available

    if not torch_available():
        raise Torch2MLXError("code generation needs torch (pip install 'torch2mlx[torch]')")
    from ..analysis.tree import walk
    from . import Generated

    built = _build(x, model_kwargs)
    model, prefix = _wrap(built.model)
    tree = walk(model)
    gen = Generator(model, tree, tree.blockers, root_name=class_name)
    notes = []
    if example_inputs is None and not prefix:
        from .examples import transformers_inputs

        example_inputs = transformers_inputs(model)
    if example_inputs is not None:
        args, kwargs = _split_inputs(example_inputs)
        gen.root_call = pattern_of(model, args, kwargs, lambda v: type(v).__name__ in ("Tensor", "Parameter"))
        classes = {id(p.module) for p in gen.plans if p.kind == "class"}
        try:
            gen.recorded = record_calls(model, example_inputs, classes)
        except Exception as e:  # the model's own code on the example inputs: fall back to traces alone
            notes.append(
                f"running the example inputs failed ({type(e).__name__}: {str(e).splitlines()[0][:120]});"
                " module calls are read from the traces alone"
            )
    with eval_mode(model):
        gen.trace_all()
        name = gen.generate()
    source = _assemble(gen, name, built, prefix)
    modules = len(gen.plans) - (1 if prefix else 0)
    generated = sum(1 for p in gen.plans if p.kind != "placeholder") - (1 if prefix else 0)
    reached = [p for p in gen.plans if p.kind == "class" and p.reached]
    traced = all(gen.classes[id(p)][0].status == "traced" for p in reached) and not any(
        p.kind == "placeholder" and _called(gen, p) for p in gen.plans
    )
    if traced:  # a failed run of the examples mattered only if some call could not be traced without it
        notes = [n for n in notes if not n.startswith("running the example inputs failed")]
    result = Generated(
        source,
        name,
        generated / modules if modules else 1.0,
        traced,
        modules,
        generated,
        list(gen.order),
        prefix,
        list(tree.blockers),
        built.notes + gen.notes + notes,
    )
    result.mismatches = check(result, tree, prefix)
    return result


def _split_inputs(example_inputs):
    if isinstance(example_inputs, dict):
        return (), example_inputs
    return (example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)), {}


def _called(gen, plan) -> bool:
    for p in gen.plans:
        if p.kind == "class" and p.reached and p.traced is not None and p.traced.graph is not None:
            for n in p.traced.graph.nodes:
                if n.op == "call_module" and gen.resolve(p, str(n.target)) is plan:
                    return True
    return False


def _assemble(gen: Generator, name: str, built, prefix: str) -> str:
    root = gen.classes[id(gen.root)][0]
    torch_cls = root.torch
    counts = {}
    for c in gen.order:
        counts[c.status] = counts.get(c.status, 0) + 1
    traced = counts.get("traced", 0)
    load = f'torch2mlx.load_converted("weights.safetensors"{", prefix=" + repr(prefix) if prefix else ""})'
    doc = [
        f'"""MLX port of {torch_cls}, generated by torch2mlx {__version__}.',
        "",
        "Weights (names and layouts as torch2mlx converts them):",
        '    torch2mlx.convert(torch_model, "weights.safetensors")',
        f"    model = {name}()",
        f"    model.load_weights(list({load}.items()), strict=True)",
        "    model.eval()    # as in torch: dropout off, batch norm on running statistics",
        "",
        "Inputs and outputs keep torch's layout (channels first for images): convolutions, pooling",
        "and channel norms run channels-last inside, behind _cl(...) / _cf(...).",
        f"__call__ of {traced} of {len(gen.order)} classes translated from torch.fx traces"
        + ("." if traced == len(gen.order) else "; TODO(torch2mlx) marks what is left."),
        '"""',
    ]
    body = "\n\n\n".join(prelude.render(gen.helpers) + [c.source for c in gen.order])
    imports = ["import math", ""] if "math." in body else []
    imports += ["import mlx.core as mx", "import mlx.nn as nn"]
    return "\n".join(doc + imports) + "\n\n\n" + body + "\n"


def check(result, tree, prefix: str) -> list[str]:
    """The generated module's parameters against the converter's tensors: names and shapes (empty: they match)."""
    from mlx.utils import tree_flatten

    ns = result.load()
    model = ns[result.name]()
    got = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    want = {t.mlx: tuple(t.shape) for t in tree.tensors if t.mlx}  # walked on the wrapped root: prefixed
    out = [f"missing in the generated module: {k}" for k in sorted(want.keys() - got.keys())]
    out += [f"not in the converted weights: {k}" for k in sorted(got.keys() - want.keys())]
    out += [
        f"{k}: shape {got[k]} in the generated module, {want[k]} in the weights"
        for k in sorted(want.keys() & got.keys())
        if got[k] != want[k]
    ]
    return out


def generate_cli(src, *, kwargs=None, class_name=None, shapes=(), output=None, overwrite=False):
    """``t2mlx codegen``: the model from SRC, example inputs from ``--input-shape``, the file written."""
    if output is not None and os.path.exists(output) and not overwrite:
        raise Torch2MLXError(f"{output}: exists (pass --overwrite to replace it)")
    example = None
    if shapes:
        built = _build(src, kwargs)
        example = tuple(_example_tensor(s, built.model) for s in shapes)
        src = built.model
    from . import generate

    result = generate(src, model_kwargs=kwargs, class_name=class_name, example_inputs=example)
    if output is not None:
        result.write(output)
    return result


def _example_tensor(spec: str, model):
    """``1,3,32,32`` (float32) or ``1,16:int64``, on the model's device (meta: nothing allocated)."""
    import torch

    shape_text, _, dtype_name = spec.partition(":")
    try:
        shape = tuple(int(d) for d in shape_text.split(",") if d.strip())
    except ValueError:
        raise Torch2MLXError(f"--input-shape {spec!r}: give sizes like 1,3,32,32 (optionally :int64)") from None
    dtype = getattr(torch, dtype_name or "float32", None)
    if not isinstance(dtype, torch.dtype):
        raise Torch2MLXError(f"--input-shape {spec!r}: unknown dtype {dtype_name!r}")
    device = next(model.parameters(), torch.empty(0)).device
    if dtype.is_floating_point:
        return torch.randn(shape, dtype=dtype, device=device)
    return torch.zeros(shape, dtype=dtype, device=device)
