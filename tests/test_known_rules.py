"""The rules kept as data (analysis/known_rules.json) give what the analyzer gives, for every registered
architecture, on configs other than the one they were generated from; a first run on a known architecture
imports neither torch nor transformers, and anything the data cannot say goes to the analyzer."""

import json
import os
import subprocess
import sys

import pytest
from test_analyze_hf import ARCHS

from torch2mlx.analysis import known
from torch2mlx.analysis.stream_inputs import StreamInputs, _inputs, stream_inputs
from torch2mlx.core.dtypes import get as dtype
from torch2mlx.core.entry import TensorEntry
from torch2mlx.formats.checkpoint import Checkpoint
from torch2mlx.stream.options import Options
from torch2mlx.stream.planner import build as plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_registered_architectures_are_the_analyzers():
    """The data covers every architecture tests/test_analyze_hf.py holds to 100% coverage, and only those."""
    assert known.ARCHS == {mt: arch for mt, (arch, _) in ARCHS.items()}
    assert set(known._data()) == set(known.ARCHS.values())


def _other_layers(config, layers: int) -> bool:
    """Another layer count than transformers' default (the data was made from the default), in every
    (sub-)config; a MobileNetV2, whose layers are fixed, gets other widths."""
    changed = False
    for sub in [config] + [v for v in vars(config).values() if hasattr(v, "to_dict")]:
        depths = getattr(sub, "depths", None)
        if isinstance(depths, (list, tuple)):  # layers per stage (their count is the stages')
            if max(depths) > layers:
                sub.depths, changed = [min(d, layers) for d in depths], True
            continue
        if isinstance(getattr(sub, "depth_multiplier", None), float):
            sub.depth_multiplier, changed = layers / 4, True
        for key in ("num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "decoder_layers"):
            if isinstance(getattr(sub, key, None), int) and getattr(sub, key) != layers:
                changed = True
                if type(sub).__name__ == "FunnelConfig":
                    sub.block_sizes = [layers] * len(sub.block_sizes)  # its layer count is their sum
                    continue
                setattr(sub, key, layers)
                if isinstance(getattr(sub, "layer_types", None), list):
                    sub.layer_types = sub.layer_types[:layers]
                if isinstance(getattr(sub, "attention_types", None), list):  # GPT-Neo: one kind per layer
                    sub.attention_types = [[["global"], layers]]
                    sub.attention_layers = ["global"] * layers
        if changed and getattr(sub, "out_features", None):  # a backbone's outputs name its stages
            n = len(sub.depths) if getattr(sub, "depths", None) else sub.num_hidden_layers
            sub.stage_names = ["stem"] + [f"stage{i}" for i in range(1, n + 1)]
            sub.out_features, sub.out_indices = [f"stage{n}"], [n]
    return changed


def _config(tmp_path, model_type: str, *, layers: int, tie: bool | None):
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type)
    config.architectures = [known.ARCHS[model_type]]
    changed = _other_layers(config, layers)
    if tie is not None and getattr(config, "tie_word_embeddings", None) is not None:
        for sub in [config] + [v for v in vars(config).values() if hasattr(v, "tie_word_embeddings")]:
            sub.tie_word_embeddings = tie
    d = tmp_path / f"{model_type}-{layers}-{tie}"
    d.mkdir()
    config.to_json_file(str(d / "config.json"))
    return str(d), changed


def _checkpoint(config_dir: str, tree, with_tied: bool) -> Checkpoint:
    """What the model's state dict would be on disk: names, shapes, dtypes (a tied copy, or not)."""
    by_name = {s: t.dtype for t in tree.tensors for s in t.sources}
    names = [n for n in tree.shapes if with_tied or n not in tree.tied]
    entries = [
        TensorEntry(n, dtype(by_name.get(n) or by_name[tree.tied[n]]), tree.shapes[n], path="w.safetensors", offset=i)
        for i, n in enumerate(names)
    ]
    with open(os.path.join(config_dir, "config.json")) as f:
        config = json.load(f)
    return Checkpoint(config_dir, entries, ["w.safetensors"], "safetensors", config=config)


def _saved_checkpoint(config_dir: str, model) -> Checkpoint | None:
    """The names and shapes transformers saves ``model`` under, when they are not its own (per-expert MoE
    weights, a multimodal model's older prefixes): what Hub checkpoints of it hold."""
    from transformers.core_model_loading import revert_weight_conversion

    state = model.state_dict()
    saved = revert_weight_conversion(model, state)
    if list(saved) == list(state):
        return None
    entries = [
        TensorEntry(n, dtype(str(t.dtype).removeprefix("torch.")), tuple(t.shape), path="w.safetensors", offset=i)
        for i, n in enumerate(saved)
        for t in [saved[n]]
    ]
    with open(os.path.join(config_dir, "config.json")) as f:
        config = json.load(f)
    return Checkpoint(config_dir, entries, ["w.safetensors"], "safetensors", config=config)


