"""torch2mlx: move PyTorch checkpoints and models to Apple MLX.

    torch2mlx.convert(model, "weights.safetensors")     # a live nn.Module (or state dict, or checkpoint path)
    weights = torch2mlx.load_converted("weights.safetensors")
    mlx_model.load_weights(list(weights.items()), strict=True)
    model.load_state_dict(torch2mlx.to_torch(weights, model=model), strict=True)
    torch2mlx.generate(model).write("model_mlx.py")     # the MLX module's source (t2mlx codegen)

``torch2mlx.convert`` and ``torch2mlx.to_torch`` are ``torch2mlx.stream.convert`` and
``torch2mlx.stream.to_torch``. Everything loads on first use: ``import torch2mlx`` imports neither torch nor MLX.
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
    "convert_adapter",
]


def _wire_analyzer() -> None:
    # The stream engine takes rules from a model through core.model_rules, never importing the analyzer
    # (which imports torch), nor torch itself: this package, above both, wires them together. Python runs
    # this module before any torch2mlx submodule, so every entry point sees it; the analyzer (and torch)
    # load on a conversion's first ask.
    from .core import model_rules

    def forward(ck, **kw):
        from .analysis.stream_inputs import stream_inputs

        return stream_inputs(ck, **kw)

    def reverse(ck, model, model_kwargs):
        from .analysis.stream_inputs import reverse_inputs

        return reverse_inputs(ck, model, model_kwargs)

    def module(ck, nn_module):
        from .analysis.stream_inputs import module_inputs

        return module_inputs(ck, nn_module)

    def tensor(array, dtype):
        import torch

        t = torch.from_numpy(array)  # shares the array's memory
        return t if dtype.exact_numpy else t.view(getattr(torch, dtype.name))

    model_rules.register(forward, reverse, module=module, tensor=tensor)


_wire_analyzer()


# Public names -> (module, attribute); each loads on first use so `import torch2mlx` stays light.
# A submodule maps to itself (attribute None).
_LAZY = {
    "stream": (".stream", None),
    "templates": (".templates", None),
    "training": (".training", None),
    "lightning": (".lightning", None),
    "recipes": (".recipes", None),
    "codegen": (".codegen", None),
    "analyze": (".analysis", "analyze"),
    "convert": (".stream.convert", "convert"),
    "to_torch": (".stream.to_torch", "to_torch"),
    "export": (".model_api.export", "export"),
    "load_converted": (".model_api.load", "load_converted"),
    "to_nested": (".model_api.load", "to_nested"),
    "generate": (".codegen", "generate"),
    "convert_adapter": (".adapters", "convert_adapter"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'torch2mlx' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    found = importlib.import_module(module, __name__)
    value = found if attr is None else getattr(found, attr)
    globals()[name] = value  # the next lookup is an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
