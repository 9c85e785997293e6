"""Remote GGUF sources (issues 17 and 19): ``hf://org/repo/x.gguf``, a repo holding one GGUF model,
``https://.../x.gguf`` and split sets, read by range from tests/hub_server.py with no copy on disk.

The oracle is the conversion of the same local file: output byte-identical; bytes fetched at most 1.05x
the file (the header is fetched once by range, then the data by windows).
"""

from __future__ import annotations

import os
import shutil

import gguf
import numpy as np
import pytest
from gguf_models import hf_model, write

pytest.importorskip("huggingface_hub")
pytest.importorskip("transformers")

from hub_server import as_the_hub  # noqa: E402
from test_remote import _same_output  # noqa: E402

import torch2mlx.stream  # noqa: E402
from torch2mlx.errors import Torch2MLXError  # noqa: E402
from torch2mlx.formats import gguf_remote, remote  # noqa: E402

T = gguf.GGMLQuantizationType
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _types(gname, shape):  # repacked (Q8_0, Q4_K), requantized (Q6_K) and float tensors
    if ".ffn_" in gname:
        return T.Q4_K if ".ffn_down." not in gname else T.Q6_K
    return T.Q8_0 if ".attn_" in gname else T.F32


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_repos")
    one = root / "org" / "one"
    one.mkdir(parents=True)
    model = hf_model("llama", hidden=256)
    write(str(one / "tiny-Q8_0.gguf"), "llama", model, _types)
    two = root / "org" / "two"
    two.mkdir(parents=True)
    shutil.copy(one / "tiny-Q8_0.gguf", two / "tiny-Q8_0.gguf")
    write(str(two / "tiny-F32.gguf"), "llama", model)
    split = root / "org" / "split"
    split.mkdir(parents=True)
    write(str(split / "tiny.gguf"), "llama", model, _types, split_max_tensors=8)
    return root


