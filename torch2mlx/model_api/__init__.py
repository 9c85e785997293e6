"""The model-level API around the verbs: ``export`` (a live ``nn.Module`` to MLX, now or on its first
forward) and ``load_converted`` (a conversion read back as MLX arrays).

``torch2mlx.convert`` and ``torch2mlx.to_torch`` are the stream's own ``convert`` and ``to_torch``,
which take live modules and state dicts as well as checkpoint paths.
"""

from .export import export
from .load import load_converted, to_nested

__all__ = ["export", "load_converted", "to_nested"]
