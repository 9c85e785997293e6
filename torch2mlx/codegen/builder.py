"""A torch model as the source of an MLX module: classes from the module tree, ``__call__`` from fx traces.

1. The analyzer's walk gives every module its MLX path (the registry's child
   renames) and every tensor its MLX name, shape and rule: the names
   ``torch2mlx.convert`` writes, so the generated module loads them strictly.
2. Each module becomes one of: a registry layer (``nn.Conv2d(...)`` from its
   attributes), a container (a list or dict), a generated class (the model's own
   modules, and its subclasses of registry layers, which extend the MLX class),
   nothing (torch layers without state whose code is traced through), or a
   placeholder holding the tensors of a layer MLX lacks.
3. Generated classes are traced top-down (a parent's call decides which
   arguments of the child are tensors) and written bottom-up; instances of one
   torch class that differ only in numbers share one class whose constructor
   takes those numbers.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from ..analysis.tree import ModuleInfo
from ..core import registry
from ..core.registry import CUSTOM
from . import leaves as _leaves
from . import prelude
from .nodes import Alias, Out, Untranslated, Val
from .render import (
    Call,
    DictE,
    ListE,
    Lit,
    Raw,
    attribute_ok,
    call,
    inline_simple,
    literal,
    pretty,
    replace_lits,
    reroll,
    shape_key,
    walk_lits,
    wrap_statement,
)
from .trace import Pattern, Traced, call_arguments, default_pattern, pattern_of, trace
from .translate import Body, Env, Translator

_CONV_RANK = {"conv1d": 3, "conv2d": 4, "conv3d": 5}


@dataclass
class ModulePlan:
    """One torch module and what it becomes."""

    info: ModuleInfo
    kind: str  # leaf | container | class | inline | placeholder
    children: dict = field(default_factory=dict)  # torch name -> (mlx name, ModulePlan)
    leaf: object = None  # LeafCode
    base: Call | None = None  # class: the MLX class it extends, with arguments
    base_names: set = field(default_factory=set)  # tensors the base creates
    why: str = ""  # placeholder: what MLX lacks
    listlike: bool = False  # container: an MLX list (else a dict)
    pattern: Pattern | None = None
    traced: Traced | None = None
    reached: bool = False  # called from a traced parent
    conflict: bool = False  # called with two patterns

    @property
    def module(self):
        return self.info.module


@dataclass
class ClassCode:
    """A generated class: its name, constructor parameters and source."""

    name: str
    torch: str  # the torch class it comes from
    params: list  # lifted constructor parameters
    source: str
    status: str  # traced | partial | stub | placeholder | none
    todo: list = field(default_factory=list)
    plans: list = field(default_factory=list)


class Generator:
    def __init__(self, model, tree, blockers, recorded=None, root_name=None):
        self.model = model
        self.tree = tree
        self.blockers = blockers
        self.recorded = recorded or {}
        self.root_call: Pattern | None = None  # the root's call on the example inputs, when there are some
        self.by_path = {m.path: m for m in tree.modules}
        self.by_source = {t.sources[0]: t for t in tree.tensors if len(t.sources) == 1 and t.mlx}
        self.helpers: set[str] = set()
        self.notes: list[str] = []
        self.root = self._plan(self.by_path[""])
        self.root_name = root_name
        self.plans = list(self._all(self.root))
        self.classes: dict[int, tuple[ClassCode, dict]] = {}  # plan id -> (class, constructor kwargs)
        self.order: list[ClassCode] = []
        self._names: dict[str, int] = {}

    # ---- plans -----------------------------------------------------------------------------------------

    def _plan(self, info: ModuleInfo) -> ModulePlan:
        plan = self._kind(info)
        entry = info.entry if info.entry is not CUSTOM else None
        for name, child in info.module._modules.items():
            path = f"{info.path}.{name}" if info.path else name
            if child is None or path not in self.by_path:
                continue
            mlx_name = entry.child_name(name) if entry is not None else name
            plan.children[name] = (mlx_name, self._plan(self.by_path[path]))
        if plan.kind == "container":
            names = list(plan.children)
            plan.listlike = names == [str(i) for i in range(len(names))]
        return plan

    def _kind(self, info: ModuleInfo) -> ModulePlan:
        mod, entry = info.module, info.entry
        cls = type(mod)
        builtin = registry.is_torch_builtin(cls)
        real = entry is not None and entry is not CUSTOM
        if builtin and real and entry.kind == "container" and entry.torch != "torch.nn.Module":
            return ModulePlan(info, "container")
        exact = real and registry.class_key(cls) == entry.torch
        if (builtin or exact) and real and entry.torch in _leaves.LEAVES:
            if not info.supported:
                return ModulePlan(info, "placeholder", why=self._why(info))
            try:
                code = _leaves.leaf_code(mod, entry, self._child_expr_of(info))
            except Untranslated as e:
                return ModulePlan(info, "placeholder", why=e.what)
            return ModulePlan(info, "leaf", leaf=code)
        if builtin and entry is not None and entry.torch != "torch.nn.Module":
            if info.tensors or not info.supported and entry.mlx is None:
                return ModulePlan(info, "placeholder", why=self._why(info))
            return ModulePlan(info, "inline")
        if builtin and entry is None:
            return (
                ModulePlan(info, "placeholder", why="no MLX equivalent known")
                if info.tensors
                else ModulePlan(info, "inline")
            )
        plan = ModulePlan(info, "class")
        if real and info.supported and entry.mlx and entry.mlx.startswith("mlx.nn."):
            self._set_base(plan, entry)
        return plan

    def _why(self, info) -> str:
        found = [b.detail for b in self.blockers if b.kind == "layer" and b.where == (info.path or "(root)")]
        return found[0] if found else (info.entry.note or "no MLX equivalent") if info.entry else "no MLX equivalent"

    def _set_base(self, plan: ModulePlan, entry) -> None:
        """A model's own class the registry maps to an mlx.nn class extends it (``super().__init__(...)``)."""
        mod = plan.module
        base = None
        if entry.torch in _leaves.LEAVES:
            try:
                code = _leaves.leaf_code(mod, entry, self._child_expr_of(plan.info))
                base = code.init if isinstance(code.init, Call) else None
                self.helpers.update(code.helpers)
            except Untranslated:
                base = None
        if base is None:
            own = {n: t for n, t in mod._parameters.items() if t is not None}
            own.update({n: b for n, b in mod._buffers.items() if b is not None})
            base = _leaves.base_constructor(mod, entry, own)
        if base is not None:
            plan.base = base
            plan.base_names = _mlx_parameter_names(base, self.helpers)

    def _child_expr_of(self, info):
        """For composite layers (TransformerEncoder): a child module's constructor expression."""

        def build(child):
            path = next((p for p, m in self.by_path.items() if m.module is child and p.startswith(info.path)), None)
            if path is None:
                return None
            sub = self._kind(self.by_path[path])
            if sub.kind != "leaf":
                raise Untranslated(f"{type(child).__name__} inside {type(info.module).__name__}")
            self.helpers.update(sub.leaf.helpers)
            return sub.leaf.init

        return build

    def _all(self, plan):
        yield plan
        for _, child in plan.children.values():
            yield from self._all(child)

    # ---- tracing ---------------------------------------------------------------------------------------

    def trace_all(self) -> None:
        """Trace every class, parents first. A module called with different arguments in different places
        cannot be one class with one ``__call__``: it is traced into its callers instead, and all again."""
        inlined: set[int] = set()
        for _ in range(8):
            self._trace_all(inlined)
            conflicts = {id(p.module) for p in self.plans if p.conflict}
            if not conflicts - inlined:
                return
            inlined |= conflicts

    def _trace_all(self, inlined: set[int]) -> None:
        for plan in self.plans:
            plan.pattern, plan.traced, plan.reached, plan.conflict = None, None, False, False
        leaves = {id(p.module) for p in self.plans if p.kind in ("leaf", "class", "placeholder")} - inlined
        self.root.pattern = (
            self.recorded.get(id(self.root.module)) or self.root_call or default_pattern(self.root.module)
        )
        self.root.reached = True
        queue = [self.root]
        done = set()
        while queue:  # breadth first from the root along traced calls
            plan = queue.pop(0)
            if id(plan) in done or plan.kind != "class":
                continue
            done.add(id(plan))
            self._trace(plan, leaves, reached=True)
            queue.extend(c for c in self._called(plan) if c.kind == "class")
        for plan in self.plans:  # classes no traced parent calls: traced on their own, as drafts
            if plan.kind == "class" and id(plan) not in done:
                if plan.pattern is None:
                    plan.pattern = self.recorded.get(id(plan.module)) or default_pattern(plan.module)
                self._trace(plan, leaves, reached=False)

    def _trace(self, plan: ModulePlan, leaves, reached: bool) -> None:
        example = None
        if plan.pattern is not None:
            # example values: what the parent's trace passed, else what a run of the model passed
            run = self.recorded.get(id(plan.module))
            pool = {**(run.values if run is not None else {}), **plan.pattern.values}
            if plan.pattern.order and all(p in pool for p in plan.pattern.order):
                example = {p: pool[p] for p in plan.pattern.order}
        plan.traced = trace(plan.module, plan.pattern, leaves, example)
        if plan.traced.graph is None:
            return
        values = plan.traced.values
        for node in plan.traced.graph.nodes:
            if node.op != "call_module":
                continue
            child = self.resolve(plan, str(node.target))
            if child is None or child.kind != "class":
                continue
            p = pattern_of(child.module, node.args, node.kwargs, _is_tensor_arg)
            if p is not None:
                p.values = {k: _example_value(v, values) for k, v in p.values.items()}
                p.values = {k: v for k, v in p.values.items() if v is not None}
            if reached:
                if child.reached and child.pattern is not None and (p is None or p.key() != child.pattern.key()):
                    child.conflict = True
                    continue
                if not child.reached:
                    child.pattern, child.reached = p, True
            elif child.pattern is None:
                child.pattern = p

    def _called(self, plan: ModulePlan):
        if plan.traced is None or plan.traced.graph is None:
            return []
        out = []
        for node in plan.traced.graph.nodes:
            if node.op == "call_module":
                child = self.resolve(plan, str(node.target))
                if child is not None:
                    out.append(child)
        return out

    def resolve(self, plan: ModulePlan, target: str) -> ModulePlan | None:
        for part in target.split(".") if target else []:
            if part not in plan.children:
                return None
            plan = plan.children[part][1]
        return plan

    # ---- expressions relative to a class ---------------------------------------------------------------

    def access(self, plan: ModulePlan, target: str) -> tuple[str, ModulePlan]:
        """``self.encoder.layer[0]`` for torch path ``encoder.layer.0`` below ``plan``."""
        expr = "self"
        for part in target.split(".") if target else []:
            mlx_name, child = plan.children[part]
            if plan.kind == "container":
                expr += f"[{int(part)}]" if plan.listlike else f"[{part!r}]"
            else:
                expr += f".{mlx_name}" if attribute_ok(mlx_name) else f"[{mlx_name!r}]"
            plan = child
        return expr, plan

    def list_lengths(self, plan: ModulePlan) -> dict:
        """``self.blocks`` -> 4 for every MLX list of modules below ``plan`` (what a loop may run over)."""
        found = {}

        def visit(p, expr):
            for part, (mlx_name, child) in p.children.items():
                if p.kind == "container":
                    sub = f"{expr}[{int(part)}]" if p.listlike else f"{expr}[{part!r}]"
                else:
                    sub = f"{expr}.{mlx_name}" if attribute_ok(mlx_name) else f"{expr}[{mlx_name!r}]"
                if child.kind == "container" and child.listlike:
                    found[sub] = len(child.children)
                if child.kind in ("container",):
                    visit(child, sub)

        visit(plan, "self")
        return found

    def attr_val(self, plan: ModulePlan, target: str) -> Val:
        constant = plan.traced.constants.get(target) if plan.traced is not None else None
        if constant is not None:
            return Val({"cf": _tensor_literal(constant, target)})
        owner_path, _, name = target.rpartition(".")
        owner = self.resolve(plan, owner_path)
        if owner is None:
            raise Untranslated(f"attribute {target}")
        me, _ = self.access(plan, owner_path)
        if name in owner.info.buffers:
            if owner.kind != "class":
                raise Untranslated(f"buffer {target} of a {type(owner.module).__name__}")
            return Val({"cf": f"{me}._{name}"})
        full = f"{owner.info.path}.{name}" if owner.info.path else name
        t = self.by_source.get(full)
        if t is None:
            raise Untranslated(f"tensor {target} (no single MLX tensor holds it)")
        rel = t.mlx[len(owner.info.mlx_path) + 1 :] if owner.info.mlx_path else t.mlx
        expr = me + "".join(
            f"[{int(p)}]" if p.isdigit() else f".{p}" if attribute_ok(p) else f"[{p!r}]" for p in rel.split(".")
        )
        if t.rule == "identity":
            return Val({"cf": expr})
        if t.rule == "linear_transposed":
            return Val({"cf": f"{expr}.T"})
        if t.rule in _CONV_RANK:
            return Val({"cl": expr}, rank=_CONV_RANK[t.rule])
        raise Untranslated(f"tensor {target}, stored in MLX by rule {t.rule}")

    # ---- classes ---------------------------------------------------------------------------------------

    def construct(self, plan: ModulePlan):
        """The expression that builds ``plan``'s MLX object (None: nothing to build)."""
        if plan.kind == "leaf":
            self.helpers.update(plan.leaf.helpers)
            return plan.leaf.init
        if plan.kind == "container":
            items = [(n, self.construct(c)) for n, (_, c) in plan.children.items()]
            if plan.listlike:
                return ListE(tuple(e if e is not None else Lit(None) for _, e in items))
            return DictE(tuple((n, e) for n, e in items if e is not None))
        if plan.kind == "inline":
            return None
        code, kwargs = self.class_of(plan)
        return call(code.name, **kwargs) if kwargs else Call(code.name)

    def class_of(self, plan: ModulePlan) -> tuple[ClassCode, dict]:
        if id(plan) not in self.classes:
            self._classes_for(type(plan.module), plan.kind)
        return self.classes[id(plan)]

    def _classes_for(self, cls, kind) -> None:
        """Write the classes of every instance of ``cls``: one per shape, numbers that differ lifted."""
        instances = [p for p in self.plans if type(p.module) is cls and p.kind == kind]
        groups: dict = {}
        for p in instances:
            content = self._content(p)
            groups.setdefault(content.key, []).append((p, content))
        for members in groups.values():
            name = self._name(cls.__name__)
            params, per_plan = _lift([c for _, c in members])
            first = members[0][1]
            source = first.render(name, params, per_plan[0][0])
            code = ClassCode(
                name,
                f"{cls.__module__}.{cls.__qualname__}",
                [p for p, _ in params],
                source,
                first.status,
                first.todo,
                [p for p, _ in members],
            )
            self.order.append(code)
            for (p, _), (_, kwargs) in zip(members, per_plan, strict=True):
                self.classes[id(p)] = (code, kwargs)

    def _name(self, base: str) -> str:
        base = base if base.isidentifier() else "Module"
        reserved = set(prelude.HELPERS) | {"nn", "mx", "math"}
        n = self._names.get(base, 0)
        while True:
            n += 1
            name = base if n == 1 else f"{base}{n}"
            if name not in reserved and name not in self._names:
                self._names[base] = n
                if name != base:
                    self._names[name] = 1
                return name

    def _content(self, plan: ModulePlan) -> "_Content":
        stmts = []
        for mlx_name, child in plan.children.values():
            e = self.construct(child)
            if e is not None:
                stmts.append((_target(mlx_name), e))
        prefix = plan.info.mlx_path + "." if plan.info.mlx_path else ""
        own = [(t.mlx[len(prefix) :], t) for t in plan.info.tensors if t.mlx]
        own = [(n, t) for n, t in own if n not in plan.base_names]
        stmts += _tensor_stmts(own)
        missing = []
        for name, b in plan.info.buffers.items():
            expr, note = _buffer_expr(_materialized(plan.module, name, b))
            stmts.append((f"self._{name}", expr if note is None else Raw(f"{expr.render()}  # {note}")))
            if note is not None and (id(plan), name) in self.used_buffers:
                missing.append(f"the values of buffer {name} ({note.removeprefix('TODO: ')})")
        if plan.kind == "placeholder":
            body, status, todo = None, "placeholder", [plan.why]
        else:
            body, status, todo = self._call(plan)
        if missing and status == "traced":
            status = "partial"
        todo = todo + missing
        if plan.base is not None:
            self.helpers.update(_helper_classes(plan.base))
        return _Content(plan, plan.base, stmts, body, status, todo, self)

    def _call(self, plan: ModulePlan):
        """The ``__call__`` lines, or None for a stub; its status; what is left to do."""
        traced = plan.traced
        if traced is None or traced.graph is None:
            why = traced.error if traced is not None else "not traced"
            return None, "stub", [f"torch.fx could not trace {type(plan.module).__name__}.forward: {why}"]
        env = _ClassEnv(self, plan)
        body = Translator(traced.graph, env, traced.concrete).run()
        self.helpers.update(body.helpers)
        if plan.conflict:
            body.untranslated.append(
                f"{type(plan.module).__name__} is called with different arguments in "
                "different places; the draft follows the first"
            )
        status = "traced" if body.complete else "partial"
        return body, status, [f"no MLX translation for {w}" for w in dict.fromkeys(body.untranslated)]

    def _find_used_buffers(self) -> None:
        """Buffers (not in the weights) that some traced ``__call__`` reads: their values must be right."""
        self.used_buffers = set()
        for plan in self.plans:
            if plan.traced is None or plan.traced.graph is None:
                continue
            for node in plan.traced.graph.nodes:
                if node.op == "get_attr":
                    owner_path, _, name = str(node.target).rpartition(".")
                    owner = self.resolve(plan, owner_path)
                    if owner is not None and name in owner.info.buffers:
                        self.used_buffers.add((id(owner), name))

    def generate(self) -> str:
        if self.root.kind not in ("class", "placeholder"):
            raise AssertionError("the root is wrapped into a class before generation")
        self._find_used_buffers()
        self.class_of(self.root)
        root_code = self.classes[id(self.root)][0]
        if self.root_name and root_code.name != self.root_name:
            root_code.source = root_code.source.replace(f"class {root_code.name}(", f"class {self.root_name}(", 1)
            root_code.name = self.root_name
        return root_code.name


