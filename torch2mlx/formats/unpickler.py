"""A restricted unpickler for PyTorch checkpoints: nothing from the file is ever called.

``find_class`` is the only door through which a pickle reaches code. Here it
returns our own inert stand-ins: tensor rebuilds become ``TensorRef`` records,
storages become ``StorageRef`` records, and every other global becomes an
``Opaque`` placeholder type that only remembers its arguments and state.

A global can only act if the pickle *calls* it (REDUCE; NEWOBJ / NEWOBJ_EX with
arguments; INST / OBJ, which CPython calls unless the global is a class) or
changes it (BUILD, SETITEM, APPEND on the global itself), or if a state installs
it as a method the next opcode would call. Calls are accepted only for the data
constructors in ``DATA_CONSTRUCTORS`` (and globals the user allows); every
other call refuses the file, naming the global as the file spells it. A global
that is only referenced (a type in hyper-parameters, ``__builtin__.list``) or
only instantiated from state (NEWOBJ without arguments, then BUILD) is data.
Even an accepted call is never executed: it becomes a placeholder.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import io
import pickle
import pickletools
import struct
from dataclasses import dataclass
from typing import Any, NoReturn

from ..core import dtypes
from ..core.dtypes import DType
from ..errors import CheckpointError, Torch2MLXError


def _spellings(modules, names) -> set[str]:
    return {f"{m}.{n}" for m in modules for n in names}


_BUILTINS = ("builtins", "__builtin__")
# Plain-data builtins that we construct for real (protocol 0-2 spell these as globals).
_REAL_BUILTINS = {"set": set, "frozenset": frozenset, "complex": complex, "slice": slice, "object": object}
# Builtin data types: old and Lightning checkpoints store them as values (``__builtin__.long`` in hyper-parameters).
_BUILTIN_TYPES = (
    "list",
    "dict",
    "tuple",
    "int",
    "long",
    "float",
    "str",
    "unicode",
    "bytes",
    "bytearray",
    "bool",
    "range",
)
# Globals whose call only builds data: calls to them are accepted (as placeholders that keep the arguments).
DATA_CONSTRUCTORS = frozenset(
    _spellings(_BUILTINS, (*_BUILTIN_TYPES, *_REAL_BUILTINS))
    | _spellings(("numpy.core.multiarray", "numpy._core.multiarray"), ("_reconstruct", "scalar"))
    | _spellings(("numpy.core.numeric", "numpy._core.numeric"), ("_frombuffer",))
    | {
        "numpy.dtype",
        "numpy.random._pickle.__randomstate_ctor",
        "numpy.random._pickle.__generator_ctor",
        "numpy.random._pickle.__bit_generator_ctor",
        "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
    }
    | _spellings(("collections",), ("Counter", "defaultdict", "deque"))
    | _spellings(
        ("pathlib", "pathlib._local"),
        ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"),
    )
    | _spellings(("datetime",), ("datetime", "date", "time", "timedelta", "timezone"))
    | {"decimal.Decimal", "fractions.Fraction", "uuid.UUID", "argparse.Namespace", "torch.device"}
)

# Globals the caller accepts as data (``--allow-global``, ``allow_globals=``), for the current load.
_allowed: contextvars.ContextVar[frozenset] = contextvars.ContextVar("t2m_allowed_globals", default=frozenset())


@contextlib.contextmanager
def allowing(names=()):
    """Within the block, calls to the globals ``names`` (``"module.qualname"``) become placeholders, not refusals."""
    names = [names] if isinstance(names, str) else list(names or ())
    bad = [n for n in names if not isinstance(n, str) or "." not in n.strip(".")]
    if bad:
        raise Torch2MLXError(f"allow_globals takes MODULE.NAME (e.g. mypkg.config.Config), got {bad[0]!r}")
    token = _allowed.set(_allowed.get() | frozenset(names))
    try:
        yield
    finally:
        _allowed.reset(token)


class GlobalRefused(Exception):
    """The pickle would call or change a global; ``load`` reports it as a CheckpointError."""

    def __init__(self, qual: str, how: str = "calls"):
        super().__init__(qual)
        self.qual, self.how = qual, how

    def message(self) -> str:
        if self.how == "calls":
            return (
                f"the pickle calls {self.qual}, which can run code or touch files; nothing was executed "
                f"(allow_globals {self.qual} accepts it)"
            )
        return f"the pickle {self.how} {self.qual}, which can change code; nothing was executed"


def _may_call(qual: str) -> bool:
    return qual in DATA_CONSTRUCTORS or qual in _allowed.get()


def _read_only(*_args):
    # BUILD ("set state") calls __setstate__ when there is one, else writes straight into __dict__,
    # which would rewrite a storage's size after it was checked against the file, or our own
    # functions' defaults for every later load in this process.
    raise pickle.UnpicklingError(
        "pickle tries to modify a read-only record (BUILD on a storage, tensor, dtype or rebuild function)"
    )


@dataclass(frozen=True)
class StorageRef:
    __setstate__ = _read_only
    key: str
    dtype: DType
    numel: int  # elements of ``dtype`` in the storage
    location: str
    view: tuple | None = None  # legacy view metadata (view_key, offset, size)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True)
class TensorRef:
    __setstate__ = _read_only
    storage: StorageRef
    dtype: DType
    storage_offset: int  # in elements of ``dtype``
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co. and ``torch.UntypedStorage``."""

    __setstate__ = _read_only

    def __init__(self, name: str, dtype: DType | None):
        self.name, self.dtype = name, dtype

    def __repr__(self):
        return f"<storage type {self.name}>"


