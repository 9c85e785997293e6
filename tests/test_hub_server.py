"""The Hub stand-in (tests/hub_server.py) answers the real huggingface_hub client as the Hub does."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

huggingface_hub = pytest.importorskip("huggingface_hub")
import huggingface_hub.constants  # noqa: E402
import huggingface_hub.errors  # noqa: E402
from hub_server import serving  # noqa: E402


@pytest.fixture
def repo_root(tmp_path):
    d = tmp_path / "repos" / "org" / "tiny"
    d.mkdir(parents=True)
    torch.manual_seed(0)
    save_file({"w": torch.randn(64, 32), "b": torch.randn(32)}, str(d / "model.safetensors"))
    (d / "config.json").write_text('{"model_type": "none"}')
    return tmp_path / "repos"


@pytest.fixture
def hub(repo_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with serving(str(repo_root)) as srv:
        yield srv


def test_model_info_and_errors(hub):
    api = huggingface_hub.HfApi(endpoint=hub.url, token=False)
    info = api.model_info("org/tiny", files_metadata=True)
    assert info.id == "org/tiny" and len(info.sha) == 40
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes["model.safetensors"] == os.path.getsize(hub.repo_dir("org/tiny") + "/model.safetensors")
    assert api.model_info("org/tiny", revision=info.sha).sha == info.sha
    with pytest.raises(huggingface_hub.errors.RepositoryNotFoundError):
        api.model_info("org/nothing")
    with pytest.raises(huggingface_hub.errors.RevisionNotFoundError):
        api.model_info("org/tiny", revision="v9")
    hub.gated.add("org/tiny")
    with pytest.raises(huggingface_hub.errors.GatedRepoError):
        huggingface_hub.hf_hub_download("org/tiny", "config.json", endpoint=hub.url, token=False)


def test_tree_and_paths_info(hub):
    api = huggingface_hub.HfApi(endpoint=hub.url, token=False)
    tree = {f.path: f for f in api.list_repo_tree("org/tiny", recursive=True)}
    assert set(tree) == {"model.safetensors", "config.json"}
    assert tree["model.safetensors"].lfs is not None
    (info,) = api.get_paths_info("org/tiny", ["config.json", "absent.txt"])
    assert info.path == "config.json" and info.size == len('{"model_type": "none"}')


def test_hf_hub_download_matches_the_file(hub, tmp_path):
    got = huggingface_hub.hf_hub_download(
        "org/tiny", "model.safetensors", endpoint=hub.url, token=False, cache_dir=str(tmp_path / "cache")
    )
    with open(got, "rb") as a, open(hub.repo_dir("org/tiny") + "/model.safetensors", "rb") as b:
        assert a.read() == b.read()
    assert hub.fetched == os.path.getsize(got)


def test_hf_file_system_reads_ranges(hub):
    fs = huggingface_hub.HfFileSystem(endpoint=hub.url, token=False)
    names = sorted(os.path.basename(p) for p in fs.ls("org/tiny", detail=False))
    assert names == ["config.json", "model.safetensors"]
    with open(hub.repo_dir("org/tiny") + "/model.safetensors", "rb") as f:
        want = f.read()
    assert fs.cat_file("org/tiny/model.safetensors", start=100, end=150) == want[100:150]
    with fs.open("org/tiny/model.safetensors", "rb") as f:
        f.seek(100)
        assert f.read(50) == want[100:150]
    assert any(r and r.startswith("bytes=") for _, _, r in hub.requests)


def test_faults_and_counter(hub):
    import urllib.error
    import urllib.request

    url = f"{hub.url}/org/tiny/resolve/main/model.safetensors"
    hub.faults.status_503 = 1
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url)
    assert e.value.code == 503
    req = urllib.request.Request(url, headers={"Range": "bytes=8-15"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 206 and r.headers["Content-Range"].startswith("bytes 8-15/")
        assert len(r.read()) == 8
    hub.faults.ignore_range = True
    with urllib.request.urlopen(req) as r:
        assert r.status == 200 and "Content-Range" not in r.headers
