"""What a training-state conversion could not carry exactly, said out loud.

Every converter here returns its result with a ``Report``: ``notes`` are facts
that change nothing numerically (an implementation flag such as ``foreach``
ignored, a hyper-parameter spelled differently in MLX); ``inexact`` are
quantities MLX receives but that do not continue torch's training exactly
(a moment of a summed LSTM bias, a momentum schedule MLX cannot follow).
With ``strict=True`` (the default) an inexact item raises, so nothing is
silently wrong; ``strict=False`` accepts them and leaves the list to read.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Torch2MLXError


@dataclass
class Report:
    notes: list[str] = field(default_factory=list)
    inexact: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not self.inexact

    def extend(self, other: "Report") -> "Report":
        self.notes += [n for n in other.notes if n not in self.notes]
        self.inexact += [n for n in other.inexact if n not in self.inexact]
        return self

    def check(self, strict: bool, what: str) -> None:
        if strict and self.inexact:
            listed = "; ".join(self.inexact[:6]) + (" ..." if len(self.inexact) > 6 else "")
            raise Torch2MLXError(f"{what} cannot be carried exactly: {listed} (strict=False accepts this and "
                                 "keeps the list in the result's report)")

    def __str__(self) -> str:
        lines = [f"inexact: {x}" for x in self.inexact] + [f"note: {x}" for x in self.notes]
        return "\n".join(lines) or "exact"
