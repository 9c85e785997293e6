"""``torch.fx`` traces, one module at a time, with the model's other modules kept as calls.

Each generated class gets its ``__call__`` from a trace of its own module in
which every child that becomes an MLX object of its own (a registry layer, a
generated class) is a ``call_module`` node. How a parent calls a child (which
arguments are tensors, which are constants) decides how the child is traced:
tensors become parameters, constants are traced as constants (``if mask is not
None`` takes the branch the parent's call takes). Modules are traced in eval
mode: dropout and batch statistics as at inference.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import traceback
from dataclasses import dataclass, field


@dataclass
class Pattern:
    """How a module is called: per parameter of its forward, ``TENSOR`` or the constant passed."""

    bound: dict  # named parameter -> TENSOR or a constant
    order: list  # the tensor parameters, named ones in signature order, then **kwargs entries
    values: dict = field(default_factory=dict)  # tensor parameter -> an example value (from a run)
    extra: dict = field(default_factory=dict)  # what the call puts in **kwargs: key -> TENSOR or a constant

    def key(self) -> tuple:
        return tuple(
            (k, "<tensor>" if v is TENSOR else repr(v))
            for k, v in list(self.bound.items()) + [("**" + k, v) for k, v in self.extra.items()]
        )


TENSOR = object()


@dataclass
class Traced:
    graph: object | None
    concrete: set = field(default_factory=set)  # placeholders of parameters traced as constants
    params: list = field(default_factory=list)  # the tensor parameters, in order
    error: str | None = None  # why tracing failed
    assumptions: list = field(default_factory=list)  # shape decisions taken as the example inputs took them
    constants: dict = field(default_factory=dict)  # tensors the forward builds from constants
    values: dict = field(default_factory=dict)  # node -> its example value (traces with an example)


def _signature(module):
    try:
        return inspect.signature(module.forward)
    except (TypeError, ValueError):
        return None


def call_arguments(module, args, kwargs) -> dict | None:
    """A call's arguments by name: named parameters (defaults filled in), then the entries that land in
    ``**kwargs`` as ``("**", key)`` (None when the call does not fit the signature or fills ``*args``)."""
    sig = _signature(module)
    if sig is None:
        return None
    try:
        b = sig.bind(*args, **kwargs)
    except TypeError:
        return None
    out = {}
    for p in sig.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            if b.arguments.get(p.name):
                return None
        elif p.kind == p.VAR_KEYWORD:
            out.update({("**", k): v for k, v in b.arguments.get(p.name, {}).items()})
        elif p.name in b.arguments:
            out[p.name] = b.arguments[p.name]
        elif p.default is not p.empty:
            out[p.name] = p.default
        else:
            return None
    return out


def pattern_of(module, args, kwargs, is_tensor) -> Pattern | None:
    """The pattern of a call ``module(*args, **kwargs)`` (None when it cannot be one: varargs, objects)."""
    found = call_arguments(module, args, kwargs)
    if found is None:
        return None
    pattern = Pattern({}, [])
    for name, v in found.items():
        table, key = (pattern.extra, name[1]) if isinstance(name, tuple) else (pattern.bound, name)
        if is_tensor(v) or isinstance(v, (tuple, list)) and v and all(is_tensor(x) for x in v):
            table[key] = TENSOR
            pattern.order.append(key)
            pattern.values[key] = v
        elif _constant(v):
            table[key] = v
        else:
            return None
    return pattern


def _constant(v) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (tuple, list)):
        return all(_constant(x) for x in v)
    return type(v).__name__ == "dtype"


def default_pattern(module) -> Pattern | None:
    """A module called on its own: parameters with defaults keep them, the others are tensors."""
    sig = _signature(module)
    if sig is None:
        return None
    bound, order = {}, []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            bound[p.name] = TENSOR
            order.append(p.name)
        elif _constant(p.default):
            bound[p.name] = p.default
        else:
            return None
    return Pattern(bound, order)


@contextlib.contextmanager
def eval_mode(model):
    """Every module in eval mode for the trace, restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    for m, _ in modes:
        m.training = False
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t


