"""TorchScript archives (``torch.jit.save``): the module's parameters and buffers, read without running it.

The archive is a torch zip whose ``data.pkl`` holds the module tree: each
module is an instance of a ``__torch__...`` class whose attributes are its
tensors, submodules and plain values. Which tensor attributes are parameters
and buffers (what ``state_dict()`` holds) is declared only in the class
definitions under ``code/``: ``__parameters__ = ["weight", "bias", ]`` and
``__buffers__ = [...]``. Those lines are read as text and their lists parsed
as literals; the code is never executed. Anything we cannot account for
refuses the whole file, so a conversion is never partial.
"""

from __future__ import annotations

import ast
import re
import zipfile

from ..errors import CheckpointError
from .unpickler import Opaque, TensorRef

MAX_CODE = 256 << 20  # uncompressed class definitions read per archive
MAX_MODULES = 1_000_000
MAX_DECL = 1 << 20  # characters in one __parameters__/__buffers__ line
_CLASS = re.compile(r"^class (\w+)(?:\((.*)\))?:")
_DECL = re.compile(r"^  (__parameters__|__buffers__) = (\[.*\])\s*$")
ADVICE = "load it with torch and save its weights: torch.save(torch.jit.load(FILE).state_dict(), 'weights.pt')"


def is_torchscript(names, root: str) -> bool:
    return any(n.startswith(root + "code/") for n in names) or root + "constants.pkl" in names


class Decl:
    """What a TorchScript class declares: whether it is a Module, and its parameter and buffer names."""

    def __init__(self, module: bool):
        self.module = module
        self.parameters: list[str] = []
        self.buffers: list[str] = []
        self.declared: set[str] = set()  # which of the two lists its definition had


def refuse(path: str, why: str) -> CheckpointError:
    return CheckpointError(
        path,
        f"a TorchScript archive (torch.jit.save): {why}; nothing was converted. " + ADVICE.replace("FILE", repr(path)),
    )


def class_decls(zf: zipfile.ZipFile, infos, root: str, path: str) -> dict[str, Decl]:
    """qualified class name -> Decl, from the ``code/`` text (decompressed with a size cap, never run)."""
    decls: dict[str, Decl] = {}
    budget = MAX_CODE
    for info in infos:
        name = info.filename
        if not (name.startswith(root + "code/") and name.endswith(".py")):
            continue
        budget -= info.file_size
        if budget < 0:
            raise refuse(path, f"its class definitions exceed {MAX_CODE >> 20} MiB")
        try:
            with zf.open(info) as f:
                text = f.read(info.file_size + 1)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
            raise refuse(path, f"its member {name} cannot be read ({e})") from None
        if len(text) != info.file_size:
            raise refuse(path, f"its member {name} does not hold the size its header claims")
        module = name[len(root + "code/") : -len(".py")].replace("/", ".")
        current = None
        for line in text.decode("utf-8", "replace").splitlines():
            m = _CLASS.match(line)
            if m:
                current = decls.setdefault(f"{module}.{m.group(1)}", Decl(m.group(2) == "Module"))
                continue
            if current is None or not line.startswith(("  __parameters__", "  __buffers__")):
                continue
            m = _DECL.match(line) if len(line) <= MAX_DECL else None
            if m is None:  # a declaration we cannot read would lose tensors: refuse rather than guess
                raise refuse(path, f"{module}: a {line.split()[0]} line we cannot read")
            if m:
                try:
                    names = ast.literal_eval(m.group(2))
                except (ValueError, SyntaxError, RecursionError, MemoryError):
                    raise refuse(path, f"{module}: unreadable {m.group(1)} list") from None
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise refuse(path, f"{module}: {m.group(1)} is not a list of names")
                (current.parameters if m.group(1) == "__parameters__" else current.buffers).extend(names)
                current.declared.add(m.group(1))
    return decls


def _decl_of(obj, decls: dict[str, Decl], path: str, where: str) -> Decl:
    qual = obj._t2m_global
    decl = decls.get(qual)
    if decl is None or not decl.module:
        raise refuse(path, f"{where or 'the root'} is a {qual} with no Module definition under code/")
    if decl.declared != {"__parameters__", "__buffers__"}:  # without both, we would guess which tensors count
        raise refuse(path, f"{qual} does not declare both its __parameters__ and __buffers__")
    return decl


def state_dict(root, decls: dict[str, Decl], path: str) -> dict[str, TensorRef]:
    """Every parameter and buffer of the module tree under its dotted module name, in torch's order."""
    if not isinstance(root, Opaque) or not root._t2m_global.startswith("__torch__."):
        raise refuse(path, "it holds no scripted module (a scripted function has no weights)")
    out: dict[str, TensorRef] = {}
    visits = [0]

    def visit(mod, prefix: str, depth: int):
        # A shared submodule is listed under each of its names, as torch's state_dict does; the
        # count bounds a pickle whose memo shares modules many times over.
        visits[0] += 1
        if depth > 64 or visits[0] > MAX_MODULES:
            raise refuse(path, f"over {MAX_MODULES:,} module visits or 64 levels of nesting")
        decl = _decl_of(mod, decls, path, prefix.rstrip("."))
        state = mod.state
        if not isinstance(state, dict):
            raise refuse(path, f"module {prefix.rstrip('.') or '(root)'} has no attribute dict")
        for name in decl.parameters + decl.buffers:
            if name not in state:
                raise refuse(path, f"{prefix}{name} is declared but not stored")
            value = state[name]
            if value is None:  # an optional parameter left unset (bias=False)
                continue
            if not isinstance(value, TensorRef):
                raise refuse(path, f"{prefix}{name} is declared a tensor but holds a {type(value).__name__}")
            out[prefix + name] = value
        for name, value in state.items():
            # every scripted object must be accounted for: an undeclared class could be a module with weights
            if isinstance(value, Opaque) and value._t2m_global.startswith("__torch__."):
                if value._t2m_global not in decls:
                    raise refuse(path, f"{prefix}{name} is a {value._t2m_global} with no definition under code/")
                if decls[value._t2m_global].module:
                    visit(value, f"{prefix}{name}.", depth + 1)

    visit(root, "", 0)
    if not out:
        raise refuse(path, "its modules declare no parameters or buffers")
    return out
