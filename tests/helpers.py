"""Shared test helpers: torch is the oracle, the output is read back with safetensors and mlx.

Every expected value here comes from torch (``torch.load``, ``Tensor.permute``,
``Tensor.to``); nothing is computed with torch2mlx's own code.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import torch2mlx.stream

INDEX = "model.safetensors.index.json"
MANIFEST = "torch2mlx.json"
T2MLX = [sys.executable, "-m", "torch2mlx"]

# MLX layouts from DESIGN.md, as torch permutations of the source tensor.
PERMS = {
    "conv1d": (0, 2, 1),
    "conv2d": (0, 2, 3, 1),
    "conv3d": (0, 2, 3, 4, 1),
    "conv_transpose1d": (1, 2, 0),
    "conv_transpose2d": (1, 2, 3, 0),
    "conv_transpose3d": (1, 2, 3, 4, 0),
    "linear_transposed": (1, 0),
}
FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.float8_e8m0fnu)
# What `--dtype keep` stores for dtypes MLX lacks.
KEEP = {torch.float64: torch.float32, torch.complex128: torch.complex64, **{d: torch.bfloat16 for d in FLOAT8}}
RECORD_FIELDS = {"source", "rule", "rule_source", "dtype", "shape", "source_dtype", "source_shape", "shard"}


def dtype_name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


# ---------------------------------------------------------------- expected values (torch)


def inferred_rule(name: str, t: torch.Tensor) -> str:
    """The documented guess without model information: a 3/4/5-D float ``*.weight`` is a conv."""
    if t.is_floating_point() and name.endswith("weight") and t.dim() in (3, 4, 5):
        return {3: "conv1d", 4: "conv2d", 5: "conv3d"}[t.dim()]
    return "identity"


def target_dtype(src: torch.dtype, dtype: str = "keep") -> torch.dtype:
    if dtype != "keep" and src.is_floating_point:
        return getattr(torch, dtype)
    return KEEP.get(src, src)


def expected_output(t: torch.Tensor, rule: str = "identity", dtype: str = "keep") -> torch.Tensor:
    """The rule applied to torch's tensor, then torch's own ``.to()`` cast."""
    if rule != "identity":
        t = t.permute(*PERMS[rule])
    return t.to(target_dtype(t.dtype, dtype))


# ---------------------------------------------------------------- canonical bits


@dataclass
class Canon:
    """A tensor as (dtype name, shape, raw bits, NaN mask): comparable whatever library produced it."""

    dtype: str
    shape: tuple
    bits: np.ndarray
    nan: np.ndarray


_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def canon_bits(name: str, arr: np.ndarray) -> Canon:
    """``arr`` holds values of ``name`` (or its raw bits, for bfloat16 and float8)."""
    arr = np.array(arr, order="C")  # keeps 0-d arrays 0-d
    if arr.dtype.kind == "c":
        nan = np.isnan(arr.real) | np.isnan(arr.imag)
    elif arr.dtype.kind == "f":
        nan = np.isnan(arr)
    elif name == "bfloat16":
        nan = np.isnan((arr.astype(np.uint32) << 16).view(np.float32))
    else:
        nan = np.zeros(arr.shape, dtype=bool)
    width = arr.dtype.itemsize
    bits = arr.reshape(arr.shape + (1,)).view(np.uint64) if width == 16 else arr.view(_UINT[width])
    return Canon(name, tuple(arr.shape), bits, nan)


def canon_torch(t: torch.Tensor) -> Canon:
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        arr = t.view(torch.int16).numpy().view(np.uint16)
    elif t.dtype in FLOAT8:
        arr = t.view(torch.uint8).numpy()
    else:
        arr = t.numpy()
    return canon_bits(dtype_name(t.dtype), arr)


def canon_mx(a) -> Canon:
    import mlx.core as mx

    name = str(a.dtype).removeprefix("mlx.core.")
    arr = np.array(a.view(mx.uint16)) if a.dtype == mx.bfloat16 else np.array(a)
    return canon_bits(name, arr)


def assert_same(got: Canon, exp: Canon, what: str = "", nan_bits: bool = False) -> None:
    """Equal dtype, shape and bits; NaN positions compared separately unless ``nan_bits``."""
    assert got.dtype == exp.dtype, f"{what}: dtype {got.dtype} != {exp.dtype}"
    assert got.shape == exp.shape, f"{what}: shape {got.shape} != {exp.shape}"
    if nan_bits:
        assert np.array_equal(got.bits, exp.bits), f"{what}: bits differ"
        return
    assert np.array_equal(got.nan, exp.nan), f"{what}: NaN positions differ"
    keep = ~exp.nan
    if got.bits.ndim > keep.ndim:  # 16-byte elements carry a trailing axis
        keep = keep[..., None].repeat(got.bits.shape[-1], -1)
    bad = np.flatnonzero((got.bits != exp.bits) & keep)
    assert bad.size == 0, (
        f"{what}: {bad.size} element(s) differ, first at flat index {bad[0]}: "
        f"{got.bits.reshape(-1)[bad[0]]:#x} != {exp.bits.reshape(-1)[bad[0]]:#x}"
    )


# ---------------------------------------------------------------- reading outputs back


def read_json(path) -> dict:
    with open(path, "rb") as f:
        return json.loads(f.read())


def read_output(out) -> dict[str, Canon]:
    """Every output tensor, read with mlx.core.load AND safetensors (numpy; torch for bfloat16)."""
    import mlx.core as mx
    from safetensors import safe_open

    out = Path(out)
    wm = read_json(out / INDEX)["weight_map"]
    got: dict[str, Canon] = {}
    for shard in sorted(set(wm.values())):
        arrays, meta = mx.load(str(out / shard), return_metadata=True)
        assert meta == {"format": "mlx"}, f"{shard}: metadata {meta}"
        with safe_open(out / shard, framework="np") as f_np, safe_open(out / shard, framework="pt") as f_pt:
            assert set(f_np.keys()) == set(arrays), shard
            for k in f_np.keys():
                assert wm.get(k) == shard, f"{k} is in {shard} but the index says {wm.get(k)}"
                via_mx = canon_mx(arrays[k])
                if f_np.get_slice(k).get_dtype() == "BF16":  # numpy has no bfloat16
                    via_st = canon_torch(f_pt.get_tensor(k))
                else:
                    a = f_np.get_tensor(k)
                    via_st = canon_bits(via_mx.dtype, a)
                assert_same(via_mx, via_st, f"{shard}:{k} mlx vs safetensors", nan_bits=True)
                got[k] = via_mx
    assert set(got) == set(wm), "index names tensors the shards do not hold"
    return got


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def file_hash(path, algorithm: str) -> str:
    """A file's digest, computed whole by the reference package (not by torch2mlx's chunked reader)."""
    if algorithm == "sha256":
        return sha256(path)
    assert algorithm == "xxh3-128", algorithm
    import xxhash

    return xxhash.xxh3_128(Path(path).read_bytes()).hexdigest()


def shard_hash(man: dict) -> str:
    """The algorithm of a manifest's shard digests (sha256 in manifests without ``hash``)."""
    return man.get("hash", "sha256")


