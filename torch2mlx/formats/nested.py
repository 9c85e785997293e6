"""Find the state dict inside a checkpoint's unpickled object graph.

Checkpoints in the wild wrap their weights: ``{"state_dict": ...}``
(Lightning), ``{"model": ...}``, ``{"model_state": ..., "optimizer_state": ...}``,
or a whole pickled ``nn.Module``, or a list of per-layer state dicts. We pick
the weights when that is unambiguous (top-level tensors, a well-known key,
a list whose every item holds tensors, else the container holding the most
tensors), descend through well-known keys that alone hold the tensors
(``{"model": {"model_args": ..., "state_dict": {...}}}``), and say which key
path we picked; ``key`` overrides (``""``: the whole object).
"""

from __future__ import annotations

from ..errors import CheckpointError
from .unpickler import Opaque, TensorRef

KNOWN_KEYS = (
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "module",
    "net",
    "network",
    "params",
    "weights",
    "generator",
    "ema",
    "params_ema",
)
MAX_ENTRIES = 4_000_000


class Budget:
    """How many container entries one search may look at.

    A pickle's memo makes shared and self-referencing containers cheap: 60
    dicts that each hold the previous one twice are 2**60 paths to walk.
    """

    def __init__(self, n: int = MAX_ENTRIES):
        self.left = n

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise ValueError(
                f"too many entries to search (over {MAX_ENTRIES:,}): "
                "containers shared many times over or nested in themselves"
            )


def _children(obj, budget: Budget):
    """(name, child) pairs of a container; whole pickled modules expose their tensors."""
    kids = _kids(obj, budget)
    budget.spend(len(kids))
    return kids


def _name(key) -> str:
    if isinstance(key, str):
        return key
    try:
        return str(key)
    except (ValueError, RecursionError):  # an int over 4300 digits; a tuple nested 100,000 deep
        raise ValueError(
            "a dict key cannot be made into a tensor name (a huge integer or a deeply nested tuple)"
        ) from None


def _kids(obj, budget: Budget):
    if isinstance(obj, dict):
        # dict.items, not obj.items: BUILD may have set an instance attribute named "items" on an OrderedDict.
        return [(_name(k), v) for k, v in dict.items(obj)]
    if isinstance(obj, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(obj)]
    if isinstance(obj, Opaque):
        state = obj.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]} if isinstance(state[0], dict) else state[1]
        if isinstance(state, dict) and ("_parameters" in state or "_modules" in state):
            out = []
            transient = dict.get(state, "_non_persistent_buffers_set")  # buffers state_dict() leaves out
            transient = transient if isinstance(transient, (set, frozenset, list, tuple)) else ()
            for group in ("_parameters", "_buffers"):
                out += [
                    (k, v)
                    for k, v in _kids(dict.get(state, group) or {}, budget)
                    if v is not None and not (group == "_buffers" and k in transient)
                ]
            out += _kids(dict.get(state, "_modules") or {}, budget)
            return out
        if obj._t2m_items:
            return _kids(obj._t2m_items, budget)
        if isinstance(state, dict):
            return _kids(state, budget)
    return []


def _is_module(obj) -> bool:
    return isinstance(obj, Opaque) and isinstance(obj.state, dict) and "_modules" in obj.state


def flatten(
    obj, budget: Budget, prefix: str = "", out: dict | None = None, skipped: list | None = None, depth: int = 0
):
    """name -> TensorRef for every tensor under ``obj``; other leaves are listed in ``skipped``."""
    out = {} if out is None else out
    if depth > 64:
        raise ValueError("nesting deeper than 64 levels")
    for name, child in _children(obj, budget):
        full = f"{prefix}{name}"
        if isinstance(child, TensorRef):
            if full in out:
                raise ValueError(f"tensor name {full!r} appears twice")
            out[full] = child
        elif _children(child, budget):
            flatten(child, budget, full + ".", out, skipped, depth + 1)
        elif skipped is not None:
            skipped.append(full)
    return out


def _count(obj, budget: Budget, depth=0) -> int:
    if isinstance(obj, TensorRef):
        return 1
    if depth > 64:
        return 0
    return sum(_count(c, budget, depth + 1) for _, c in _children(obj, budget))


def _walk(obj, budget: Budget, path=(), depth=0):
    yield path, obj
    if depth < 16:
        for name, child in _children(obj, budget):
            if not isinstance(child, TensorRef):
                yield from _walk(child, budget, path + (name,), depth + 1)


