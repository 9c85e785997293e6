"""Deterministic synthetic llama-shaped checkpoints for the benchmarks.

    python bench/make_checkpoint.py 2.5g                # -> bench/data/2.5g-bf16/{st,bin}
    python bench/make_checkpoint.py 70b --sparse        # headers only, data is a file hole
    python bench/make_checkpoint.py custom --hidden 512 --layers 4 --vocab 32000 --intermediate 1376

Each checkpoint directory holds the same tensors twice: ``st/`` as sharded
safetensors with ``model.safetensors.index.json``, ``bin/`` as sharded zip
pickles (``pytorch_model-0000i-of-0000N.bin`` + ``pytorch_model.bin.index.json``)
written by ``torch.save``. Both get a llama ``config.json`` and a tiny offline
tokenizer so that mlx-lm's ``convert`` accepts the directory.

The safetensors files are written by hand, tensor by tensor, from a seeded
generator in 32 MiB chunks: memory stays flat whatever the model size. The
``.bin`` shards are then built from memory maps of those safetensors shards,
so both formats hold bit-identical data and no shard is ever copied into
anonymous memory. Values are random but finite, with magnitudes in
[2**-7, 2) so that a cast to float16 never overflows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

# Bit masks that turn uniform random words into finite floats of moderate
# magnitude: keep sign, mantissa and the low exponent bits, pin the high
# exponent bits (exponent 2**-7 .. 2**0 for every format).
_DTYPES = {
    #        numpy carrier, safetensors name, torch dtype name, keep mask, set bits
    "bf16": (np.uint16, "BF16", "bfloat16", 0x83FF, 0x3C00),
    "fp16": (np.uint16, "F16", "float16", 0x9FFF, 0x2000),
    "fp32": (np.uint32, "F32", "float32", 0x83FFFFFF, 0x3C000000),
}
CHUNK = 32 << 20
SPEC_FILE = ".spec.json"


@dataclass(frozen=True)
class Spec:
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    heads: int
    kv_heads: int
    dtype: str = "bf16"
    shard_size: int = 2 * 10**9
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """Tensor names and shapes in the order Hugging Face saves a LlamaForCausalLM."""
        h, i, kv = self.hidden, self.intermediate, self.kv_heads * self.head_dim
        out = [("model.embed_tokens.weight", (self.vocab, h))]
        for n in range(self.layers):
            p = f"model.layers.{n}."
            out += [
                (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, h)),
                (p + "mlp.gate_proj.weight", (i, h)),
                (p + "mlp.up_proj.weight", (i, h)),
                (p + "mlp.down_proj.weight", (h, i)),
                (p + "input_layernorm.weight", (h,)),
                (p + "post_attention_layernorm.weight", (h,)),
            ]
        out += [("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]
        return out

    @property
    def itemsize(self) -> int:
        return np.dtype(_DTYPES[self.dtype][0]).itemsize

    @property
    def nbytes(self) -> int:
        return sum(math.prod(s) for _, s in self.tensors()) * self.itemsize

    def config(self) -> dict:
        """A llama config.json that transformers and mlx-lm accept."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": False,
            "torch_dtype": _DTYPES[self.dtype][2],
            "bos_token_id": 1,
            "eos_token_id": 2,
        }


# Presets. The 2.5g and 10g ones have embedding and lm_head of >= 0.7 GB each
# (a single tensor bigger than any reasonable memory budget); 0.5g is
# TinyLlama-shaped with 3 layers, 0.3g a smaller llama (fixed costs show); "many" has 10,011 tiny tensors to expose
# per-tensor overhead, "many-100k" 100,011 in 24 input shards (a DeepSeek-V3 has
# ~91,000); "70b" is Llama-3-70B-shaped and only makes sense with --sparse.
PRESETS = {
    "tiny": Spec(hidden=128, intermediate=344, layers=2, vocab=8192, heads=4, kv_heads=2),
    "tiny-many": Spec(hidden=16, intermediate=32, layers=120, vocab=256, heads=2, kv_heads=2),
    "0.3g": Spec(hidden=1024, intermediate=2816, layers=8, vocab=32000, heads=16, kv_heads=4),
    "0.5g": Spec(hidden=2048, intermediate=5632, layers=3, vocab=32000, heads=32, kv_heads=4),
    "2.5g": Spec(hidden=3072, intermediate=8192, layers=5, vocab=128256, heads=24, kv_heads=8),
    "10g": Spec(hidden=4096, intermediate=14336, layers=18, vocab=128256, heads=32, kv_heads=8),
    "many": Spec(hidden=64, intermediate=128, layers=1112, vocab=1024, heads=4, kv_heads=4),
    "many-100k": Spec(hidden=32, intermediate=64, layers=11112, vocab=1024, heads=2, kv_heads=2, shard_size=10 * 10**6),
    "70b": Spec(hidden=8192, intermediate=28672, layers=80, vocab=128256, heads=64, kv_heads=8, shard_size=5 * 10**9),
}