def rehash_shard(out, file: str) -> None:
    """Record ``file``'s current size and digest in OUT's manifest: a change to it then shows only in values."""
    out = Path(out)
    man = read_json(out / MANIFEST)
    alg = shard_hash(man)
    man["shards"][file] = {"bytes": (out / file).stat().st_size, alg: file_hash(out / file, alg)}
    (out / MANIFEST).write_text(json.dumps(man))


def check_manifest_shards(out) -> dict:
    """The manifest's shard bytes and digests match the files; returns the manifest."""
    out = Path(out)
    man = read_json(out / MANIFEST)
    shards = set(read_json(out / INDEX)["weight_map"].values())
    assert set(man["shards"]) == shards
    alg = shard_hash(man)
    for f, rec in man["shards"].items():
        assert rec["bytes"] == (out / f).stat().st_size, f
        assert rec[alg] == file_hash(out / f, alg), f
    return man


def check_converted(
    out,
    source: dict[str, torch.Tensor],
    *,
    dtype: str = "keep",
    rules: dict[str, str] | None = None,
    names: dict[str, str] | None = None,
    rule_sources: dict[str, str] | None = None,
) -> dict[str, Canon]:
    """OUT holds exactly ``source`` converted: each output equals the rule applied to torch's tensor.

    ``names`` maps output name -> source name (default: same names); ``rules``
    fixes the rule per output name (default: the documented inference).
    """
    names = names if names is not None else {k: k for k in source}
    got = read_output(out)
    assert set(got) == set(names), f"outputs {sorted(set(got) ^ set(names))} differ from the expected"
    man = check_manifest_shards(out)
    wm = read_json(Path(out) / INDEX)["weight_map"]
    for out_name, src_name in names.items():
        t = source[src_name]
        rule = (rules or {}).get(out_name) or inferred_rule(src_name, t)
        exp = expected_output(t, rule, dtype)
        assert_same(got[out_name], canon_torch(exp), out_name)
        rec = man["tensors"][out_name]
        assert RECORD_FIELDS <= set(rec), f"{out_name}: manifest record lacks {RECORD_FIELDS - set(rec)}"
        assert rec["source"] == src_name and rec["rule"] == rule, (out_name, rec)
        assert rec["dtype"] == dtype_name(exp.dtype) and rec["shape"] == list(exp.shape), (out_name, rec)
        assert rec["source_dtype"] == dtype_name(t.dtype) and rec["source_shape"] == list(t.shape), (out_name, rec)
        assert rec["shard"] == wm[out_name]
        if rule_sources and out_name in rule_sources:
            assert rec["rule_source"] == rule_sources[out_name], (out_name, rec)
    return got