def trace(module, pattern: Pattern | None, leaves: set[int], example: dict | None = None) -> Traced:
    """Trace ``module.forward`` with ``leaves`` (module ids) kept as calls.

    With ``example`` (tensor parameter -> a value from a run of the model), every traced value also
    gets its example value, so code that branches on shapes (``if x.shape[1] != self.channels``) or
    unpacks them takes the branch the example takes; each such decision is recorded as an assumption.
    """
    if pattern is None:
        return Traced(None, error="its forward's arguments are not tensors and constants (varargs or objects)")
    concrete = {k: v for k, v in pattern.bound.items() if v is not TENSOR}
    try:
        shim, names = _shim(type(module), pattern)
    except (TypeError, ValueError) as e:
        return Traced(None, error=f"its forward's signature: {e}")
    tracer = _ValueTracer(module, leaves, example, names) if example else _Tracer(module, leaves)
    try:
        with _forward(type(module), shim), _factories(tracer):
            graph = tracer.trace(module, concrete_args=concrete)
    except Exception as e:  # fx raises many kinds: each one means this forward does not trace
        return Traced(None, error=_describe(e, type(module)))
    # fx names the placeholder of a parameter traced as a constant "mask_1": match them by position
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    fixed = {str(n.target) for n, name in zip(placeholders, names, strict=True) if name in concrete}
    assumptions = list(dict.fromkeys(getattr(tracer, "assumptions", [])))
    # tensors the forward makes from constants: fx keeps them as attributes of the module; take them back
    constants = {}
    for n in graph.nodes:
        if n.op == "get_attr" and str(n.target).startswith("_tensor_constant") and hasattr(module, str(n.target)):
            constants[str(n.target)] = getattr(module, str(n.target))
            delattr(module, str(n.target))
    values = {n: v for n, v in getattr(tracer, "values", {}).items() if v is not _UNKNOWN}
    return Traced(graph, fixed, list(pattern.order), assumptions=assumptions, constants=constants, values=values)


def _shim(cls, pattern: Pattern):
    """The forward fx traces: the original without decorators (fx reads a function's own code, and a
    decorator's ``(*args, **kwargs)`` wrapper hides it), with what the call puts in ``**kwargs`` as
    named parameters (tensors) or fixed (constants). Returns the function (None: the forward itself)
    and its parameter names."""
    orig = inspect.unwrap(cls.forward)
    params = list(inspect.signature(orig).parameters.values())[1:]
    named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    extra = [k for k, v in pattern.extra.items() if v is TENSOR]
    fixed = {k: v for k, v in pattern.extra.items() if v is not TENSOR}
    names = [p.name for p in named] + extra
    if len(set(names)) != len(names) or not all(n.isidentifier() for n in names):
        raise ValueError("a **kwargs entry shadows a parameter")
    if orig is cls.forward and len(named) == len(params):
        return None, names
    call = [p.name if p.kind != p.KEYWORD_ONLY else f"{p.name}={p.name}" for p in named]
    call += [f"{k}={k}" for k in extra] + (["**_fixed"] if fixed else [])
    src = f"def forward(self, {', '.join(names)}):\n    return _orig(self, {', '.join(call)})\n"
    ns = {"_orig": orig, "_fixed": fixed}
    exec(src, ns)  # noqa: S102 - a call shim built from the signature
    return ns["forward"], names


_FACTORIES = ("ones", "zeros", "empty", "full", "arange", "rand", "randn", "tensor")


@contextlib.contextmanager
def _factories(tracer):
    """``torch.ones(batch, n)`` with a traced size: torch's argument parser rejects a proxy among the sizes
    before fx sees it, so during the trace these factories record themselves when a size is traced."""
    import torch
    import torch.fx as fx

    originals = {n: getattr(torch, n) for n in _FACTORIES}

    def wrap(name, fn):
        def factory(*args, **kwargs):
            if any(isinstance(a, fx.Proxy) for a in _flat((args, kwargs))):
                return tracer.create_proxy("call_function", fn, args, kwargs)
            return fn(*args, **kwargs)

        return factory

    for n, fn in originals.items():
        setattr(torch, n, wrap(n, fn))
    try:
        yield
    finally:
        for n, fn in originals.items():
            setattr(torch, n, fn)