def _lookup(root, key: str, budget: Budget):
    if key == "":
        return root
    if isinstance(root, dict) and key in root:
        return root[key]
    node = root
    for part in key.split("."):
        kids = dict(_children(node, budget))
        if part not in kids:
            return None
        node = kids[part]
    return node


def select(root, path: str, key: str | None = None) -> tuple[dict[str, TensorRef], str, list[str]]:
    """Return (tensors, how they were chosen, names of skipped non-tensor leaves)."""
    return select_path(root, path, key)[:3]


def select_path(root, path: str, key: str | None = None) -> tuple[dict[str, TensorRef], str, list[str], str]:
    """As ``select``, and the dotted key path chosen (``""``: the whole object), which ``key`` accepts back."""
    try:
        return _select(root, path, key, Budget())
    except ValueError as e:
        raise CheckpointError(path, str(e)) from None


def _descend(node, keys: tuple, budget: Budget):
    """Follow well-known keys that alone hold the tensors: ``{"model_args": ..., "state_dict": {...}}``."""
    while isinstance(node, dict):
        holders = [(k, c) for k, c in _children(node, budget) if isinstance(c, TensorRef) or _count(c, budget)]
        if len(holders) != 1 or holders[0][0] not in KNOWN_KEYS or isinstance(holders[0][1], TensorRef):
            break
        keys, node = keys + (holders[0][0],), holders[0][1]
    return node, keys


def _holds_tensors(obj, budget: Budget) -> bool:
    return not isinstance(obj, TensorRef) and _count(obj, budget) > 0


def _select(root, path: str, key: str | None, budget: Budget):
    if isinstance(root, TensorRef):
        return {"tensor": root}, "the file holds a single tensor, named 'tensor'", [], ""
    keys: tuple[str, ...] | None
    if key is not None:
        node = _lookup(root, key, budget)
        if node is None or _count(node, budget) == 0:
            tops = ", ".join(n for n, _ in _children(root, budget)[:12])
            raise CheckpointError(path, f"--key {key!r} does not name a container of tensors (top-level keys: {tops})")
        how, chosen, keys = (
            ("the whole object (--key '')" if key == "" else f"key {key!r} (chosen by --key)"),
            node,
            None,
        )
    else:
        # A well-known key holding a container of tensors wins even over stray top-level tensors
        # ({"state_dict": ..., "best_acc1": tensor(71.5), "optimizer": ...}); a flat state dict has none.
        how, chosen, keys = None, None, ()
        kids = dict(_children(root, budget)) if isinstance(root, dict) else {}
        for k in KNOWN_KEYS:
            if k in kids and _holds_tensors(kids[k], budget):
                how, chosen, keys = "a well-known state-dict key", kids[k], (k,)
                break
        if chosen is None and _is_module(root):
            how, chosen = "a whole pickled nn.Module (its parameters and buffers)", root
        if (
            chosen is None
            and isinstance(root, (list, tuple))
            and root
            and all(_holds_tensors(item, budget) for item in root)
        ):
            how, chosen = f"a list of {len(root)} state dicts, named by index (0.weight, ...)", root
        if chosen is None:
            # the container with the most tensors of its own; the root first, so it wins ties
            best = max(
                (
                    (sum(isinstance(c, TensorRef) for _, c in _children(node, budget)), p, node)
                    for p, node in _walk(root, budget)
                ),
                key=lambda t: t[0],
                default=(0, (), None),
            )
            if best[0] == 0:
                raise CheckpointError(path, "no tensors found in the checkpoint")
            chosen, keys = best[2], best[1]
            how = "top-level tensors" if chosen is root else f"the container holding the most tensors, {best[0]}"
        assert how is not None  # set with chosen
        depth = len(keys)
        chosen, keys = _descend(chosen, keys, budget)
        if how == "a well-known state-dict key" and len(keys) > 1:
            how = "well-known state-dict keys"
        elif depth < len(keys) and how != "top-level tensors":
            how += ", then well-known keys that alone hold the tensors"
        if keys:
            how = (
                f"key {'.'.join(keys)!r} ({how})"
                if how != "top-level tensors"
                else f"key {'.'.join(keys)!r} (well-known keys that alone hold the tensors)"
            )
    skipped: list[str] = []
    tensors = flatten(chosen, budget, skipped=skipped)
    if not tensors:
        raise CheckpointError(path, "no tensors found in the checkpoint")
    return tensors, how, skipped, key if keys is None else ".".join(keys)
