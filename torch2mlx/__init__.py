"""torch2mlx: move PyTorch checkpoints and models to Apple MLX.

    torch2mlx.convert(model, "weights.safetensors")     # a live nn.Module (or state dict, or checkpoint path)
    weights = torch2mlx.load_converted("weights.safetensors")
    mlx_model.load_weights(list(weights.items()), strict=True)
    model.load_state_dict(torch2mlx.to_torch(weights, model), strict=True)
    torch2mlx.generate(model).write("model_mlx.py")     # the MLX module's source (t2mlx codegen)

Everything loads on first use: ``import torch2mlx`` imports neither torch nor MLX.
The streaming engine (``torch2mlx.stream``, ``t2mlx stream``) imports torch only to build
the model for exact rules: with ``--model``, or for a directory with a config.json when
torch and transformers are installed and no cached analysis matches (the first run);
``--no-model`` (``model=False``) never imports it.
"""
__version__ = "0.1.0"

from .errors import CheckpointError, Torch2MLXError  # noqa: E402

__all__ = ["__version__", "Torch2MLXError", "CheckpointError", "stream", "templates", "training", "lightning",
           "recipes", "codegen", "analyze", "convert", "export", "load_converted", "to_nested", "to_torch", "generate"]


def analyze(x, *, model=None, model_kwargs=None, allow_globals=()):
    """How much of a model maps to MLX, how each tensor converts, and what blocks the rest.

    ``x`` is an ``nn.Module``, a class path ``"pkg.mod:Class"`` or a checkpoint /
    config directory; see ``torch2mlx.analysis.analyze``. Imports torch only when needed.
    """
    from .analysis import analyze as _analyze
    return _analyze(x, model=model, model_kwargs=model_kwargs, allow_globals=allow_globals)


def convert(model_or_state_dict, path, **options):
    """A live model, state dict or checkpoint path to MLX weights; see ``torch2mlx.model_api.convert``."""
    from .model_api import convert as _convert
    return _convert(model_or_state_dict, path, **options)


def export(model_or_path, path=None, **options):
    """``export(model, path)`` now, or ``@export(path)`` on an nn.Module class; see ``torch2mlx.model_api.export``."""
    from .model_api import export as _export
    return _export(model_or_path, path, **options)


def load_converted(path, *, prefix: str = "", nested: bool = False):
    """``{name: mx.array}`` of a conversion, ready for ``load_weights``; see ``torch2mlx.model_api.load``."""
    from .model_api import load_converted as _load
    return _load(path, prefix=prefix, nested=nested)


def to_nested(flat):
    """Flat dotted names to the nested dicts and lists of an MLX module tree."""
    from .model_api import to_nested as _nested
    return _nested(flat)


def to_torch(path_or_dict, model_or_rules=None, **options):
    """MLX weights back to a torch state dict that ``load_state_dict(strict=True)`` takes; see ``model_api.to_torch``."""
    from .model_api import to_torch as _to_torch
    return _to_torch(path_or_dict, model_or_rules, **options)


def generate(model, **options):
    """The MLX module source of a torch model (``.source``, ``.coverage``, ``.traced``); see
    ``torch2mlx.codegen.generate``."""
    from .codegen import generate as _generate
    return _generate(model, **options)


def __getattr__(name):
    # Submodules load on first use so `import torch2mlx` stays light.
    if name in ("stream", "templates", "training", "lightning", "recipes", "codegen"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'torch2mlx' has no attribute {name!r}")
