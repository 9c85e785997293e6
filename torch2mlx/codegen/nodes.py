"""What a graph node translates to, shared by the translator and the op table (``fx_ops``).

Its own module so that ``translate`` can use the op table and the op table can build these without importing
``translate`` back.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class Untranslated(Exception):
    """A node with no MLX translation: ``what`` names the torch construct."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


@dataclass
class Val:
    """A value of the graph in the MLX code: its expression per layout, rank when known, what it is."""

    forms: dict = field(default_factory=dict)  # "cf" / "cl" -> expression
    rank: int | None = None
    kind: str = "tensor"  # tensor | shape | scalar | dtype | device | seq | none | any


@dataclass
class Out:
    """What a node's translation gives: an expression and the layout and kind of its value."""

    expr: str
    layout: str = "cf"
    rank: int | None = None
    kind: str = "tensor"


@dataclass
class Alias:
    """The node is its argument's value (``.contiguous()``, ``.detach()``, dropout at inference)."""

    arg: object
