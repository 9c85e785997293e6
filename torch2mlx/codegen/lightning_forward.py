"""Lightning Level 2: the draft ``__call__`` of an MLX module, from its PyTorch counterpart's ``forward``.

    source = generate_forward(torch_module)          # a method, indented for a class body
    class Net(MLXModule):
        ...                                           # paste it here

The draft is what ``torch2mlx.generate`` writes for the module's own class: the
``forward`` traced with torch.fx and translated through the op table, its
submodules called by the names ``torch2mlx.convert`` gives their weights
(``self.encoder.layers[0]``). When tracing fails, it is a stub with the
original signature, a TODO listing what was not translated and the
analyzer's blockers. Helpers the draft calls (``_cl``, ``_cf``, ...) come first
with ``helpers=True``; ``generate(module).source`` has them all.
"""

from __future__ import annotations

from ..errors import Torch2MLXError


def generate_forward(module, *, example_inputs=None, helpers: bool = False) -> str:
    """The draft ``__call__`` of ``module``'s MLX class (an ``nn.Module``, e.g. a LightningModule)."""
    from . import generate
    from .prelude import HELPERS, render

    if not (hasattr(module, "named_modules") and hasattr(module, "_parameters")):
        raise Torch2MLXError(f"generate_forward takes an nn.Module, not a {type(module).__name__}")
    result = generate(module, example_inputs=example_inputs)
    root = next(c for c in result.classes if c.name == result.name)
    lines = root.source.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("    def __call__(")), None)
    if start is None:
        raise Torch2MLXError(f"{type(module).__name__} has no forward to translate")
    method = "\n".join(lines[start:]).rstrip() + "\n"
    if not helpers:
        return method
    used = {name for name in HELPERS if f"{name}(" in method}
    return "\n\n".join(render(used) + [method]) if used else method
