"""Model cards (README.md in every output directory), config.json kept whole, dropped tensors listed, --keep."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
import llm_checkpoints as L  # noqa: E402
from helpers import MANIFEST, assert_same, canon_torch, read_json, read_output, run_cli, run_main  # noqa: E402

import torch2mlx  # noqa: E402
from torch2mlx.stream import card_meta  # noqa: E402

SOURCE_CARD = """---
license: apache-2.0
tags:
- llama
- 'text: gen'
datasets: [wiki, "books"]
model-index:
  - name: tiny
    results: []
---

# Tiny llama

Their body, kept.
"""


def _card(out: Path) -> tuple[dict, str]:
    text = (out / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(front), body


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    d = L.save_safetensors(L.build_model("llama"), tmp_path_factory.mktemp("cards") / "llama")
    cfg = json.loads((d / "config.json").read_text())
    cfg["vision_config"] = {"hidden_size": 8, "layers": [1, 2], "nested": {"x": None}}
    cfg["_name_or_path"] = "someorg/tiny-llama"
    cfg["num_nextn_predict_layers"] = 1
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "README.md").write_text(SOURCE_CARD)
    return d


def test_llm_card_merges_the_source_card(llama, tmp_path):
    out = tmp_path / "out"
    p = run_cli("stream", llama, out, "--q-bits", "4", "--overwrite", "-q")
    assert p.returncode == 0, p.stderr
    assert "card: README.md" in p.stdout
    meta, body = _card(out)
    theirs = yaml.safe_load(SOURCE_CARD.split("---\n")[1])
    assert meta["library_name"] == "mlx"
    assert meta["tags"] == ["llama", "text: gen", "mlx"]  # theirs first, ours added
    assert meta["license"] == "apache-2.0"
    assert meta["datasets"] == ["wiki", "books"] and meta["model-index"] == theirs["model-index"]
    assert meta["base_model"] == "someorg/tiny-llama" and meta["base_model_relation"] == "quantized"
    assert meta["pipeline_tag"] == "text-generation"
    ours, _, original = body.partition("## Original model card")
    # the command as typed, less the run-only flags (a resumed run's card is the same card)
    assert f"t2mlx stream {llama} {out} --q-bits 4\n" in ours and "--overwrite" not in ours
    assert "torch2mlx: " + torch2mlx.__version__ in ours
    assert "quantization: 4 bits, group size 64, mode affine" in ours
    size = sum(f.stat().st_size for f in out.glob("model*.safetensors"))
    assert f"({size:,} bytes) in 1 shard(s)" in ours
    assert f'from mlx_lm import load, generate\n\nmodel, tokenizer = load("{out}")' in ours
    assert original.strip() == "# Tiny llama\n\nTheir body, kept."
    # verify checks the output with the card in it
    v = run_main("verify", llama, out)
    assert v.returncode == 0, v.stdout + v.stderr


def test_config_json_keeps_every_key(llama, tmp_path):
    out = tmp_path / "out"
    res = torch2mlx.stream.convert(llama, out, q_bits=4)
    src, got = read_json(llama / "config.json"), read_json(out / "config.json")
    assert {k: got[k] for k in src} == src  # unknown to mlx-lm (vision_config, _name_or_path, MTP) included
    assert set(got) - set(src) == {"rope_theta", "quantization", "quantization_config"}
    assert any("rope_theta copied to the top level" in n for n in res.plan.notes)


def test_dequantize_says_which_config_keys_go(llama, tmp_path):
    q = tmp_path / "q"
    torch2mlx.stream.convert(llama, q, q_bits=4)
    res = torch2mlx.stream.convert(q, tmp_path / "f", dequantize=True)
    got = read_json(tmp_path / "f" / "config.json")
    assert "quantization" not in got and "quantization_config" not in got
    assert "config.json: quantization, quantization_config removed (the weights are dequantized)" in res.plan.notes
    assert read_json(tmp_path / "f" / "config.json")["vision_config"] == read_json(q / "config.json")["vision_config"]


def test_no_card_copies_the_source_readme(llama, tmp_path):
    p = run_main("stream", llama, tmp_path / "a", "--no-card", "-q")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "a" / "README.md").read_bytes() == (llama / "README.md").read_bytes()
    assert "card:" not in p.stdout and "README.md" in p.stdout  # copied as a sidecar
    res = torch2mlx.stream.convert({"w": torch.ones(2, 2)}, tmp_path / "b", card=False)
    assert res.card is None and not (tmp_path / "b" / "README.md").exists()


def _bn_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )
    net[1].num_batches_tracked.fill_(7)
    return net


def test_non_llm_card_uses_load_converted(tmp_path):
    out = tmp_path / "out"
    res = torch2mlx.convert(_bn_net(), out)
    meta, body = _card(out)
    assert meta == {"library_name": "mlx", "tags": ["mlx"]}  # no repo, no config: nothing else is known
    assert f'weights = torch2mlx.load_converted("{out}")' in body and "mlx_lm" not in body
    assert f"torch2mlx.convert(<Sequential>, {str(out)!r})" in body
    assert "## Original model card" not in body
    assert "dropped by the model's rules: 1 tensor(s), listed in torch2mlx.json" in body
    assert res.to_dict()["card"] == "README.md"


def test_dropped_tensor_listed_and_kept_with_keep(tmp_path):
    net = _bn_net()
    res = torch2mlx.convert(net, tmp_path / "a")
    name = "1.num_batches_tracked"
    assert (name, "a training step counter; MLX BatchNorm has none") in res.plan.dropped
    assert f"dropped: 1 ({name}: a training step counter" in res.report()
    assert read_json(tmp_path / "a" / MANIFEST)["dropped"] == [
        {"source": name, "why": "a training step counter; MLX BatchNorm has none"}
    ]
    assert name not in read_output(tmp_path / "a")

    kept = torch2mlx.convert(net, tmp_path / "b", keep=[r"num_batches"])
    got = read_output(tmp_path / "b")
    assert kept.plan.dropped == [] and name in got
    assert_same(got[name], canon_torch(net.state_dict()[name]), name)  # bit for bit, int64 as in the source
    assert got[name].dtype == "int64"
    assert read_json(tmp_path / "b" / MANIFEST)["options"]["keep"] == ["num_batches"]
    assert f"1 tensor(s) the rules drop kept by --keep: {name}" in kept.plan.notes


def test_rotary_caches_listed_and_kept(tmp_path):
    model = L.build_model("llama")
    st = L.state_dict_of(L.save_safetensors(model, tmp_path / "st"))
    st.update(L.rotary_buffers(model, 2))
    src = tmp_path / "src"
    src.mkdir()
    save_file({k: v.contiguous() for k, v in st.items()}, str(src / "model.safetensors"))
    (src / "config.json").write_bytes((tmp_path / "st" / "config.json").read_bytes())
    p = run_main("stream", src, tmp_path / "a", "--no-model", "--json")
    d = json.loads(p.stdout)
    rot = sorted(n for n in st if n.endswith("rotary_emb.inv_freq"))
    assert sorted(x["source"] for x in d["dropped"]) == rot
    assert sorted(x["source"] for x in read_json(tmp_path / "a" / MANIFEST)["dropped"]) == rot
    p = run_main("stream", src, tmp_path / "b", "--no-model", "--keep", r"rotary_emb\.inv_freq$", "--keep", "nothing")
    assert p.returncode == 0, p.stderr
    assert "warning: --keep 'nothing' matched no tensor the rules drop" in p.stdout
    got = read_output(tmp_path / "b")
    for n in rot:
        assert_same(got[n], canon_torch(st[n]), n)
    v = run_main("verify", src, tmp_path / "b")
    assert v.returncode == 0 and "OK" in v.stdout, v.stdout + v.stderr
    meta, body = _card(tmp_path / "b")
    assert r"kept although the rules drop them: `rotary_emb\.inv_freq$`, `nothing`" in body


def test_keep_and_no_card_refused_where_they_change_nothing(tmp_path):
    from helpers import assert_one_error

    w = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(2)}, str(w))
    assert_one_error(run_main("stream", w, tmp_path / "o", "--to", "torch", "--keep", "x"), "--keep", "--to torch")
    assert_one_error(run_main("stream", w, tmp_path / "o", "--keep", "("), "--keep", "regular expression")


HOSTILE = ["yes", "1e3", "null", ": x", "#c", "a\nb", "é", "😀", '"', "\\", "\x00", "\x85", "\u2028", "- a", "[x]"]


def test_front_matter_values_are_quoted_safely():
    for s in HOSTILE:
        assert yaml.safe_load("k: " + card_meta.quote(s))["k"] == s, repr(s)
    text, why = card_meta.merge({"tags": ["mlx"] + HOSTILE, "base_model": "a/b"}, "tags: [x, 'y']\nfoo: 1\n")
    assert why is None
    assert yaml.safe_load(text) == {"tags": ["x", "y", "mlx"] + HOSTILE, "foo": 1, "base_model": "a/b"}


def test_front_matter_merge_without_pyyaml(monkeypatch):
    theirs = (
        '# comment\ntags:\n  - one  # c\n  - "two"\nlicense: mit\nlibrary_name: transformers\nextra:\n  deep: [1]\n'
    )
    ours = {"library_name": "mlx", "tags": ["mlx", "one"], "license": "apache-2.0", "pipeline_tag": None}
    with_yaml, _ = card_meta.merge(ours, theirs)
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml fails
    without, why = card_meta.merge(ours, theirs)
    assert why is None and without == with_yaml
    assert yaml.safe_load(without) == {
        "tags": ["one", "two", "mlx"],
        "license": "mit",
        "library_name": "mlx",
        "extra": {"deep": [1]},
    }


def test_invalid_source_front_matter_is_kept_as_text(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, str(src / "model.safetensors"))
    (src / "README.md").write_text("---\ntags: [unclosed\n---\nbody\n")
    res = torch2mlx.stream.convert(src, tmp_path / "out", model=False)
    meta, body = _card(tmp_path / "out")
    assert meta["tags"] == ["mlx"]
    assert "tags: [unclosed" in body and body.rstrip().endswith("```") and "\nbody\n" in body
    assert any("front matter is not valid YAML" in n for n in res.plan.notes)
    np.testing.assert_array_equal(np.array(torch2mlx.load_converted(tmp_path / "out")["w"]), np.arange(6).reshape(2, 3))


def test_hf_source_is_the_base_model(tmp_path, monkeypatch):
    from hub_server import serving

    from torch2mlx.formats import ranges

    repo = tmp_path / "repos" / "org" / "carded"
    repo.mkdir(parents=True)
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, str(repo / "model.safetensors"))
    (repo / "README.md").write_text("---\nlicense: mit\nbase_model: meta/original\npipeline_tag: fill-mask\n---\nhi\n")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(ranges, "BACKOFF", 0.01)
    with serving(str(tmp_path / "repos")) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        res = torch2mlx.stream.convert("hf://org/carded", tmp_path / "out", model=False)
    meta, body = _card(tmp_path / "out")
    # the output's base model is the repo converted; the rest of theirs is kept (pipeline_tag theirs)
    assert meta == {
        "license": "mit",
        "base_model": "org/carded",
        "pipeline_tag": "fill-mask",
        "library_name": "mlx",
        "tags": ["mlx"],
    }
    assert "[org/carded](https://huggingface.co/org/carded)" in body and body.rstrip().endswith("hi")
    assert res.source == "hf://org/carded" and f"source: `{res.checkpoint.path}`" in body


def test_keep_refused_by_the_way_back(tmp_path):
    w = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(2)}, str(w))
    with pytest.raises(torch2mlx.Torch2MLXError, match="keep does not apply to to_torch"):
        torch2mlx.stream.to_torch(w, tmp_path / "o", keep=["a"])


def test_the_way_back_does_not_copy_an_mlx_card(llama, tmp_path):
    torch2mlx.stream.convert(llama, tmp_path / "mlx")
    assert 'library_name: "mlx"' in (tmp_path / "mlx" / "README.md").read_text()
    res = torch2mlx.stream.to_torch(tmp_path / "mlx", tmp_path / "back")
    assert "README.md" not in res.sidecars and not (tmp_path / "back" / "README.md").exists()
    assert "config.json" in res.sidecars


def test_many_dropped_tensors_are_summarized_in_the_report_and_all_listed_in_the_manifest(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sd = {f"layers.{i}.rotary_emb.inv_freq": torch.rand(4) for i in range(8)} | {"w": torch.ones(2, 2)}
    save_file(sd, str(src / "model.safetensors"))
    (src / "config.json").write_text("{}")
    p = run_main("stream", src, tmp_path / "out", "--no-model")
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stdout.splitlines() if x.startswith("dropped: "))
    assert line.startswith("dropped: 8 (layers.0.rotary_emb.inv_freq: rotary cache, recomputed at load time; ")
    assert line.count("rotary_emb.inv_freq") == 5 and line.endswith("... and 3 more, all in --json and torch2mlx.json)")
    listed = [d["source"] for d in read_json(tmp_path / "out" / MANIFEST)["dropped"]]
    assert sorted(listed) == sorted(n for n in sd if n != "w")


def test_overwrite_without_a_card_leaves_no_stale_card(tmp_path):
    torch2mlx.stream.convert({"w": torch.ones(2, 2)}, tmp_path / "out", q_bits=None)
    assert (tmp_path / "out" / "README.md").exists()
    torch2mlx.stream.convert({"v": torch.ones(2, 2)}, tmp_path / "out", card=False, overwrite=True)
    assert not (tmp_path / "out" / "README.md").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("# my notes, not a card\n")
    torch2mlx.stream.convert({"v": torch.ones(2, 2)}, mine, card=False, overwrite=True)
    assert (mine / "README.md").read_text() == "# my notes, not a card\n"  # not ours: left alone
