"""torch2mlx: move PyTorch checkpoints and models to Apple MLX.

The streaming engine (``torch2mlx.stream``, ``t2mlx stream``) never imports torch.
"""
__version__ = "0.1.0"

from .errors import CheckpointError, Torch2MLXError  # noqa: E402

__all__ = ["__version__", "Torch2MLXError", "CheckpointError", "stream"]


def __getattr__(name):
    # Submodules load on first use so `import torch2mlx` stays light.
    if name == "stream":
        from . import stream
        return stream
    raise AttributeError(f"module 'torch2mlx' has no attribute {name!r}")
