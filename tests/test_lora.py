"""LoRA adapters: PEFT -> mlx-lm, mlx-lm -> PEFT, and fused into a streamed conversion (``--adapter``).

Oracles: transformers + PEFT (the adapted model's logits, ``merge_and_unload()``'s merged model) and
mlx-lm (``mlx_lm.load(base, adapter_path=...)``, its LoRA layers trained for a few steps). Tiny random
Llama (untied head) and Qwen2 (tied) in float32; PEFT initialises lora_B to zero, so every LoRA tensor
is set to random values.
"""

from __future__ import annotations

import json
from pathlib import Path

import llm_checkpoints as L
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import mlx_lm
import numpy as np
import pytest
import torch
from helpers import assert_one_error, run_cli, run_main
from mlx.utils import tree_flatten
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.numpy import load_file
from test_no_torch import no_torch_env  # noqa: F401  (a fixture)

import torch2mlx
from torch2mlx.errors import Torch2MLXError
from torch2mlx.stream.lora.load import load_digest
from torch2mlx.stream.verify import verify

pytestmark = pytest.mark.slow

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VARIANTS = {
    "plain": dict(r=4, lora_alpha=8, target_modules=ALL),
    "rslora": dict(r=4, lora_alpha=8, target_modules=ALL, use_rslora=True),
    # ranks 2/4/8; scales 2 (common), 8 (x4: folded exactly), 3 (x1.5: folded with rounding)
    "patterns": dict(
        r=4,
        lora_alpha=8,
        target_modules=ALL,
        rank_pattern={"v_proj": 2, "layers.1.mlp.down_proj": 8},
        alpha_pattern={"o_proj": 32, "k_proj": 12},
    ),
    "dora": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True),
}
TOL = 1e-4


def _mlx_logits(model, prompt=L.PROMPT) -> np.ndarray:
    return np.array(model(mx.array(prompt)).astype(mx.float32))


def _randomize_lora(peft_model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.1 * torch.rand(p.shape, generator=g))


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Per model: (transformers dir, MLX dir converted by t2mlx)."""
    root = tmp_path_factory.mktemp("bases")
    out = {}
    for kind in ("llama", "qwen2"):
        src = L.save_safetensors(L.build_model(kind), root / kind)
        torch2mlx.convert(src, root / f"{kind}-mlx")
        out[kind] = (src, root / f"{kind}-mlx")
    return out


def _peft(bases, kind: str, variant: str, root: Path, **extra):
    """(PEFT adapter dir, its logits, the merged model's logits)."""
    src, _ = bases[kind]
    pm = get_peft_model(L.build_model(kind), LoraConfig(**VARIANTS[variant], **extra))
    _randomize_lora(pm, 1)
    if extra.get("modules_to_save"):
        with torch.no_grad():
            pm.base_model.model.lm_head.modules_to_save["default"].weight.add_(0.05)
    pm.eval()
    ad = root / f"{kind}-{variant}-peft"
    pm.save_pretrained(ad)
    logits = L.torch_logits(pm)
    merged = L.torch_logits(pm.merge_and_unload())
    return ad, logits, merged


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_peft_adapter_loads_in_mlx_lm_and_comes_back_bit_for_bit(bases, tmp_path, kind, variant):
    ad, want, _ = _peft(bases, kind, variant, tmp_path)
    out = tmp_path / "mlx-adapter"
    proc = run_main("stream", ad, out, "--base", bases[kind][0])
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == ("dora" if variant == "dora" else "lora")
    model, _ = mlx_lm.load(str(bases[kind][1]), adapter_path=str(out))
    got = _mlx_logits(model)
    assert np.abs(got - want).max() <= TOL
    if variant == "patterns":
        assert "padded with zeros" in proc.stdout and "largest relative rounding" in proc.stdout

    back = tmp_path / "peft-again"
    proc = run_main("stream", out, back, "--to", "torch")
    assert proc.returncode == 0, proc.stderr
    a, b = load_file(ad / "adapter_model.safetensors"), load_file(back / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)), k
    assert json.loads((back / "adapter_config.json").read_text()) == json.loads(
        (ad / "adapter_config.json").read_text()
    )
    again = PeftModel.from_pretrained(L.build_model(kind), back).eval()
    assert np.array_equal(L.torch_logits(again), want)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_conversion_matches_merge_and_unload(bases, tmp_path, kind, variant):
    extra = {"modules_to_save": ["lm_head"]} if kind == "llama" and variant == "plain" else {}
    ad, _, merged = _peft(bases, kind, variant, tmp_path, **extra)
    out = tmp_path / "fused"
    proc = run_main("stream", bases[kind][0], out, "--adapter", ad)
    assert proc.returncode == 0, proc.stderr
    assert "fused the PEFT" in proc.stdout
    model, _ = mlx_lm.load(str(out))
    assert np.abs(_mlx_logits(model) - merged).max() <= TOL
    man = json.loads((out / "torch2mlx.json").read_text())
    digest = load_digest(str(ad))
    assert man["options"]["adapter"] == str(ad) and man["options"]["adapter_sha256"] == digest
    assert man["tensors"]["model.layers.0.self_attn.q_proj.weight"]["adapter_module"]
    rep = verify(bases[kind][0], out)
    assert rep.ok and any("fused with the adapter" in w for _, w in rep.unchecked)