@contextlib.contextmanager
def _forward(cls, shim):
    """``cls.forward`` is ``shim`` for the trace (fx traces ``type(module).forward``)."""
    if shim is None:
        yield
        return
    had, old = "forward" in cls.__dict__, cls.__dict__.get("forward")
    cls.forward = shim
    try:
        yield
    finally:
        if had:
            cls.forward = old
        else:
            del cls.forward


def _tracer_base():
    import operator

    import torch.fx as fx

    class SetProxy(fx.Proxy):
        def __setitem__(self, index, value):
            # ``x[:, 0] = v``: recorded as operator.setitem (fx's Proxy has no item assignment)
            self.tracer.create_proxy("call_function", operator.setitem, (self, index, value), {})

    class Tracer(fx.Tracer):
        proxy_buffer_attributes = True
        proxy_class = SetProxy

        def proxy(self, node):
            return self.proxy_class(node, self)

        def __init__(self, module, leaves):
            super().__init__()
            self.module, self.leaves = module, leaves

        def is_leaf_module(self, m, qualname):
            return m is not self.module and id(m) in self.leaves

        def path_of_module(self, mod):
            # a module the model keeps outside its tree (transformers' shared activation objects): traced through
            try:
                return super().path_of_module(mod)
            except NameError:
                return "<unregistered>"

    return Tracer


def _Tracer(module, leaves):
    return _tracer_base()(module, leaves)


_UNKNOWN = object()


def _ValueTracer(module, leaves, example, names):
    import torch
    import torch.fx as fx
    from torch.fx.node import map_aggregate

    base = _tracer_base()

    class VProxy(base.proxy_class):
        def __len__(self):
            v = self.tracer.values.get(self.node, _UNKNOWN)
            if isinstance(v, (tuple, list, torch.Size)):
                return len(v)
            return super().__len__()

        def __getattr__(self, name):
            v = self.tracer.values.get(self.node, _UNKNOWN)
            # a dtype is a constant of the model: what the example has (torch.finfo(x.dtype) works)
            if name in ("dtype", "ndim", "is_floating_point") and isinstance(v, torch.Tensor):
                return getattr(v, name)
            # a field of a module's output that is None for the example is None (not a proxy)
            if v is not _UNKNOWN and not isinstance(v, torch.Tensor) and getattr(v, name, 0) is None:
                return None
            return super().__getattr__(name)

        def _number(self, kind):
            v = self.tracer.values.get(self.node, _UNKNOWN)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.tracer.assumptions.append(f"{_where(module)}: {kind}() of a size is {v!r} (as for the example)")
                return kind(v)
            raise TypeError(f"{kind.__name__}() of a traced value")

        def __int__(self):
            return self._number(int)

        def __float__(self):
            return self._number(float)

    class ValueTracer(base):
        def __init__(self):
            super().__init__(module, leaves)
            self.values, self.assumptions, self.computing = {}, [], False
            self.placeholders = 0

        proxy_class = VProxy

        def _value(self, a):
            return self.values.get(a.node, _UNKNOWN) if isinstance(a, fx.Proxy) else a

        def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
            p = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
            if kind == "placeholder":
                i = self.placeholders
                self.placeholders += 1
                param = names[i] if i < len(names) else None
                self.values[p.node] = example.get(param, _UNKNOWN)
                return p
            vals = map_aggregate((args, kwargs), self._value)
            if any(v is _UNKNOWN for v in _flat(vals)):
                self.values[p.node] = _UNKNOWN
                return p
            a, k = vals
            self.computing = True
            try:
                if kind == "call_function":
                    v = target(*a, **k)
                elif kind == "call_method":
                    v = getattr(a[0], target)(*a[1:], **k)
                elif kind == "call_module":
                    v = self.root.get_submodule(target)(*a, **k)
                elif kind == "get_attr":
                    v = _get(self.root, target)
                else:
                    v = _UNKNOWN
            except Exception:  # an op the example cannot run (meta tensors, ...): its value stays unknown
                v = _UNKNOWN
            finally:
                self.computing = False
            self.values[p.node] = v
            if v is None and kind != "get_attr" and target is not getattr:
                # an output that is None for the example (a tuple's absent entry): code testing
                # ``is not None`` must see None, which a proxy never is
                return None
            return p

        def call_module(self, m, forward, args, kwargs):
            if self.computing:
                return forward(*args, **kwargs)
            return super().call_module(m, forward, args, kwargs)

        def getattr(self, attr, attr_val, parameter_proxy_cache):
            if self.computing:
                return attr_val
            return super().getattr(attr, attr_val, parameter_proxy_cache)

        def to_bool(self, obj):
            v = self.values.get(obj.node, _UNKNOWN)
            if isinstance(v, (bool, int)) or (isinstance(v, torch.SymInt)):
                self.assumptions.append(f"{_where(module)} was {bool(v)}")
                return bool(v)
            return super().to_bool(obj)

        def iter(self, obj):
            v = self.values.get(obj.node, _UNKNOWN)
            if isinstance(v, (tuple, list, torch.Size)):
                return iter([obj[i] for i in range(len(v))])
            return super().iter(obj)

    return ValueTracer()


