"""`t2mlx verify SRC OUT`: exit 0 only when hashes, headers, index and every tensor hold."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from helpers import INDEX, MANIFEST, rehash_shard, run_cli, torch_save


@pytest.fixture
def converted(tmp_path):
    torch.manual_seed(0)
    sd = {
        "conv.weight": torch.randn(8, 3, 3, 3),
        "fc.weight": torch.randn(10, 8).to(torch.bfloat16),
        "fc.bias": torch.randn(10),
        "steps": torch.tensor(7),
    }
    src = torch_save(sd, tmp_path / "model.pt")
    out = tmp_path / "out"
    proc = run_cli("stream", src, out, "--dtype", "float16", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return src, out


def _flip_tensor_byte(out, name: str) -> None:
    """Change one byte of ``name``'s data and fix the manifest's hash, so only the values are wrong."""
    path = out / "model.safetensors"
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    begin = json.loads(raw[8 : 8 + n])[name]["data_offsets"][0]
    raw[8 + n + begin] ^= 0x01
    path.write_bytes(raw)
    rehash_shard(out, "model.safetensors")


@pytest.mark.slow
def test_a_good_conversion_verifies(converted):
    src, out = converted
    for quick in ([], ["--quick"]):
        proc = run_cli("verify", src, out, *quick)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.startswith("verified 1 shard(s)") and ": OK" in proc.stdout
    rep = json.loads(run_cli("verify", src, out, "--json").stdout)
    assert rep["ok"] and rep["tensors"] == 4 and rep["problems"] == []


@pytest.mark.slow
def test_a_changed_value_is_found_even_with_a_matching_hash(converted):
    src, out = converted
    _flip_tensor_byte(out, "conv.weight")
    assert run_cli("verify", src, out, "--quick").returncode == 0  # hashes and headers agree ...
    proc = run_cli("verify", src, out)  # ... the values do not
    assert proc.returncode == 1
    assert "conv.weight differs from rule conv2d applied to conv.weight" in proc.stdout


def test_a_corrupted_shard_fails_its_hash(converted):
    src, out = converted
    path = out / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(raw)
    proc = run_cli("verify", src, out, "--quick")
    assert proc.returncode == 1 and "xxh3-128" in proc.stdout and "differs from the manifest" in proc.stdout


def test_index_must_match_the_shards(converted):
    src, out = converted
    idx = json.loads((out / INDEX).read_text())
    idx["weight_map"]["ghost.weight"] = "model.safetensors"
    del idx["weight_map"]["fc.bias"]
    (out / INDEX).write_text(json.dumps(idx))
    proc = run_cli("verify", src, out, "--quick")
    assert proc.returncode == 1
    assert "'ghost.weight'" in proc.stdout and "'fc.bias' is in a shard but not in the index" in proc.stdout


def test_verify_against_another_source_fails(converted, tmp_path):
    _src, out = converted
    other = torch_save({"conv.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "other.pt")
    proc = run_cli("verify", other, out)
    assert proc.returncode == 1
    assert "not in the source checkpoint" in proc.stdout or "differs from" in proc.stdout


def test_incomplete_output_is_an_error_line(converted):
    src, out = converted
    (out / INDEX).unlink()
    proc = run_cli("verify", src, out)
    assert proc.returncode == 1 and proc.stderr.startswith("error:") and "missing index" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_manifest_written_mid_run_is_not_a_pass(converted):
    """A manifest rewritten while a run went on lists finished shards, not tensors: verify says so."""
    src, out = converted
    m = json.loads((out / MANIFEST).read_text())
    del m["tensors"]
    m["complete"] = False
    (out / MANIFEST).write_text(json.dumps(m))
    proc = run_cli("verify", src, out)
    assert proc.returncode == 1
    assert "says the conversion did not finish" in proc.stdout