@pytest.fixture
def hub(repos, tmp_path, monkeypatch):
    yield from as_the_hub(str(repos), tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def local(repos, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf_local") / "out"
    torch2mlx.stream.convert(str(repos / "org" / "one" / "tiny-Q8_0.gguf"), out)
    return out


@pytest.mark.parametrize("how", ["hf-file", "hf-repo", "hf-rev-file", "https"])
def test_remote_gguf_matches_local(hub, repos, local, tmp_path, how):
    f = repos / "org" / "one" / "tiny-Q8_0.gguf"
    src = {
        "hf-file": "hf://org/one/tiny-Q8_0.gguf",
        "hf-repo": "hf://org/one",
        "hf-rev-file": f"hf://org/one@{hub.commit('org/one')}/tiny-Q8_0.gguf",
        "https": f"{hub.url}/files/org/one/tiny-Q8_0.gguf",
    }[how]
    res = torch2mlx.stream.convert(src, tmp_path / "remote")
    _same_output(local, tmp_path / "remote")  # weights, config.json and tokenizer files alike
    size = f.stat().st_size
    assert size > 20 * gguf_remote.FIRST  # the bound below means something
    print(f"MEASURED {how}: fetched {hub.fetched} for a file of {size} ({hub.fetched / size:.4f}x)")
    assert size <= hub.fetched <= 1.05 * size, (hub.fetched, size)
    assert any("GGUF header read by range" in n for n in res.plan.notes)
    grown = sum(os.path.getsize(os.path.join(b, n)) for b, _, ns in os.walk(tmp_path / "hf_home") for n in ns)
    assert grown < 64 * 1024  # no copy of the model under HF_HOME
    if how.startswith("hf"):  # the Hub's LFS sha256, checked on the way
        man = (tmp_path / "remote" / "torch2mlx.json").read_text()
        assert "sha256 matched" in man


def test_header_is_what_gguf_py_reads_and_the_stand_in_is_sparse(hub, repos, tmp_path):
    f = repos / "org" / "one" / "tiny-Q8_0.gguf"
    listing = remote.resolve_url("hf://org/one/tiny-Q8_0.gguf")
    rf = listing.files["tiny-Q8_0.gguf"]
    before = hub.fetched
    head = gguf_remote.header(rf)
    fetched = hub.fetched - before
    r = gguf.GGUFReader(str(f))
    # the walk ends where the tensor infos end: the data starts at the next alignment boundary
    align = 32
    assert r.data_offset == -(-len(head) // align) * align
    assert head == f.read_bytes()[: len(head)]
    assert fetched <= max(gguf_remote.FIRST, 2 * len(head))
    ck = torch2mlx.stream.open("hf://org/one/tiny-Q8_0.gguf")
    assert ck.files == [rf.label] and all(e.path == rf.label for e in ck.entries)
    stand_in = os.path.join(ck.local_dir, "gguf", "tiny-Q8_0.gguf")
    st = os.stat(stand_in)
    assert st.st_size == f.stat().st_size
    assert st.st_blocks * 512 <= len(head) + 64 * 1024  # a hole where the tensor data is
    with open(stand_in, "rb") as s:
        assert s.read(len(head)) == head
    before = hub.fetched  # a dry run (and analyze) reads the header only
    torch2mlx.stream.convert("hf://org/one/tiny-Q8_0.gguf", tmp_path / "dry", dry_run=True)
    assert 0 < hub.fetched - before <= max(gguf_remote.FIRST, 2 * len(head))


def test_remote_split_set_matches_local(hub, repos, tmp_path):
    names = sorted(p.name for p in (repos / "org" / "split").iterdir())
    assert names == [f"tiny-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    torch2mlx.stream.convert(str(repos / "org" / "split" / names[0]), tmp_path / "local")
    torch2mlx.stream.convert(f"hf://org/split/{names[0]}", tmp_path / "a")
    _same_output(tmp_path / "local", tmp_path / "a")
    torch2mlx.stream.convert("hf://org/split", tmp_path / "b")
    _same_output(tmp_path / "local", tmp_path / "b")
    torch2mlx.stream.convert(f"{hub.url}/files/org/split/{names[0]}", tmp_path / "c")  # the others by name
    _same_output(tmp_path / "local", tmp_path / "c")
    partial = repos / "org" / "partial"
    partial.mkdir(exist_ok=True)
    for n in (names[0], names[2]):
        shutil.copy(repos / "org" / "split" / n, partial / n)
    with pytest.raises(Torch2MLXError, match="split GGUF set of 3 files: tiny-00002-of-00003.gguf is missing"):
        torch2mlx.stream.convert(f"{hub.url}/files/org/partial/{names[0]}", tmp_path / "d")


def test_choices_and_missing_files_are_one_line_errors(hub, tmp_path):
    with pytest.raises(Torch2MLXError, match=r"holds 2 GGUF models \(tiny-F32.gguf, tiny-Q8_0.gguf\); name the file"):
        torch2mlx.stream.convert("hf://org/two", tmp_path / "x")
    with pytest.raises(Torch2MLXError, match=r"no file 'tiny-Q4.gguf' in org/two \(its GGUF files: tiny-F32"):
        torch2mlx.stream.convert("hf://org/two/tiny-Q4.gguf", tmp_path / "x")
    with pytest.raises(Torch2MLXError, match="split GGUF set of 3 files: tiny-00002-of-00003.gguf is missing"):
        listing = remote.resolve_url("hf://org/split")
        del listing.files["tiny-00002-of-00003.gguf"]
        gguf_remote.open_remote(listing, "tiny-00001-of-00003.gguf", str(tmp_path / "s"))


def test_bad_remote_headers_are_one_line_errors(hub, repos, tmp_path):
    good = (repos / "org" / "one" / "tiny-Q8_0.gguf").read_bytes()
    bad = repos / "org" / "bad"
    bad.mkdir(exist_ok=True)
    cases = {
        "magic.gguf": (b"GGUX" + good[4:], "not a GGUF file"),
        "version.gguf": (good[:4] + np.uint32(7).tobytes() + good[8:], "GGUF version 7 is not supported"),
        "short.gguf": (good[:2000], "truncated GGUF header"),
        "data.gguf": (good[: len(good) - 100], "runs past the end of the file"),
    }
    for name, (data, _) in cases.items():
        (bad / name).write_bytes(data)
    for name, (_, says) in cases.items():
        with pytest.raises(Torch2MLXError, match=says) as e:
            torch2mlx.stream.convert(f"hf://org/bad/{name}", tmp_path / name)
        assert "\n" not in str(e.value) and "org/bad@" in str(e.value) and name in str(e.value)
        assert "t2mlx-remote-" not in str(e.value)  # the stand-in's path means nothing to the user
