"""The hostile-input corpus: broken and malicious checkpoints, each with the error it must produce.

Every case is generated here, deterministically, from raw bytes (see
``pickle_asm``); nothing opaque is committed. ``build(root)`` writes the
corpus under ``root`` and returns the cases; ``python hostile_corpus.py DIR``
does the same for a look at the files by hand.

A case's payload, when it has one, would create ``root/<case>.PWNED``: the
tests assert that no such file ever appears. ``live`` holds the raw pickle of
such a payload, so a test can prove with the stock ``pickle`` module that the
payload really runs (and so that its absence after conversion means
something).
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pickle_asm import (
    APPENDS,
    BINPERSID,
    BUILD,
    EMPTY_DICT,
    EMPTY_LIST,
    EMPTY_TUPLE,  # noqa: E402
    LIST,
    MARK,
    NEWFALSE,
    NEWOBJ,
    NEWOBJ_EX,
    NEWTRUE,
    NONE,
    OBJ,
    POP,
    REDUCE,
    STOP,
    TUPLE,
    binget,
    binput,
    call,
    dict_of,
    float_bytes,
    glob,
    i,
    inst,
    ints,
    pickle_of,
    proto,
    s,
    safetensors_file,
    stack_global,
    state_dict,
    storage_pid,
    tensor_v2,
    torch_legacy,
    torch_zip,
    tup,
)

PAYLOAD_SUFFIX = ".PWNED"


@dataclass
class Case:
    name: str
    category: str
    src: Path  # what ``t2mlx stream`` is given
    expect: str  # substring of the one error line
    mentions: Path | None = None  # the file the error must name (default: src)
    live: bytes | None = None  # a pickle whose payload creates the marker under plain ``pickle``
    marker: Path | None = None
    args: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> str:
        return str(self.mentions or self.src)


class Corpus:
    """Collects cases; each ``add_*`` helper writes one file (or directory) and records what must fail."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.cases: list[Case] = []

    def marker(self, name: str) -> Path:
        return self.root / (name + PAYLOAD_SUFFIX)

    def add(self, name, category, src, expect, **kw) -> Case:
        assert name not in {c.name for c in self.cases}, name
        case = Case(name, category, Path(src), expect, **kw)
        self.cases.append(case)
        return case

    # -- torch zip archives
    def zip_case(self, name, category, pkl: bytes, expect, storages=None, live=False, **zkw) -> Case:
        path = self.root / f"{name}.pt"
        torch_zip(path, pkl, {"0": float_bytes(4)} if storages is None else storages, **zkw)
        return self.add(name, category, path, expect, live=pkl if live else None, marker=self.marker(name))

    # -- legacy torch.save files
    def legacy_case(self, name, category, pkl: bytes, expect, storages=None, live: bytes | None = None, **lkw) -> Case:
        path = self.root / f"{name}.bin"
        torch_legacy(path, pkl, [("0", 4, float_bytes(4))] if storages is None else storages, **lkw)
        return self.add(name, category, path, expect, live=live, marker=self.marker(name))

    # -- safetensors files
    def st_case(self, name, header, expect, data=b"", length=None) -> Case:
        path = self.root / f"{name}.safetensors"
        safetensors_file(path, header, data, length=length)
        return self.add(name, "safetensors", path, expect)


def good_tensor(key: str = "0", numel: int = 4, legacy: bool = False, **kw) -> bytes:
    return tensor_v2(storage_pid(key, numel=numel, legacy=legacy), **kw)


def good_dict(legacy: bool = False, extra=()) -> bytes:
    return state_dict({"w": good_tensor(legacy=legacy)}, list(extra))


def with_payload(payload: bytes, legacy: bool = False, protocol: int = 2) -> bytes:
    """A state dict that also holds ``payload`` (an object whose construction runs code), payload first."""
    return pickle_of(dict_of([(s("evil"), payload), (s("w"), good_tensor(legacy=legacy))]), protocol)


# ---------------------------------------------------------------- pickles that reach code


