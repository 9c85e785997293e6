"""The model-level API: a live ``nn.Module`` (or state dict) to MLX weights and back.

``convert`` and ``export`` write through the streaming engine (an in-memory source over
the model's state dict, the analyzer's exact rules, the stream's plan and executor);
``load_converted`` reads the result as MLX arrays; ``to_torch`` undoes names and layouts.
"""

from .convert import convert
from .export import export
from .load import load_converted, to_nested
from .to_torch import to_torch

__all__ = ["convert", "export", "load_converted", "to_nested", "to_torch"]
