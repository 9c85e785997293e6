"""Hypothesis strategies and guards shared by the fuzz tests.

Runs are deterministic (``derandomize``, no example database), so CI sees the
same inputs every time and a failure reproduces locally with the same command.
"""

from __future__ import annotations

import contextlib
import encodings.cp437  # noqa: F401  zipfile imports it on first use; the guard below must not see that
import struct
import sys
import threading

import pytest

pytest.importorskip("hypothesis")  # a dev dependency; a bare environment skips these property tests
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pickle_asm import (
    APPENDS,
    BINPERSID,
    BUILD,
    EMPTY_LIST,
    MARK,
    NEWFALSE,
    NEWOBJ,
    NEWTRUE,
    NONE,
    REDUCE,
    TUPLE,
    binget,
    binput,
    dict_of,
    glob,
    i,
    inst,
    s,
    storage_pid,
    tensor_v2,
)


def fuzz_settings(examples: int):
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# ---------------------------------------------------------------- byte-level mutations

INTERESTING = [
    0,
    1,
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0xFFFF,
    0x7FFFFFFF,
    0xFFFFFFFF,
    1 << 31,
    1 << 32,
    1 << 40,
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 1,
]


@st.composite
def mutated(draw, data: bytes, extra: st.SearchStrategy[bytes] | None = None) -> bytes:
    """``data`` after one to four edits: bit flips, byte and integer overwrites, truncations,
    insertions (of random bytes or of ``extra``, e.g. pickle opcodes), deletions, copied slices."""
    buf = bytearray(data)
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3, 4]))):
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        kind = draw(st.sampled_from(["flip", "byte", "int", "truncate", "insert", "delete", "copy"]))
        if kind == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and buf:
            buf[pos] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, 0x0A, 0x2E]) | st.integers(0, 255))
        elif kind == "int":
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.sampled_from(INTERESTING)) % (1 << (8 * width))
            buf[pos : pos + width] = value.to_bytes(width, "little")
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = draw(extra if extra is not None and draw(st.booleans()) else st.binary(max_size=16))
        elif kind == "delete":
            del buf[pos : pos + draw(st.integers(1, 32))]
        elif kind == "copy" and buf:
            start = draw(st.integers(0, len(buf) - 1))
            buf[pos:pos] = buf[start : start + draw(st.integers(1, 64))]
    return bytes(buf)


# ---------------------------------------------------------------- pickle opcodes