def shard_groups(spec: Spec) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Greedy sharding in save order, as transformers' save_pretrained does."""
    groups: list[list] = [[]]
    size = 0
    for name, shape in spec.tensors():
        n = math.prod(shape) * spec.itemsize
        if groups[-1] and size + n > spec.shard_size:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += n
    return groups


def _header(spec: Spec, group) -> bytes:
    st_dtype = _DTYPES[spec.dtype][1]
    head, pos = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in group:
        n = math.prod(shape) * spec.itemsize
        head[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # the format asks for 8-byte alignment of the data
    return struct.pack("<Q", len(raw)) + raw


def _fill(fd, spec: Spec, index: int, count: int) -> None:
    """Write ``count`` random elements of tensor number ``index`` (its own seeded stream)."""
    carrier, _, _, keep, pin = _DTYPES[spec.dtype]
    # A generator per tensor: the data of a tensor does not depend on the shard layout.
    gen = np.random.PCG64DXSM([spec.seed, index])
    per = CHUNK // np.dtype(carrier).itemsize
    done = 0
    while done < count:
        n = min(per, count - done)
        words = gen.random_raw((n * np.dtype(carrier).itemsize + 7) // 8).view(carrier)[:n]
        words &= carrier(keep)
        words |= carrier(pin)
        os.write(fd, words.data)
        done += n


def _shard_name(prefix: str, ext: str, i: int, n: int) -> str:
    """transformers' names: one file is model.safetensors / pytorch_model.bin, else numbered shards."""
    return f"{prefix}.{ext}" if n == 1 else f"{prefix}-{i + 1:05d}-of-{n:05d}.{ext}"


def human(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def write_safetensors(spec: Spec, out: str, sparse: bool = False) -> None:
    groups = shard_groups(spec)
    weight_map, index = {}, 0  # index: the tensor's position in save order, which seeds its data
    for i, group in enumerate(groups):
        name = _shard_name("model", "safetensors", i, len(groups))
        path = os.path.join(out, name)
        header = _header(spec, group)
        data = sum(math.prod(s) for _, s in group) * spec.itemsize
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, header)
            if sparse:
                os.ftruncate(fd, len(header) + data)  # a hole: apparent size only, no blocks
            else:
                for k, (_, shape) in enumerate(group):
                    _fill(fd, spec, index + k, math.prod(shape))
                os.fsync(fd)
        finally:
            os.close(fd)
        index += len(group)
        weight_map.update({t: name for t, _ in group})
    _json(
        os.path.join(out, "model.safetensors.index.json"),
        {"metadata": {"total_size": spec.nbytes}, "weight_map": weight_map},
    )


def write_bin(spec: Spec, st_dir: str, out: str) -> None:
    """torch.save one shard at a time, tensors backed by memory maps of the safetensors shards."""
    import torch  # only the .bin format needs torch; keep it out of the safetensors path

    carrier, _, torch_name, _, _ = _DTYPES[spec.dtype]
    tdtype = getattr(torch, torch_name)
    groups = shard_groups(spec)
    weight_map = {}
    for i, group in enumerate(groups):
        st_path = os.path.join(st_dir, _shard_name("model", "safetensors", i, len(groups)))
        with open(st_path, "rb") as f:
            (hlen,) = struct.unpack("<Q", f.read(8))
        # Copy-on-write maps are writable from numpy's point of view, which torch wants; nothing writes.
        mm = np.memmap(st_path, dtype=carrier, mode="c", offset=8 + hlen)
        tensors, pos = {}, 0
        for name, shape in group:
            n = math.prod(shape)
            tensors[name] = torch.from_numpy(mm[pos : pos + n]).view(tdtype).reshape(shape)
            pos += n
        name = _shard_name("pytorch_model", "bin", i, len(groups))
        path = os.path.join(out, name)
        torch.save(tensors, path)
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        del tensors, mm
        weight_map.update({t: name for t, _ in group})
    _json(
        os.path.join(out, "pytorch_model.bin.index.json"),
        {"metadata": {"total_size": spec.nbytes}, "weight_map": weight_map},
    )


def _json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def write_sidecars(spec: Spec, out: str) -> None:
    """config.json plus a word-level tokenizer, enough for transformers/mlx-lm to load offline."""
    _json(os.path.join(out, "config.json"), spec.config())
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i for i in range(3, 256)})
    special = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for t, i in list(vocab.items())[:3]
    ]
    _json(
        os.path.join(out, "tokenizer.json"),
        {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": special,
            "normalizer": None,
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": None,
            "decoder": None,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
        },
    )
    _json(
        os.path.join(out, "tokenizer_config.json"),
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "model_max_length": 4096,
        },
    )


