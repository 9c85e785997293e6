"""Which parameter each integer id of a torch optimizer state is.

``optimizer.state_dict()`` numbers parameters in the order its param groups list
them; the names come from the model. A live optimizer says exactly which tensor
each id is. With only the model, its parameter order is used (all parameters, or
the trainable ones, whichever count matches). With only a checkpoint, the
state dict's names minus known buffers are used when their count matches.
"""

from __future__ import annotations

from ..errors import Torch2MLXError

#: Buffers (not parameters) that torch layers keep in a state dict.
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def count_ids(param_groups) -> int:
    return sum(len(g["params"]) for g in param_groups)


def from_module(model, optimizer=None, n: int | None = None) -> list[str]:
    """Parameter names in the order ``optimizer``'s ids count them (or the model's order)."""
    named = list(model.named_parameters())
    if optimizer is not None:
        by_id = {id(p): name for name, p in named}
        try:
            return [by_id[id(p)] for g in optimizer.param_groups for p in g["params"]]
        except KeyError:
            raise Torch2MLXError("the optimizer holds a tensor that is not a parameter of the model") from None
    if n is None or n == len(named):
        return [name for name, _ in named]
    trainable = [name for name, p in named if p.requires_grad]
    if n == len(trainable):
        return trainable
    raise Torch2MLXError(
        f"the optimizer state counts {n} parameters but the model has {len(named)} "
        f"({len(trainable)} trainable): pass the live optimizer or the names in its order"
    )


def from_state_dict(names, n: int) -> list[str]:
    """A checkpoint's parameter names without torch: its state-dict names minus known buffers."""
    params = [x for x in names if not x.endswith(BUFFER_SUFFIXES)]
    if len(params) != n:
        raise Torch2MLXError(
            f"the optimizer state counts {n} parameters but the checkpoint's state dict has "
            f"{len(params)} tensors that look like parameters: give the model (source_class=) "
            "or the parameter names in the optimizer's order"
        )
    return params


def resolve(model_or_names, param_groups, optimizer=None) -> list[str]:
    """Names for every id of ``param_groups``, in order, from a module, a list or an ``{id: name}`` dict."""
    n = count_ids(param_groups)
    if hasattr(model_or_names, "named_parameters"):
        if optimizer is None and len(param_groups) > 1:
            # ids run group by group, in the order configure_optimizers listed them, not the model's
            raise Torch2MLXError(
                f"the optimizer state has {len(param_groups)} param groups: pass the live "
                "optimizer too (its groups say which parameter each id is)"
            )
        return from_module(model_or_names, optimizer, n)
    if isinstance(model_or_names, dict):
        try:
            return [model_or_names[i] for g in param_groups for i in g["params"]]
        except KeyError as e:
            raise Torch2MLXError(f"parameter id {e} has no name in the given mapping") from None
    if isinstance(model_or_names, (list, tuple)):
        if len(model_or_names) != n:
            raise Torch2MLXError(f"{len(model_or_names)} names given for {n} optimizer parameters")
        return list(model_or_names)
    raise Torch2MLXError("model_or_param_names must be an nn.Module, a list of names or an {id: name} dict")
