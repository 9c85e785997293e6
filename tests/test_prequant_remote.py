"""GPTQ/AWQ read remotely: a packed tensor is read by columns (its outputs are MLX's rows), yet fetched once."""

from __future__ import annotations

import json

import numpy as np
import prequant_ref as R
import pytest
import torch
from hub_server import serving
from safetensors.numpy import load_file
from safetensors.torch import save_file

import torch2mlx.stream
from torch2mlx.core import quant
from torch2mlx.formats import ranges


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(ranges, "BACKOFF", 0.01)
    with serving(str(tmp_path / "repos")) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        yield srv


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_remote_packed_source_is_fetched_once(method, hub, tmp_path, monkeypatch):
    monkeypatch.setattr(ranges, "WINDOW", 64 * 1024)  # windows far smaller than a packed tensor
    # Row blocks of 1,024 MLX rows (16 MiB work units): each reads a column slice of every packed tensor.
    # The codes are random; the oracle is the local conversion of the same files.
    rng = np.random.default_rng(5)
    n, k, gs = 4096, 4096, 128
    t = {}
    for i in range(2):
        codes = rng.integers(0, 16, (n, k), dtype=np.uint8)  # (out, in)
        zeros = rng.integers(0, 16, (k // gs, n), dtype=np.uint8)
        p = f"layers.{i}.proj."
        if method == "gptq":
            t[p + "qweight"] = torch.from_numpy(quant.pack_codes(codes, 4).T.copy().view(np.int32))
            t[p + "qzeros"] = torch.from_numpy(quant.pack_codes(zeros, 4).view(np.int32))
        else:
            t[p + "qweight"] = torch.from_numpy(R.awq_pack(codes.T.copy()))
            t[p + "qzeros"] = torch.from_numpy(R.awq_pack(zeros))
        t[p + "scales"] = torch.from_numpy((rng.random((k // gs, n)) * 0.01).astype(np.float16))
    d = tmp_path / "repos" / "org" / method
    d.mkdir(parents=True)
    save_file(t, str(d / "model.safetensors"))
    qc = {"quant_method": method, "bits": 4, "group_size": 128}
    qc |= {"checkpoint_format": "gptq_v2"} if method == "gptq" else {"version": "gemm", "zero_point": True}
    (d / "config.json").write_text(json.dumps({"quantization_config": qc}))
    kw = dict(model=False, workers=2)
    torch2mlx.stream.convert(str(d), tmp_path / "local", **kw)
    torch2mlx.stream.convert(f"hf://org/{method}", tmp_path / "remote", **kw)
    a, b = (
        load_file(str(tmp_path / "local" / "model.safetensors")),
        load_file(str(tmp_path / "remote" / "model.safetensors")),
    )
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    src = (d / "model.safetensors").stat().st_size
    assert hub.fetched <= 1.05 * src + 64 * 1024, hub.fetched / src
