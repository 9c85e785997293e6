"""Remote sources (issue 17): the bytes read are checked against the sha256 the server gives (the Hub's LFS
oid), and the manifest and report say what was checked of each source file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("huggingface_hub")

from hub_server import as_the_hub, serving  # noqa: E402

import torch2mlx.stream  # noqa: E402
from torch2mlx.errors import Torch2MLXError  # noqa: E402
from torch2mlx.formats import ranges  # noqa: E402


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    d = root / "org" / "two"
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(3)
    weight_map = {}
    for k in (1, 2):
        name = f"model-0000{k}-of-00002.safetensors"
        t = {f"layers.{k}.{i}.weight": torch.randn(256, 256, generator=g).to(torch.bfloat16) for i in range(4)}
        save_file(t, str(d / name))
        weight_map.update({n: name for n in t})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps({"model_type": "t2mlx-test"}))
    return root


@pytest.fixture
def hub(repos, tmp_path, monkeypatch):
    yield from as_the_hub(str(repos), tmp_path, monkeypatch)


SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


def _manifest(out) -> dict:
    return json.load(open(os.path.join(out, "torch2mlx.json")))


@pytest.mark.parametrize("setting", [{}, {"q_bits": 4}, {"dtype": "float16"}])
def test_clean_run_verifies_every_file_by_sha256(hub, repos, tmp_path, setting):
    res = torch2mlx.stream.convert("hf://org/two", tmp_path / "out", model=False, **setting)
    files = _manifest(tmp_path / "out")["source_files"]
    assert {n: files[n]["checked"] for n in SHARDS} == dict.fromkeys(SHARDS, "sha256 matched")
    assert "verified: 2 of 2 source file(s) by sha256" in res.report()
    # the oid checked is the real sha256 of the file: what the Hub advertises
    real = hashlib.sha256((repos / "org" / "two" / SHARDS[0]).read_bytes()).hexdigest()
    assert files[SHARDS[0]]["blob"] == real


@pytest.fixture(scope="module")
def big(repos):
    """Two files of 8 MiB tensors: shards of one tensor each, more than one batch of the executor's work."""
    d = repos / "org" / "big"
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(5)
    for k, n in ((1, 2), (2, 3)):
        t = {f"layers.{k}.{i}.weight": torch.randn(2048, 2048, generator=g).to(torch.bfloat16) for i in range(n)}
        save_file(t, str(d / f"model-0000{k}-of-00002.safetensors"))
    return d


def test_bytes_that_differ_from_the_oid_are_an_error(hub, big, tmp_path, monkeypatch):
    monkeypatch.setattr(ranges, "WINDOW", 1 << 20)  # the file's last window comes with its last tensor
    hub.lfs_oids[("org/big", SHARDS[1])] = "0" * 64  # the server advertises an oid the bytes do not have
    with pytest.raises(Torch2MLXError) as err:
        torch2mlx.stream.convert("hf://org/big", tmp_path / "out", model=False, max_shard_size="9MB", workers=1)
    msg = str(err.value)
    assert msg.startswith(f"hf://org/big@{hub.commit('org/big')}/{SHARDS[1]}: the bytes read have sha256 ")
    assert "the server says " + "0" * 64 in msg and "\n" not in msg
    # No output that looks complete: no index, a manifest that is not complete. The shards made from the
    # first file are kept for --resume; those made from the second file's first tensors, finished before
    # its last byte was hashed, are not (--resume would keep them).
    out = tmp_path / "out"
    assert not (out / "model.safetensors.index.json").exists()
    m = _manifest(out)
    assert not m.get("complete")
    kept = {n for n in os.listdir(out) if n.endswith(".safetensors")}
    assert kept == set(m["shards"])
    # one tensor a shard, in name order: layers.1.0, layers.1.1 (first file), layers.2.0, ... (second file)
    assert kept == {"model-00001-of-00005.safetensors", "model-00002-of-00005.safetensors"}