def _example_value(arg, values):
    """The example value of a call argument in a parent's trace: a node's, or a tuple of nodes' (None: unknown)."""
    if isinstance(arg, (tuple, list)):
        found = [_example_value(a, values) for a in arg]
        return None if any(f is None for f in found) else type(arg)(found)
    return values.get(arg) if type(arg).__name__ == "Node" else None


def _is_tensor_arg(v) -> bool:
    return type(v).__name__ in ("Node", "Proxy", "VProxy")


def _target(mlx_name: str) -> str:
    return f"self.{mlx_name}" if attribute_ok(mlx_name) else f"self[{mlx_name!r}]"


def _tensor_stmts(own) -> list:
    """``self.name = mx.zeros(shape)`` for a module's own tensors; dotted names become nested dicts/lists."""
    tree: dict = {}
    for name, t in own:
        node = tree
        parts = name.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = t

    def expr(node):
        if not isinstance(node, dict):
            return _zeros(node)
        keys = list(node)
        if keys == [str(i) for i in range(len(keys))]:
            return ListE(tuple(expr(node[k]) for k in keys))
        return DictE(tuple((k, expr(v)) for k, v in node.items()))

    return [(_target(k), expr(v)) for k, v in tree.items()]


def _zeros(t) -> Call:
    from ..core import dtypes

    d = dtypes.by_name(t.dtype)
    target = dtypes.mlx_target(d).mlx if d is not None else "float32"
    dtype = None if target == "float32" else Raw("mx.bool_" if target == "bool" else f"mx.{target}")
    return call("mx.zeros", Lit(tuple(t.shape)), dtype=dtype)