@dataclass(frozen=True)
class DTypeRef:
    __setstate__ = _read_only
    dtype: DType


_loading: contextvars.ContextVar[bool] = contextvars.ContextVar("t2m_unpickling", default=False)
_HOOKS = ("__setstate__", "append", "extend", "add")  # methods BUILD / APPEND(S) / ADDITEMS look up on an object


class _PlaceholderType(type):
    """Type of every placeholder class: what the pickle does to the *global itself* lands here."""

    def __call__(cls, *args, **kwargs):
        # REDUCE, and INST / OBJ with arguments: CPython would call the global.
        if not _may_call(cls._t2m_global):
            raise GlobalRefused(cls._t2m_global)
        return cls._t2m_make(args, kwargs)

    def __getattr__(cls, name):
        # INST / OBJ without arguments look up __getinitargs__ first, then call the global unless it is a
        # class, which only importing it could tell (Python 3 never writes INST / OBJ).
        if name == "__getinitargs__" and _loading.get() and not _may_call(cls._t2m_global):
            raise GlobalRefused(cls._t2m_global)
        raise AttributeError(name)

    def __setitem__(cls, key, value):
        raise GlobalRefused(cls._t2m_global, "modifies the global")

    def __repr__(cls):
        return f"<global {cls._t2m_global}>"


class _InstanceMethod:
    """A placeholder instance's method. Found on the class while unpickling, it means BUILD / APPEND /
    ADDITEMS apply to the global itself, which would change it."""

    def __init__(self, fn):
        self.fn = fn

    def __get__(self, obj, owner=None):
        if obj is None and _loading.get():
            raise GlobalRefused(owner._t2m_global, "modifies the global")
        return self.fn if obj is None else self.fn.__get__(obj, owner)


_MISSING = object()


