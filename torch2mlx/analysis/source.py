"""What a module's ``forward`` does that MLX cannot follow as written, read from its source by AST.

Names in the code are resolved against the function's own globals, so
``F.conv2d`` is recognised by what ``F`` is, not by how it is spelled:

- in-place tensor methods (``x.add_(y)``, ``inplace=True``) and augmented
  assignment on what may be a tensor (``h += r``): MLX arrays are values, so
  code relying on aliasing changes meaning;
- ``.item()`` / ``.tolist()``: a host round trip, and data-dependent control
  flow when it steers an ``if``/``while``/``for``;
- ``torch.autograd.Function`` subclasses called through ``.apply``;
- hooks registered from ``forward``;
- device code (``.cuda()``, ``.cpu()``, ``torch.cuda.*``, ``.to("cuda")``).
"""

from __future__ import annotations

import ast
import builtins
import functools
import inspect
import os
import textwrap
from dataclasses import dataclass


@dataclass(frozen=True)
class Blocker:
    kind: str  # inplace | data_dependent | autograd_function | hook | device | layer
    module: str  # class path
    where: str  # file:line, or the module's path in the model for layer checks
    detail: str

    def to_dict(self) -> dict:
        return {"kind": self.kind, "module": self.module, "where": self.where, "detail": self.detail}


_CONTROL = (ast.If, ast.While, ast.IfExp, ast.Assert)
_LITERAL_VALUES = (ast.Constant, ast.Tuple, ast.List, ast.Dict, ast.Set, ast.JoinedStr)
_HOOKS = {
    "register_forward_hook",
    "register_forward_pre_hook",
    "register_full_backward_hook",
    "register_full_backward_pre_hook",
    "register_backward_hook",
    "register_hook",
}


@dataclass
class _Source:
    tree: ast.AST
    text: str
    file: str
    line0: int
    globals: dict


def _parse(func) -> _Source | None:
    func = inspect.unwrap(func)
    try:
        lines, line0 = inspect.getsourcelines(func)
        file = inspect.getsourcefile(func) or "?"
    except (OSError, TypeError):
        return None
    text = textwrap.dedent("".join(lines))
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    return _Source(tree, text, file, line0, getattr(func, "__globals__", {}))


def _short(path: str) -> str:
    """A source file as a report shows it: from its package root, or relative to the working directory."""
    parts = path.replace(os.sep, "/").split("/")
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1 :])
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else "/".join(parts[-3:])


def _resolve(node, env: dict):
    """The object a Name/Attribute chain names in ``env``, or None."""
    if isinstance(node, ast.Name):
        return env[node.id] if node.id in env else getattr(builtins, node.id, None)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, env)
        return getattr(base, node.attr, None) if base is not None else None
    return None


def _non_tensor_names(fn: ast.AST) -> set[str]:
    """Local names only ever bound to literals, counters or containers: augmented assignment on them is fine."""
    literal, other = set(), set()
    for node in ast.walk(fn):
        targets, value = [], None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        elif isinstance(node, ast.For):
            targets, value = [node.target], node.iter
        for t in targets:
            if not isinstance(t, ast.Name):
                continue
            plain = isinstance(value, _LITERAL_VALUES) or (
                isinstance(value, ast.Call)
                and isinstance(value.func, ast.Name)
                and value.func.id in ("len", "int", "float", "range", "enumerate", "list", "tuple", "dict", "str")
            )
            (literal if plain else other).add(t.id)
    return literal - other


def _in_control(node, parents) -> bool:
    while node in parents:
        parent = parents[node]
        if isinstance(parent, _CONTROL) and node is parent.test:
            return True
        if isinstance(parent, ast.For) and node is parent.iter:
            return True
        node = parent
    return False


def _steers(node, parents, fn) -> bool:
    """The value decides control flow: directly, or through the name it is assigned to."""
    if _in_control(node, parents):
        return True
    parent = parents.get(node)
    while isinstance(parent, (ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Call)) and parent in parents:
        parent = parents[parent]
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0], ast.Name):
        name = parent.targets[0].id
        return any(
            isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load) and _in_control(n, parents)
            for n in ast.walk(fn)
        )
    return False