def _materialized(module, name: str, b):
    """A buffer of a model built on the meta device, computed on the CPU where transformers says how:
    rotary frequencies from the module's ``rope_init_fn``, ``position_ids`` / ``token_type_ids`` as
    transformers registers them (a range, zeros). Otherwise the buffer as it is."""
    import torch

    if not b.is_meta:
        return b
    try:
        if name in ("inv_freq", "original_inv_freq") and hasattr(module, "config"):
            value = _rope_frequencies(module)
            if value is not None and tuple(value.shape) == tuple(b.shape):
                return value.to(b.dtype)
    except Exception:  # transformers' own code for an unusual config: leave it to the TODO
        return b
    if name == "position_ids" and b.dim() == 2 and b.shape[0] == 1 and not b.dtype.is_floating_point:
        return torch.arange(b.shape[1], dtype=b.dtype)[None]
    if name == "token_type_ids" and not b.dtype.is_floating_point:
        return torch.zeros(b.shape, dtype=b.dtype)
    return b


def _rope_frequencies(module):
    """transformers' rotary frequencies of ``module`` (its rope_type's init function on its config), on the CPU."""
    import torch

    kind = getattr(module, "rope_type", None)
    fn = getattr(module, "rope_init_fn", None)
    if fn is None and kind == "default":
        fn = getattr(module, "compute_default_rope_parameters", None)
    if fn is None and kind is not None:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        fn = ROPE_INIT_FUNCTIONS.get(kind)
    if fn is None:
        return None
    with torch.device("cpu"):
        return fn(module.config)[0]