def code_execution(c: Corpus) -> None:
    cat = "code execution"

    def sh(name):
        return f"touch '{c.marker(name)}'"

    def py(name):
        return f"open({str(c.marker(name))!r}, 'w').close()"

    n = "global_os_system"
    c.zip_case(n, cat, with_payload(call(glob("os", "system"), s(sh(n)))), "the pickle calls os.system", live=True)
    n = "global_posix_system"
    c.zip_case(
        n, cat, with_payload(call(glob("posix", "system"), s(sh(n)))), "the pickle calls posix.system", live=True
    )
    n = "stack_global_builtins_eval"
    c.zip_case(
        n,
        cat,
        with_payload(call(stack_global("builtins", "eval"), s(py(n))), protocol=4),
        "the pickle calls builtins.eval",
        live=True,
    )
    n = "inst_builtins_exec"
    c.zip_case(
        n, cat, with_payload(MARK + s(py(n)) + inst("builtins", "exec")), "the pickle calls builtins.exec", live=True
    )
    n = "obj_subprocess_check_call"
    argv = EMPTY_LIST + MARK + s("touch") + s(str(c.marker(n))) + APPENDS
    c.zip_case(
        n,
        cat,
        with_payload(MARK + glob("subprocess", "check_call") + argv + OBJ),
        "the pickle calls subprocess.check_call",
        live=True,
    )
    n = "newobj_subprocess_popen"
    c.zip_case(
        n, cat, with_payload(glob("subprocess", "Popen") + tup(argv) + NEWOBJ), "the pickle calls subprocess.Popen"
    )
    n = "newobj_ex_subprocess_popen"
    c.zip_case(
        n,
        cat,
        with_payload(stack_global("subprocess", "Popen") + tup(argv) + dict_of([]) + NEWOBJ_EX, protocol=4),
        "the pickle calls subprocess.Popen",
    )
    # importlib.import_module("os") is kept in the memo, then getattr(it, "system")(cmd).
    n = "reduce_importlib_getattr_chain"
    chain = (
        call(glob("importlib", "import_module"), s("os"))
        + binput(9)
        + POP
        + call(call(glob("builtins", "getattr"), binget(9), s("system")), s(sh(n)))
    )
    c.zip_case(n, cat, with_payload(chain), "the pickle calls importlib.import_module", live=True)
    # BUILD sets an instance's __setstate__ to os.system; a second BUILD then "restores state" by calling it.
    n = "build_setstate_os_system"
    obj = glob("argparse", "Namespace") + EMPTY_TUPLE + NEWOBJ
    build = obj + dict_of([(s("__setstate__"), glob("os", "system"))]) + BUILD + s(sh(n)) + BUILD
    c.zip_case(n, cat, with_payload(build), "the pickle calls os.system", live=True)
    # The dangerous call builds the persistent id itself: it would run before any storage lookup.
    n = "persistent_id_from_os_system"
    pid = call(glob("os", "system"), s(sh(n))) + BINPERSID
    c.zip_case(n, cat, pickle_of(state_dict({"w": tensor_v2(pid)})), "the pickle calls os.system", live=True)
    n = "storage_type_is_os_system"
    pid = tup(s("storage"), glob("os", "system"), s("0"), s("cpu"), i(4)) + BINPERSID
    c.zip_case(n, cat, pickle_of(state_dict({"w": tensor_v2(pid)})), "not a storage type")
    n = "tensor_rebuild_is_eval"
    c.zip_case(
        n,
        cat,
        pickle_of(state_dict({"w": call(glob("builtins", "eval"), s(py(n)))})),
        "the pickle calls builtins.eval",
        live=True,
    )
    n = "global_dunder_import"
    c.zip_case(
        n, cat, with_payload(call(glob("builtins", "__import__"), s("os"))), "the pickle calls builtins.__import__"
    )
    n = "global_runpy"
    c.zip_case(
        n,
        cat,
        with_payload(call(glob("runpy", "_run_code"), s(py(n)), dict_of([]))),
        "the pickle calls runpy._run_code",
        live=True,
    )
    # An extension code resolves through find_class too; none is registered, so this one is unknown.
    n = "ext1_code"
    c.zip_case(n, cat, with_payload(b"\x82\x01" + tup(s(sh(n))) + REDUCE), "unregistered extension code")
    n = "numpy_load"
    c.zip_case(n, cat, with_payload(call(glob("numpy", "load"), s("/etc/passwd"))), "the pickle calls numpy.load")
    n = "torch_load_nested"
    c.zip_case(
        n,
        cat,
        with_payload(call(glob("torch.serialization", "load"), s("/etc/passwd"))),
        "the pickle calls torch.serialization.load",
    )
    # Globals no deny-list of module names covers: they fetch from the network, install packages, run
    # source text or write files. Refused because they are called, whatever their module.
    n = "hub_load_state_dict_from_url"
    c.zip_case(
        n,
        cat,
        with_payload(call(glob("torch.hub", "load_state_dict_from_url"), s("http://127.0.0.1:9/x.pt"))),
        "the pickle calls torch.hub.load_state_dict_from_url",
    )
    n = "pip_main"
    c.zip_case(
        n,
        cat,
        with_payload(call(glob("pip", "main"), EMPTY_LIST + MARK + s("download") + s("x") + APPENDS)),
        "the pickle calls pip.main",
    )
    n = "doctest_debug_script"
    c.zip_case(
        n, cat, with_payload(call(glob("doctest", "debug_script"), s(py(n)))), "the pickle calls doctest.debug_script"
    )
    n = "logging_file_handler"
    c.zip_case(
        n,
        cat,
        with_payload(call(glob("logging", "FileHandler"), s(str(c.marker(n))))),
        "the pickle calls logging.FileHandler",
        live=True,
    )
    n = "venv_create"
    c.zip_case(
        n,
        cat,
        with_payload(glob("venv", "create") + tup(s(str(c.marker(n)))) + REDUCE, protocol=4),
        "the pickle calls venv.create",
        live=True,
    )
    n = "made_up_module"
    c.zip_case(
        n,
        cat,
        with_payload(stack_global("t2m_made_up.tools", "Runner") + tup(s(sh(n))) + NEWOBJ, protocol=4),
        "the pickle calls t2m_made_up.tools.Runner",
    )
    # Changing a global needs no call: os.environ["LD_PRELOAD"] = ... through SETITEM.
    n = "setitem_on_os_environ"
    c.zip_case(
        n,
        cat,
        with_payload(glob("os", "environ") + s("T2MLX_PWNED") + s("1") + b"s"),
        "the pickle modifies the global os.environ",
    )
    # Legacy files: each of the five pickles goes through the restricted unpickler.
    n = "legacy_os_system_in_magic"
    magic = pickle_of(call(glob("os", "system"), s(sh(n))))
    c.legacy_case(
        n, cat, pickle_of(good_dict(legacy=True)), "magic number: the pickle calls os.system", magic=magic, live=magic
    )
    n = "legacy_eval_in_sys_info"
    info = call(glob("builtins", "eval"), s(py(n)))
    c.legacy_case(
        n,
        cat,
        pickle_of(good_dict(legacy=True)),
        "sys info: the pickle calls builtins.eval",
        sys_info=info,
        live=pickle_of(info),
    )
    n = "legacy_exec_in_object"
    obj = with_payload(call(glob("builtins", "exec"), s(py(n))), legacy=True)
    c.legacy_case(n, cat, obj, "the pickle calls builtins.exec", live=obj)
    n = "legacy_subprocess_in_key_list"
    keys = pickle_of(
        call(glob("subprocess", "check_call"), EMPTY_LIST + MARK + s("touch") + s(str(c.marker(n))) + APPENDS)
    )
    c.legacy_case(
        n, cat, pickle_of(good_dict(legacy=True)), "storage key list: the pickle calls subprocess", keys=keys, live=keys
    )


# ---------------------------------------------------------------- persistent ids and storage bounds