# Globals a fuzzed pickle may name: everything the restricted unpickler knows, placeholders, and refusals.
GLOBALS = [
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "FloatStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "UntypedStorage"),
    ("torch", "LongStorage"),
    ("torch", "float16"),
    ("torch", "bfloat16"),
    ("torch", "Size"),
    ("torch", "QInt8Storage"),
    ("torch._utils", "_rebuild_qtensor"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
    ("copyreg", "_reconstructor"),
    ("copy_reg", "_reconstructor"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("builtins", "object"),
    ("__builtin__", "set"),
    ("torch.nn.modules.linear", "Linear"),
    ("__main__", "Net"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("os", "system"),
    ("builtins", "eval"),
    ("builtins", "getattr"),
    ("subprocess", "Popen"),
    ("importlib", "import_module"),
    ("pip", "main"),
    ("os", "environ"),
    ("__builtin__", "list"),
    ("__builtin__", "dict"),
    ("collections", "Counter"),
    ("argparse", "Namespace"),
    ("pathlib", "PosixPath"),
]
STRINGS = [
    "storage",
    "cpu",
    "0",
    "1",
    "w",
    "state_dict",
    "_parameters",
    "_modules",
    "_buffers",
    "__setstate__",
    "append",
    "extend",
    "add",
    "items",
    "get",
    "numel",
    "dtype",
    "shape",
    "latin1",
    "utf-8",
    "little_endian",
    "__dict__",
    "",
]
NO_ARG = [
    b"(",
    b"t",
    b"\x85",
    b"\x86",
    b"\x87",
    b")",
    b"]",
    b"l",
    b"}",
    b"d",
    b"a",
    b"e",
    b"s",
    b"u",
    b"\x8f",
    b"\x90",
    b"\x91",
    b"0",
    b"1",
    b"2",
    b"N",
    b"\x88",
    b"\x89",
    b"R",
    b"b",
    b"o",
    b"\x81",
    b"\x92",
    b"\x93",
    b"Q",
    b"\x94",
    b"\x97",
    b"\x98",
]


def _glob_args(pair):
    return pair[0].encode() + b"\n" + pair[1].encode() + b"\n"


small_ints = st.sampled_from(
    [0, 1, 2, 3, 4, -1, 16, 255, 256, 65535, 1 << 31, 1 << 40, 1 << 63, 1 << 70]
) | st.integers(-(1 << 70), 1 << 70)

opcode = st.one_of(
    st.sampled_from(NO_ARG),
    small_ints.map(i),
    st.integers(0, 255).map(lambda n: b"K" + bytes([n])),
    st.integers(0, 65535).map(lambda n: b"M" + struct.pack("<H", n)),
    (st.sampled_from(STRINGS) | st.text(max_size=8)).map(s),
    st.binary(max_size=8).map(lambda b: b"C" + bytes([len(b)]) + b),
    st.binary(max_size=8).map(lambda b: b"\x8c" + bytes([len(b)]) + b),  # SHORT_BINUNICODE, bytes maybe not UTF-8
    st.sampled_from(GLOBALS).map(lambda g: glob(*g)),
    st.sampled_from(GLOBALS).map(lambda g: inst(*g)),
    st.sampled_from(GLOBALS).map(lambda g: s(g[0]) + s(g[1]) + b"\x93"),
    st.integers(0, 12).map(lambda n: b"q" + bytes([n])),
    st.integers(0, 12).map(lambda n: b"h" + bytes([n])),
    st.sampled_from([0, 5, 1 << 20, 0xFFFFFFFF]).map(lambda n: b"r" + struct.pack("<I", n)),
    st.sampled_from([0, 5, 1 << 20, 0xFFFFFFFF]).map(lambda n: b"j" + struct.pack("<I", n)),
    st.sampled_from([b"p0\n", b"p7\n", b"p99999999999\n", b"g0\n", b"g3\n", b"px\n"]),
    st.integers(0, 5).map(lambda n: b"\x80" + bytes([n])),
    st.sampled_from([0, 8, 1 << 40]).map(lambda n: b"\x95" + struct.pack("<Q", n)),
    st.sampled_from([b"\x82\x01", b"\x83\x01\x00", b"\x84\xff\xff\xff\x7f"]),
    st.sampled_from([b"P0\n", b"Pstorage\n", b"I12\n", b"I01\n", b"L5L\n", b"F1.5\n", b"S'x'\n", b"Vx\n"]),
    st.floats(allow_nan=True).map(lambda f: b"G" + struct.pack(">d", f)),
    st.sampled_from(
        [
            b"X\xff\xff\xff\xff",
            b"\x8e" + b"\xff" * 8,
            b"T\xff\xff\xff\xff",
            b"\x8b\x00\x00\x00\x80",
            b"B\x10\x00\x00\x00",
            b"\x8d" + struct.pack("<Q", 1 << 62),
        ]
    ),
)
opcode_stream = st.lists(opcode, max_size=40).map(lambda ops: b"\x80\x02" + b"".join(ops) + b".")

# Well-formed object graphs (each value leaves exactly one object on the stack), so that fuzzing gets
# past the opcode level to find_class, REDUCE, BUILD, NEWOBJ, persistent ids and tensor records.
dim = st.sampled_from([0, 1, 2, 3, 4, 16, -1, 1 << 31, 1 << 62]) | st.integers(0, 70)
dims = st.lists(dim, max_size=4)
# (storage key, type, element count): mostly ones that match the zip test's members ("0": 64 bytes, "1": 8).
STORAGES = [
    ("0", "FloatStorage", 16),
    ("0", "ByteStorage", 64),
    ("0", "HalfStorage", 32),
    ("0", "UntypedStorage", 64),
    ("1", "FloatStorage", 2),
    ("1", "LongStorage", 1),
    ("1", "BFloat16Storage", 4),
]
storage_record = st.sampled_from(STORAGES) | st.tuples(
    st.sampled_from(["0", "1", "2", "../0"]),
    st.sampled_from(["FloatStorage", "HalfStorage", "ByteStorage", "LongStorage", "UntypedStorage", "QInt8Storage"]),
    st.sampled_from([16, 2, 64, 0, 8, 1 << 40, -1]),
)


@st.composite
def tensor_value(draw) -> bytes:
    key, storage, numel = draw(storage_record)
    size = draw(dims)
    same_rank = st.lists(dim, min_size=len(size), max_size=len(size))
    stride = draw(same_rank if draw(st.integers(0, 9)) else dims)  # now and then of another rank
    offset = draw(st.sampled_from([0, 1, 3, 15, -1, 1 << 62]))
    return tensor_v2(storage_pid(key, storage=storage, numel=numel), offset, tuple(size), tuple(stride))


leaf_value = st.one_of(
    tensor_value(),
    tensor_value(),
    small_ints.map(i),
    (st.sampled_from(STRINGS) | st.text(max_size=6)).map(s),
    st.sampled_from([NONE, NEWTRUE, NEWFALSE]),
    st.sampled_from(GLOBALS).map(lambda g: glob(*g)),
)


def _containers(children):
    items = st.lists(children, max_size=4).map(b"".join)
    state_dict = st.lists(st.tuples(st.sampled_from(STRINGS).map(s), children), max_size=4).map(dict_of)
    plain = [
        items.map(lambda xs: MARK + xs + TUPLE),
        items.map(lambda xs: EMPTY_LIST + MARK + xs + APPENDS),
        state_dict,
        state_dict,
        st.tuples(st.sampled_from(GLOBALS), items).map(lambda g: glob(*g[0]) + MARK + g[1] + TUPLE + REDUCE),
    ]
    # Rarer: each of these alone may doom the whole pickle, which would hide what lies deeper.
    risky = [
        st.lists(st.tuples(children, children), max_size=3).map(dict_of),
        st.tuples(children, children).map(lambda fa: fa[0] + fa[1] + REDUCE),
        st.tuples(children, children).map(lambda os_: os_[0] + os_[1] + BUILD),
        st.tuples(children, items).map(lambda ca: ca[0] + MARK + ca[1] + TUPLE + NEWOBJ),
        children.map(lambda pid: pid + BINPERSID),
        st.integers(0, 3).map(binget),
        st.tuples(children, st.integers(0, 3)).map(lambda vk: vk[0] + binput(vk[1])),
    ]
    return st.one_of(*plain, *plain, *plain, *risky)


graph_value = st.recursive(leaf_value, _containers, max_leaves=24)
object_graph = graph_value.map(lambda v: b"\x80\x02" + v + b".")
# A state dict of tensor records, now and then with an arbitrary object beside them.
state_dict_graph = st.tuples(
    st.lists(tensor_value(), min_size=1, max_size=4),
    st.lists(graph_value, max_size=1),
).map(lambda tv: b"\x80\x02" + dict_of([(s(f"t{k}"), v) for k, v in enumerate(tv[0] + tv[1])]) + b".")


def guarded_persistent_load(unpickler_module):
    """What the zip reader's persistent_load does, without a file: validate, then return a storage record."""

    def load(pid):
        key, stype, numel, location, _view = unpickler_module.storage_ref(pid, "fuzz")
        return unpickler_module.StorageRef(key, stype.dtype or unpickler_module.UINT8, numel, location)

    return load


# ---------------------------------------------------------------- nothing runs

# Audit events that would mean a checkpoint reached code: CPython raises them before the action,
# and a hook that raises aborts it.
FORBIDDEN_EVENTS = (
    "pickle.find_class",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "subprocess.Popen",
    "exec",
    "compile",
    "import",
    "ctypes.",
    "socket.",
    "os.remove",
    "os.rmdir",
    "shutil.rmtree",
    "builtins.input",
    "webbrowser.open",
)
_armed = threading.local()
_hook_installed = False


def _audit(event, args):
    seen = getattr(_armed, "events", None)
    if seen is not None and event.startswith(FORBIDDEN_EVENTS):
        seen.append(f"{event} {str(args)[:200]}")
        raise RuntimeError(f"blocked audit event {event}")


@contextlib.contextmanager
def nothing_runs():
    """Fail if code under it raises one of FORBIDDEN_EVENTS (the hook also stops the action itself).

    The event list is checked after the block, because the readers turn any exception, the
    hook's included, into their own error type.
    """
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)  # hooks cannot be removed; this one is inert unless armed
        _hook_installed = True
    _armed.events = []
    try:
        yield
    finally:
        events, _armed.events = _armed.events, None
        assert not events, f"the input reached code: audit events {events}"


def open_or_none(path):
    """``torch2mlx.stream.open(path)`` with nothing allowed to run; None when it refuses the input.

    The outcome is recorded as a hypothesis event, so ``--hypothesis-show-statistics`` shows
    how much of the fuzzing got past each check.
    """
    from hypothesis import event

    from torch2mlx.errors import Torch2MLXError
    from torch2mlx.stream import open as open_checkpoint

    try:
        with nothing_runs():
            ck = open_checkpoint(path)
    except Torch2MLXError as e:
        event(f"refused: {str(e).split(': ', 1)[-1][:30]}")
        return None
    event("accepted")
    return ck
