"""torch2mlx: move PyTorch checkpoints and models to Apple MLX.

    torch2mlx.convert(model, "weights.safetensors")     # a live nn.Module (or state dict, or checkpoint path)
    weights = torch2mlx.load_converted("weights.safetensors")
    mlx_model.load_weights(list(weights.items()), strict=True)
    model.load_state_dict(torch2mlx.to_torch(weights, model), strict=True)
    torch2mlx.generate(model).write("model_mlx.py")     # the MLX module's source (t2mlx codegen)

Everything loads on first use: ``import torch2mlx`` imports neither torch nor MLX.
The streaming engine (``torch2mlx.stream``, ``t2mlx stream``) imports torch only to build
the model for exact rules: with ``--model``, or for a directory with a config.json whose
architecture's rules are not kept as data, when torch and transformers are installed and no
cached analysis matches (the first run); ``--no-model`` (``model=False``) never imports it.
"""

from .core.version import __version__
from .errors import CheckpointError, Torch2MLXError

__all__ = [
    "__version__",
    "Torch2MLXError",
    "CheckpointError",
    "stream",
    "templates",
    "training",
    "lightning",
    "recipes",
    "codegen",
    "analyze",
    "convert",
    "export",
    "load_converted",
    "to_nested",
    "to_torch",
    "generate",
]


def analyze(x, *, model=None, model_kwargs=None, allow_globals=()):
    """How much of a model maps to MLX, how each tensor converts, and what blocks the rest.

    Args:
        x: an ``nn.Module``, a class path ``"pkg.mod:Class"``, or a checkpoint / config directory
            (a config.json transformers knows is built on the meta device: no weights are read).
        model: for a checkpoint path, the class path of the model its weights belong to.
        model_kwargs: that class's constructor keywords (a dict or JSON text).
        allow_globals: pickle globals whose calls are accepted as inert placeholders.

    Returns:
        Report: ``table()`` is what ``t2mlx analyze`` prints, ``to_dict()`` its JSON; ``tensors``
        holds each tensor's rule and MLX name, ``blockers`` what has no MLX counterpart.

    Raises:
        Torch2MLXError: an unreadable path, a class that cannot be imported or built, bad kwargs.

    Example:
        >>> import torch2mlx
        >>> report = torch2mlx.analyze("torch.nn:Linear", model_kwargs={"in_features": 4, "out_features": 2})
        >>> print(report.table())  # doctest: +SKIP

    Imports torch only when needed (a module, a class, a config); see ``torch2mlx.analysis.analyze``.
    """
    from .analysis import analyze as _analyze

    return _analyze(x, model=model, model_kwargs=model_kwargs, allow_globals=allow_globals)


def convert(model_or_state_dict, path, **options):
    """A live model, state dict or checkpoint path to MLX weights, through the stream's plan and executor.

    Args:
        model_or_state_dict: an ``nn.Module`` (rules and names exact, from the analyzer), a state dict
            ``{name: tensor}`` (torch, numpy or MLX arrays; rules inferred from shapes), or a checkpoint path.
        path: ``*.safetensors`` writes one file (replaced whole); anything else a directory of shards,
            index and ``torch2mlx.json``.
        **options: ``dtype``, ``rules`` (``"REGEX=RULE"``), ``specs`` (``RuleSpec`` list), ``analyze``,
            ``strip_prefix``, ``exclude``, ``max_shard_size``, ``q_bits``, ``q_group_size``, ``q_recipe``,
            ``key``, ``overwrite``, ``resume``, ``progress``, ``workers``; see ``torch2mlx.model_api.convert``.

    Returns:
        torch2mlx.stream.Result: ``report()``, ``to_dict()``, ``plan``.

    Raises:
        Torch2MLXError: nothing to convert, a tensor MLX cannot hold, a bad option, a non-empty output
            directory without ``overwrite``/``resume``. A failed call leaves ``path`` as it was.

    Example:
        >>> import torch, torch2mlx
        >>> res = torch2mlx.convert(torch.nn.Conv2d(3, 8, 3), "conv.safetensors")  # doctest: +SKIP
        >>> sorted(torch2mlx.load_converted("conv.safetensors"))  # doctest: +SKIP
        ['bias', 'weight']
    """
    from .model_api import convert as _convert

    return _convert(model_or_state_dict, path, **options)


