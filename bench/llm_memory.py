"""Peak memory and time: `t2mlx stream --q-bits 4` vs mlx-lm's `convert -q` on the same checkpoint.

    .venv/bin/python bench/llm_memory.py [--workdir DIR] [--keep]

Writes a ~2.5 GB Llama-shaped bfloat16 checkpoint (random weights, a 0.72 GB
embedding and an untied 0.72 GB lm_head, two safetensors shards + index,
config.json, a tokenizer), runs both converters under `/usr/bin/time -v`, prints
a Markdown table (peak RSS, wall time) and deletes everything unless --keep.
Needs torch, transformers and mlx-lm (the dev extra). Linux (GNU time).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, VOCAB = 2816, 7680, 6, 22, 2, 128256


def tensor_shapes() -> dict[str, tuple[int, ...]]:
    head = HIDDEN // HEADS
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
                p + "self_attn.k_proj.weight": (KV_HEADS * head, HIDDEN),
                p + "self_attn.v_proj.weight": (KV_HEADS * head, HIDDEN),
                p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                p + "mlp.gate_proj.weight": (INTER, HIDDEN),
                p + "mlp.up_proj.weight": (INTER, HIDDEN),
                p + "mlp.down_proj.weight": (HIDDEN, INTER),
                p + "input_layernorm.weight": (HIDDEN,),
                p + "post_attention_layernorm.weight": (HIDDEN,),
            }
        )
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    return shapes


def write_checkpoint(d: Path) -> int:
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from llm_checkpoints import save_tokenizer

    d.mkdir(parents=True)
    shapes = tensor_shapes()
    names = list(shapes)
    half = names.index("model.layers.3.self_attn.q_proj.weight")
    g = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for i, part in enumerate((names[:half], names[half:])):
        f = f"model-{i + 1:05d}-of-00002.safetensors"
        tensors = {}
        for n in part:
            t = torch.randn(shapes[n], generator=g, dtype=torch.float32).mul_(0.02).to(torch.bfloat16)
            tensors[n] = t
            weight_map[n] = f
            total += t.numel() * 2
        save_file(tensors, str(d / f), metadata={"format": "pt"})
        del tensors
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    (d / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": HIDDEN,
                "intermediate_size": INTER,
                "num_hidden_layers": LAYERS,
                "num_attention_heads": HEADS,
                "num_key_value_heads": KV_HEADS,
                "vocab_size": VOCAB,
                "rms_norm_eps": 1e-5,
                "rope_theta": 500000.0,
                "max_position_embeddings": 8192,
                "tie_word_embeddings": False,
                "torch_dtype": "bfloat16",
                "bos_token_id": 1,
                "eos_token_id": 2,
            },
            indent=2,
        )
    )
    save_tokenizer(d)
    return total


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(peak RSS MiB, wall seconds) of ``cmd`` under GNU time."""
    t0 = time.perf_counter()
    run = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
    return kb / 1024, wall


def drop_page_cache_of(d: Path) -> None:
    """Evict the source from the page cache so each converter reads it from disk alike."""
    for f in d.iterdir():
        with open(f, "rb") as fh:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="where to write the checkpoint (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint and outputs")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="t2mlx-bench-"))
    src = work / "llama-bf16"
    try:
        t0 = time.perf_counter()
        size = write_checkpoint(src)
        print(
            f"checkpoint: {size / 2**30:.2f} GiB in {time.perf_counter() - t0:.0f} s "
            f"(embedding {VOCAB * HIDDEN * 2 / 1e9:.2f} GB)",
            file=sys.stderr,
        )
        py = sys.executable
        # The analysis cache lives in the work dir: the first t2mlx run builds the model (imports
        # torch), the "again" row shows a repeat run; the others build it afresh.
        cold = {**os.environ, "T2MLX_NO_CACHE": "1"}
        cached = {k: v for k, v in os.environ.items() if k != "T2MLX_NO_CACHE"}
        cached["T2MLX_CACHE_DIR"] = str(work / "analysis-cache")
        q4 = [py, "-m", "torch2mlx", "stream", str(src), None, "--q-bits", "4", "--quiet"]
        runs = [
            ("t2mlx stream --q-bits 4", cached, q4[:5] + [str(work / "ours-q4")] + q4[6:]),
            (
                "t2mlx stream --q-bits 4, again (analysis cached)",
                cached,
                q4[:5] + [str(work / "ours-q4-again")] + q4[6:],
            ),
            (
                "mlx_lm convert -q",
                cold,
                [py, "-m", "mlx_lm", "convert", "--hf-path", str(src), "--mlx-path", str(work / "mlx-lm-q4"), "-q"],
            ),
            (
                "t2mlx stream (bf16, no quantization)",
                cold,
                [py, "-m", "torch2mlx", "stream", str(src), str(work / "ours-bf16"), "--quiet"],
            ),
        ]
        print("| converter | peak RSS | wall time |\n|---|---:|---:|")
        for label, env, cmd in runs:
            drop_page_cache_of(src)
            rss, wall = timed(cmd, env)
            print(f"| `{label}` | {rss:.0f} MiB | {wall:.1f} s |", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