class Opaque(metaclass=_PlaceholderType):
    """Instance of a class we do not import: arguments and state are kept, nothing runs."""

    _t2m_global = "?"
    # per instance, set by _t2m_make (declared only, so no class attribute exists)
    _t2m_items: dict
    _t2m_list: list

    def __new__(cls, *args, **kwargs):
        # NEWOBJ / NEWOBJ_EX, and INST / OBJ without arguments: CPython runs cls.__new__(cls, *args) only;
        # without arguments the object is made from the state that follows (BUILD), which is data.
        if (args or kwargs) and not _may_call(cls._t2m_global):
            raise GlobalRefused(cls._t2m_global)
        return cls._t2m_make(args, kwargs)

    @classmethod
    def _t2m_make(cls, args, kwargs):
        obj = object.__new__(cls)
        obj.__dict__.update(
            _t2m_args=args, _t2m_kwargs=kwargs, _t2m_state=None, _t2m_items={}, _t2m_list=[], _t2m_hooks={}
        )
        return obj

    def _t2m_hook(self, name):
        # CPython sets a state's entries as attributes (when the class has no __setstate__); an entry named
        # like a method BUILD / APPEND look up is then what they call, e.g. {"__setstate__": os.system}.
        target = self._t2m_hooks.get(name, _MISSING)
        if target is _MISSING:
            return
        qual = spelled(target)
        if qual is None:
            raise pickle.UnpicklingError(f"an object's state replaces its {name} method with a {type(target).__name__}")
        if not _may_call(qual):
            raise GlobalRefused(qual)

    @_InstanceMethod
    def __setstate__(self, state):
        self._t2m_hook("__setstate__")
        self.__dict__["_t2m_state"] = state
        for part in state if isinstance(state, tuple) and len(state) == 2 else (state,):
            if isinstance(part, dict):
                self._t2m_hooks.update((k, dict.__getitem__(part, k)) for k in _HOOKS if dict.__contains__(part, k))

    def __setitem__(self, key, value):
        self._t2m_items[key] = value

    @_InstanceMethod
    def append(self, value):
        self._t2m_hook("extend")  # APPEND calls extend([value]) when there is one, else append
        self._t2m_hook("append")
        self._t2m_list.append(value)

    @_InstanceMethod
    def extend(self, values):
        self._t2m_hook("extend")
        self._t2m_hook("append")
        self._t2m_list.extend(values)

    @_InstanceMethod
    def add(self, value):
        self._t2m_hook("add")
        self._t2m_list.append(value)

    def __repr__(self):
        return f"<opaque {self._t2m_global}>"

    @property
    def state(self):
        return self._t2m_state


_opaque_types: dict[str, type] = {}


def opaque_type(qualname: str) -> type:
    t = _opaque_types.get(qualname)
    if t is None:
        # Named as the file spells the global, so errors quoting the type ("'pip.main' object is not
        # iterable") name it and not us; type() refuses NUL in a name, which a pickle's names may hold.
        t = _PlaceholderType(qualname.replace("\0", "?"), (Opaque,), {"_t2m_global": qualname})
        _opaque_types[qualname] = t
    return t


def spelled(obj) -> str | None:
    """``module.qualname`` of a global as the pickle named it, for a value ``find_class`` returned."""
    if isinstance(obj, type) and issubclass(obj, Opaque):
        return obj._t2m_global
    try:
        return _OUR_NAMES.get(obj)
    except TypeError:  # unhashable
        return None


def _as_int(v, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise pickle.UnpicklingError(f"{what} is not an integer: {type(v).__name__}")
    # torch sizes are int64; a bigger one is hostile and too long even to print (> 4300 digits).
    if not -(1 << 63) <= v < 1 << 63:
        raise pickle.UnpicklingError(f"{what} out of range (more than 64 bits)")
    return v


def _int_tuple(v, what: str) -> tuple[int, ...]:
    if not isinstance(v, (tuple, list)):
        raise pickle.UnpicklingError(f"{what} is not a tuple")
    return tuple(_as_int(x, what) for x in v)


class UnsupportedTensor(Exception):
    """A tensor whose values are not its storage's bytes; ``load`` reports it as a CheckpointError."""


def _check_view_flags(metadata) -> None:
    # torch saves a lazy conjugate / negative view as its storage plus a flag in the metadata
    # dict; the values torch.load returns are conj(storage) / -storage, so a byte copy would be wrong.
    flags = [k for k in ("conj", "neg") if isinstance(metadata, dict) and metadata.get(k)]
    if flags:
        raise UnsupportedTensor(
            f"a tensor is saved as a lazy {'/'.join(flags)} view, which is not supported "
            "(call .resolve_conj() / .resolve_neg() on it before saving)"
        )


def _rebuild_tensor(storage, storage_offset, size, stride, dtype: DType | None = None) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    shape = _int_tuple(size, "tensor size")
    strides = _int_tuple(stride, "tensor stride")
    if len(shape) != len(strides):
        raise pickle.UnpicklingError("tensor size and stride differ in length")
    return TensorRef(storage, dtype or storage.dtype, _as_int(storage_offset, "storage offset"), shape, strides)


def _rebuild_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    _check_view_flags(metadata)
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    _check_view_flags(metadata)
    if not isinstance(dtype, DTypeRef):
        raise pickle.UnpicklingError("_rebuild_tensor_v3 without a dtype")
    return _rebuild_tensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_v1(storage, storage_offset, size, stride):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, TensorRef):
        raise pickle.UnpicklingError("parameter rebuilt from something that is not a tensor")
    return data