def test_cli_oid_mismatch_is_one_line(hub, tmp_path):
    hub.lfs_oids[("org/two", SHARDS[0])] = "ab" * 32
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, "-m", "torch2mlx", "stream", "hf://org/two", str(tmp_path / "out"), "--no-model"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: hf://org/two@") and "the server says abab" in lines[0]
    assert not (tmp_path / "out" / "model.safetensors.index.json").exists()


def test_partial_read_says_not_checked(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(ranges, "WINDOW", 64 * 1024)  # a tensor (128 KiB) spans whole windows
    # tensors 0 and 1 of the second file are excluded: their windows are never fetched
    res = torch2mlx.stream.convert("hf://org/two", tmp_path / "out", model=False, exclude=[r"layers\.2\.[01]\."])
    files = _manifest(tmp_path / "out")["source_files"]
    assert files[SHARDS[0]]["checked"] == "sha256 matched"
    assert files[SHARDS[1]]["checked"] == "not checked: sha256 given, but only part of the file was read"
    assert "verified: 1 of 2 source file(s) by sha256 (others: not checked: sha256 given, but only part" in (
        res.report()
    )


def test_https_source_checked_by_x_linked_etag(hub, repos, tmp_path):
    # a file URL of the Hub itself (resolve): X-Linked-Etag names its sha256
    url = f"{hub.url}/org/two/resolve/main/{SHARDS[0]}"
    torch2mlx.stream.convert(url, tmp_path / "a", model=False)
    assert _manifest(tmp_path / "a")["source_files"][SHARDS[0]]["checked"] == "sha256 matched"
    hub.lfs_oids[("org/two", SHARDS[0])] = "0" * 64
    with pytest.raises(Torch2MLXError, match="the bytes read have sha256"):
        torch2mlx.stream.convert(url, tmp_path / "b", model=False)
    # a plain file server's ETag is opaque: size and ETag recorded, the bytes not checked
    res = torch2mlx.stream.convert(f"{hub.url}/files/org/two/{SHARDS[0]}", tmp_path / "c", model=False)
    assert _manifest(tmp_path / "c")["source_files"][SHARDS[0]]["checked"] == "size and etag only"
    assert "verified: 0 of 1 source file(s) (others: size and etag only)" in res.report()


@pytest.mark.parametrize("setting", [{}, {"dtype": "float16"}, {"q_bits": 4}])
def test_many_windows_and_workers_still_hash_in_order(hub, big, tmp_path, monkeypatch, setting):
    # 16-40 windows a file, four workers: batches of a remote source are about a window of source bytes
    # each (not 64 MiB copies, nor 16 MiB of q4 output: 7x that read), and a worker too far ahead of the
    # hash waits for the window on its way, so every file is still hashed in order
    monkeypatch.setattr(ranges, "WINDOW", 1 << 20)
    torch2mlx.stream.convert(str(big), tmp_path / "local", model=False, workers=4, **setting)
    res = torch2mlx.stream.convert("hf://org/big", tmp_path / "out", model=False, workers=4, **setting)
    files = _manifest(tmp_path / "out")["source_files"]
    assert {n: files[n]["checked"] for n in SHARDS} == dict.fromkeys(SHARDS, "sha256 matched")
    for n in os.listdir(tmp_path / "local"):
        if n.endswith(".safetensors"):
            assert (tmp_path / "local" / n).read_bytes() == (tmp_path / "out" / n).read_bytes(), n
    assert res.tensors_out


def test_server_without_sha256_is_not_hashed(repos, tmp_path, monkeypatch):
    # tests/hub_server.py's hash_files=False (sparse repos too big to hash): no LFS record, so nothing to
    # compare; the manifest says what was recorded instead
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with serving(str(repos), hash_files=False) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        res = torch2mlx.stream.convert("hf://org/two", tmp_path / "out", model=False)
    files = _manifest(tmp_path / "out")["source_files"]
    assert {files[n]["checked"] for n in SHARDS} == {"size and etag only"}
    assert "verified: 0 of 2 source file(s) (others: size and etag only)" in res.report()
