"""Python source for values: literals, dtypes, and constructor expressions (a tiny expression tree).

Constructors are kept as trees (``Call``, ``Lit``, ``ListE``, ...) rather than
text so that instances of one torch class can be compared, and the literals
that differ between them lifted into constructor arguments.
"""

from __future__ import annotations

import keyword
import math
import re
from dataclasses import dataclass

from ..core import dtypes

#: Names a generated module's attributes must not take as attributes: mlx.nn.Module is a dict with methods.
_MODULE_NAMES = {
    "apply",
    "apply_to_modules",
    "children",
    "clear",
    "copy",
    "eval",
    "filter_and_map",
    "freeze",
    "fromkeys",
    "get",
    "is_module",
    "items",
    "keys",
    "leaf_modules",
    "load_weights",
    "modules",
    "named_modules",
    "parameters",
    "pop",
    "popitem",
    "save_weights",
    "set_dtype",
    "setdefault",
    "state",
    "train",
    "training",
    "trainable_parameters",
    "unfreeze",
    "update",
    "update_modules",
    "valid_child_filter",
    "valid_parameter_filter",
    "values",
    "mro",
}


def attribute_ok(name: str) -> bool:
    """``self.<name>`` reaches an MLX module's child or parameter of that name."""
    return (
        name.isidentifier() and not keyword.iskeyword(name) and name not in _MODULE_NAMES and not name.startswith("__")
    )