def _buffer_expr(b) -> tuple:
    """A non-persistent buffer (not in the weights): its value, when it is small or a known pattern
    (a range, a constant, a causal or banded causal mask); else zeros and a note."""
    import torch

    shape = tuple(b.shape)
    dtype = literal(b.dtype)
    if b.is_meta:
        return call("mx.zeros", Lit(shape), dtype=Raw(dtype)), "TODO: computed in torch's __init__ (built on meta)"
    flat = b.detach().reshape(-1)
    if flat.numel() and flat.dtype != torch.bool and torch.equal(flat, torch.arange(flat.numel(), dtype=flat.dtype)):
        return Raw(f"mx.arange({flat.numel()}, dtype={dtype}).reshape({literal(shape)})"), None
    if flat.numel() and bool((flat == flat[0]).all()):
        return call("mx.full", Lit(shape), Lit(flat[0].item()), dtype=Raw(dtype)), None
    if b.dim() >= 2:
        ones = torch.ones_like(b)
        if torch.equal(b, torch.tril(ones)):
            return Raw(f"mx.tril(mx.ones({literal(shape)}, dtype={dtype}))"), None
        for w in range(1, b.shape[-1]):  # a local (sliding-window) causal mask: the band below the diagonal
            if torch.equal(
                b,
                torch.tril(ones) ^ torch.tril(ones, -w)
                if b.dtype == torch.bool
                else torch.tril(ones) - torch.tril(ones, -w),
            ):
                op = "^" if b.dtype == torch.bool else "-"
                return Raw(
                    f"mx.tril(mx.ones({literal(shape)}, dtype={dtype})) {op} "
                    f"mx.tril(mx.ones({literal(shape)}, dtype={dtype}), k={-w})"
                ), None
    if flat.numel() <= 1024:
        return Raw(f"mx.array({literal(b.tolist())}, dtype={dtype})"), None
    return call("mx.zeros", Lit(shape), dtype=Raw(dtype)), "TODO: computed in torch's __init__"