def _plan_view(ck, inputs: StreamInputs, opts: Options):
    p = plan(ck, opts, inputs.specs, inputs.drop, inputs.module_types)
    ops = [
        (
            [e.name for e in op.sources],
            op.rule,
            op.rule_source,
            op.args,
            [(o.name, o.dtype.name, o.shape, o.shard, o.offset) for o in op.outputs],
            op.transform_info,
        )
        for op in p.ops
    ]
    return ops, p.dropped, p.warnings, p.notes, p.quantization, inputs.all_warnings({n for n, _ in p.dropped})


@pytest.mark.slow
@pytest.mark.parametrize("model_type", list(ARCHS))
def test_rules_kept_as_data_equal_the_analyzers(tmp_path, model_type):
    from torch2mlx.analysis.build import from_config_dir
    from torch2mlx.analysis.tree import walk

    seen, changed, layouts = 0, [], 0
    for layers, tie in ((1, None), (3, False), (5, True)):
        config_dir, other = _config(tmp_path, model_type, layers=layers, tie=tie)
        changed.append(other)
        model = from_config_dir(config_dir).model
        tree = walk(model)
        cks = [_checkpoint(config_dir, tree, with_tied) for with_tied in (False, True)]
        saved = _saved_checkpoint(config_dir, model)
        if saved is not None:
            cks.append(saved)
            layouts += 1
        for with_tied, ck in enumerate(cks):
            assert known.match_known(ck) is not None, (model_type, layers, tie, with_tied)
            data = stream_inputs(ck)
            # A fresh model each time, as each run builds: matching may untie a model's tensors.
            ref = _inputs(ck, from_config_dir(config_dir), known.HOW)
            assert data.specs == ref.specs
            assert data.drop == ref.drop and list(data.drop) == list(ref.drop)
            assert data.unmatched == ref.unmatched
            assert data.notes == ref.notes
            for opts in (Options.make(), Options.make(dtype="float16", q_bits=4)):
                assert _plan_view(ck, data, opts) == _plan_view(ck, ref, opts)
            seen += 1
    assert seen == 6 + layouts and any(changed)  # not only the config the data was made from
    assert layouts in (0, 3)  # the names transformers saves, when they are not the model's, every time


def _llama_dir(tmp_path, **config):
    import numpy as np
    from safetensors.numpy import save_file

    d = tmp_path / "llama"
    d.mkdir()
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "num_hidden_layers": 1,
        "vocab_size": 16,
        **config,
    }
    (d / "config.json").write_text(json.dumps(cfg))
    tensors = {
        "model.embed_tokens.weight": np.ones((16, 8), np.float32),
        "model.layers.0.self_attn.q_proj.weight": np.ones((8, 8), np.float32),
        "model.layers.0.input_layernorm.weight": np.ones(8, np.float32),
        "model.norm.weight": np.ones(8, np.float32),
        "lm_head.weight": np.ones((16, 8), np.float32),
    }
    save_file(tensors, str(d / "model.safetensors"))
    return d


_RUN = """
import json, sys
from torch2mlx import stream
res = stream.convert(sys.argv[1], sys.argv[2])
print(json.dumps({"torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules,
                  "notes": res.plan.notes}))
"""


def _first_run(tmp_path, src):
    env = {**os.environ, "PYTHONPATH": ROOT, "T2MLX_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-c", _RUN, str(src), str(tmp_path / "out")], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_a_first_run_on_a_known_architecture_imports_neither_torch_nor_transformers(tmp_path):
    seen = _first_run(tmp_path, _llama_dir(tmp_path))
    assert (seen["torch"], seen["transformers"]) == (False, False)
    assert any(f"rules from the model LlamaForCausalLM ({known.HOW}): 5 of 5 tensors" in n for n in seen["notes"])
    assert not os.path.exists(tmp_path / "cache")  # nothing analyzed, nothing cached


