"""Property-based fuzzing of the restricted unpickler and the torch pickle readers.

Inputs: random opcode streams, random bytes, and mutations of real
``torch.save`` output (zip data.pkl, whole zip archives, legacy files). For
every input the only exception allowed out is ``Torch2MLXError``, no audit
event shows a pickle reaching code, and what is accepted stays inside the
file: every tensor's bytes lie within it and can be read.
"""

from __future__ import annotations

import collections
import io
import os
import tempfile
import zipfile

import pytest
import torch

pytest.importorskip("hypothesis")  # a dev dependency; a bare environment skips these property tests
from fuzz_strategies import (
    GLOBALS,
    fuzz_settings,
    guarded_persistent_load,
    mutated,
    nothing_runs,
    object_graph,
    opcode,
    opcode_stream,
    open_or_none,
    state_dict_graph,
)
from hypothesis import event, given
from hypothesis import strategies as st
from pickle_asm import float_bytes, torch_zip

from torch2mlx.errors import Torch2MLXError
from torch2mlx.formats import nested, unpickler
from torch2mlx.formats.data import DataReader
from torch2mlx.stream import open as open_checkpoint

# seconds per test (subprocesses, real models or many examples): `make test-fast` leaves this file out
pytestmark = pytest.mark.slow


def _sample_objects() -> dict[str, object]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    linear = torch.nn.Linear(3, 2)
    return {
        "state_dict": collections.OrderedDict(
            w=base, b=torch.zeros(3, dtype=torch.bfloat16), i=torch.arange(5), h=torch.ones(2, 2, dtype=torch.float16)
        ),
        "views": {"row": base[1], "cols": base[:, 2:], "t": base.t(), "expand": torch.ones(1).expand(3, 2)},
        "lightning": {
            "state_dict": linear.state_dict(),
            "epoch": 3,
            "optimizer_states": [
                {
                    "state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2, 3)}},
                    "param_groups": [{"lr": 0.1, "params": [0]}],
                }
            ],
            "hyper_parameters": {"name": "net", "sizes": (3, 2), "blob": b"\x00\xff"},
        },
        "module": torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()),
        "parameter": {"p": torch.nn.Parameter(torch.ones(2))},
    }


def _seeds():
    """(name, bytes) of real torch.save files: zip archives and legacy files, pickle protocols 2 and 4."""
    zips, legacy = [], []
    with tempfile.TemporaryDirectory() as d:
        for name, obj in _sample_objects().items():
            for protocol in (2, 4):
                for new in (True, False):
                    path = os.path.join(d, f"{name}{protocol}{new}.pt")
                    torch.save(obj, path, pickle_protocol=protocol, _use_new_zipfile_serialization=new)
                    with open(path, "rb") as f:
                        raw = f.read()
                    (zips if new else legacy).append((f"{name}-p{protocol}", _fixed_id(raw) if new else raw))
    return zips, legacy


