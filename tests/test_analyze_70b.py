"""A 70B Llama is analyzed and planned without reading weights: its checkpoint here is a real safetensors
header over 141 GB of sparse holes (a file extended with truncate), and a config alone analyzes in a fresh
interpreter in well under 10 s and 1 GB."""

import json
import os
import struct
import subprocess
import sys
import time

import pytest

import torch2mlx
from torch2mlx.stream import convert

# seconds per test (subprocesses, real models or many examples): `make test-fast` leaves this file out
pytestmark = pytest.mark.slow

LLAMA_70B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "dtype": "bfloat16",
}


def _llama_70b_shapes() -> dict:
    """The state-dict shapes of Llama 3 70B, written out from the architecture (no torch needed)."""
    h, i, kv, v, layers = 8192, 28672, 8 * 128, 128256, 80
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for n in range(layers):
        p = f"model.layers.{n}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (h, h),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, h),
                p + "mlp.gate_proj.weight": (i, h),
                p + "mlp.up_proj.weight": (i, h),
                p + "mlp.down_proj.weight": (h, i),
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
            }
        )
    return shapes


def _sparse_checkpoint(d) -> int:
    header, pos = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in sorted(_llama_70b_shapes().items()):
        n = 2
        for s in shape:
            n *= s
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = d / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
    os.truncate(path, 8 + len(raw) + pos)  # the weights: holes, never written
    (d / "config.json").write_text(json.dumps(LLAMA_70B))
    return pos


def _bytes_read() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar")).split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io to count bytes read")
def test_70b_checkpoint_of_holes_analyzes_and_plans_in_seconds_reading_no_weights(tmp_path):
    data = _sparse_checkpoint(tmp_path)
    assert data > 140e9 and os.stat(tmp_path / "model.safetensors").st_blocks * 512 < 16 << 20  # really sparse
    try:
        torch2mlx.analyze(tmp_path)  # warm the imports: their source files are not weights
        before, t0 = _bytes_read(), time.perf_counter()
        report = torch2mlx.analyze(tmp_path)
        res = convert(tmp_path, None, dry_run=True)
        seconds, read = time.perf_counter() - t0, _bytes_read() - before
    finally:
        os.unlink(tmp_path / "model.safetensors")
    assert seconds < 20, seconds
    assert read < 32 << 20, read  # headers, config and source files; not a byte of the 141 GB
    assert report.coverage == 1.0 and report.parameters == 70_553_706_496
    assert (report.checkpoint.matched, report.checkpoint.unmatched, report.checkpoint.missing) == (723, [], [])
    assert res.plan.nbytes_in == data and res.plan.rules_by_source() == {"model": 723}
    assert {o.dtype.name for op in res.plan.ops for o in op.outputs} == {"bfloat16"}


def test_70b_config_alone_analyzes_under_10_seconds_and_1_gb(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_70B))
    code = (
        "import time, json\n"
        "t0 = time.perf_counter()\n"
        "import torch2mlx\n"
        f"r = torch2mlx.analyze({str(tmp_path)!r})\n"
        # VmHWM, not ru_maxrss: after a fork from a big parent, Linux carries the parent's high-water into
        # the child's ru_maxrss across exec (this pytest process is over 1 GB late in the suite)
        "hwm = int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1])\n"
        "print(json.dumps([time.perf_counter() - t0, hwm,"
        " r.coverage, r.parameters, len(r.tensors)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    seconds, max_rss_kib, coverage, params, tensors = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"70B config: {seconds:.2f} s, peak RSS {max_rss_kib / 1024:.0f} MiB")
    assert seconds < 10 and max_rss_kib < 1 << 20
    assert (coverage, params, tensors) == (1.0, 70_553_706_496, 723)