def _tensor_literal(t, what: str) -> str:
    """A small constant tensor the forward built (``torch.tensor(0.5)``, ``torch.finfo(...).min``) as MLX."""
    if t.is_meta or t.numel() > 64:
        raise Untranslated(f"a constant tensor of shape {tuple(t.shape)} the forward builds ({what})")
    value = t.item() if t.dim() == 0 else t.tolist()
    return f"mx.array({literal(value)}, dtype={literal(t.dtype)})"


def _helper_classes(e) -> set:
    found = set()
    if isinstance(e, Call):
        if e.fn in prelude.HELPERS:
            found.add(e.fn)
        for a in list(e.args) + [v for _, v in e.kwargs]:
            found |= _helper_classes(a)
    elif isinstance(e, (ListE,)):
        for i in e.items:
            found |= _helper_classes(i)
    elif isinstance(e, DictE):
        for _, v in e.items:
            found |= _helper_classes(v)
    return found


_NAMESPACE: dict | None = None


def namespace() -> dict:
    """mlx, mlx.nn and every helper: where constructor expressions are evaluated at generation time."""
    global _NAMESPACE
    if _NAMESPACE is None:
        import math

        import mlx.core as mx
        import mlx.nn as nn

        ns = {"mx": mx, "nn": nn, "math": math}
        exec("\n\n".join(prelude.render(set(prelude.HELPERS))), ns)  # noqa: S102 - our own helper source
        _NAMESPACE = ns
    return _NAMESPACE


