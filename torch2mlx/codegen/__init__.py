"""Code generation: the MLX module source of a PyTorch model.

    result = torch2mlx.generate(model)                    # an nn.Module (or "pkg.mod:Class", or a config dir)
    result.source      # a complete .py file importing only mlx (and math when a constant needs it)
    result.coverage    # share of the model's modules with a generated constructor
    result.traced      # every __call__ the model runs came from a torch.fx trace
    result.write("model_mlx.py")

The generated module takes the weights ``torch2mlx.convert`` writes, by name:
``model.load_weights(list(torch2mlx.load_converted(path).items()), strict=True)``.
Its inputs and outputs keep torch's layout (channels first for images).
torch is imported when ``generate`` runs, never when this package is imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import Torch2MLXError

__all__ = ["generate", "generate_forward", "Generated"]


@dataclass
class Generated:
    source: str
    name: str  # the root class
    coverage: float  # modules with a generated constructor / all modules
    traced: bool  # every __call__ the root reaches came from a trace, fully translated
    modules: int
    generated: int
    classes: list = field(default_factory=list)  # ClassCode: name, torch class, status, todo
    prefix: str = ""  # load_converted(path, prefix=...) when the root is wrapped
    blockers: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    mismatches: list = field(default_factory=list)  # generated parameters that differ from the converter's

    @property
    def untranslated(self) -> list[str]:
        return list(dict.fromkeys(t for c in self.classes if c.status != "traced" for t in c.todo))

    def counts(self) -> dict:
        by = {}
        for c in self.classes:
            by[c.status] = by.get(c.status, 0) + 1
        return by

    def summary(self) -> str:
        counts = ", ".join(f"{v} {k}" for k, v in sorted(self.counts().items()))
        lines = [
            f"class:      {self.name}",
            f"coverage:   {self.coverage:.1%} of modules have generated constructors "
            f"({self.generated} of {self.modules})",
            f"__call__:   {'traced and translated' if self.traced else 'not all traced (see TODOs)'}; "
            f"classes: {counts}",
        ]
        if self.prefix:
            lines.append(f"weights:    load with torch2mlx.load_converted(path, prefix={self.prefix!r})")
        for t in self.untranslated[:10]:
            lines.append(f"  todo: {t}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def write(self, path, *, overwrite: bool = True) -> str:
        path = os.fspath(path)
        if os.path.exists(path) and not overwrite:
            raise Torch2MLXError(f"{path}: exists")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.source)
        os.replace(tmp, path)
        return path

    def load(self):
        """The generated module's namespace (the source executed): ``ns[result.name]`` is the root class."""
        ns: dict = {"__name__": f"torch2mlx_generated_{self.name}"}
        exec(compile(self.source, f"<generated {self.name}>", "exec"), ns)  # noqa: S102 - source we generated
        return ns


def generate(x, *, model_kwargs=None, class_name: str | None = None, example_inputs=None) -> Generated:
    """The MLX module (Python source) of a torch model, named so converted weights load strictly.

    ``torch2mlx.generate`` is this function.

    Args:
        x: an ``nn.Module``, a class path ``"pkg.mod:Class"`` or a directory with a transformers
            ``config.json`` (built on the meta device, as the analyzer builds it).
        model_kwargs: constructor keywords for a class path (a dict or JSON text).
        class_name: the root class's name (default: the torch class's name).
        example_inputs: a tensor, a tuple, or a dict of keyword arguments, run once to learn how each
            module is called; without them each module's call is read from its parent's trace.

    Returns:
        Generated: ``.source`` (the module's code), ``.coverage``, ``.traced``, ``write(path)``.

    Raises:
        Torch2MLXError: torch is not installed, or the model cannot be built.

    Example:
        >>> torch2mlx.generate(torch.nn.Sequential(torch.nn.Linear(4, 2))).write("model_mlx.py")  # doctest: +SKIP
    """
    from .api import generate_source

    return generate_source(x, model_kwargs=model_kwargs, class_name=class_name, example_inputs=example_inputs)


def generate_forward(module, **options) -> str:
    """The draft ``__call__`` of ``module``'s MLX class (Lightning Level 2); see ``lightning_forward``."""
    from .lightning_forward import generate_forward as _generate_forward

    return _generate_forward(module, **options)