_REBUILDERS = {_rebuild_v1, _rebuild_v2, _rebuild_v3, _rebuild_parameter}


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in _REBUILDERS:
        raise pickle.UnpicklingError("_rebuild_from_type_v2 with a function that is not a tensor rebuild")
    if not isinstance(args, tuple):
        raise pickle.UnpicklingError("_rebuild_from_type_v2 arguments are not a tuple")
    return func(*args)


def _torch_size(dims=()):
    return _int_tuple(dims, "torch.Size")


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    # Protocol-2 pickles spell bytes as _codecs.encode(str, "latin1").
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8") or errors != "strict":
        raise pickle.UnpicklingError("_codecs.encode used outside of bytes encoding")
    return obj.encode(encoding)


def _jit_list(values):
    # TorchScript archives (torch.jit._pickle.build_intlist & co.) tag typed lists; the list is the value.
    if not isinstance(values, list):
        raise pickle.UnpicklingError("torch.jit._pickle list builder called without a list")
    return values


def _jit_restore_type_tag(value, type_str=None):
    return value


def _reconstructor(cls, base, state=None):
    # copyreg._reconstructor(cls, base, state): protocol 0/1 object creation. CPython makes the object with
    # object.__new__(cls) for base object, else with base.__new__(cls, state) and base.__init__(obj, state).
    if cls is collections.OrderedDict and spelled(base) in _spellings(_BUILTINS, ("dict",)):
        return collections.OrderedDict(dict.items(state) if isinstance(state, dict) else ())
    if not (isinstance(cls, type) and issubclass(cls, Opaque)):
        raise pickle.UnpicklingError("copyreg._reconstructor for a class that is not a placeholder")
    if base is not object:
        qual = spelled(base)
        if qual is None:
            raise pickle.UnpicklingError("copyreg._reconstructor with a base that is not a class")
        if not _may_call(qual):
            raise GlobalRefused(qual)
    obj = cls._t2m_make((), {})
    if isinstance(state, dict):
        obj._t2m_items.update(dict.items(state))
    elif isinstance(state, list):
        obj._t2m_list.extend(state)
    return obj


# Functions and classes a pickle may call by name (Any: the loop below gives the functions a __setstate__).
_TORCH_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_v1,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): _torch_size,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copy_reg", "_reconstructor"): _reconstructor,
    **{("torch.jit._pickle", f"build_{kind}list"): _jit_list for kind in ("int", "double", "bool", "tensor")},
    ("torch.jit._pickle", "restore_type_tag"): _jit_restore_type_tag,
}

for _fn in _TORCH_GLOBALS.values():
    if callable(_fn) and not isinstance(_fn, type):
        _fn.__setstate__ = _read_only  # found by BUILD before it would reach the function's attributes