def _mlx_parameter_names(e: Call, helpers) -> set:
    from mlx.utils import tree_flatten

    obj = eval(e.render(), namespace())  # noqa: S307 - an expression we wrote
    return {k for k, _ in tree_flatten(obj.parameters())}


class _ClassEnv(Env):
    def __init__(self, gen: Generator, plan: ModulePlan):
        self.gen, self.plan = gen, plan

    def attr(self, target: str) -> Val:
        return self.gen.attr_val(self.plan, target)

    def call_module(self, tr: Translator, node) -> Out | Alias:
        target = str(node.target)
        child = self.gen.resolve(self.plan, target)
        if child is None:
            raise Untranslated(f"module {target}")
        me, _ = self.gen.access(self.plan, target)
        if child.kind == "leaf":
            return child.leaf.call(tr, node, me)
        if child.kind == "class" and child.traced is not None and child.traced.graph is not None:
            if child.conflict:
                p = pattern_of(child.module, node.args, node.kwargs, _is_tensor_arg)
                if p is None or p.key() != child.pattern.key():
                    raise Untranslated(f"call of {target} with other arguments than its draft takes")
            found = call_arguments(child.module, node.args, node.kwargs) or {}
            args = [found[p] if p in found else found[("**", p)] for p in child.traced.params]
            return Out(f"{me}({', '.join(tr.value(a) for a in args)})", kind="any")
        args = [tr.value(a) for a in node.args] + [f"{k}={tr.value(v)}" for k, v in node.kwargs.items()]
        return Out(f"{me}({', '.join(args)})", kind="any")


