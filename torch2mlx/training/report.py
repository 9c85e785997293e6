"""What a training-state conversion could not carry exactly, said out loud.

Every converter here returns its result with a ``TrainingReport``: ``notes`` are facts
that change nothing numerically (an implementation flag such as ``foreach``
ignored, a hyper-parameter spelled differently in MLX); ``inexact`` are
anything that makes the continued run differ from torch's (a moment of a
summed LSTM bias, a schedule position that had to be guessed, an unknown
hyper-parameter ignored). With ``strict=True`` (the default) an inexact item
raises, so nothing is silently wrong; ``strict=False`` accepts them with a
warning and leaves the list to read.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from ..errors import Torch2MLXError


class InexactConversionWarning(UserWarning):
    """A conversion accepted with ``strict=False`` that will not continue torch's training exactly."""


@dataclass
class TrainingReport:
    notes: list[str] = field(default_factory=list)
    inexact: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not self.inexact

    def extend(self, other: "TrainingReport") -> "TrainingReport":
        self.notes += [n for n in other.notes if n not in self.notes]
        self.inexact += [n for n in other.inexact if n not in self.inexact]
        return self

    def check(self, strict: bool | None, what: str) -> None:
        """Raise (``strict``) or warn (``strict=False``) about inexact items; ``None``: a caller checks later."""
        if strict is None or not self.inexact:
            return
        listed = "; ".join(self.inexact[:6]) + (" ..." if len(self.inexact) > 6 else "")
        if strict:
            raise Torch2MLXError(
                f"{what} cannot be carried exactly: {listed} (strict=False accepts this and "
                "keeps the list in the result's report)"
            )
        warnings.warn(
            f"{what} will not continue torch's training exactly: {listed}", InexactConversionWarning, stacklevel=3
        )

    def __str__(self) -> str:
        lines = [f"inexact: {x}" for x in self.inexact] + [f"note: {x}" for x in self.notes]
        return "\n".join(lines) or "exact"
