"""torch2mlx: move PyTorch checkpoints and models to Apple MLX.

The streaming engine (``torch2mlx.stream``, ``t2mlx stream``) never imports torch.
"""
__version__ = "0.1.0"

from .errors import CheckpointError, Torch2MLXError  # noqa: E402

__all__ = ["__version__", "Torch2MLXError", "CheckpointError", "stream", "analyze"]


def analyze(x, *, model=None, model_kwargs=None):
    """How much of a model maps to MLX, how each tensor converts, and what blocks the rest.

    ``x`` is an ``nn.Module``, a class path ``"pkg.mod:Class"`` or a checkpoint /
    config directory; see ``torch2mlx.analysis.analyze``. Imports torch only when needed.
    """
    from .analysis import analyze as _analyze
    return _analyze(x, model=model, model_kwargs=model_kwargs)


def __getattr__(name):
    # Submodules load on first use so `import torch2mlx` stays light.
    if name == "stream":
        from . import stream
        return stream
    raise AttributeError(f"module 'torch2mlx' has no attribute {name!r}")