# ---- class content and lifting ---------------------------------------------------------------------------


@dataclass
class _Content:
    plan: ModulePlan
    base: Call | None
    stmts: list  # (target, expr)
    body: Body | None
    status: str
    todo: list
    gen: Generator

    @property
    def exprs(self) -> list:
        return ([self.base] if self.base is not None else []) + [e for _, e in self.stmts]

    @property
    def key(self):
        call_text = "\n".join(self.body.lines) if self.body is not None else self.status + "|".join(self.todo)
        return (
            shape_key(self.base) if self.base else "",
            tuple((t, shape_key(e)) for t, e in self.stmts),
            call_text,
            tuple(self.body.params) if self.body else (),
        )

    def render(self, name: str, params: list, mapping: dict) -> str:
        plan = self.plan
        base = replace_lits(self.base, mapping) if self.base is not None else None
        parent = base.fn if base is not None else "nn.Module"
        torch_cls = type(plan.module)
        doc = f'"""From torch: {torch_cls.__module__}.{torch_cls.__qualname__}'
        if plan.kind == "placeholder":
            doc += f". MLX has no equivalent ({plan.why}): it holds the tensors so that weights load"
        lines = [f"class {name}({parent}):", f'    {doc}."""', ""]
        sig = ", ".join(["self"] + [p for p, _ in params])
        lines.append(f"    def __init__({sig}):")
        if base is not None:
            lines += pretty(Call("super().__init__", base.args, base.kwargs), 8)
        else:
            lines.append("        super().__init__()")
        for target, e in self.stmts:
            lines += _assign(target, replace_lits(e, mapping), 8)
        lines.append("")
        lines += self._call_lines()
        return "\n".join(lines)

    def _call_lines(self) -> list:
        plan = self.plan
        body = self.body
        if body is not None:
            lines = [f"    def __call__({', '.join(['self'] + body.params)}):"]
            if self.todo:
                lines.append("        # TODO(torch2mlx): " + "; ".join(self.todo))
            assumed = plan.traced.assumptions if plan.traced is not None else []
            if assumed:
                lines.append("        # Traced with example inputs; shape-dependent branches as they took them:")
                lines += [f"        #   {a[:100]}" for a in assumed[:8]]
                if len(assumed) > 8:
                    lines.append(f"        #   ... and {len(assumed) - 8} more")
            lines += [
                out
                for ln in reroll(inline_simple(body.lines), self.gen.list_lengths(plan))
                for out in wrap_statement(ln, 8)
            ]
            return lines
        if plan.base is not None and plan.kind == "class":
            # the MLX class computes what the registry says the torch class computes
            return (
                [f"    # TODO(torch2mlx): {self.todo[0]}; this class uses {plan.base.fn}'s __call__"]
                if self.todo
                else []
            )
        sig = _signature_text(plan.module)
        lines = [f"    def __call__({sig}):"]
        what = type(plan.module).__name__
        lines.append(f"        # TODO(torch2mlx): port {what}.forward by hand:")
        for t in self.todo:
            lines.append(f"        #   {t}")
        for b in _class_blockers(self.gen, plan):
            lines.append(f"        #   analyzer: {b.kind} at {b.where}: {b.detail}")
        lines.append(
            f"        raise NotImplementedError({what + '.__call__ was not translated: see the TODO above'!r})"
        )
        return lines