@pytest.mark.slow  # imports torch and transformers in a subprocess
def test_a_name_the_data_does_not_know_goes_to_the_analyzer(tmp_path):
    """A tensor no pattern of the data names: the analyzer decides (and imports torch)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    d = _llama_dir(tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    tensors["model.layers.0.self_attn.mlp_extra.weight"] = np.ones((8, 8), np.float32)
    save_file(tensors, str(d / "model.safetensors"))
    seen = _first_run(tmp_path, d)
    assert seen["torch"] is True
    assert any(
        "rules from the model LlamaForCausalLM (config.json, analyzed on the meta device)" in n for n in seen["notes"]
    )


@pytest.mark.slow
def test_an_unknown_architecture_uses_the_analyzer(tmp_path):
    d = _llama_dir(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForSequenceClassification"]}))
    seen = _first_run(tmp_path, d)
    assert seen["torch"] is True
    assert any("LlamaForSequenceClassification (config.json, analyzed on the meta device)" in n for n in seen["notes"])


def test_a_layer_of_another_rank_goes_to_the_analyzer(tmp_path):
    """The data knows each name's rank; a checkpoint that disagrees is the analyzer's to judge."""
    ck = _checkpoint_of(_llama_dir(tmp_path))
    assert known.match_known(ck) is not None
    bad = Checkpoint(
        ck.path,
        [e if "norm" not in e.name else TensorEntry(e.name, e.dtype, (8, 1)) for e in ck.entries],
        ck.files,
        ck.format,
        config=ck.config,
    )
    assert known.match_known(bad) is None


@pytest.mark.parametrize(
    "change",
    [
        {"model_type": "mistral"},  # architectures and model_type disagree
        {"tie_word_embeddings": "yes"},
        {"text_config": {"tie_word_embeddings": True}},  # a sub-config says otherwise than the default
        {"architectures": "LlamaForCausalLM"},
    ],
)
def test_configs_the_data_cannot_judge_go_to_the_analyzer(tmp_path, change):
    ck = _checkpoint_of(_llama_dir(tmp_path))
    changed = Checkpoint(ck.path, ck.entries, ck.files, ck.format, config={**ck.config, **change})
    assert known.match_known(changed) is None


def _checkpoint_of(d):
    from torch2mlx.formats.checkpoint import open_checkpoint

    return open_checkpoint(str(d))


@pytest.mark.slow
def test_the_data_is_what_the_analyzer_generates_today(capsys):
    """A registry or analyzer change without `make rules-data` leaves the data stale: regenerate it."""
    from torch2mlx.analysis import known_gen

    with open(known_gen.OUT, encoding="utf-8") as f:
        kept = json.load(f)
    fresh = json.loads(known_gen.render_rules(known_gen.generate_rules()))
    # the rules must agree; the transformers version they were generated with is only a record
    kept.pop("transformers"), fresh.pop("transformers")
    assert fresh == kept, "stale: run `make rules-data`"


def test_a_model_class_given_is_analyzed_even_for_a_known_architecture(tmp_path):
    """--model / model=: the class is built and walked (its report is there), the data is not consulted."""
    ck = _checkpoint_of(_llama_dir(tmp_path))
    got = stream_inputs(ck, model="transformers:LlamaForCausalLM")
    assert got.report is not None and got.types is None
    assert got.notes[0].startswith("rules from the model LlamaForCausalLM (transformers:LlamaForCausalLM, analyzed")
    data = stream_inputs(ck)
    assert data.report is None and data.notes[0].startswith(f"rules from the model LlamaForCausalLM ({known.HOW})")
    assert data.specs == got.specs and data.drop == got.drop


@pytest.mark.slow  # the analyzer's run imports torch and transformers
@pytest.mark.parametrize("kind", ["qwen2", "mixtral"])
def test_a_saved_checkpoint_converts_from_the_data_as_from_the_model(tmp_path, kind):
    """save_pretrained's own output (Mixtral's per-expert weights, Qwen2's tied head): the first run imports
    no torch, and writes the same shards, byte for byte, as the model's class given with --model."""
    from helpers import run_main
    from llm_checkpoints import build_model, save_safetensors

    src = save_safetensors(build_model(kind), tmp_path / kind)
    seen = _first_run(tmp_path, src)
    assert (seen["torch"], seen["transformers"]) == (False, False)
    arch = json.loads((src / "config.json").read_text())["architectures"][0]
    assert any(f"rules from the model {arch} ({known.HOW})" in n for n in seen["notes"])
    ref = run_main("stream", src, tmp_path / "ref", "--model", f"transformers:{arch}", "--q-bits", "4")
    got = run_main("stream", src, tmp_path / "got", "--q-bits", "4")
    assert ref.returncode == 0 and got.returncode == 0, ref.stderr + got.stderr
    shards = sorted(p.name for p in (tmp_path / "ref").glob("*.safetensors"))
    assert shards == sorted(p.name for p in (tmp_path / "got").glob("*.safetensors")) and shards
    for name in shards:
        assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / "got" / name).read_bytes(), name
    assert (tmp_path / "out").exists()
