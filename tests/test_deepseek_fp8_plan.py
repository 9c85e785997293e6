"""A DeepSeek-V3-shaped float8 checkpoint at full scale (90,427 tensors in 158 shards, headers over file
holes from bench/deepseek_sparse.py): planned with the model's rules, every block-scaled weight dequantized,
every scale folded away, and the report says so once rather than 45,000 times."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
from helpers import run_main

# seconds per test (subprocesses, real models or many examples): `make test-fast` leaves this file out
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("deepseek_sparse", ROOT / "bench" / "deepseek_sparse.py")
ds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ds)


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory):
    d = tmp_path_factory.mktemp("deepseek-v3") / "ckpt"
    counts = ds.write(str(d))
    assert counts["tensors"] == 90427 and counts["shards"] == 158
    return d


def _plan(d, *args) -> dict:
    proc = run_main("stream", d, "--dry-run", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_every_block_scaled_weight_is_dequantized_with_model_rules(deepseek):
    rep = _plan(deepseek)
    table = {n: (dt, shape) for n, dt, shape in ds.tensors()}
    weights = [n for n, (dt, _) in table.items() if dt == "F8_E4M3"]
    plan = rep["plan"]
    assert set(plan) == {n for n in table if not n.endswith("_scale_inv")}
    assert rep["rules_by_source"] == {"model": len(plan)}
    for n in weights:
        rec = plan[n]
        assert rec["fp8_scale"] == n + "_scale_inv" and rec["fp8_blocks"] == [128, 128], n
        assert rec["dtype"] == "bfloat16" and rec["shape"] == table[n][1], n
    # bfloat16 out: two bytes an element, scales gone
    assert rep["bytes_out"] >= 2 * sum(math.prod(table[n][1]) for n in plan)
    assert not [w for w in rep["warnings"] if "has no MLX equivalent" in w or "_scale_inv" in w]
    assert f"{len(weights)} float8 weight(s) dequantized to bfloat16 with their scales" in " ".join(rep["notes"])


def test_four_bit_quantizes_experts_and_keeps_the_router(deepseek):
    plan = _plan(deepseek, "--q-bits", "4")["plan"]
    e = "model.layers.3.mlp.experts.0.gate_proj."
    assert plan[e + "weight"]["dtype"] == "uint32" and plan[e + "weight"]["shape"] == [2048, 7168 * 4 // 32]
    assert plan[e + "scales"]["shape"] == plan[e + "biases"]["shape"] == [2048, 7168 // 64]
    assert plan[e + "weight"]["fp8_scale"] == e + "weight_scale_inv"  # dequantized, then quantized
    assert plan["model.layers.3.mlp.gate.weight"]["dtype"] == "bfloat16"  # the router is not a Linear
    assert "model.layers.3.mlp.gate.scales" not in plan