def _fixed_id(raw: bytes) -> bytes:
    """The archive with its random ``.data/serialization_id`` fixed, so every run fuzzes the same seeds."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".data/serialization_id"):
                data = b"0" * len(data)
            dst.writestr(zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


ZIP_SEEDS, LEGACY_SEEDS = _seeds()


def _zip_parts(raw: bytes) -> tuple[str, bytes, dict[str, bytes]]:
    """(archive root, data.pkl, other members) of a torch zip archive."""
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        pkl = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
        return pkl[: -len("data.pkl")], zf.read(pkl), {n: zf.read(n) for n in zf.namelist() if n != pkl}


DATA_PKL_SEEDS = [(name, *_zip_parts(raw)) for name, raw in ZIP_SEEDS]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-pickle")


def check_accepted(path: str) -> None:
    """Open ``path`` as a checkpoint. Refusals are fine; anything accepted must lie inside the file."""
    ck = open_or_none(path)
    if ck is None:
        return
    size = os.path.getsize(path)
    with DataReader() as reader:
        for e in ck.entries:
            assert e.path == path and 0 <= e.offset and e.offset + e.span <= size, e
            if e.nbytes <= 1 << 20:
                arr = reader.read_all(e)
                assert arr.size == e.numel, e


def test_seeds_open_cleanly():
    """The unmutated seeds are valid checkpoints: the fuzzing below starts from real files."""
    with tempfile.TemporaryDirectory() as d:
        for name, raw in ZIP_SEEDS + LEGACY_SEEDS:
            path = os.path.join(d, name + ".pt")
            with open(path, "wb") as f:
                f.write(raw)
            assert open_checkpoint(path).entries, name


def unpickle_and_select(data: bytes) -> None:
    try:
        with nothing_runs():
            obj, _ = unpickler.load(data, "fuzz", guarded_persistent_load(unpickler))
            event("unpickled")
            nested.select(obj, "fuzz")
            event("tensors found")
    except Torch2MLXError as e:
        assert not any(ours in str(e) for ours in ("Opaque", "_t2m", "_Placeholder", "_InstanceMethod")), (
            f"the error names our internals, not the file's globals: {e}"
        )
        event(f"refused: {str(e).split(': ', 1)[-1][:30]}")


@fuzz_settings(1200)
@given(opcode_stream)
def test_random_opcode_streams(data):
    unpickle_and_select(data)


@fuzz_settings(1000)
@given(object_graph)
def test_random_object_graphs(data):
    unpickle_and_select(data)


@fuzz_settings(700)
@given(state_dict_graph)
def test_random_tensor_records_in_a_zip(scratch, data):
    """Tensor records with random storages, sizes, strides and offsets, checked against real members."""
    path = str(scratch / "graph.pt")
    torch_zip(path, data, {"0": float_bytes(16), "1": bytes(8)})
    check_accepted(path)


@fuzz_settings(300)
@given(st.binary(max_size=256))
def test_random_bytes(data):
    try:
        with nothing_runs():
            unpickler.load(data, "fuzz", guarded_persistent_load(unpickler))
    except Torch2MLXError:
        pass


@fuzz_settings(1000)
@given(
    st.sampled_from(DATA_PKL_SEEDS).flatmap(
        lambda seed: st.tuples(
            st.just(seed), mutated(seed[2], extra=st.lists(opcode, min_size=1, max_size=3).map(b"".join))
        )
    )
)
def test_mutated_data_pkl(scratch, case):
    (name, root, _pkl, members), data_pkl = case
    path = str(scratch / "mutated.pt")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(root + "data.pkl", data_pkl)
        for member, raw in members.items():
            zf.writestr(member, raw)
    check_accepted(path)


@fuzz_settings(600)
@given(st.sampled_from(ZIP_SEEDS).flatmap(lambda seed: mutated(seed[1])))
def test_mutated_zip_archives(scratch, raw):
    path = str(scratch / "mutated-zip.pt")
    with open(path, "wb") as f:
        f.write(raw)
    check_accepted(path)


@fuzz_settings(800)
@given(
    st.sampled_from(LEGACY_SEEDS).flatmap(
        lambda seed: mutated(seed[1], extra=st.lists(opcode, min_size=1, max_size=3).map(b"".join))
    )
)
def test_mutated_legacy_files(scratch, raw):
    path = str(scratch / "mutated-legacy.bin")
    with open(path, "wb") as f:
        f.write(raw)
    check_accepted(path)


plain_data = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 80), 1 << 80)
    | st.floats()
    | st.text(max_size=300)
    | st.binary(max_size=300),
    lambda kids: (
        st.lists(kids, max_size=6)
        | st.tuples(kids, kids)
        | st.dictionaries(st.text(max_size=4), kids, max_size=4)
        | st.lists(kids, max_size=3).map(lambda xs: xs + xs)
    ),  # shared objects: memo puts and gets
    max_leaves=40,
)


@fuzz_settings(800)
@given(plain_data, st.integers(0, 5))
def test_scan_accepts_every_real_pickle(value, protocol):
    """The opcode scan before unpickling refuses nothing CPython's pickler writes, at any protocol."""
    import pickle

    data = pickle.dumps(value, protocol=protocol)
    assert unpickler.pickle_extent(io.BytesIO(data + b"trailing"), len(data) + 8, "scan") == len(data)


# What find_class may hand the unpickler: our stand-ins, never a callable from anywhere else.
ALLOWED = set(map(id, unpickler._TORCH_GLOBALS.values())) | set(map(id, unpickler._REAL_BUILTINS.values()))


@fuzz_settings(1500)
@given(
    st.sampled_from(GLOBALS)
    | st.tuples(
        st.sampled_from(
            [
                "os",
                "builtins",
                "torch",
                "torch._utils",
                "torch.storage",
                "collections",
                "posix",
                "subprocess",
                "numpy",
                "copyreg",
                "_codecs",
                "nt",
                "sys",
                "x.y",
            ]
        )
        | st.text(max_size=12),
        st.sampled_from(
            [
                "system",
                "eval",
                "FloatStorage",
                "Storage",
                "float32",
                "_rebuild_x",
                "__class__",
                "set",
                "OrderedDict",
                "getattr",
                "a.b",
                "__reduce__",
            ]
        )
        | st.text(max_size=12),
    )
)
def test_find_class_returns_only_stand_ins(pair):
    up = unpickler.RestrictedUnpickler(io.BytesIO(b""), "fuzz", lambda pid: None)
    try:
        with nothing_runs():
            found = up.find_class(*pair)
    except Torch2MLXError:
        return
    inert = isinstance(found, (unpickler._StorageType, unpickler.DTypeRef)) or (
        isinstance(found, type) and issubclass(found, unpickler.Opaque)
    )
    assert inert or id(found) in ALLOWED, f"find_class{pair} returned {found!r}"