def storages(c: Corpus) -> None:
    cat = "persistent ids"
    n = "persid_text_not_storage"
    c.zip_case(
        n, cat, pickle_of(state_dict({"w": tensor_v2(b"Pos.system\n")}), 0), "persistent id is not a storage record"
    )
    n = "persid_module_record"
    c.zip_case(
        n,
        cat,
        pickle_of(state_dict({"w": tensor_v2(tup(s("module"), s("os"), s("system")) + BINPERSID)})),
        "persistent id is not a storage record",
    )
    n = "persid_storage_type_is_placeholder"
    pid = tup(s("storage"), glob("mymodule", "NotAStorage"), s("0"), s("cpu"), i(4)) + BINPERSID
    c.zip_case(n, cat, pickle_of(state_dict({"w": tensor_v2(pid)})), "not a storage type")
    n = "persid_numel_negative"
    c.zip_case(n, cat, pickle_of(state_dict({"w": tensor_v2(storage_pid(numel=-4))})), "invalid size -4")
    n = "persid_numel_beyond_int64"
    c.zip_case(
        n,
        cat,
        pickle_of(state_dict({"w": tensor_v2(storage_pid(numel=1 << 20000))})),
        "storage '0' has a size out of range",
    )
    n = "persid_numel_is_string"
    pid = tup(s("storage"), glob("torch", "FloatStorage"), s("0"), s("cpu"), s("4")) + BINPERSID
    c.zip_case(n, cat, pickle_of(state_dict({"w": tensor_v2(pid)})), "invalid size '4'")
    n = "persid_key_path_traversal"
    c.zip_case(
        n,
        cat,
        pickle_of(state_dict({"w": tensor_v2(storage_pid("../../../etc/passwd"))})),
        "has no data/../../../etc/passwd member",
    )
    n = "quantized_storage_type"
    c.zip_case(
        n,
        cat,
        pickle_of(state_dict({"w": tensor_v2(storage_pid(storage="QInt8Storage"))})),
        "unsupported storage type torch.QInt8Storage",
    )
    n = "sparse_rebuild"
    c.zip_case(
        n,
        cat,
        pickle_of(state_dict({"w": call(glob("torch._utils", "_rebuild_sparse_tensor"), NONE)})),
        "unsupported tensor kind torch._utils._rebuild_sparse_tensor",
    )
    n = "parameter_of_a_string"
    c.zip_case(
        n,
        cat,
        pickle_of(
            state_dict(
                {
                    "w": call(
                        glob("torch._utils", "_rebuild_parameter"),
                        s("x"),
                        NEWFALSE,
                        call(glob("collections", "OrderedDict")),
                    )
                }
            )
        ),
        "parameter rebuilt from something that is not a tensor",
    )

    cat = "storage bounds"
    n = "storage_numel_exceeds_member"
    c.zip_case(
        n,
        cat,
        pickle_of(state_dict({"w": good_tensor(numel=1000)})),
        "storage '0': 1000 x float32 needs 4000 bytes but its member holds 16",
    )
    n = "tensor_offset_past_storage"
    c.zip_case(n, cat, pickle_of(state_dict({"w": good_tensor(offset=3)})), "reaches past its storage (16 bytes)")
    n = "tensor_stride_past_storage"
    c.zip_case(n, cat, pickle_of(state_dict({"w": good_tensor(stride=(3, 1))})), "reaches past its storage")
    n = "tensor_size_past_storage"
    c.zip_case(
        n,
        cat,
        pickle_of(state_dict({"w": good_tensor(size=(1 << 40, 1 << 40), stride=(1 << 40, 1))})),
        "reaches past its storage",
    )
    n = "tensor_empty_offset_past_storage"
    c.zip_case(
        n,
        cat,
        pickle_of(state_dict({"w": good_tensor(offset=1 << 62, size=(0,), stride=(1,))})),
        "empty, with offset 4611686018427387904 past its storage (16 bytes)",
    )
    n = "tensor_negative_size"
    c.zip_case(
        n, cat, pickle_of(state_dict({"w": good_tensor(size=(-2, -2))})), "negative size, stride or storage offset"
    )
    n = "tensor_negative_stride"
    c.zip_case(
        n,
        cat,
        pickle_of(state_dict({"w": good_tensor(stride=(-2, 1), offset=2)})),
        "negative size, stride or storage offset",
    )
    n = "tensor_negative_offset"
    c.zip_case(
        n,
        cat,
        pickle_of(state_dict({"w": good_tensor(offset=-1, size=(1,), stride=(1,))})),
        "negative size, stride or storage offset",
    )
    n = "tensor_size_stride_lengths_differ"
    c.zip_case(
        n,
        cat,
        pickle_of(state_dict({"w": good_tensor(size=(2, 2), stride=(1,))})),
        "tensor size and stride differ in length",
    )
    n = "tensor_size_beyond_int64"
    c.zip_case(n, cat, pickle_of(state_dict({"w": good_tensor(size=(1 << 70,), stride=(1,))})), "out of range")
    n = "tensor_size_20000_bit_int"
    c.zip_case(n, cat, pickle_of(state_dict({"w": good_tensor(size=(1 << 20000,), stride=(1,))})), "out of range")
    # Stride 0: four bytes of storage that would expand to 4 TiB of output.
    n = "tensor_stride_zero_bomb"
    c.zip_case(
        n, cat, pickle_of(state_dict({"w": good_tensor(size=(1 << 40,), stride=(0,))})), "repeats storage elements"
    )
    n = "tensor_overlapping_strides_bomb"
    k = 1 << 15
    c.zip_case(
        n,
        cat,
        pickle_of(state_dict({"w": good_tensor(numel=2 * k, size=(k, k), stride=(1, 1))})),
        "repeats storage elements",
        storages={"0": bytes(8 * k)},
    )
    # Three million dimensions of stride 0: within the storage, but multiplying them out would take minutes.
    n = "tensor_million_dims"
    dims = 3_000_000
    c.zip_case(
        n,
        cat,
        pickle_of(state_dict({"w": good_tensor(size=(2,) * dims, stride=(0,) * dims)})),
        "more than 2**63 elements",
    )
    # BUILD on the validated storage record tries to change its size after the check against the member.
    n = "build_mutates_storage_record"
    pid = storage_pid() + dict_of([(s("numel"), i(1 << 40))]) + BUILD
    c.zip_case(
        n, cat, pickle_of(state_dict({"w": tensor_v2(pid, size=(1 << 20, 1 << 20), stride=(1 << 20, 1))})), "read-only"
    )
    n = "build_mutates_tensor_record"
    t = good_tensor() + tup(NONE, dict_of([(s("shape"), tup(s("x"), s("y")))])) + BUILD
    c.zip_case(n, cat, pickle_of(state_dict({"w": t})), "read-only")
    n = "build_mutates_storage_type"
    stype = glob("torch", "FloatStorage") + tup(NONE, dict_of([(s("dtype"), s("float128"))])) + BUILD
    pid = tup(s("storage"), stype, s("0"), s("cpu"), i(4)) + BINPERSID
    c.zip_case(n, cat, pickle_of(state_dict({"w": tensor_v2(pid)})), "read-only")
    n = "build_mutates_rebuild_function"
    fn = glob("torch._utils", "_rebuild_tensor_v2") + tup(NONE, dict_of([(s("__defaults__"), EMPTY_TUPLE)])) + BUILD
    c.zip_case(n, cat, pickle_of(dict_of([(s("f"), fn), (s("w"), good_tensor())])), "read-only")


