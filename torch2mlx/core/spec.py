"""``RuleSpec``: one planned output and the rule that makes it (what the analyzer, a manifest's records or
a caller's ``specs=`` give the planner)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One planned output from the analyzer (or another rule provider)."""

    out: str
    sources: tuple[str, ...]
    rule: str
    args: dict = field(default_factory=dict)
    rule_source: str = "model"
