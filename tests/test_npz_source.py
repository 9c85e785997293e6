"""``.npz`` archives as a source: ``mx.savez`` (bfloat16 included) and ``np.savez``, read member by member in place.

mlx is the oracle for what ``mx.savez`` wrote (``mx.load``), numpy for ``np.savez``.
"""

import zipfile

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import assert_one_error, assert_same, canon_bits, canon_mx, convert, read_output, run_main, to_torch
from reverse_helpers import read_torch_output


def _mx_arrays():
    g = np.random.default_rng(0)
    return {
        "emb.weight": mx.array(g.standard_normal((12, 8)).astype(np.float32)).astype(mx.bfloat16),
        "conv.weight": mx.array(g.standard_normal((4, 3, 3, 2)).astype(np.float16)),  # MLX layout (O, H, W, I)
        "norm.weight": mx.array(g.standard_normal(8).astype(np.float32)),
        "ids": mx.array(np.arange(-5, 7, dtype=np.int32)),
        "mask": mx.array(g.random(9) > 0.5),
        "bytes": mx.array(np.arange(10, dtype=np.uint8)),
        "scalar": mx.array(1.5, dtype=mx.bfloat16),
    }


@pytest.fixture
def mx_npz(tmp_path):
    path = tmp_path / "weights.npz"
    mx.savez(str(path), **_mx_arrays())
    return path


def test_mx_savez_streams_bit_exact_and_is_not_transposed(mx_npz, tmp_path, monkeypatch):
    from torch2mlx.stream import execute
    from torch2mlx.stream import open as open_ck

    ck = open_ck(mx_npz)
    assert ck.format == "npz" and ck.layout == "mlx"
    assert all(e.path == str(mx_npz) and e.offset > 0 and e.loader is None for e in ck.entries)  # in place
    real = execute.plan_tasks
    monkeypatch.setattr(execute, "plan_tasks", lambda op, chunk: real(op, 16))
    res = convert(mx_npz, tmp_path / "out")
    assert res.plan.rules_by_source() == {"default": 7}  # the 4-D conv.weight is already MLX layout
    got = read_output(tmp_path / "out")
    want = mx.load(str(mx_npz))
    assert set(got) == set(want)
    for name, a in want.items():
        assert_same(got[name], canon_mx(a), name, nan_bits=True)
    assert got["emb.weight"].dtype == "bfloat16" and got["scalar"].shape == ()


def test_np_savez_fortran_order_and_big_endian(tmp_path):
    g = np.random.default_rng(1)
    arrays = {
        "f": np.asfortranarray(g.standard_normal((5, 7)).astype(np.float32)),
        "be": g.standard_normal((3, 4)).astype(">f4"),
        "be_i": np.arange(6, dtype=">i8").reshape(2, 3),
    }
    np.savez(tmp_path / "a.npz", **arrays)
    convert(tmp_path / "a.npz", tmp_path / "out")
    got = read_output(tmp_path / "out")
    for name, a in arrays.items():
        native = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<")))
        assert_same(got[name], canon_bits(str(native.dtype), native), name)


def test_compressed_npz_is_one_error(tmp_path):
    np.savez_compressed(tmp_path / "c.npz", a=np.ones(4))
    with zipfile.ZipFile(tmp_path / "c.npz") as z:
        assert z.infolist()[0].compress_type == zipfile.ZIP_DEFLATED
    assert_one_error(run_main("stream", tmp_path / "c.npz", tmp_path / "o"), "savez_compressed")


def test_mx_savez_to_torch_keeps_names_or_undoes_a_named_layout(mx_npz, tmp_path):
    res = to_torch(mx_npz, tmp_path / "same")
    assert any("no torch2mlx.json and no model information" in w for w in res.plan.warnings)
    got = read_torch_output(tmp_path / "same")
    want = mx.load(str(mx_npz))
    assert got["emb.weight"].dtype == torch.bfloat16
    assert np.array_equal(got["emb.weight"].view(torch.int16).numpy(), np.array(want["emb.weight"].view(mx.int16)))
    assert np.array_equal(got["conv.weight"].numpy(), np.array(want["conv.weight"]))
    to_torch(mx_npz, tmp_path / "undone", format="bin", rules=[r"conv\.weight=conv2d"])
    undone = read_torch_output(tmp_path / "undone", "bin")["conv.weight"]
    # torch's (O, I, H, W) from MLX's (O, H, W, I)
    assert torch.equal(undone, torch.from_numpy(np.array(want["conv.weight"])).permute(0, 3, 1, 2))