# ---------------------------------------------------------------- pickle machinery abuse


def pickle_abuse(c: Corpus) -> None:
    cat = "pickle machinery"
    n = "memo_index_4g"
    c.zip_case(
        n,
        cat,
        proto(2) + NONE + b"r" + struct.pack("<I", 0xFFFFFFF0) + POP + good_dict() + STOP,
        "memo index 4294967280",
    )
    n = "binunicode_claims_4g"
    c.zip_case(n, cat, proto(2) + b"X" + struct.pack("<I", 0xFFFFFFF0) + b"abc" + STOP, "claims 4294967280 bytes")
    n = "binbytes8_claims_1t"
    c.zip_case(n, cat, proto(4) + b"\x8e" + struct.pack("<Q", 1 << 40) + b"abc" + STOP, "claims 1099511627776 bytes")
    n = "frame_claims_1t"
    c.zip_case(
        n, cat, proto(4) + b"\x95" + struct.pack("<Q", 1 << 40) + good_dict() + STOP, "claims 1099511627776 bytes"
    )
    n = "long4_claims_2g"
    c.zip_case(n, cat, proto(2) + b"\x8b" + struct.pack("<i", 0x7FFFFFF0) + b"\x01" + STOP, "claims 2147483632 bytes")
    n = "long_text_100k_digits"
    c.zip_case(n, cat, b"L" + b"9" * 100_000 + b"L\n" + STOP, "corrupt pickle")
    n = "truncated_pickle"
    c.zip_case(n, cat, pickle_of(good_dict())[:-7], "corrupt pickle")
    n = "empty_pickle"
    c.zip_case(n, cat, b"", "corrupt pickle")
    n = "pickle_of_an_int"
    c.zip_case(n, cat, pickle_of(i(7)), "no tensors found")
    n = "out_of_band_buffer"
    c.zip_case(n, cat, proto(5) + b"\x97" + STOP, "corrupt pickle")
    # 200,000 nested lists around a tensor: too deep to be a state dict, and searched only so deep.
    n = "deep_nesting"
    c.zip_case(n, cat, proto(2) + MARK * 200_000 + good_tensor() + LIST * 200_000 + STOP, "no tensors found")
    n = "deep_nesting_next_to_tensors"
    c.zip_case(
        n,
        cat,
        pickle_of(good_dict(extra=[(s("deep"), MARK * 100 + i(1) + LIST * 100)])),
        "nesting deeper than 64 levels",
    )
    # Each level holds the previous one twice: 2**60 paths to one tensor through 60 memo entries.
    n = "shared_container_bomb"
    body = dict_of([(s("t"), good_tensor())]) + binput(0)
    for level in range(1, 61):
        body += POP + dict_of([(s("a"), binget(level - 1)), (s("b"), binget(level - 1))]) + binput(level)
    c.zip_case(n, cat, pickle_of(dict_of([(s("state_dict"), body)])), "too many")
    # A list that holds itself 100 times (a cycle through the memo) next to a tensor.
    n = "self_referencing_list"
    loop = EMPTY_LIST + binput(0) + MARK + binget(0) * 100 + good_tensor() + APPENDS
    c.zip_case(n, cat, pickle_of(dict_of([(s("a"), loop)])), "too many")
    # 200,000 dict keys that are all multiples of 2**61 - 1: one hash value, quadratic insertion.
    n = "int_key_hash_flood"
    m = (1 << 61) - 1
    flood = EMPTY_DICT + MARK + b"".join(i(k * m) + NONE for k in range(1, 200_001)) + b"u"
    c.zip_case(
        n,
        cat,
        pickle_of(dict_of([(s("w"), good_tensor()), (s("flood"), flood)])),
        "more than 10000 integers wider than 64 bits",
    )
    n = "tensor_name_lone_surrogate"
    c.zip_case(n, cat, pickle_of(dict_of([(s(b"w\xed\xa0\x80"), good_tensor())])), "not valid UTF-8")
    n = "tensor_key_huge_int"
    c.zip_case(n, cat, pickle_of(dict_of([(i(1 << 20000), good_tensor())])), "tensor name")
    n = "tensor_key_deep_tuple"
    key = MARK * 100_000 + TUPLE * 100_000
    c.zip_case(n, cat, pickle_of(dict_of([(key, good_tensor())])), "tensor name")


# ---------------------------------------------------------------- zip containers


def _patch_central(path: Path, member_suffix: str, **fields) -> None:
    """Rewrite fields of one central-directory record (flags, size, offset) in place."""
    data = bytearray(path.read_bytes())
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        name = bytes(data[pos + 46 : pos + 46 + name_len]).decode()
        if name.endswith(member_suffix):
            if "flags" in fields:
                struct.pack_into("<H", data, pos + 8, fields["flags"])
            if "size" in fields:
                struct.pack_into("<II", data, pos + 20, fields["size"], fields["size"])
            if "offset" in fields:
                struct.pack_into("<I", data, pos + 42, fields["offset"])
        pos = data.find(b"PK\x01\x02", pos + 4)
    path.write_bytes(bytes(data))


def _local_offset(path: Path, member_suffix: str) -> int:
    with zipfile.ZipFile(path) as zf:
        return next(i.header_offset for i in zf.infolist() if i.filename.endswith(member_suffix))


