"""Property-based fuzzing of the safetensors header parser and of index files.

Inputs: mutations of files written by the reference ``safetensors`` library,
structured headers with wrong dtypes, shapes, offsets and extra fields,
arbitrary JSON, arbitrary header bytes, and random index files. For every
input the only exception allowed out is ``Torch2MLXError``; a header that is
accepted describes exactly the file's data buffer (tensors tile it in order,
sizes agree with shapes) and the reference implementation reads the same
tensors from it; an accepted index never names a file outside its directory.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile

import numpy as np
import pytest

pytest.importorskip("hypothesis")  # a dev dependency; a bare environment skips these property tests
from fuzz_strategies import INTERESTING, fuzz_settings, mutated, open_or_none
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

# seconds per test (subprocesses, real models or many examples): `make test-fast` leaves this file out
pytestmark = pytest.mark.slow


def _seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    sets = [
        {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": np.arange(3, dtype=np.int64)},
        {"h": np.ones((2, 2), np.float16), "e": np.zeros((0, 5), np.float32), "s": np.array(7, np.uint8)},
        {f"layers.{k}.weight": np.full((2,), k, np.float64) for k in range(5)},
    ]
    out = []
    with tempfile.TemporaryDirectory() as d:
        for k, tensors in enumerate(sets):
            path = os.path.join(d, f"{k}.safetensors")
            save_file(tensors, path, metadata={"format": "pt"} if k == 0 else None)
            with open(path, "rb") as f:
                out.append(f.read())
    return out


SEEDS = _seeds()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-safetensors")


def write(path, raw: bytes) -> str:
    with open(path, "wb") as f:
        f.write(raw)
    return str(path)


def check_header(path: str) -> None:
    """Parse ``path``; a refusal is fine, an acceptance must describe the data buffer exactly."""
    ck = open_or_none(path)
    if ck is None:
        return
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    start, size = 8 + n, os.path.getsize(path)
    pos, entries = start, ck.entries
    for e in entries:  # in data order, back to back, ending exactly at the end of the file
        assert e.offset == pos and all(isinstance(d, int) and 0 <= d < 1 << 64 for d in e.shape), e
        e.name.encode("utf-8")
        pos += e.nbytes
    assert pos == size
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in ck.metadata.items())
    # The reference implementation reads the same tensors from the same header.
    with safe_open(path, "numpy") as ref:
        assert sorted(ref.keys()) == sorted(e.name for e in entries)
        for e in entries:
            part = ref.get_slice(e.name)
            assert tuple(part.get_shape()) == e.shape and part.get_dtype() == e.dtype.safetensors, e


@fuzz_settings(1200)
@given(st.sampled_from(SEEDS).flatmap(mutated))
def test_mutated_files(scratch, raw):
    check_header(write(scratch / "m.safetensors", raw))


DTYPES = [
    "F64",
    "F32",
    "F16",
    "BF16",
    "I64",
    "I32",
    "I16",
    "I8",
    "U8",
    "BOOL",
    "F8_E4M3",
    "U64",
    "C64",
    "F33",
    "f32",
    "",
    "BF16 ",
    "U128",
]
json_ints = st.sampled_from(INTERESTING + [-1, 2, 3, 4, 8, 16]) | st.integers(-(1 << 70), 1 << 70)
odd_values = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=4), json_ints)


def rarely(draw, good, bad, one_in: int = 8):
    """Mostly a draw from ``good``: each wrong field alone sinks a header, and enough must survive to test the rest."""
    return draw(bad) if draw(st.integers(1, one_in)) == 1 else draw(good)


@st.composite
def headers(draw) -> bytes:
    """A header of records that are mostly well formed, with data sized to match more often than not."""
    header, pos = {}, 0
    for k in range(draw(st.integers(0, 4))):
        dtype = rarely(draw, st.sampled_from(DTYPES[:13]), st.sampled_from(DTYPES[13:]) | odd_values)
        shape = rarely(
            draw, st.lists(st.integers(0, 5), max_size=3), st.lists(json_ints | odd_values, max_size=3) | odd_values
        )
        item = {"F64": 8, "I64": 8, "U64": 8, "C64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2}.get(dtype, 1)
        n = item
        for d in shape if isinstance(shape, list) else []:
            n *= d if isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 20 else 1
        n = min(n, 4096)  # the data written below stays small whatever the shape claims
        rec = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": rarely(draw, st.just([pos, pos + n]), st.lists(json_ints, max_size=3) | odd_values),
        }
        if draw(st.integers(0, 15)) == 0:
            rec[draw(st.sampled_from(["extra", "dtype2", "offsets"]))] = draw(odd_values)
        if draw(st.integers(0, 15)) == 0:
            del rec[draw(st.sampled_from(sorted(rec)))]
        name = rarely(
            draw,
            st.sampled_from(["w", "b", "a.b", "layers.0.weight"]) | st.text(max_size=4),
            st.sampled_from(["", "__metadata__", "w\u00e9", "\ud800", "w"]),
        )
        header[name if k else "w"] = rec
        pos += n
    metadata = st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)
    if draw(st.booleans()):
        header["__metadata__"] = rarely(
            draw, metadata, odd_values | st.dictionaries(st.text(max_size=3), odd_values, min_size=1, max_size=2)
        )
    raw = json.dumps(header).encode()
    raw += b" " * draw(st.sampled_from([0, 0, 3, -len(raw) % 8]))
    data_len = pos + rarely(draw, st.just(0), st.sampled_from([1, -1, 8]), one_in=4)
    return struct.pack("<Q", len(raw)) + raw + bytes(max(data_len, 0))


@fuzz_settings(1000)
@given(headers())
def test_structured_headers(scratch, raw):
    check_header(write(scratch / "h.safetensors", raw))


@fuzz_settings(600)
@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | json_ints | st.text(max_size=6),
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
        max_leaves=20,
    ),
    st.binary(max_size=16),
)
def test_arbitrary_json_headers(scratch, value, data):
    raw = json.dumps(value).encode()
    check_header(write(scratch / "j.safetensors", struct.pack("<Q", len(raw)) + raw + data))


@fuzz_settings(400)
@given(st.binary(max_size=64), st.sampled_from([None, 0, 1, 7, 64, 1 << 20, 1 << 40]))
def test_arbitrary_header_bytes(scratch, header, stated):
    length = len(header) if stated is None else stated
    check_header(write(scratch / "b.safetensors", struct.pack("<Q", length) + header))


shard_names = st.sampled_from(
    [
        "model.safetensors",
        "./model.safetensors",
        "other.safetensors",
        "../model.safetensors",
        "/etc/passwd",
        "sub/../model.safetensors",
        "",
        ".",
        "model.safetensors\x00",
        "..",
        "sub/x.safetensors",
        "model.safetensors.index.json",
    ]
) | st.text(max_size=8)
index_files = st.one_of(
    st.dictionaries(st.sampled_from(["a", "b", "c"]) | st.text(max_size=3), shard_names, max_size=4).map(
        lambda wm: json.dumps({"metadata": {"total_size": 8}, "weight_map": wm})
    ),
    st.recursive(
        st.none() | json_ints | st.text(max_size=4),
        lambda kids: (
            st.lists(kids, max_size=3)
            | st.dictionaries(st.sampled_from(["weight_map", "metadata", "a"]), kids, max_size=3)
        ),
    ).map(json.dumps),
    st.text(max_size=30),
)


@fuzz_settings(300)
@given(index_files)
def test_random_index_files(index):
    with tempfile.TemporaryDirectory() as d:
        save_file({"a": np.zeros(2, np.float32)}, os.path.join(d, "model.safetensors"))
        os.mkdir(os.path.join(d, "sub"))
        with open(os.path.join(d, "model.safetensors.index.json"), "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(index)
        ck = open_or_none(d)
        if ck is None:
            return
        root = os.path.realpath(d)
        for p in ck.files + [e.path for e in ck.entries]:
            assert os.path.realpath(p).startswith(root + os.sep), p