def convert(src, out, **kw):
    """The library conversion (what ``t2mlx stream`` calls), quiet."""
    return torch2mlx.stream.convert(src, out, **kw)


def to_torch(src, out, **kw):
    """The library's way back (what ``t2mlx stream --to torch`` calls), quiet."""
    return torch2mlx.stream.to_torch(src, out, **kw)


def torch_save(obj, path, fmt: str = "zip") -> Path:
    """``torch.save`` as a zip archive (today's default) or the legacy pickle format."""
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return Path(path)


def torch_load(path) -> object:
    return torch.load(path, weights_only=False)


# ---------------------------------------------------------------- safetensors format


def parse_safetensors(path) -> tuple[int, dict, bytes]:
    """(header length, header JSON, raw header bytes), asserting the format's framing rules."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    head_bytes = raw[8 : 8 + n]
    assert (8 + n) % 8 == 0, f"{path}: header not padded to 8 bytes"
    body = head_bytes.rstrip(b" ")
    assert body.endswith(b"}") and len(head_bytes) - len(body) < 8, f"{path}: header padding is not 0-7 spaces"
    header = json.loads(body.decode("utf-8"))
    return n, header, raw


def check_safetensors_layout(path) -> dict:
    """Offsets tile the data buffer without holes, file length = 8 + header + data, each tensor aligned."""
    n, header, raw = parse_safetensors(path)
    assert header.get("__metadata__") == {"format": "mlx"}, header.get("__metadata__")
    widths = {
        "F64": 8,
        "I64": 8,
        "U64": 8,
        "C64": 8,
        "F32": 4,
        "I32": 4,
        "U32": 4,
        "F16": 2,
        "BF16": 2,
        "I16": 2,
        "U16": 2,
        "I8": 1,
        "U8": 1,
        "BOOL": 1,
    }
    spans = sorted((tuple(r["data_offsets"]), k, r) for k, r in header.items() if k != "__metadata__")
    pos = 0
    for (a, b), k, r in spans:
        assert a == pos, f"{path}: {k} starts at {a}, expected {pos} (hole or overlap)"
        assert b - a == int(np.prod(r["shape"], dtype=np.int64)) * widths[r["dtype"]], k
        assert a % widths[r["dtype"]] == 0 and (8 + n + a) % widths[r["dtype"]] == 0, f"{k} misaligned"
        pos = b
    assert len(raw) == 8 + n + pos, f"{path}: length {len(raw)} != 8 + {n} + {pos}"
    return header


# ---------------------------------------------------------------- running the CLI


def run_cli(*args, env: dict | None = None, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m torch2mlx ARGS`` in a fresh process (stdin closed, text output)."""
    full_env = dict(os.environ)
    full_env.pop("T2MLX_DEBUG", None)
    full_env.update(env or {})
    return subprocess.run(
        T2MLX + [str(a) for a in args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def run_main(*args) -> subprocess.CompletedProcess:
    """``t2mlx ARGS`` in this process (fast; the same ``main`` the console script runs)."""
    import contextlib
    import io

    from torch2mlx.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse
            rc = e.code
    return subprocess.CompletedProcess(["t2mlx", *map(str, args)], rc, out.getvalue(), err.getvalue())


def assert_one_error(proc: subprocess.CompletedProcess, *mentions: str) -> str:
    """Exit status != 0, stderr is a single ``error: ...`` line (no traceback), naming ``mentions``."""
    err = proc.stderr.strip()
    assert proc.returncode == 1, f"exit {proc.returncode}; stderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr and "internal error" not in err, proc.stderr
    assert len(err.splitlines()) == 1 and err.startswith("error: "), f"stderr: {proc.stderr!r}"
    for m in mentions:
        assert str(m) in err, f"{m!r} not in {err!r}"
    return err


def assert_no_index(out) -> None:
    """A failed run never leaves an output that looks complete."""
    out = Path(out)
    assert not (out / INDEX).exists(), f"{out} has an index after a failed run"
    leftovers = [p.name for p in out.glob(".*.tmp")] if out.is_dir() else []
    assert not leftovers, f"temporary files left in {out}: {leftovers}"


def file_bytes(out, p) -> bytes:
    """A file of output ``out``; the model card (README.md) with ``out``'s path as ``<OUT>``: it names the
    directory it is in, so outputs of the same run into two directories compare equal."""
    data = Path(p).read_bytes()
    return data.replace(str(out).encode(), b"<OUT>") if Path(p).name == "README.md" else data
