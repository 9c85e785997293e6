"""One module's ``torch.fx`` graph as the body of its MLX ``__call__``.

Each graph node becomes one assignment. Values keep torch's layout (channels
first) unless a node runs channels-last in MLX (convolutions, pooling, the
normalizations over channels): such a node takes its input channels-last and
leaves its output so; the next node that needs torch's layout gets a
``_cf(...)`` first, one that also runs channels-last uses the value as it is.
Elementwise nodes (activations, dropout, ``+`` of two channels-last values of
one rank) keep whichever layout their inputs have, so a conv -> norm -> relu ->
pool chain converts once on the way in and once on the way out.
"""

from __future__ import annotations

import builtins
import keyword
from dataclasses import dataclass

from . import fx_ops
from .nodes import Alias, Out, Untranslated, Val
from .render import literal

RESERVED = {"self", "mx", "nn", "math"}


@dataclass
class Body:
    params: list[str]
    lines: list[str]
    helpers: set[str]
    untranslated: list[str]

    @property
    def complete(self) -> bool:
        return not self.untranslated


class Env:
    """What the translator asks of the module the graph belongs to (see ``generate``)."""

    def attr(self, target: str) -> Val:  # get_attr: a parameter or buffer, relative to the module
        raise Untranslated(f"attribute {target}")

    def call_module(self, tr: "Translator", node) -> Out | Alias:
        raise Untranslated(f"module {node.target}")


def _var(name: str) -> str:
    name = name if name.isidentifier() else "v_" + "".join(c if c.isalnum() else "_" for c in name)
    return (
        name + "_"
        if keyword.iskeyword(name) or name in RESERVED or name.startswith("_") or hasattr(builtins, name)
        else name
    )


