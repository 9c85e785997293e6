"""Hand-assembled pickles and torch.save-shaped containers, written opcode by opcode.

Hostile inputs are built from raw opcodes rather than by pickling real
dangerous objects: the bytes are exactly what a test names (GLOBAL vs
STACK_GLOBAL, INST vs OBJ vs NEWOBJ, ...), nothing depends on how this
interpreter happens to pickle a function, and no dangerous object is ever
constructed here. Nothing in this module imports torch.
"""

from __future__ import annotations

import struct
import zipfile

# ---------------------------------------------------------------- opcodes

MARK, STOP, POP, DUP = b"(", b".", b"0", b"2"
NONE, NEWTRUE, NEWFALSE = b"N", b"\x88", b"\x89"
EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE = b"}", b"]", b")"
TUPLE, TUPLE1, TUPLE2, TUPLE3, LIST, DICT = b"t", b"\x85", b"\x86", b"\x87", b"l", b"d"
APPEND, APPENDS, SETITEM, SETITEMS = b"a", b"e", b"s", b"u"
REDUCE, BUILD, OBJ, NEWOBJ, NEWOBJ_EX, STACK_GLOBAL = b"R", b"b", b"o", b"\x81", b"\x92", b"\x93"
BINPERSID, MEMOIZE = b"Q", b"\x94"


def proto(n: int) -> bytes:
    return b"\x80" + bytes([n])


def glob(module: str, name: str) -> bytes:
    """GLOBAL: module and name as text lines (protocols 0-3)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def inst(module: str, name: str) -> bytes:
    """INST: call module.name with the arguments since the last MARK (protocol 0)."""
    return b"i" + module.encode() + b"\n" + name.encode() + b"\n"


def s(text: str | bytes) -> bytes:
    """A str as BINUNICODE (protocol 1+; ``bytes`` are taken as already-encoded UTF-8)."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def stack_global(module: str, name: str) -> bytes:
    """STACK_GLOBAL: module and name as strings on the stack (protocol 4+)."""
    return s(module) + s(name) + STACK_GLOBAL


def i(n: int) -> bytes:
    """An int: BININT for 32-bit values, LONG1 beyond."""
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    if len(raw) < 256:
        return b"\x8a" + bytes([len(raw)]) + raw
    return b"\x8b" + struct.pack("<i", len(raw)) + raw


def tup(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def ints(values) -> bytes:
    values = tuple(values)
    encoded = {v: i(v) for v in set(values)}  # millions of dimensions repeat a few values
    return MARK + b"".join(map(encoded.__getitem__, values)) + TUPLE


def call(func: bytes, *args: bytes) -> bytes:
    """func(*args) through REDUCE."""
    return func + tup(*args) + REDUCE


def binput(n: int) -> bytes:
    return b"q" + bytes([n]) if n < 256 else b"r" + struct.pack("<I", n)


def binget(n: int) -> bytes:
    return b"h" + bytes([n]) if n < 256 else b"j" + struct.pack("<I", n)


def dict_of(pairs: list[tuple[bytes, bytes]]) -> bytes:
    if not pairs:
        return EMPTY_DICT
    return EMPTY_DICT + MARK + b"".join(k + v for k, v in pairs) + SETITEMS


def pickle_of(body: bytes, protocol: int = 2) -> bytes:
    return proto(protocol) + body + STOP


# ---------------------------------------------------------------- torch records


def storage_pid(
    key: str = "0",
    storage: str = "FloatStorage",
    numel: int = 4,
    location: str = "cpu",
    legacy: bool = False,
    module: str = "torch",
) -> bytes:
    """The persistent id torch.save writes for a storage, followed by BINPERSID."""
    view = (NONE,) if legacy else ()
    return tup(s("storage"), glob(module, storage), s(key), s(location), i(numel), *view) + BINPERSID


def tensor_v2(pid: bytes, offset: int = 0, size=(2, 2), stride=(2, 1)) -> bytes:
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)."""
    return call(
        glob("torch._utils", "_rebuild_tensor_v2"),
        pid,
        i(offset),
        ints(size),
        ints(stride),
        NEWFALSE,
        call(glob("collections", "OrderedDict")),
    )


def state_dict(tensors: dict[str, bytes], extra: list[tuple[bytes, bytes]] = ()) -> bytes:
    """An OrderedDict-free plain dict ``{name: tensor}`` plus raw extra (key, value) pairs."""
    return dict_of([(s(k), v) for k, v in tensors.items()] + list(extra))


def float_bytes(n: int) -> bytes:
    return struct.pack(f"<{n}f", *(float(k) for k in range(n)))


# ---------------------------------------------------------------- containers


def torch_zip(
    path,
    pkl: bytes,
    storages: dict[str, bytes],
    *,
    root: str = "archive",
    byteorder: bytes | None = b"little",
    compress: set[str] = frozenset(),
) -> None:
    """A torch.save (zipfile serialization) archive: root/data.pkl, root/byteorder, root/data/<key>.

    Members named in ``compress`` are deflated (torch never does this).
    """
    with zipfile.ZipFile(path, "w") as zf:

        def put(name, data):
            zi = zipfile.ZipInfo(f"{root}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            zf.writestr(zi, data)

        put("data.pkl", pkl)
        if byteorder is not None:
            put("byteorder", byteorder)
        for key, data in storages.items():
            put(f"data/{key}", data)
        put("version", b"3\n")


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = dict_of(
    [
        (s("protocol_version"), i(1001)),
        (s("little_endian"), NEWTRUE),
        (s("type_sizes"), dict_of([(s("short"), i(2)), (s("int"), i(4)), (s("long"), i(4))])),
    ]
)


def torch_legacy(
    path,
    pkl: bytes,
    storages: list[tuple[str, int, bytes]],
    *,
    keys: bytes | None = None,
    magic: bytes | None = None,
    version: int = 1001,
    sys_info: bytes = SYS_INFO,
) -> None:
    """A legacy torch.save file: magic, version, sys info, object pickle, key list, then per storage
    an int64 element count and its bytes. ``storages`` is [(key, count written, data)]."""
    key_list = pickle_of(EMPTY_LIST + MARK + b"".join(s(k) for k, _, _ in storages) + APPENDS)
    parts = [
        magic if magic is not None else pickle_of(i(LEGACY_MAGIC)),
        pickle_of(i(version)),
        pickle_of(sys_info),
        pkl,
        keys if keys is not None else key_list,
    ]
    for _key, count, data in storages:
        parts.append(struct.pack("<q", count) + data)
    with open(path, "wb") as f:
        f.write(b"".join(parts))


def safetensors_file(path, header: bytes | dict, data: bytes = b"", *, length: int | None = None) -> None:
    """8-byte little-endian header length, header, data. ``length`` overrides the stated length."""
    import json

    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