def _class_blockers(gen, plan):
    key = registry.class_key(type(plan.module))
    path = plan.info.path or "(root)"
    return [b for b in gen.blockers if b.module == key and (b.kind != "layer" and b.kind != "hook" or b.where == path)]


def _assign(target: str, e, indent: int) -> list:
    return pretty(e, indent, head=f"{target} = ")


def _signature_text(module) -> str:
    """The forward's signature, as Python source (defaults that are no literal become None)."""
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return "self, *args, **kwargs"
    parts = ["self"]
    star = False
    for p in sig.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
            star = True
        elif p.kind == p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        else:
            if p.kind == p.KEYWORD_ONLY and not star:
                parts.append("*")
                star = True
            if p.default is p.empty:
                parts.append(p.name)
            else:
                try:
                    parts.append(f"{p.name}={literal(p.default)}")
                except ValueError:
                    parts.append(f"{p.name}=None")
    return ", ".join(parts)


def _lift(contents: list) -> tuple[list, list]:
    """Constructor parameters for the numbers that differ between instances of one class shape.

    Returns ``[(name, first value)]`` and, per instance, ``(literal id -> parameter expression, kwargs)``.
    Numbers that differ together (a block's out_channels, its norm's features, the next conv's in_channels)
    become one parameter, named after the first constructor argument that holds them.
    """
    lits = [[lit for e in c.exprs for lit in walk_lits(e, [])] for c in contents]
    if len(contents) == 1:
        return [], [({}, {})]
    slots = [i for i in range(len(lits[0])) if len({repr(ls[i].value) for ls in lits}) > 1]
    groups: dict = {}
    for i in slots:
        groups.setdefault(tuple(repr(ls[i].value) for ls in lits), []).append(i)
    names = _slot_names(contents[0])
    params, by_slot, used = [], {}, set()
    for members in groups.values():
        base = names.get(members[0], "arg")
        name = base
        k = 1
        while name in used or not name.isidentifier() or name in ("self",):
            k += 1
            name = f"{base}{k}"
        used.add(name)
        params.append((name, lits[0][members[0]].value))
        for i in members:
            by_slot[i] = name
    per_plan = []
    for ls in lits:
        mapping = {id(ls[i]): Raw(by_slot[i]) for i in slots}
        kwargs = {}
        for i in slots:
            kwargs.setdefault(by_slot[i], ls[i].value)
        per_plan.append((mapping, kwargs))
    return params, per_plan


def _slot_names(content: _Content) -> dict:
    """Literal index -> a name for it: the keyword it is passed as, or the constructor's parameter name."""
    names, i = {}, 0

    def visit(e, hint, attr):
        nonlocal i
        if isinstance(e, Lit):
            names[i] = hint or attr or "arg"
            i += 1
        elif isinstance(e, Call):
            pos = _positional_names(e.fn)
            for k, a in enumerate(e.args):
                visit(a, pos[k] if k < len(pos) else None, attr)
            for k, v in e.kwargs:
                visit(v, k, attr)
        elif isinstance(e, ListE):
            for item in e.items:
                visit(item, None, attr)
        elif isinstance(e, DictE):
            for _, v in e.items:
                visit(v, None, attr)

    if content.base is not None:
        visit(content.base, None, None)
    for target, e in content.stmts:
        visit(e, None, target.replace("self.", "").strip("[]'\""))
    return names


def _positional_names(fn: str) -> list:
    ns = namespace()
    obj = ns.get(fn.split(".")[0])
    for part in fn.split(".")[1:]:
        obj = getattr(obj, part, None)
    if obj is None:
        return []
    try:
        target = obj.__init__ if isinstance(obj, type) else obj
        return [
            p.name
            for p in inspect.signature(target).parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return []