def zips(c: Corpus) -> None:
    cat = "zip container"
    pkl = pickle_of(good_dict())
    c.zip_case("zip_compressed_data_pkl", cat, pkl, "zip member archive/data.pkl is compressed", compress={"data.pkl"})
    c.zip_case("zip_compressed_storage", cat, pkl, "zip member archive/data/0 is compressed", compress={"data/0"})
    c.zip_case("zip_missing_storage", cat, pkl, "storage '0' has no data/0 member", storages={})
    c.zip_case("zip_no_data_pkl", cat, pkl, "no single data.pkl", root="archive")
    c.cases[-1].src.write_bytes(c.cases[-1].src.read_bytes().replace(b"archive/data.pkl", b"archive/data.pkk"))
    two = pickle_of(state_dict({"w": good_tensor(), "v": good_tensor("1")}))
    case = c.zip_case(
        "zip_overlapping_members", cat, two, "overlap", storages={"0": float_bytes(4), "1": float_bytes(4)}
    )
    _patch_central(case.src, "data/1", offset=_local_offset(case.src, "data/0"))
    case = c.zip_case("zip_member_past_eof", cat, pkl, "runs past the end of the file")
    _patch_central(case.src, "data/0", size=1 << 31)
    case = c.zip_case("zip_encrypted_member", cat, pkl, "zip member archive/data/0 is encrypted")
    _patch_central(case.src, "data/0", flags=1)
    c.zip_case("zip_bad_byteorder", cat, pkl, "unknown byteorder record 'middle'", byteorder=b"middle")
    c.zip_case(
        "zip_huge_byteorder", cat, pkl, "byteorder record is 1048582 bytes", byteorder=b"little" + b" " * (1 << 20)
    )
    c.zip_case(
        "zip_member_name_with_newline",
        cat,
        pkl,
        "zip member archive/data/evil\\nname is compressed",
        storages={"0": float_bytes(4), "evil\nname": b"x"},
        compress={"data/evil\nname"},
    )
    c.zip_case(
        "zip_member_name_terminal_escape",
        cat,
        pkl,
        "zip member archive/data/\\x1b[2J\\x1b[31mok is compressed",
        storages={"0": float_bytes(4), "\x1b[2J\x1b[31mok": b"x"},
        compress={"data/\x1b[2J\x1b[31mok"},
    )
    # Central directory claiming 65535 entries and a 4 GiB directory: a zip bomb's bookkeeping.
    case = c.zip_case("zip_bomb_directory", cat, pkl, "not a readable zip archive")
    data = bytearray(case.src.read_bytes())
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HHI", data, eocd + 8, 0xFFFF, 0xFFFF, 0xFFFFFFF0)
    case.src.write_bytes(bytes(data))
    # The end record's directory offset claims 100 bytes more than the truth: members land before byte 0.
    case = c.zip_case("zip_negative_member_offset", cat, pkl, "local header offset lies before the file")
    data = bytearray(case.src.read_bytes())
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<I", data, eocd + 16, struct.unpack_from("<I", data, eocd + 16)[0] + 100)
    case.src.write_bytes(bytes(data))
    path = c.root / "zip_garbage.pt"
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    c.add("zip_garbage", cat, path, "not a readable zip archive")
    # A second archive root with its own data.pkl: which one is the checkpoint?
    case = c.zip_case("zip_two_data_pkl", cat, pkl, "no single data.pkl")
    with zipfile.ZipFile(case.src, "a") as zf:
        zf.writestr("other/data.pkl", pkl)


# ---------------------------------------------------------------- legacy files


def legacy(c: Corpus) -> None:
    cat = "legacy pickle"
    two = pickle_of(state_dict({"w": good_tensor(legacy=True), "v": good_tensor("1", legacy=True)}))
    c.legacy_case(
        "legacy_key_missing_from_list", cat, two, "storage '1' is used by the pickle but not in the storage list"
    )
    c.legacy_case(
        "legacy_count_disagrees",
        cat,
        pickle_of(good_dict(legacy=True)),
        "storage '0': size record 8 disagrees with the pickle (4)",
        storages=[("0", 8, float_bytes(8))],
    )
    c.legacy_case(
        "legacy_negative_count",
        cat,
        pickle_of(good_dict(legacy=True)),
        "size record -1 disagrees",
        storages=[("0", -1, b"")],
    )
    c.legacy_case(
        "legacy_truncated_data",
        cat,
        pickle_of(good_dict(legacy=True)),
        "run past the end of the file",
        storages=[("0", 4, float_bytes(2))],
    )
    c.legacy_case(
        "legacy_duplicate_keys",
        cat,
        pickle_of(good_dict(legacy=True)),
        "names a storage twice",
        storages=[("0", 4, float_bytes(4)), ("0", 4, float_bytes(4))],
    )
    c.legacy_case(
        "legacy_keys_not_strings",
        cat,
        pickle_of(good_dict(legacy=True)),
        "not a list of strings",
        keys=pickle_of(EMPTY_LIST + MARK + i(0) + APPENDS),
    )
    twice = pickle_of(state_dict({"w": good_tensor(legacy=True), "v": good_tensor(numel=8, legacy=True)}))
    c.legacy_case("legacy_storage_two_sizes", cat, twice, "referenced with two different sizes")
    view = tup(s("storage"), glob("torch", "FloatStorage"), s("0"), s("cpu"), i(4), ints((0, 2, 10))) + BINPERSID
    c.legacy_case(
        "legacy_view_outside_storage",
        cat,
        pickle_of(state_dict({"w": tensor_v2(view, size=(2,), stride=(1,))})),
        "storage view lies outside its storage",
    )
    c.legacy_case(
        "legacy_bad_magic", cat, pickle_of(good_dict(legacy=True)), "bad magic number", magic=pickle_of(i(12345))
    )
    c.legacy_case(
        "legacy_bad_version", cat, pickle_of(good_dict(legacy=True)), "unsupported legacy protocol version 7", version=7
    )
    c.legacy_case(
        "legacy_binbytes8_claims_1t",
        cat,
        proto(4) + b"\x8e" + struct.pack("<Q", 1 << 40) + b"abc" + STOP,
        "claims 1099511627776 bytes",
    )
    c.legacy_case(
        "legacy_frame_claims_1t",
        cat,
        proto(4) + b"\x95" + struct.pack("<Q", 1 << 40) + good_dict(legacy=True) + STOP,
        "claims 1099511627776 bytes",
    )
    c.legacy_case(
        "legacy_memo_index_4g",
        cat,
        proto(2) + NONE + b"r" + struct.pack("<I", 0xFFFFFFF0) + POP + good_dict(legacy=True) + STOP,
        "memo index 4294967280",
    )
    c.legacy_case("legacy_no_stop", cat, proto(2) + good_dict(legacy=True), "corrupt pickle")