def test_a_pickled_peft_adapter_converts_as_its_safetensors_twin(bases, tmp_path):
    ad, _, _ = _peft(bases, "llama", "patterns", tmp_path)
    pm = PeftModel.from_pretrained(L.build_model("llama"), ad)
    pickled = tmp_path / "bin"
    pm.save_pretrained(pickled, safe_serialization=False)
    assert (pickled / "adapter_model.bin").exists() and not (pickled / "adapter_model.safetensors").exists()
    torch2mlx.convert_adapter(ad, tmp_path / "a")
    torch2mlx.convert_adapter(pickled, tmp_path / "b")
    a, b = load_file(tmp_path / "a" / "adapters.safetensors"), load_file(tmp_path / "b" / "adapters.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_modules_to_save_cannot_be_an_mlx_lm_adapter(bases, tmp_path):
    ad, _, _ = _peft(bases, "llama", "plain", tmp_path, modules_to_save=["lm_head"])
    out = tmp_path / "x"
    assert_one_error(run_main("stream", ad, out), "modules_to_save (lm_head)", "--adapter")
    assert not out.exists()


def test_adapter_scale_multiplies_the_update(bases, tmp_path):
    ad, _, _ = _peft(bases, "llama", "plain", tmp_path)
    pm = PeftModel.from_pretrained(L.build_model("llama"), ad)
    for m in pm.modules():
        if hasattr(m, "scaling") and isinstance(m.scaling, dict) and "default" in m.scaling:
            m.scaling["default"] *= 0.5
    want = L.torch_logits(pm.merge_and_unload().eval())
    out = tmp_path / "half"
    assert run_main("stream", bases["llama"][0], out, "--adapter", ad, "--adapter-scale", "0.5").returncode == 0
    assert np.abs(_mlx_logits(mlx_lm.load(str(out))[0]) - want).max() <= TOL


def _train_mlx_lora(base_mlx: Path, out: Path, steps: int = 3) -> np.ndarray:
    """A few steps of LoRA training with mlx-lm's own layers; saved as mlx-lm's trainer saves; its logits."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mx.random.seed(0)
    model, _ = mlx_lm.load(str(base_mlx))
    model.freeze()
    params = {"rank": 4, "scale": 10.0, "dropout": 0.0, "keys": ["self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj"]}
    linear_to_lora_layers(model, 1, params)  # the last layer only, as --num-layers 1 does
    opt = optim.Adam(learning_rate=1e-2)
    tokens = mx.array(np.random.default_rng(0).integers(3, L.VOCAB, (2, 9)))

    def loss(m):
        return nn.losses.cross_entropy(m(tokens[:, :-1]), tokens[:, 1:]).mean()

    step = nn.value_and_grad(model, loss)
    for _ in range(steps):
        _, grads = step(model)
        opt.update(model, grads)
        mx.eval(model.parameters())
    out.mkdir()
    mx.save_safetensors(str(out / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    cfg = {"fine_tune_type": "lora", "num_layers": 1, "lora_parameters": params, "model": str(base_mlx)}
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    model.eval()
    return _mlx_logits(model)


def test_mlx_lm_trained_adapter_to_peft_and_fused(bases, tmp_path):
    src, base_mlx = bases["llama"]
    ad = tmp_path / "mlx-trained"
    want = _train_mlx_lora(base_mlx, ad)
    assert np.abs(_mlx_logits(mlx_lm.load(str(base_mlx), adapter_path=str(ad))[0]) - want).max() == 0
    assert np.abs(want - L.torch_logits(L.build_model("llama"))).max() > 1e-3  # training changed something
    out = tmp_path / "peft"
    proc = run_main("stream", ad, out, "--to", "torch")
    assert proc.returncode == 0, proc.stderr
    pm = PeftModel.from_pretrained(L.build_model("llama"), out).eval()
    assert np.abs(L.torch_logits(pm) - want).max() <= TOL
    fused = tmp_path / "fused"
    assert run_main("stream", src, fused, "--adapter", ad).returncode == 0
    assert np.abs(_mlx_logits(mlx_lm.load(str(fused))[0]) - want).max() <= TOL


def test_fusing_into_q4_output_stays_within_the_quantization_error(bases, tmp_path):
    src, base_mlx = bases["llama"]
    ad, _, merged = _peft(bases, "llama", "plain", tmp_path)
    plain_q4 = tmp_path / "q4"
    fused_q4 = tmp_path / "fused-q4"
    assert run_main("stream", src, plain_q4, "--q-bits", "4", "--q-group-size", "32").returncode == 0
    proc = run_main("stream", src, fused_q4, "--adapter", ad, "--q-bits", "4", "--q-group-size", "32")
    assert proc.returncode == 0, proc.stderr
    assert "quantized after fusing: largest |dequantized - fused| element" in proc.stdout
    base_err = np.abs(_mlx_logits(mlx_lm.load(str(plain_q4))[0]) - L.torch_logits(L.build_model("llama"))).max()
    fused_err = np.abs(_mlx_logits(mlx_lm.load(str(fused_q4))[0]) - merged).max()
    assert 0 < fused_err <= 2 * base_err, (fused_err, base_err)


def test_fusing_into_a_q4_base_dequantizes_fuses_and_requantizes(bases, tmp_path):
    src, _ = bases["llama"]
    ad, _, merged = _peft(bases, "llama", "dora", tmp_path)
    q4 = tmp_path / "q4"
    assert run_main("stream", src, q4, "--q-bits", "4", "--q-group-size", "32").returncode == 0
    out = tmp_path / "fused"
    proc = run_main("stream", q4, out, "--adapter", ad)
    assert proc.returncode == 0, proc.stderr
    assert "6 quantized base weight(s) dequantized, fused and quantized again as they were" in proc.stdout
    assert "largest |dequantized - fused| element" in proc.stdout
    fused_q = load_file(out / "model.safetensors")
    base_q = load_file(q4 / "model.safetensors")
    assert fused_q.keys() == base_q.keys()
    changed = {k for k in base_q if not np.array_equal(base_q[k], fused_q[k])}
    adapted = {
        f"model.layers.{i}.{m}.{p}"
        for i in (0, 1)
        for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
        for p in ("weight", "scales", "biases")
    }
    assert changed == adapted  # the other packed weights pass through untouched
    base_err = np.abs(_mlx_logits(mlx_lm.load(str(q4))[0]) - L.torch_logits(L.build_model("llama"))).max()
    fused_err = np.abs(_mlx_logits(mlx_lm.load(str(out))[0]) - merged).max()
    assert 0 < fused_err <= 2 * base_err, (fused_err, base_err)


def test_bad_adapter_input_is_one_line(bases, tmp_path):
    src, base_mlx = bases["llama"]
    ad, _, _ = _peft(bases, "llama", "plain", tmp_path)
    # a module the base lacks: a third layer
    cfg = L._configs()["llama"]
    cfg.num_hidden_layers = 3
    big = get_peft_model(L.build_model("llama", config=cfg), LoraConfig(**VARIANTS["plain"]))
    big.save_pretrained(tmp_path / "big")
    out = tmp_path / "o"
    assert_one_error(run_main("stream", src, out, "--adapter", tmp_path / "big"), "model.layers.2", "matches no tensor")
    assert_one_error(run_main("stream", src, out, "--adapter", tmp_path), "not a LoRA adapter directory")
    assert_one_error(run_main("stream", src, out, "--adapter-scale", "2"), "--adapter-scale", "without adapter")
    assert_one_error(run_main("stream", ad, out, "--q-bits", "4"), "--q-bits would change nothing")
    mlx_ad = tmp_path / "m"
    assert run_main("stream", ad, mlx_ad).returncode == 0
    assert_one_error(run_main("stream", ad, mlx_ad), "not empty", "--overwrite")
    # overwriting a conversion that kept an unrounded lora_b leaves none of its files behind
    pat, _, _ = _peft(bases, "llama", "patterns", tmp_path)
    assert run_main("stream", pat, mlx_ad, "--overwrite").returncode == 0
    assert (mlx_ad / "torch2mlx_unfolded.safetensors").exists()
    assert run_main("stream", ad, mlx_ad, "--overwrite").returncode == 0
    assert sorted(p.name for p in mlx_ad.iterdir()) == ["adapter_config.json", "adapters.safetensors"]
    assert_one_error(run_main("stream", mlx_ad, out), "already a mlx-lm adapter")
    assert_one_error(run_main("stream", base_mlx, out, "--to", "torch", "--adapter", ad), "adapter does not apply")
    q4 = tmp_path / "q4"
    assert run_main("stream", src, q4, "--q-bits", "4").returncode == 0
    assert_one_error(run_main("stream", q4, out, "--adapter", ad, "--q-bits", "4"), "need float weights")
    # a tied head (qwen2): the saved lm_head is dropped, so modules_to_save has nowhere to go
    qad, _, _ = _peft(bases, "qwen2", "plain", tmp_path, modules_to_save=["lm_head"])
    assert_one_error(run_main("stream", bases["qwen2"][0], out, "--adapter", qad), "lm_head.weight")
    assert not (out / "model.safetensors.index.json").exists() and not (out / "model.safetensors").exists()
    with pytest.raises(Torch2MLXError, match="scale"):
        torch2mlx.convert(src, tmp_path / "p", adapter=str(ad), adapter_scale="x")


def test_adapter_conversion_and_fusing_never_import_torch(bases, tmp_path, no_torch_env):
    env, marker = no_torch_env
    src, _ = bases["llama"]
    ad, _, merged = _peft(bases, "llama", "dora", tmp_path)
    runs = [
        ("stream", src, tmp_path / "fused", "--adapter", ad, "--q-bits", "4"),
        ("stream", ad, tmp_path / "mlx-ad", "--base", src),
        ("stream", tmp_path / "mlx-ad", tmp_path / "peft-ad", "--to", "torch"),
    ]
    for args in runs:
        proc = run_cli(*args, env=env)
        assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    a, b = load_file(ad / "adapter_model.safetensors"), load_file(tmp_path / "peft-ad" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_fused_zarr_and_hooked_outputs_hold_the_same_values(bases, tmp_path):
    import zarr

    src, _ = bases["llama"]
    ad, _, _ = _peft(bases, "llama", "dora", tmp_path)
    torch2mlx.convert(src, tmp_path / "st", adapter=str(ad))
    torch2mlx.convert(src, tmp_path / "z", adapter=str(ad), format="zarr")
    torch2mlx.convert(src, tmp_path / "h", adapter=str(ad), hook=lambda n, a, d: (n, a))
    want = load_file(tmp_path / "st" / "model.safetensors")
    hooked = load_file(tmp_path / "h" / "model.safetensors")
    store = zarr.open(str(tmp_path / "z"), mode="r")
    torch2mlx.convert(src, tmp_path / "plain")
    plain = load_file(tmp_path / "plain" / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not np.array_equal(want[q], plain[q]) and np.array_equal(want["lm_head.weight"], plain["lm_head.weight"])
    for k in want:
        assert np.array_equal(hooked[k], want[k]), k
        assert np.array_equal(np.asarray(store[k.replace(".", "/")]), want[k]), k