def checkpoint_dir(data_dir: str, preset: str, spec: Spec, sparse: bool) -> str:
    return os.path.join(data_dir, f"{preset}-{spec.dtype}" + ("-sparse" if sparse else ""))


def make(spec: Spec, out: str, *, formats=("st", "bin"), sparse: bool = False, log=print) -> str:
    """Write the checkpoint under ``out`` unless an identical one is already there. Returns ``out``."""
    want = {"spec": asdict(spec), "formats": sorted(formats), "sparse": sparse}
    stamp = os.path.join(out, SPEC_FILE)
    try:
        with open(stamp) as f:
            if json.load(f) == want:
                return out
    except (OSError, ValueError):
        pass
    if os.path.exists(out):
        shutil.rmtree(out)
    need = spec.nbytes * len(formats) * (0 if sparse else 1)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)  # a fresh clone has no bench/data yet
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(out))).free
    if need > free * 0.9:
        raise SystemExit(f"error: {out} needs {need / 1e9:.1f} GB, only {free / 1e9:.1f} GB free")
    t0 = time.perf_counter()
    st = os.path.join(out, "st")
    os.makedirs(st)
    write_safetensors(spec, st, sparse)
    write_sidecars(spec, st)
    if "bin" in formats and not sparse:
        b = os.path.join(out, "bin")
        os.makedirs(b)
        write_bin(spec, st, b)
        write_sidecars(spec, b)
    _json(stamp, want)  # last: a directory with a stamp is complete
    log(
        f"wrote {out} ({human(spec.nbytes)} x {len(formats)} format(s)"
        f"{', sparse' if sparse else ''}) in {time.perf_counter() - t0:.1f} s"
    )
    return out


def parse_size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    t = text.strip().upper()
    for u in sorted(units, key=len, reverse=True):
        if t.endswith(u):
            return int(float(t[: -len(u)]) * units[u])
    return int(t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Write a deterministic synthetic llama-shaped checkpoint as sharded safetensors (st/) "
        "and sharded zip .bin (bin/), with config.json and an offline tokenizer.",
        epilog="presets: "
        + ", ".join(f"{k} ({human(v.nbytes)}, {len(v.tensors())} tensors)" for k, v in PRESETS.items()),
    )
    ap.add_argument(
        "preset",
        choices=sorted(PRESETS) + ["custom"],
        help="shape preset; 'custom' starts from 'tiny' and takes the overrides below",
    )
    ap.add_argument("--out", help="checkpoint directory (default: bench/data/PRESET-DTYPE)")
    ap.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    for k in ("hidden", "intermediate", "layers", "vocab", "heads", "kv_heads"):
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, help=f"override {k}")
    ap.add_argument("--shard-size", default=None, help="input shard size, e.g. 2GB (default: 2GB, 5GB for 70b)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--formats", default="st,bin", help="comma list of st, bin (default: both)")
    ap.add_argument(
        "--sparse",
        action="store_true",
        help="safetensors headers over file holes (no data written; for --dry-run timing)",
    )
    a = ap.parse_args(argv)
    spec = PRESETS["tiny" if a.preset == "custom" else a.preset]
    over = {
        k: getattr(a, k)
        for k in ("hidden", "intermediate", "layers", "vocab", "heads", "kv_heads")
        if getattr(a, k) is not None
    }
    spec = replace(spec, dtype=a.dtype, seed=a.seed, **over)
    if a.shard_size:
        spec = replace(spec, shard_size=parse_size(a.shard_size))
    if spec.hidden % spec.heads:
        ap.error("--hidden must be a multiple of --heads")
    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    out = a.out or checkpoint_dir(data, a.preset, spec, a.sparse)
    make(spec, out, formats=tuple(f for f in a.formats.split(",") if f), sparse=a.sparse)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