def literal(v) -> str:
    """Python source of a constant from a torch module or an fx graph."""
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "math.nan"
        if math.isinf(v):
            return "math.inf" if v > 0 else "-math.inf"
        return repr(v)
    if isinstance(v, int) or isinstance(v, str):
        return repr(v)
    if isinstance(v, tuple):
        return "(" + ", ".join(literal(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, list):
        return "[" + ", ".join(literal(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(x)}" for k, x in v.items()) + "}"
    if v is Ellipsis:
        return "..."
    name = dtype_name(v)
    if name is not None:
        return name
    raise ValueError(f"no MLX literal for {type(v).__name__} {v!r}")


def dtype_name(v) -> str | None:
    """``mx.float32`` for ``torch.float32`` (None when ``v`` is no torch dtype)."""
    if type(v).__name__ != "dtype" or not str(v).startswith("torch."):
        return None
    d = dtypes.by_name(str(v))
    if d is None:
        return None
    target = d.mlx if d.mlx else dtypes.mlx_target(d).mlx
    return "mx.bool_" if target == "bool" else f"mx.{target}"


# --- constructor expressions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Lit:
    value: object

    def render(self) -> str:
        return literal(self.value)


@dataclass(frozen=True)
class Raw:
    text: str

    def render(self) -> str:
        return self.text


@dataclass(frozen=True)
class Call:
    fn: str
    args: tuple = ()
    kwargs: tuple = ()  # ((name, expr), ...)

    def render(self) -> str:
        parts = [a.render() for a in self.args] + [f"{k}={v.render()}" for k, v in self.kwargs]
        return f"{self.fn}({', '.join(parts)})"


@dataclass(frozen=True)
class ListE:
    items: tuple

    def render(self) -> str:
        texts = [i.render() for i in self.items]
        if len(texts) >= 2 and len(set(texts)) == 1:
            return f"[{texts[0]} for _ in range({len(texts)})]"
        return "[" + ", ".join(texts) + "]"


@dataclass(frozen=True)
class DictE:
    items: tuple  # ((key, expr), ...)

    def render(self) -> str:
        return "{" + ", ".join(f"{k!r}: {v.render()}" for k, v in self.items) + "}"


def call(fn: str, *args, **kwargs) -> Call:
    """A constructor call; plain values become literals, keyword arguments equal to None are left out."""

    def wrap(v):
        return v if isinstance(v, (Lit, Raw, Call, ListE, DictE)) else Lit(v)

    return Call(fn, tuple(wrap(a) for a in args), tuple((k, wrap(v)) for k, v in kwargs.items() if v is not None))


def walk_lits(e, out: list) -> list:
    """The literals of an expression in order (what may become constructor arguments)."""
    if isinstance(e, Lit):
        out.append(e)
    elif isinstance(e, Call):
        for a in e.args:
            walk_lits(a, out)
        for _, v in e.kwargs:
            walk_lits(v, out)
    elif isinstance(e, ListE):
        for i in e.items:
            walk_lits(i, out)
    elif isinstance(e, DictE):
        for _, v in e.items:
            walk_lits(v, out)
    return out


def replace_lits(e, mapping: dict):
    """``e`` with the literals whose id is in ``mapping`` replaced by the expressions it gives."""
    if isinstance(e, Lit):
        return mapping.get(id(e), e)
    if isinstance(e, Call):
        return Call(
            e.fn,
            tuple(replace_lits(a, mapping) for a in e.args),
            tuple((k, replace_lits(v, mapping)) for k, v in e.kwargs),
        )
    if isinstance(e, ListE):
        return ListE(tuple(replace_lits(i, mapping) for i in e.items))
    if isinstance(e, DictE):
        return DictE(tuple((k, replace_lits(v, mapping)) for k, v in e.items))
    return e


def shape_key(e) -> str:
    """The expression with every literal blanked: instances whose constructors differ only in literals match."""
    if isinstance(e, Lit):
        return "?" if isinstance(e.value, (int, float)) and not isinstance(e.value, bool) else e.render()
    if isinstance(e, Call):
        return (
            f"{e.fn}(" + ",".join([shape_key(a) for a in e.args] + [f"{k}={shape_key(v)}" for k, v in e.kwargs]) + ")"
        )
    if isinstance(e, ListE):
        return "[" + ",".join(shape_key(i) for i in e.items) + "]"
    if isinstance(e, DictE):
        return "{" + ",".join(f"{k}:{shape_key(v)}" for k, v in e.items) + "}"
    return e.render()


def pretty(e, indent: int = 0, head: str = "", tail: str = "", width: int = 110) -> list[str]:
    """``head + e + tail`` as lines of at most ``width`` where it can be: calls, lists and dicts open up,
    one argument or item a line."""
    pad = " " * indent
    flat = f"{pad}{head}{e.render()}{tail}"
    if len(flat) <= width or isinstance(e, (Lit, Raw)):
        return [flat]
    inner = indent + 4
    if isinstance(e, ListE):
        texts = [i.render() for i in e.items]
        if len(texts) >= 2 and len(set(texts)) == 1:
            return (
                [f"{pad}{head}["]
                + pretty(e.items[0], inner)
                + [f"{' ' * inner}for _ in range({len(texts)})", f"{pad}]{tail}"]
            )
        return [f"{pad}{head}["] + [ln for i in e.items for ln in pretty(i, inner, tail=",")] + [f"{pad}]{tail}"]
    if isinstance(e, DictE):
        body = [ln for k, v in e.items for ln in pretty(v, inner, head=f"{k!r}: ", tail=",")]
        return [f"{pad}{head}{{"] + body + [f"{pad}}}{tail}"]
    if isinstance(e, Call):
        body = [ln for a in e.args for ln in pretty(a, inner, tail=",")] + [
            ln for k, v in e.kwargs for ln in pretty(v, inner, head=f"{k}=", tail=",")
        ]
        return [f"{pad}{head}{e.fn}("] + body + [f"{pad}){tail}"]
    return [flat]


def wrap_statement(line: str, indent: int, width: int = 110) -> list[str]:
    """A long ``name = f(a, b, ...)`` / ``return f(...)`` statement, one argument a line (others as they are)."""
    pad = " " * indent
    if len(pad) + len(line) <= width or not line.endswith(")"):
        return [pad + line]
    depth, start, quote = 0, None, None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            if depth == 0 and ch == "(" and start is None:
                start = i
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0 and start is not None and i != len(line) - 1:
                return [pad + line]  # the outer call is not the whole tail
    if start is None:
        return [pad + line]
    args, depth, cur, quote = [], 0, "", None
    for ch in line[start + 1 : -1]:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0 and not quote:
            args.append(cur.strip())
            cur = ""
        else:
            cur += ch
    args.append(cur.strip())
    return [pad + line[: start + 1]] + [f"{pad}    {a}," for a in args if a] + [pad + ")"]


_CALL = re.compile(r"^(\w+) = (self(?:\.\w+|\[[^\]]+\])*)\[(\d+)\]\((\w+)((?:, [^()]*)?)\)$")


def reroll(lines: list[str], lengths: dict) -> list[str]:
    """``a = self.layers[0](x); b = self.layers[1](a); ...`` over a whole list of ``lengths[self.layers]``
    layers, each output used only by the next call, as a loop."""
    out, i = [], 0
    while i < len(lines):
        m = _CALL.match(lines[i])
        if m and m.group(3) == "0" and lengths.get(m.group(2), 0) >= 2:
            container, n, rest = m.group(2), lengths[m.group(2)], m.group(5)
            run = [m]
            for k in range(1, n):
                nxt = _CALL.match(lines[i + k]) if i + k < len(lines) else None
                if not (
                    nxt
                    and nxt.group(2) == container
                    and nxt.group(3) == str(k)
                    and nxt.group(4) == run[-1].group(1)
                    and nxt.group(5) == rest
                ):
                    break
                run.append(nxt)
            inner = {r.group(1) for r in run[:-1]}
            later = lines[i + len(run) :]
            if len(run) == n and not any(re.search(rf"\b{v}\b", ln) for v in inner for ln in later):
                x, last = m.group(4), run[-1].group(1)
                out += [f"{last} = {x}", f"for layer in {container}:", f"    {last} = layer({last}{rest})"]
                i += n
                continue
        out.append(lines[i])
        i += 1
    return out


_SIMPLE = re.compile(r"^(\w+) = ((?:self\.)?[\w]+(?:\.\w+)*(?:\[[^\[\]]*\])?)$")


def inline_simple(lines: list[str]) -> list[str]:
    """``s = x.shape`` / ``b = s[0]`` used once are written where they are used (``x.shape[0]``):
    one name per line of the trace is more than a reader needs."""
    lines = list(lines)
    changed = True
    while changed:
        changed = False
        for i, line in enumerate(lines):
            m = _SIMPLE.match(line)
            if not m:
                continue
            name, expr = m.groups()
            word = re.compile(rf"(?<![\w.]){name}\b")
            uses = [j for j in range(i + 1, len(lines)) if word.search(lines[j])]
            if len(uses) != 1:
                continue
            base = re.match(r"[\w.]+", expr).group(0)
            # the value must not change between here and its use (``base[...] = v`` or ``base = ...``)
            changed_between = any(
                re.match(rf"\s*{re.escape(base)}\s*(\[.*\])?\s*=[^=]", ln) for ln in lines[i + 1 : uses[0] + 1]
            )
            use = lines[uses[0]]
            if (
                len(word.findall(use)) != 1
                or changed_between
                or re.match(rf"\s*{name} = ", use)
                or use.lstrip().startswith("for ")
            ):
                continue
            lines[uses[0]] = word.sub(lambda _, expr=expr: expr, use)  # backslashes in expr stay as they are
            del lines[i]
            changed = True
            break
    return lines