def _what(node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    t = node.target
    return f"{getattr(t, '__module__', '') or ''}.{getattr(t, '__name__', t)}".lstrip(".")


class Translator:
    def __init__(self, graph, env: Env, concrete: set[str] = frozenset()):
        self.graph = graph
        self.env = env
        self.concrete = set(concrete)
        self.lines: list[str] = []
        self.helpers: set[str] = set()
        self.untranslated: list[str] = []
        self.vals: dict = {}
        self.used: set[str] = set()
        self._is_guard = fx_ops.is_guard

    # ---- values ---------------------------------------------------------------------------------------

    def val(self, node) -> Val:
        return self.vals[node]

    def kind(self, a) -> str:
        from torch.fx import Node

        if isinstance(a, Node):
            return self.vals[a].kind
        if a is None:
            return "none"
        if isinstance(a, bool):
            return "bool"
        if isinstance(a, (int, float)):
            return "scalar"
        if isinstance(a, (tuple, list)):
            return "seq"
        if type(a).__name__ == "dtype":
            return "dtype"
        if type(a).__name__ == "device" or isinstance(a, str):
            return "device" if type(a).__name__ == "device" else "str"
        return "any"

    def fresh(self, base: str) -> str:
        name, i = _var(base), 1
        while name in self.used:
            i += 1
            name = f"{_var(base)}_{i}"
        self.used.add(name)
        return name

    def tensor(self, a, layout: str = "cf", rank: int | None = None) -> str:
        """The expression of argument ``a`` in ``layout`` (converting a graph value when it lacks that form).
        ``rank``: what the consumer knows of the value's rank (a Conv2d input has 4 axes)."""
        from torch.fx import Node

        if not isinstance(a, Node):
            return self.value(a)
        v = self.vals[a]
        if rank is not None and v.rank is None and v.kind in ("tensor", "any"):
            v.rank = rank
        if layout in v.forms:
            return v.forms[layout]
        if v.kind not in ("tensor", "any") or not v.forms:
            return next(iter(v.forms.values()))
        src = next(iter(v.forms.values()))
        base = src if src.isidentifier() else a.name
        name = self.fresh(f"{base}_{layout}" if layout == "cl" else base.removesuffix("_cl"))
        helper = "_cl" if layout == "cl" else "_cf"
        self.helpers.add(helper)
        self.lines.append(f"{name} = {helper}({src})")
        v.forms[layout] = name
        return name

    def value(self, a) -> str:
        """Source of any argument: graph values in torch's layout, nested tuples, lists, dicts and constants."""
        from torch.fx import Node

        if isinstance(a, Node):
            return self.tensor(a)
        if isinstance(a, tuple):
            return "(" + ", ".join(self.value(x) for x in a) + ("," if len(a) == 1 else "") + ")"
        if isinstance(a, list):
            return "[" + ", ".join(self.value(x) for x in a) + "]"
        if isinstance(a, dict):
            return "{" + ", ".join(f"{k!r}: {self.value(x)}" for k, x in a.items()) + "}"
        if isinstance(a, slice):
            return f"slice({self.value(a.start)}, {self.value(a.stop)}, {self.value(a.step)})"
        if type(a).__name__ == "Size":
            return self.value(tuple(a))
        if type(a).__name__ in ("device", "memory_format", "layout"):
            return "None"
        try:
            return literal(a)
        except ValueError:
            raise Untranslated(f"constant of type {type(a).__name__}") from None

    def index(self, a) -> str:
        """An index inside ``[...]``: slices as ``a:b:c``, tuples without parentheses."""
        if isinstance(a, slice):
            parts = ["" if x is None else self.value(x) for x in (a.start, a.stop, a.step)]
            return ":".join(parts[:2]) + (f":{parts[2]}" if parts[2] else "")
        if isinstance(a, tuple):
            return ", ".join(self.index(x) for x in a) + ("," if len(a) == 1 else "")
        return self.value(a)

    def elementwise(self, *args) -> tuple[str, int | None]:
        """The layout an elementwise node runs in: channels-last only when every tensor input has it already
        and they share one known rank (or there is one); otherwise torch's."""
        from torch.fx import Node

        tensors = [self.vals[a] for a in args if isinstance(a, Node) and self.vals[a].kind in ("tensor", "any")]
        if not tensors or all("cf" in v.forms for v in tensors):
            return "cf", None
        if all("cl" in v.forms for v in tensors):
            ranks = {v.rank for v in tensors}
            if len(tensors) == 1 or (len(ranks) == 1 and None not in ranks):
                return "cl", tensors[0].rank
        return "cf", None

    # ---- the graph ------------------------------------------------------------------------------------

    def _live(self) -> set:
        """Nodes whose value the output needs, and nodes that change a value in place."""
        live = set()
        for node in reversed(self.graph.nodes):
            if (
                node.op == "output"
                or (fx_ops.mutates(node) and not self._is_guard(node))
                or any(u in live for u in node.users)
            ):
                if self._is_guard(node):
                    continue
                live.add(node)
        return live

    def run(self) -> Body:
        params: list[str] = []
        live = self._live()
        for node in self.graph.nodes:
            if node.op == "placeholder":
                name = str(node.target)
                if name.lstrip("*") in self.concrete:
                    self.vals[node] = Val({"cf": "None"}, kind="none")
                    continue
                var = self.fresh(name.lstrip("*"))
                params.append(("**" if name.startswith("**") else "*" if name.startswith("*") else "") + var)
                self.vals[node] = Val({"cf": var}, kind="any" if name.startswith("*") else "tensor")
                continue
            if node not in live:
                continue
            if node.op == "output":
                out = node.args[0]
                try:
                    if isinstance(out, dict):  # a transformers ModelOutput: keep its attribute and index access
                        self.helpers.add("_Output")
                        self.lines.append(f"return _Output({self.value(out)})")
                    else:
                        self.lines.append(f"return {self.value(out)}")
                except Untranslated as e:
                    self.untranslated.append(e.what)
                    self.helpers.add("_todo")
                    self.lines.append(f"return _todo({e.what!r})")
                continue
            try:
                if node.op == "get_attr":
                    result = self.env.attr(str(node.target))
                elif node.op == "call_module":
                    result = self.env.call_module(self, node)
                else:
                    result = fx_ops.translate(self, node)
            except (Untranslated, Exception) as e:
                if not isinstance(e, Untranslated):  # a construct the translator does not expect: a TODO too
                    e = Untranslated(f"{_what(node)} ({type(e).__name__}: {e})")
                self.untranslated.append(e.what)
                self.helpers.add("_todo")
                args = ", ".join(
                    [self.value(a) for a in node.args] + [f"{k}={self.value(v)}" for k, v in node.kwargs.items()]
                )
                var = self.fresh(node.name)
                self.lines.append(f"{var} = _todo({e.what!r}{', ' + args if args else ''})")
                self.vals[node] = Val({"cf": var}, kind="any")
                continue
            self._bind(node, result)
        return Body(params, self.lines, self.helpers, self.untranslated)

    def _bind(self, node, result) -> None:
        from torch.fx import Node

        if isinstance(result, Val):
            self.vals[node] = result
        elif isinstance(result, Alias):
            a = result.arg
            self.vals[node] = self.vals[a] if isinstance(a, Node) else Val({"cf": self.value(a)}, kind=self.kind(a))
        elif isinstance(result, Out):
            var = self.fresh(node.name)
            self.lines.append(f"{var} = {result.expr}")
            self.vals[node] = Val({result.layout: var}, result.rank, result.kind)
        else:  # a statement with no value (setitem)
            self.vals[node] = Val({"cf": "None"}, kind="none")

    def rebind(self, target, expr: str) -> Val:
        """An in-place change of ``target``: its variable is assigned the new value (later uses see it)."""
        from torch.fx import Node

        if not isinstance(target, Node):
            raise Untranslated("in-place change of a constant")
        v = self.vals[target]
        name = v.forms.get("cf")
        if name is None or not (name.isidentifier() or name.startswith("self.")):
            name = self.fresh(target.name)
        self.lines.append(f"{name} = {expr}")
        v.forms.clear()
        v.forms["cf"] = name
        return v