# ---------------------------------------------------------------- safetensors


def _f32(name, shape, begin):
    n = 4
    for d in shape:
        n *= d
    return {name: {"dtype": "F32", "shape": list(shape), "data_offsets": [begin, begin + n]}}


def safetensors(c: Corpus) -> None:
    good = {**_f32("a", [2], 0), **_f32("b", [2], 8)}
    data = float_bytes(4)
    c.st_case("st_header_past_eof", good, "runs past the end of the file", data, length=1 << 20)
    c.st_case("st_header_over_100mb", good, "exceeds the 104857600-byte limit", data, length=(100 << 20) + 1)
    c.st_case("st_header_length_2_64", good, "exceeds the 104857600-byte limit", data, length=(1 << 64) - 1)
    path = c.root / "st_truncated_length.safetensors"
    path.write_bytes(b"\x10\x00\x00")
    c.add("st_truncated_length", "safetensors", path, "no header length")
    c.st_case("st_invalid_json", b'{"a": {"dtype": "F32",', "not valid JSON", data)
    c.st_case("st_not_an_object", b"[1, 2, 3]", "not a JSON object", data)
    c.st_case("st_non_utf8_header", b'{"\xff\xfe": {}}', "not valid JSON", data)
    c.st_case(
        "st_duplicate_keys",
        ('{"a": %s, "a": %s}' % (json.dumps(good["a"]), json.dumps(good["b"]))).encode(),
        "duplicate key 'a'",
        data,
    )
    c.st_case("st_deep_json", b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not valid JSON", data)
    c.st_case("st_unknown_dtype", {**good, "a": {**good["a"], "dtype": "F33"}}, "unknown dtype 'F33'", data)
    c.st_case(
        "st_dtype_megabyte_string", {**good, "a": {**good["a"], "dtype": "F" * (1 << 20)}}, "unknown dtype 'FFF", data
    )
    c.st_case("st_dtype_not_string", {**good, "a": {**good["a"], "dtype": 4}}, "unknown dtype 4", data)
    c.st_case(
        "st_negative_shape", {**good, "a": {**good["a"], "shape": [-2]}}, "not a list of non-negative integers", data
    )
    c.st_case(
        "st_float_shape", {**good, "a": {**good["a"], "shape": [2.0]}}, "not a list of non-negative integers", data
    )
    c.st_case(
        "st_huge_shape", {**good, "a": {**good["a"], "shape": [1 << 62, 1 << 62]}}, "needs more than 2**64 bytes", data
    )
    c.st_case(
        "st_huge_shape_product",
        {**good, "a": {**good["a"], "shape": [(1 << 63) - 1] * 2000}},
        "needs more than 2**64 bytes",
        data,
    )
    # Three million dimensions: multiplying them all out would take minutes.
    c.st_case(
        "st_million_dims", {**good, "a": {**good["a"], "shape": [2] * 3_000_000}}, "needs more than 2**64 bytes", data
    )
    c.st_case(
        "st_4000_digit_shape",
        ('{"a": {"dtype": "F32", "shape": [%s], "data_offsets": [0, 8]}}' % ("9" * 4000)).encode(),
        "out of range",
        data,
    )
    c.st_case(
        "st_shape_bytes_mismatch",
        {**good, "a": {**good["a"], "shape": [3]}},
        "shape [3] of F32 needs 12 bytes but data_offsets span 8",
        data,
    )
    c.st_case(
        "st_overlapping_offsets",
        {**_f32("a", [2], 0), **_f32("b", [2], 4)},
        "overlap the previous tensor",
        float_bytes(3),
    )
    c.st_case(
        "st_offsets_past_data",
        {**_f32("a", [2], 0), **_f32("b", [2], 8)},
        "run past the end of the data",
        float_bytes(3),
    )
    c.st_case(
        "st_offsets_huge", {"a": {"dtype": "U8", "shape": [0], "data_offsets": [1 << 64, 1 << 64]}}, "out of range", b""
    )
    c.st_case(
        "st_offsets_reversed", {"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, "bad data_offsets", data
    )
    c.st_case(
        "st_hole",
        {**_f32("a", [1], 0), **_f32("b", [2], 8)},
        "hole in the data buffer before tensor 'b'",
        float_bytes(4),
    )
    c.st_case("st_trailing_bytes", good, "4 trailing bytes after the last tensor", data + b"junk")
    c.st_case(
        "st_extra_record_field",
        {**good, "a": {**good["a"], "evil": 1}},
        "record must have exactly dtype, shape, data_offsets",
        data,
    )
    c.st_case(
        "st_metadata_not_strings",
        {**good, "__metadata__": {"format": 1}},
        "__metadata__ must map strings to strings",
        data,
    )
    c.st_case("st_metadata_false", {**good, "__metadata__": False}, "__metadata__ must map strings to strings", data)
    c.st_case(
        "st_lone_surrogate_name",
        b'{"w\\ud800": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}',
        "not valid UTF-8",
        data,
    )


# ---------------------------------------------------------------- directories and index files


def _st_file(path: Path, tensors: dict[str, int]) -> None:
    header, pos = {}, 0
    for name, n in tensors.items():
        header[name] = {"dtype": "F32", "shape": [n], "data_offsets": [pos, pos + 4 * n]}
        pos += 4 * n
    safetensors_file(path, header, bytes(pos))


def _index(d: Path, weight_map, name="model.safetensors.index.json") -> Path:
    p = d / name
    p.write_text(weight_map if isinstance(weight_map, str) else json.dumps({"metadata": {}, "weight_map": weight_map}))
    return p


def directories(c: Corpus) -> None:
    cat = "directories and indexes"

    def mkdir(name):
        d = c.root / name
        d.mkdir()
        return d

    d = mkdir("dir_index_missing_shard")
    _st_file(d / "model-1.safetensors", {"a": 2})
    c.add(
        d.name,
        cat,
        d,
        "names shard 'model-2.safetensors', which does not exist",
        mentions=_index(d, {"a": "model-1.safetensors", "b": "model-2.safetensors"}),
    )
    d = mkdir("dir_duplicate_across_shards")
    _st_file(d / "model-1.safetensors", {"a": 2})
    _st_file(d / "model-2.safetensors", {"a": 2})
    c.add(d.name, cat, d, "tensor 'a' is also in", mentions=d / "model-2.safetensors")
    d = mkdir("dir_index_duplicate_across_shards")
    _st_file(d / "model-1.safetensors", {"a": 2, "b": 2})
    _st_file(d / "model-2.safetensors", {"a": 2})
    _index(d, {"a": "model-2.safetensors", "b": "model-1.safetensors"})
    c.add(d.name, cat, d, "tensor 'a' is also in", mentions=d / "model-2.safetensors")
    d = mkdir("dir_index_path_traversal")
    _st_file(d / "model.safetensors", {"a": 2})
    c.add(
        d.name,
        cat,
        d,
        "index names a file outside its directory: '../../etc/passwd'",
        mentions=_index(d, {"a": "model.safetensors", "b": "../../etc/passwd"}),
    )
    d = mkdir("dir_index_absolute_path")
    _st_file(d / "model.safetensors", {"a": 2})
    c.add(
        d.name,
        cat,
        d,
        "index names a file outside its directory: '/etc/passwd'",
        mentions=_index(d, {"a": "/etc/passwd"}),
    )
    d = mkdir("dir_index_invalid_json")
    _st_file(d / "model.safetensors", {"a": 2})
    c.add(d.name, cat, d, "unreadable index file", mentions=_index(d, '{"weight_map": {'))
    d = mkdir("dir_index_deep_json")
    _st_file(d / "model.safetensors", {"a": 2})
    c.add(d.name, cat, d, "unreadable index file", mentions=_index(d, "[" * 100_000 + "]" * 100_000))
    # A sparse file: four gigabytes that cost nothing to make and must not be read into memory.
    d = mkdir("dir_index_sparse_4g")
    _st_file(d / "model.safetensors", {"a": 2})
    with open(d / "model.safetensors.index.json", "wb") as f:
        f.truncate(4 << 30)
    c.add(d.name, cat, d, "larger than the 104857600-byte limit", mentions=d / "model.safetensors.index.json")
    d = mkdir("dir_index_no_weight_map")
    _st_file(d / "model.safetensors", {"a": 2})
    c.add(d.name, cat, d, "index file has no weight_map", mentions=_index(d, '{"weight_map": ["model.safetensors"]}'))
    d = mkdir("dir_index_wrong_shard")
    _st_file(d / "model-1.safetensors", {"a": 2})
    _st_file(d / "model-2.safetensors", {"b": 2})
    c.add(
        d.name,
        cat,
        d,
        "says 'b' is in model-1.safetensors, but that file does not hold it",
        mentions=_index(d, {"a": "model-1.safetensors", "b": "model-1.safetensors", "c": "model-2.safetensors"}),
    )
    d = mkdir("dir_index_names_a_directory")
    (d / "sub.safetensors").mkdir()
    _st_file(d / "model.safetensors", {"a": 2})
    c.add(
        d.name,
        cat,
        d,
        "names shard 'sub.safetensors', which does not exist",
        mentions=_index(d, {"a": "model.safetensors", "b": "sub.safetensors"}),
    )
    d = mkdir("dir_no_weights")
    (d / "config.json").write_text("{}")
    (d / "README.md").write_text("hello")
    c.add(d.name, cat, d, "directory holds no weight files")
    d = mkdir("dir_only_training_state")
    torch_zip(d / "optimizer.pt", pickle_of(good_dict()), {"0": float_bytes(4)})
    c.add(d.name, cat, d, "directory holds no weight files")
    d = mkdir("dir_bad_shard_among_good")
    _st_file(d / "model-1.safetensors", {"a": 2})
    safetensors_file(d / "model-2.safetensors", b"not json", b"")
    c.add(d.name, cat, d, "not a JSON object", mentions=d / "model-2.safetensors")
    path = c.root / "unknown_format.weights"
    path.write_bytes(b"\x00" * 64)
    c.add("unknown_format", cat, path, "unknown checkpoint format")


# ---------------------------------------------------------------- npz archives


def _npz(path: Path, members: dict[str, bytes], compress=()) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            zf.writestr(zi, data)


def _npy(header: str, data: bytes = b"") -> bytes:
    raw = header.encode("latin1")
    raw += b" " * (-(10 + len(raw) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw + data


def npz(c: Corpus) -> None:
    cat = "npz"
    ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }"

    def case(name, members, expect, compress=()):
        path = c.root / f"{name}.npz"
        _npz(path, members, compress)
        c.add(name, cat, path, expect)

    case(
        "npz_object_dtype",
        {"w.npy": _npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", b"\x80\x02cos\nsystem\n.")},
        "unsupported dtype '|O'",
    )
    case("npz_compressed", {"w.npy": _npy(ok, float_bytes(4))}, "is compressed", compress={"w.npy"})
    case(
        "npz_shape_past_member",
        {
            "w.npy": _npy(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1 << 40,), }".replace("1 << 40", str(1 << 40)),
                float_bytes(4),
            )
        },
        "data runs past its member",
    )
    case(
        "npz_zero_size_huge_dims",
        {"w.npy": _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0, %d), }" % 10**30)},
        "bad shape",
    )
    case(
        "npz_header_is_call",
        {"w.npy": _npy("__import__('os').system('true')", float_bytes(4))},
        "unreadable .npy header",
    )
    case("npz_deep_header", {"w.npy": _npy("-" * 60_000 + "1", float_bytes(4))}, "unreadable .npy header")
    case("npz_not_npy", {"w.npy": b"\x80\x02cos\nsystem\n."}, "is not a .npy array")


# ---------------------------------------------------------------- hostile-looking but harmless


@dataclass
class Harmless:
    """An input that must convert: the values of its tensors (float32, row-major) after conversion."""

    name: str
    src: Path
    tensors: dict[str, list[float]]


def harmless(root) -> list[Harmless]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    w = {"w": [0.0, 1.0, 2.0, 3.0]}
    out = []

    def zip_file(name, pkl):
        torch_zip(root / f"{name}.pt", pkl, {"0": float_bytes(4)})
        out.append(Harmless(name, root / f"{name}.pt", w))

    zip_file("control_zip", pickle_of(good_dict()))
    torch_legacy(root / "control_legacy.bin", pickle_of(good_dict(legacy=True)), [("0", 4, float_bytes(4))])
    out.append(Harmless("control_legacy", root / "control_legacy.bin", w))
    safetensors_file(root / "control.safetensors", _f32("w", [4], 0), float_bytes(4))
    out.append(Harmless("control_safetensors", root / "control.safetensors", w))
    # Classes we do not know, made from state as Python pickles objects (NEWOBJ without arguments, then
    # BUILD), become inert placeholders that keep their state.
    cfg = glob("mymodule.config", "Config") + EMPTY_TUPLE + NEWOBJ + dict_of([(s("lr"), i(1))]) + BUILD
    zip_file("unknown_class_is_a_placeholder", pickle_of(good_dict(extra=[(s("cfg"), cfg)])))
    # A global that is only referenced is data, never called: builtin types as old and Lightning checkpoints
    # store them in hyper-parameters, and a function name next to them.
    types = (
        EMPTY_LIST
        + MARK
        + b"".join(glob("__builtin__", t) for t in ("list", "dict", "long", "int"))
        + glob("builtins", "tuple")
        + glob("pip", "main")
        + APPENDS
    )
    zip_file("uncalled_globals_are_data", pickle_of(good_dict(extra=[(s("hparams"), types)])))
    # BUILD on an OrderedDict sets instance attributes (torch stores ``_metadata`` this way); one that
    # shadows ``items`` must not change how the state dict is read.
    od = call(glob("collections", "OrderedDict")) + MARK + s("w") + good_tensor() + b"u"
    od += tup(NONE, dict_of([(s("items"), glob("torch._utils", "_rebuild_tensor_v2"))])) + BUILD
    zip_file("ordered_dict_shadowed_items", pickle_of(dict_of([(s("state_dict"), od)])))
    # The same on a pickled module's state and on a legacy file's sys info, whose ``get`` we call.
    shadow_get = tup(NONE, dict_of([(s("get"), glob("collections", "OrderedDict"))])) + BUILD
    params = call(glob("collections", "OrderedDict")) + MARK + s("w") + good_tensor() + b"u"
    state = call(glob("collections", "OrderedDict")) + MARK + s("_parameters") + params + s("_modules") + EMPTY_DICT
    module = glob("mymodule", "Net") + EMPTY_TUPLE + NEWOBJ + state + b"u" + shadow_get + BUILD
    zip_file("module_state_shadowed_get", pickle_of(module))
    info = call(glob("collections", "OrderedDict")) + MARK + s("little_endian") + NEWTRUE + b"u" + shadow_get
    torch_legacy(
        root / "sys_info_shadowed_get.bin", pickle_of(good_dict(legacy=True)), [("0", 4, float_bytes(4))], sys_info=info
    )
    out.append(Harmless("sys_info_shadowed_get", root / "sys_info_shadowed_get.bin", w))
    # Keys and class names with terminal escapes and a lone surrogate end up in the report's notes.
    zip_file(
        "names_with_terminal_escapes",
        pickle_of(
            good_dict(
                extra=[
                    (s(b"k\xed\xa0\x80"), i(1)),
                    (s("k\x1b[2J\x1b[31m"), i(2)),
                    (s("cfg"), glob("evil\x1b]0;pwned\x07", "X") + EMPTY_TUPLE + NEWOBJ),
                ]
            )
        ),
    )
    # A small expand()-ed view (stride 0) is a real torch.save output and converts, rows repeated.
    zip_file("expanded_view", pickle_of(state_dict({"w": good_tensor(size=(3, 4), stride=(0, 1))})))
    out[-1].tensors = {"w": [0.0, 1.0, 2.0, 3.0] * 3}
    # A sidecar config.json nested 100,000 deep is only copied, never needed.
    d = root / "deep_config_json"
    d.mkdir()
    safetensors_file(d / "model.safetensors", _f32("w", [4], 0), float_bytes(4))
    (d / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    out.append(Harmless(d.name, d, w))
    return out


# ---------------------------------------------------------------- zarr stores


def zarr_stores(c: Corpus) -> None:
    import gzip

    cat = "zarr"
    array = {
        "zarr_format": 2,
        "shape": [4],
        "chunks": [4],
        "dtype": "<f4",
        "compressor": None,
        "fill_value": 0.0,
        "order": "C",
        "filters": None,
    }

    def store(name, zarray, chunks, expect, mentions=None):
        d = c.root / name
        (d / "w").mkdir(parents=True)
        (d / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
        (d / "w" / ".zarray").write_text(zarray if isinstance(zarray, str) else json.dumps(zarray))
        for key, raw in chunks.items():
            (d / "w" / key).write_bytes(raw)
        c.add(name, cat, d, expect, mentions=mentions)

    # A gzip chunk that decodes to fewer bytes than the chunk holds.
    store(
        "zarr_short_chunk",
        {**array, "compressor": {"id": "gzip", "level": 1}},
        {"0": gzip.compress(bytes(8))},
        "unreadable chunk data",
        mentions=c.root / "zarr_short_chunk" / "w",
    )
    store(
        "zarr_truncated_raw_chunk",
        array,
        {"0": bytes(7)},
        "unreadable chunk data",
        mentions=c.root / "zarr_truncated_raw_chunk" / "w",
    )
    # Object arrays decode through pickle: never opened at all.
    store(
        "zarr_object_pickle_codec",
        {**array, "dtype": "|O", "filters": [{"id": "pickle"}], "fill_value": None},
        {"0": b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00truea\x85R."},
        "not a readable zarr store",
    )
    store("zarr_invalid_metadata", '{"zarr_format": 2, "shape": [4], ', {}, "not a readable zarr store")
    store("zarr_deep_metadata", "[" * 100_000 + "]" * 100_000, {}, "not a readable zarr store")


def build(root) -> list[Case]:
    c = Corpus(Path(root))
    for part in (code_execution, storages, pickle_abuse, zips, legacy, safetensors, directories, npz, zarr_stores):
        part(c)
    return c.cases


if __name__ == "__main__":
    cases = build(sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus")
    for case in cases:
        print(f"{case.category:24} {case.name:40} {case.expect}")
    print(f"{len(cases)} cases")