def export(model_or_path, path=None, **options):
    """``export(model, path)`` now, or ``@export(path)`` on an nn.Module class; see ``torch2mlx.model_api.export``."""
    from .model_api import export as _export

    return _export(model_or_path, path, **options)


def load_converted(path, *, prefix: str = "", nested: bool = False):
    """``{name: mx.array}`` of a conversion, ready for ``mlx_module.load_weights``.

    Args:
        path: a ``.safetensors`` / ``.npz`` file or an output directory (all its shards).
        prefix: put before every name (a torch ``nn.Sequential``'s ``0.`` is an MLX list's ``layers.0.``).
        nested: the nested tree ``mlx_module.update`` takes instead of flat names.

    Returns:
        dict: ``{name: mx.array}`` (or the nested tree).

    Raises:
        Torch2MLXError: no such file, or a directory without weights.

    Example:
        >>> weights = torch2mlx.load_converted("conv.safetensors")  # doctest: +SKIP
        >>> mlx_conv.load_weights(list(weights.items()), strict=True)  # doctest: +SKIP

    See ``torch2mlx.model_api.load``.
    """
    from .model_api import load_converted as _load

    return _load(path, prefix=prefix, nested=nested)


def to_nested(flat):
    """Flat dotted names to the nested dicts and lists of an MLX module tree."""
    from .model_api import to_nested as _nested

    return _nested(flat)


def to_torch(path_or_dict, model_or_rules=None, **options):
    """MLX weights back to a torch state dict that ``load_state_dict(strict=True)`` takes.

    Args:
        path_or_dict: a conversion (file or directory) or ``{name: array}`` (e.g. an MLX module's
            ``tree_flatten(parameters())``).
        model_or_rules: the torch model the weights belong to, the ``Result`` of ``convert``, or forward
            ``RuleSpec``s; optional for a directory with ``torch2mlx.json``.
        **options: ``strict`` (default True: every MLX tensor has a place, every needed one is there),
            ``dtype``; see ``torch2mlx.model_api.to_torch``.

    Returns:
        dict: ``{torch name: torch.Tensor}`` in the model's order; quantized weights of a conversion
        come back dequantized, with the torch dtypes its records name.

    Raises:
        Torch2MLXError: no rules, missing or extra tensors with ``strict``, a dtype torch lacks.

    Example:
        >>> state = torch2mlx.to_torch(dict(tree_flatten(mlx_model.parameters())), model)  # doctest: +SKIP
        >>> model.load_state_dict(state, strict=True)  # doctest: +SKIP
    """
    from .model_api import to_torch as _to_torch

    return _to_torch(path_or_dict, model_or_rules, **options)


def generate(model, **options):
    """The MLX module (Python source) of a torch model, named so converted weights load strictly.

    Args:
        model: an ``nn.Module``, a class path ``"pkg.mod:Class"`` or a directory with a transformers config.json.
        **options: ``model_kwargs``, ``class_name``, ``example_inputs`` (run once to learn each module's
            call); see ``torch2mlx.codegen.generate``.

    Returns:
        Generated: ``.source`` (the module's code), ``.coverage``, ``.traced``, ``write(path)``.

    Raises:
        Torch2MLXError: torch is not installed, or the model cannot be built.

    Example:
        >>> torch2mlx.generate(torch.nn.Sequential(torch.nn.Linear(4, 2))).write("model_mlx.py")  # doctest: +SKIP
    """
    from .codegen import generate as _generate

    return _generate(model, **options)


def _wire_analyzer() -> None:
    # The stream engine takes rules from a model through core.model_rules, never importing the analyzer
    # (which imports torch): this package, above both, wires them together. Python runs this module before
    # any torch2mlx submodule, so every entry point sees it; the analyzer loads on a conversion's first ask.
    from .core import model_rules

    def forward(ck, **kw):
        from .analysis.stream_inputs import stream_inputs

        return stream_inputs(ck, **kw)

    def reverse(ck, model, model_kwargs):
        from .analysis.stream_inputs import reverse_inputs

        return reverse_inputs(ck, model, model_kwargs)

    model_rules.register(forward, reverse)


_wire_analyzer()


def __getattr__(name):
    # Submodules load on first use so `import torch2mlx` stays light.
    if name in ("stream", "templates", "training", "lightning", "recipes", "codegen"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'torch2mlx' has no attribute {name!r}")