def _flat(x):
    if isinstance(x, (tuple, list)):
        for i in x:
            yield from _flat(i)
    elif isinstance(x, dict):
        for i in x.values():
            yield from _flat(i)
    else:
        yield x


def _get(root, target):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _where(module) -> str:
    """``file.py:123: if ...`` of the innermost frame in the model's code (what a shape decision was)."""
    try:
        file = os.path.realpath(inspect.getsourcefile(type(module)) or "")
    except TypeError:
        file = ""
    for f in inspect.stack()[2:]:
        if (
            os.path.realpath(f.filename) == file
            or "/torch/" not in f.filename.replace(os.sep, "/")
            and "torch2mlx" not in f.filename
        ):
            line = (f.code_context or [""])[0].strip()
            return f"{os.path.basename(f.filename)}:{f.lineno} `{line}`"
    return "a condition on a shape"


def _describe(e: Exception, cls) -> str:
    """The error and where in the model's code it happened (the deepest frame in the class's file)."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "symbolically traced variables cannot be used as inputs to control flow" in msg:
        msg = "data-dependent control flow (a traced value decides an if/while)"
    elif "object cannot be iterated" in msg or "Proxy object cannot be iterated" in msg:
        msg = "iteration over a traced value (a loop over a tensor or its shape)"
    try:
        file = os.path.realpath(inspect.getsourcefile(cls) or "")
    except TypeError:
        file = ""
    frames = traceback.extract_tb(e.__traceback__)
    mine = [f for f in frames if os.path.realpath(f.filename) == file] or [
        f for f in frames if "/torch/" not in f.filename.replace(os.sep, "/")
    ]
    if mine:
        f = mine[-1]
        return f"{type(e).__name__}: {msg} at {os.path.basename(f.filename)}:{f.lineno}: {(f.line or '').strip()}"
    return f"{type(e).__name__}: {msg}"


def record_calls(model, example_inputs, leaves_of) -> dict[int, Pattern]:
    """Run the model once on ``example_inputs`` and record how each module is called (module id -> pattern)."""
    import torch

    found: dict[int, Pattern] = {}
    hooks = []

    def hook(mod, args, kwargs):
        if id(mod) not in found:
            p = pattern_of(mod, args, kwargs, lambda v: isinstance(v, torch.Tensor))
            if p is not None:
                found[id(mod)] = p

    for m in model.modules():
        if id(m) in leaves_of:
            hooks.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        args, kwargs = (
            (example_inputs, {})
            if isinstance(example_inputs, tuple)
            else ((), example_inputs)
            if isinstance(example_inputs, dict)
            else ((example_inputs,), {})
        )
        with torch.no_grad(), eval_mode(model):
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return found
