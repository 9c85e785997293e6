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
    """How a module is called: per parameter of its forward, ``"tensor"`` or the constant passed."""

    bound: dict            # parameter name -> TENSOR or a constant
    order: list            # the tensor parameters in signature order

    def key(self) -> tuple:
        return tuple((k, "<tensor>" if v is TENSOR else repr(v)) for k, v in self.bound.items())


TENSOR = object()


@dataclass
class Traced:
    graph: object | None
    concrete: set = field(default_factory=set)      # parameters traced as constants
    params: list = field(default_factory=list)      # the tensor parameters, in order
    error: str | None = None                        # why tracing failed


def _signature(module):
    try:
        return inspect.signature(module.forward)
    except (TypeError, ValueError):
        return None


def pattern_of(module, args, kwargs, is_tensor) -> Pattern | None:
    """The pattern of a call ``module(*args, **kwargs)`` (None when it cannot be one: varargs, unknown names)."""
    sig = _signature(module)
    if sig is None:
        return None
    try:
        b = sig.bind(*args, **kwargs)
    except TypeError:
        return None
    bound, order = {}, []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            if b.arguments.get(p.name):
                return None
            continue
        if p.name in b.arguments:
            v = b.arguments[p.name]
            if is_tensor(v):
                bound[p.name] = TENSOR
                order.append(p.name)
            elif _constant(v):
                bound[p.name] = v
            else:
                return None
        elif p.default is not p.empty:
            bound[p.name] = p.default
        else:
            return None
    return Pattern(bound, order)


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


def trace(module, pattern: Pattern | None, leaves: set[int]) -> Traced:
    """Trace ``module.forward`` with ``leaves`` (module ids) kept as calls."""
    import torch.fx as fx

    class Tracer(fx.Tracer):
        proxy_buffer_attributes = True

        def is_leaf_module(self, m, qualname):
            return m is not module and id(m) in leaves

    if pattern is None:
        return Traced(None, error="its forward's arguments are not tensors and constants (varargs or objects)")
    concrete = {k: v for k, v in pattern.bound.items() if v is not TENSOR}
    try:
        graph = Tracer().trace(module, concrete_args=concrete)
    except Exception as e:   # fx raises many kinds: each one means this forward does not trace
        return Traced(None, error=_describe(e, type(module)))
    # fx names the placeholder of a parameter traced as a constant "mask_1": match them by position
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    names = list(_signature(module).parameters)
    fixed = {str(n.target) for n, name in zip(placeholders, names) if name in concrete}
    return Traced(graph, fixed, list(pattern.order))


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
    mine = [f for f in frames if os.path.realpath(f.filename) == file] or \
        [f for f in frames if "/torch/" not in f.filename.replace(os.sep, "/")]
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
        args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        kwargs = {}
        if isinstance(example_inputs, dict):
            args, kwargs = (), example_inputs
        with torch.no_grad(), eval_mode(model):
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return found
