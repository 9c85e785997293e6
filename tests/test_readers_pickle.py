"""torch zip and legacy pickles: every dtype, views, shared storages, odd archives; torch.load is the oracle."""

from __future__ import annotations

import zipfile

import pytest
import torch
from conftest import LEGACY_LOADABLE, SEED, all_dtypes_state_dict, views_state_dict
from helpers import (
    assert_one_error,
    assert_same,
    canon_torch,
    check_converted,
    convert,
    read_output,
    run_main,
    torch_load,
    torch_save,
)

FORMATS = ("zip", "legacy")


@pytest.mark.parametrize("dtype", ["keep", "float16", "bfloat16", "float32"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_dtype(dtype_files, out, fmt, dtype):
    # torch's legacy loader cannot read float8 / uint16+ storages: the zip twin holds the same tensors.
    source = torch_load(dtype_files["zip"])
    convert(dtype_files[fmt], out, dtype=dtype)
    check_converted(out, source, dtype=dtype)


def test_legacy_against_its_own_torch_load(tmp_path, out):
    sd = {k: v for k, v in all_dtypes_state_dict().items() if v.dtype in LEGACY_LOADABLE}
    src = torch_save(sd, tmp_path / "legacy.pth", "legacy")
    convert(src, out)
    check_converted(out, torch_load(src))


@pytest.mark.parametrize("dtype", ["keep", "float16"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_views_offsets_strides_shared_storages(views_files, out, fmt, dtype):
    source = torch_load(views_files[fmt])
    assert not source["transposed"].is_contiguous() and source["base"].data_ptr() == source["base_alias"].data_ptr()
    convert(views_files[fmt], out, dtype=dtype)
    got = check_converted(out, source, dtype=dtype)
    # tied weights stay two outputs with equal content
    assert_same(got["base"], got["base_alias"], "tied")
    assert got["scalar.f32"].shape == () and got["empty.cols"].shape == (3, 0)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.slow
def test_large_tensors_cross_block_boundaries(tmp_path, out, fmt):
    """Tensors bigger than one 16 MiB work block, contiguous and strided, cast and permuted."""
    g = torch.Generator().manual_seed(SEED)
    big = torch.randn(3000, 1500, generator=g)
    sd = {
        "big": big,
        "big.t": big.t(),
        "big.cols": big[:, ::3],
        "conv.weight": torch.randn(512, 256, 3, 3, generator=g),
    }
    src = torch_save(sd, tmp_path / "big.pt", fmt)
    convert(src, out, dtype="bfloat16")
    check_converted(out, torch_load(src), dtype="bfloat16")


def _repack(src, dst, rename=None, transform=None):
    """Copy a torch zip archive member by member (stored, unaligned), renaming or rewriting members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            name = rename(info.filename) if rename else info.filename
            if transform:
                data = transform(name, data)
            if data is not None:
                zout.writestr(name, data)
    return dst


def test_zip_archive_root_folder_can_have_any_name(views_files, tmp_path, out):
    root = zipfile.ZipFile(views_files["zip"]).namelist()[0].split("/")[0]
    src = _repack(views_files["zip"], tmp_path / "renamed.pt", rename=lambda n: "my model v2/" + n[len(root) + 1 :])
    assert zipfile.ZipFile(src).namelist()[0].startswith("my model v2/")
    convert(src, out)
    check_converted(out, torch_load(src))


def test_big_endian_zip_checkpoint(tmp_path, out):
    """A checkpoint written on a big-endian machine: byteorder record 'big', storages byte-swapped."""
    g = torch.Generator().manual_seed(SEED)
    sd = {
        "f32": torch.randn(5, 7, generator=g),
        "bf16.t": torch.randn(4, 6, generator=g).to(torch.bfloat16).t(),
        "i64": torch.arange(-6, 6),
        "f16": torch.randn(9, generator=g).half(),
        "u8": torch.arange(5, dtype=torch.uint8),
        "conv.weight": torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64),
    }
    little = torch_save(sd, tmp_path / "little.pt")
    keys = {}
    obj = torch_load(little)
    # storage member -> element size, found by matching each storage's bytes
    with zipfile.ZipFile(little) as z:
        for name in z.namelist():
            if "/data/" in name:
                raw = z.read(name)
                keys[name] = next(t.element_size() for t in obj.values() if bytes(t.untyped_storage()) == raw)

    def swap(name, data):
        if name.endswith("/byteorder"):
            return b"big"
        if name in keys:
            w = keys[name]
            return b"".join(data[i : i + w][::-1] for i in range(0, len(data), w))
        return data

    big = _repack(little, tmp_path / "big.pt", transform=swap)
    reference = torch_load(big)
    for k in sd:  # torch itself reads the swapped file back to the original values
        assert_same(canon_torch(reference[k]), canon_torch(sd[k]), k, nan_bits=True)
    convert(big, out, dtype="keep")
    check_converted(out, reference)


def test_tensor_without_container(tmp_path, out):
    t = torch.randn(3, 4)
    src = torch_save(t, tmp_path / "single.pt")
    convert(src, out)
    check_converted(out, {"tensor": torch_load(src)})


@pytest.mark.parametrize("fmt", FORMATS)
def test_parameters_and_protocol_2_module_state(tmp_path, out, fmt):
    """nn.Parameter objects (``_rebuild_parameter``) in a state dict of a real module."""
    torch.manual_seed(SEED)
    m = torch.nn.Sequential(torch.nn.Conv1d(3, 4, 5), torch.nn.GRU(4, 6), torch.nn.LayerNorm(6))
    params = dict(m.named_parameters())
    src = torch_save(params, tmp_path / f"params_{fmt}.pt", fmt)
    convert(src, out)
    check_converted(out, torch_load(src))
    assert set(read_output(out)) == set(params)


@pytest.mark.parametrize("protocol", [1, 3, 4, 5])
@pytest.mark.parametrize("fmt", FORMATS)
def test_other_pickle_protocols(views_files, tmp_path, out, fmt, protocol):
    """torch.save(..., pickle_protocol=N) files that torch.load reads back."""
    src = tmp_path / f"p{protocol}.pt"
    torch.save(views_state_dict(), src, pickle_protocol=protocol, _use_new_zipfile_serialization=fmt == "zip")
    convert(src, out)
    check_converted(out, torch_load(src))


@pytest.mark.parametrize("view", ["conj", "neg"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_conjugate_and_negative_views_are_refused_not_silently_wrong(tmp_path, out, fmt, view):
    """torch saves a lazy conj/neg view as its storage plus a flag; copying the storage would give wrong values."""
    z = torch.randn(4, dtype=torch.complex64)
    t = z.conj() if view == "conj" else z.conj().imag  # .imag of a conj view is a negative view
    assert t.is_conj() if view == "conj" else t.is_neg()
    src = torch_save({"ok": torch.ones(2), "lazy": t}, tmp_path / f"{view}.pt", fmt)
    proc = run_main("stream", src, out)
    assert_one_error(proc, str(src), view, "resolve")
    assert not out.exists()


def test_tensor_subclasses_and_attributes(tmp_path, out):
    """Tensors saved through _rebuild_from_type_v2 (a subclass, python attributes) keep their values."""
    p = torch.nn.Parameter(torch.randn(3, 4))
    t = torch.randn(5)
    t.note = "python attribute"
    src = torch_save({"p": p, "t": t, "buf": torch.nn.Buffer(torch.arange(3.0))}, tmp_path / "sub.pt")
    convert(src, out)
    check_converted(out, torch_load(src))


@pytest.mark.parametrize("dtype", ["keep", "bfloat16"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_tiny_work_blocks(dtype_files, views_files, tmp_path, monkeypatch, fmt, dtype):
    """The same conversions cut into blocks of ~1 KiB: every block boundary must be seamless."""
    from torch2mlx.stream import execute

    real = execute.plan_tasks
    monkeypatch.setattr(execute, "plan_tasks", lambda op, chunk: real(op, 1024))
    rules = [
        r"^conv\.float32\.weight$=conv_transpose2d",
        r"^conv1\.weight$=conv_transpose1d",
        r"^conv3\.weight$=conv_transpose3d",
        r"^ints\.permuted$=conv_transpose1d",
    ]
    forced = {
        "conv.float32.weight": "conv_transpose2d",
        "conv1.weight": "conv_transpose1d",
        "conv3.weight": "conv_transpose3d",
        "ints.permuted": "conv_transpose1d",
    }
    for name, files in (("dtypes", dtype_files), ("views", views_files)):
        out = tmp_path / name
        convert(files[fmt], out, dtype=dtype, rules=rules)
        source = torch_load(files["zip" if name == "dtypes" else fmt])
        check_converted(out, source, dtype=dtype, rules={k: v for k, v in forced.items() if k in source})