_OUR_NAMES = {
    **{v: f"{m}.{n}" for (m, n), v in _TORCH_GLOBALS.items()},
    **{v: f"builtins.{n}" for n, v in _REAL_BUILTINS.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a checkpoint's object graph; ``persistent_load`` resolves storages."""

    def __init__(self, stream, path: str, persistent_load):
        super().__init__(stream, encoding="utf-8")
        self._path = path
        self._persistent = persistent_load
        self.placeholders: set[str] = set()

    def find_class(self, module, name):
        if not isinstance(module, str) or not isinstance(name, str):
            raise pickle.UnpicklingError("pickle global with a non-string name")
        if (module, name) in _TORCH_GLOBALS:
            return _TORCH_GLOBALS[(module, name)]
        if module in _BUILTINS and name in _REAL_BUILTINS:
            return _REAL_BUILTINS[name]
        if module in ("torch", "torch.storage", "torch.cuda"):
            if name in ("UntypedStorage", "TypedStorage", "_UntypedStorage"):
                return _StorageType(name, None)
            if name.endswith("Storage"):
                dt = dtypes.by_storage(name)
                if dt is None:
                    raise CheckpointError(
                        self._path,
                        f"unsupported storage type torch.{name} (quantized or sparse tensors are not supported)",
                    )
                return _StorageType(name, dt)
            dt = dtypes.by_name(name)
            if dt is not None:
                return DTypeRef(dt)
        if module == "torch._utils" and name.startswith("_rebuild"):
            raise CheckpointError(
                self._path, f"unsupported tensor kind torch._utils.{name} (only dense tensors can be converted)"
            )
        # Anything else is a placeholder: inert when only referenced or made from state, refused when called.
        qual = f"{module}.{name}"
        if not (module in _BUILTINS and name in _BUILTIN_TYPES):
            self.placeholders.add(qual)
        return opaque_type(qual)

    def persistent_load(self, pid):
        return self._persistent(pid)


def storage_ref(pid, path: str) -> tuple[str, _StorageType, int, str, tuple | None]:
    """Validate a ``('storage', type, key, location, numel[, view])`` persistent id."""
    if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
        raise CheckpointError(path, f"persistent id is not a storage record: {str(pid)[:80]}")
    _, stype, key, location, numel = pid[:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(stype, _StorageType):
        raise CheckpointError(path, "persistent id names something that is not a storage type")
    if not isinstance(key, str) or not isinstance(location, str):
        raise CheckpointError(path, "storage key or location is not a string")
    if isinstance(numel, int) and numel >= 1 << 63:
        raise CheckpointError(path, f"storage {key!r} has a size out of range (more than 64 bits)")
    if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        raise CheckpointError(path, f"storage {key!r} has an invalid size {numel!r}")
    if view is not None and not (isinstance(view, tuple) and len(view) == 3):
        raise CheckpointError(path, f"storage {key!r} has invalid view metadata")
    return key, stype, numel, location, view


UINT8 = dtypes.get("uint8")
MAX_PICKLE = 1 << 30

# How each opcode's argument is laid out, from pickletools' table: a fixed byte count, a text line
# (two for GLOBAL/INST), or a little-endian length field of 1/4/8 bytes followed by that many bytes.
_LINE, _TWO_LINES = -1, -100
_LENGTH_FIELD = {
    pickletools.TAKEN_FROM_ARGUMENT1: ("<B", 1),
    pickletools.TAKEN_FROM_ARGUMENT4: ("<i", 4),
    pickletools.TAKEN_FROM_ARGUMENT4U: ("<I", 4),
    pickletools.TAKEN_FROM_ARGUMENT8U: ("<Q", 8),
}
_OPCODES = {
    op.code.encode("latin-1"): (op.name, _TWO_LINES if op.name in ("GLOBAL", "INST") else op.arg.n if op.arg else 0)
    for op in pickletools.opcodes
}
_MEMO_PUT = {"BINPUT": "<B", "LONG_BINPUT": "<I"}  # PUT's index is a text line, checked with the lines
_INT_LINES = {"INT", "LONG"}
# Integers hash to themselves modulo 2**61 - 1, so a pickle can fill a dict or set with keys that all
# collide and make building it quadratic (200,000 keys: hours). Within 64 bits at most a handful of
# integers share a hash; wider ones are rare in checkpoints (a UUID, a big seed) and are counted. This
# stops only the simplest flood: tuples or complex numbers can be solved for a chosen hash too.
MAX_WIDE_INTS = 10_000


def pickle_extent(f, limit: int, path: str) -> int:
    """Length in bytes of the pickle at ``f``'s position, checked opcode by opcode before anything is built.

    CPython's unpickler allocates what a pickle's numbers ask for before it reads
    the bytes (a 4 GiB string length, a memo index of 2**32, an 8 GiB frame);
    here every length must fit in the ``limit`` bytes that exist, and every memo
    index must be one a pickler could have reached (no more than the opcodes
    before it). Reads only opcodes and length fields; leaves ``f`` anywhere.
    """
    read, pos, ops, wide = f.read, 0, 0, 0

    def fail(problem: str) -> NoReturn:
        raise CheckpointError(path, f"corrupt pickle: {problem}")

    def line() -> bytes:
        raw = f.readline(max(0, limit - pos))
        if not raw.endswith(b"\n"):
            fail(f"text argument at byte {pos} has no end of line")
        return raw

    while True:
        at = pos
        name, kind = _OPCODES.get(read(1) if pos < limit else b"", (None, None))
        pos += 1
        ops += 1
        if kind == 0:  # most opcodes: no argument
            if name == "STOP":
                return pos
            continue
        if name is None or kind is None:
            fail(f"unknown opcode at byte {at}" if pos <= limit else f"ends without a STOP opcode at byte {at}")
        if kind > 0:
            raw = read(kind) if pos + kind <= limit else b""
            if len(raw) != kind:
                fail(f"ends inside an opcode at byte {at}")
            pos += kind
            if name == "FRAME":
                (size,) = struct.unpack("<Q", raw)
                if size > limit - pos:
                    fail(f"FRAME at byte {at} claims {size} bytes, more than the {limit - pos} left")
            elif name in _MEMO_PUT and struct.unpack(_MEMO_PUT[name], raw)[0] > ops:
                fail(
                    f"memo index {struct.unpack(_MEMO_PUT[name], raw)[0]}"
                    f" at byte {at} is beyond the {ops} opcodes before it"
                )
        elif kind in _LENGTH_FIELD:
            fmt, width = _LENGTH_FIELD[kind]
            raw = read(width) if pos + width <= limit else b""
            if len(raw) != width:
                fail(f"ends inside an opcode at byte {at}")
            pos += width
            (size,) = struct.unpack(fmt, raw)
            if not 0 <= size <= limit - pos:
                fail(f"{name} at byte {at} claims {size} bytes, more than the {limit - pos} left")
            f.seek(size, io.SEEK_CUR)
            pos += size
            wide += name in ("LONG1", "LONG4") and size > 8
        else:  # one text line, or two for GLOBAL / INST
            raw = line()
            pos += len(raw)
            if kind == _TWO_LINES:
                pos += len(line())
            elif name in _INT_LINES:
                wide += len(raw) > 21  # sign, 19 digits, "L", newline
            elif name == "PUT":
                try:
                    index = int(raw)
                except ValueError:
                    index = -1
                if not 0 <= index <= ops:
                    fail(
                        f"memo index {raw[:-1][:20].decode('latin-1')}"
                        f" at byte {at} is beyond the {ops} opcodes before it"
                    )
        if wide > MAX_WIDE_INTS:
            raise CheckpointError(
                path,
                f"pickle holds more than {MAX_WIDE_INTS} integers wider than 64 bits; "
                "refused (their hashes can be made to collide and stall unpickling)",
            )


def load(data, path: str, persistent_load) -> tuple[object, set[str]]:
    """Unpickle ``data`` (bytes or a binary file positioned at a pickle).

    Any failure becomes a one-line CheckpointError naming ``path``; a file is
    left positioned just after the pickle's STOP opcode.
    """
    if isinstance(data, (bytes, bytearray)):
        pickle_extent(io.BytesIO(data), len(data), path)
        stream = io.BytesIO(data)
    else:
        # Find the pickle's end first, then hand the unpickler exactly those bytes.
        start = data.tell()
        data.seek(0, io.SEEK_END)
        limit = min(data.tell() - start, MAX_PICKLE)
        data.seek(start)
        n = pickle_extent(data, limit, path)
        data.seek(start)
        stream = io.BytesIO(data.read(n))
    up = RestrictedUnpickler(stream, path, persistent_load)
    token = _loading.set(True)
    try:
        obj = up.load()
    except CheckpointError:
        raise
    except GlobalRefused as e:
        raise CheckpointError(path, e.message()) from None
    except UnsupportedTensor as e:
        raise CheckpointError(path, str(e)) from None
    except RecursionError:
        raise CheckpointError(path, "pickle nests too deeply") from None
    except MemoryError:
        raise CheckpointError(path, "pickle asks for more memory than is available") from None
    except Exception as e:  # malformed pickles raise a zoo of types; all mean "corrupt"
        raise CheckpointError(path, f"corrupt pickle: {type(e).__name__}: {str(e)[:200]}") from None
    finally:
        _loading.reset(token)
    return obj, up.placeholders