@functools.lru_cache(maxsize=None)
def forward_blockers(cls) -> tuple[Blocker, ...]:
    """Blockers in ``cls.forward`` (torch's own layers are trusted and skipped)."""
    import torch

    forward = cls.__dict__.get("forward")
    if forward is None or cls.__module__.startswith("torch.nn."):
        return ()
    src = _parse(forward)
    if src is None:
        return ()
    key = f"{cls.__module__}.{cls.__qualname__}"
    found: list[Blocker] = []
    parents = {child: node for node in ast.walk(src.tree) for child in ast.iter_child_nodes(node)}
    plain = _non_tensor_names(src.tree)

    def add(kind, node, detail):
        segment = ast.get_source_segment(src.text, node) or ""
        found.append(
            Blocker(
                kind,
                key,
                f"{_short(src.file)}:{src.line0 + node.lineno - 1}",
                f"{detail}: {segment.splitlines()[0][:80]}" if segment else detail,
            )
        )

    for node in ast.walk(src.tree):
        if isinstance(node, ast.AugAssign):
            t = node.target
            if isinstance(node.value, _LITERAL_VALUES) or (isinstance(t, ast.Name) and t.id in plain):
                continue
            add("inplace", node, "augmented assignment (in place on a tensor)")
        elif isinstance(node, ast.Call):
            func = node.func
            if any(
                k.arg == "inplace" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in node.keywords
            ):
                add("inplace", node, "inplace=True")
            if not isinstance(func, ast.Attribute):
                continue
            name = func.attr
            if (
                name.endswith("_")
                and not name.startswith("_")
                and hasattr(torch.Tensor, name)
                and hasattr(torch.Tensor, name[:-1])
            ):
                add("inplace", node, f"in-place tensor method .{name}()")
            elif name in ("item", "tolist") and not node.args:
                flow = _steers(node, parents, src.tree)
                add("data_dependent", node, f".{name}() " + ("steers control flow" if flow else "copies to the host"))
            elif name == "apply":
                target = _resolve(func.value, src.globals)
                if isinstance(target, type) and issubclass(target, torch.autograd.Function):
                    add("autograd_function", node, f"custom autograd function {target.__name__}")
            elif name in _HOOKS:
                add("hook", node, f"registers a hook (.{name})")
            elif name in ("cuda", "cpu") and not node.args:
                add("device", node, f".{name}()")
            elif name == "to" and any(
                _is_device_literal(a) for a in list(node.args) + [k.value for k in node.keywords]
            ):
                add("device", node, "moves to a fixed device")
        elif isinstance(node, ast.Attribute) and node.attr == "cuda" and _resolve(node.value, src.globals) is torch:
            add("device", node, "uses torch.cuda")
    return tuple(found)


def _is_device_literal(node) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.split(":")[0] in ("cuda", "mps", "xpu", "cpu")
    )


@functools.lru_cache(maxsize=None)
def functional_layouts(cls) -> dict[str, str]:
    """Parameters ``forward`` passes as the weight of a functional convolution: name -> layout rule."""
    import torch.nn.functional as F

    forward = cls.__dict__.get("forward")
    src = _parse(forward) if forward is not None else None
    if src is None:
        return {}
    convs = [
        (F.conv1d, "conv1d"),
        (F.conv2d, "conv2d"),
        (F.conv3d, "conv3d"),
        (F.conv_transpose1d, "conv_transpose1d"),
        (F.conv_transpose2d, "conv_transpose2d"),
        (F.conv_transpose3d, "conv_transpose3d"),
    ]
    found = {}
    for node in ast.walk(src.tree):
        if not isinstance(node, ast.Call):
            continue
        fn = _resolve(node.func, src.globals)
        rule = next((r for f, r in convs if f is fn), None)
        if rule is None:
            continue
        weight = (
            node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "weight"), None)
        )
        if isinstance(weight, ast.Attribute) and isinstance(weight.value, ast.Name) and weight.value.id == "self":
            found[weight.attr] = rule
    return found


def _root_attr(node):
    """``self.weight`` for ``self.weight``, ``self.weight.float()``, ``self.weight.to(x)``."""
    while True:
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
            node = node.value
        else:
            return node


@functools.lru_cache(maxsize=None)
def offset_weight(cls) -> bool:
    """``forward`` scales by ``1 + self.weight`` (Gemma's norms): the stored weight is an offset from 1."""
    forward = cls.__dict__.get("forward")
    src = _parse(forward) if forward is not None else None
    if src is None:
        return False
    for node in ast.walk(src.tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            for one, other in ((node.left, node.right), (node.right, node.left)):
                root = _root_attr(other)
                if (
                    isinstance(one, ast.Constant)
                    and one.value == 1
                    and isinstance(root, ast.Attribute)
                    and root.attr == "weight"
                    and isinstance(root.value, ast.Name)
                    and root.value.id == "self"
                ):
                    return True
    return False


def _callee(call: ast.Call) -> str | None:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


@functools.lru_cache(maxsize=None)
def centers(cls) -> bool:
    """``forward`` subtracts a mean (or calls ``layer_norm``): a LayerNorm. Without either it is an RMS norm
    (T5's ``*LayerNorm`` classes). True when the code cannot be read: the class name's word stands."""
    owner = next((c for c in cls.__mro__ if "forward" in c.__dict__), None)
    src = _parse(owner.__dict__["forward"]) if owner is not None and not owner.__module__.startswith("torch.") else None
    if src is None:
        return True
    means = {
        t.id
        for node in ast.walk(src.tree)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and _callee(node.value) == "mean"
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    for node in ast.walk(src.tree):
        if isinstance(node, ast.Call) and _callee(node) == "layer_norm":
            return True
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub):
            right = node.right
            if (isinstance(right, ast.Name) and right.id in means) or (
                isinstance(right, ast.Call) and _callee(right) == "mean"
            ):
                return True
    return False
