"""``t2mlx stream``: dry run, JSON, options as documented, and one ``error:`` line for every bad input."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import textwrap

import pytest
import torch
from conftest import SEED
from helpers import (
    INDEX,
    MANIFEST,
    T2MLX,
    assert_no_index,
    assert_one_error,
    check_converted,
    read_json,
    run_cli,
    run_main,
    torch_load,
    torch_save,
)
from safetensors.torch import save_file


def net_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    return {
        "_orig_mod.module.stem.weight": torch.randn(8, 3, 3, 3, generator=g),  # inferred conv2d
        "_orig_mod.module.stem.bias": torch.randn(8, generator=g),
        "_orig_mod.module.up.weight": torch.randn(8, 4, 2, 2, generator=g),  # really a ConvTranspose2d
        "_orig_mod.module.seq.weight": torch.randn(6, 8, 5, generator=g).half(),  # inferred conv1d
        "_orig_mod.module.attn.c_proj.weight": torch.randn(6, 10, generator=g),  # HF Conv1D (in, out)
        "_orig_mod.module.bn.num_batches_tracked": torch.tensor(5),
        "_orig_mod.module.aux.weight": torch.randn(2, 2, generator=g),
        "_orig_mod.module.table": torch.randn(3, 3, 3, generator=g),  # 3-D, not a *.weight
    }


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return torch_save(net_state_dict(), tmp_path_factory.mktemp("net") / "net.pt")


P = "_orig_mod.module."


def test_default_conversion_and_report(net, out):
    proc = run_main("stream", net, out)
    assert proc.returncode == 0, proc.stderr
    check_converted(
        out,
        torch_load(net),
        rule_sources={
            P + "stem.weight": "inferred",
            P + "seq.weight": "inferred",
            P + "up.weight": "inferred",
            P + "table": "default",
            P + "stem.bias": "default",
        },
    )
    text = proc.stdout
    assert "converted 8 tensors -> 8 in 1 shard(s)" in text
    assert "rules: default 5, inferred 3" in text
    assert f"warning: {P}stem.weight: rule conv2d inferred" in text and f"{P}seq.weight: rule conv1d inferred" in text


def test_strip_prefix_exclude_rule_dtype(net, out):
    proc = run_main(
        "stream",
        net,
        out,
        "--strip-prefix",
        "_orig_mod.",
        "--strip-prefix",
        "module.",
        "--exclude",
        r"num_batches_tracked$",
        "--exclude",
        r"^aux\.",
        "--rule",
        r"up\.weight$=conv_transpose2d",
        "--rule",
        r"c_proj\.weight$=linear_transposed",
        "--rule",
        r"^_orig_mod\.module\.stem\.weight$=identity",
        "--dtype",
        "bfloat16",
    )
    assert proc.returncode == 0, proc.stderr
    sd = torch_load(net)
    kept = {k[len(P) :]: k for k in sd if not k.endswith(("num_batches_tracked", "aux.weight"))}
    rules = {"up.weight": "conv_transpose2d", "attn.c_proj.weight": "linear_transposed", "stem.weight": "identity"}
    check_converted(
        out,
        sd,
        dtype="bfloat16",
        names=kept,
        rules=rules,
        rule_sources={**{k: "user" for k in rules}, "seq.weight": "inferred", "table": "default"},
    )
    assert "dropped: 2" in proc.stdout and "rules: default 2, inferred 1, user 3" in proc.stdout


def test_key_option(tmp_path, out):
    g = torch.Generator().manual_seed(SEED)
    ckpt = {"model": {"a": torch.randn(3, generator=g)}, "ema": {"a": torch.randn(3, generator=g), "b": torch.ones(2)}}
    src = torch_save(ckpt, tmp_path / "ema.pt")
    proc = run_main("stream", src, out, "--key", "ema")
    assert proc.returncode == 0, proc.stderr
    check_converted(out, torch_load(src)["ema"])
    assert "'ema' (chosen by --key)" in proc.stdout


@pytest.mark.parametrize("size,shards", [("300", 8), ("1KB", 3), ("1KiB", 2), ("0.5MiB", 1)])
def test_max_shard_size_units(tmp_path, out, size, shards):
    sd = {f"t{i}": torch.full((64,), float(i)) for i in range(8)}  # 256 bytes each: 3 fit in 1KB, 4 in 1KiB
    src = torch_save(sd, tmp_path / "eight.pt")
    assert run_main("stream", src, out, "--max-shard-size", size).returncode == 0
    assert len(set(read_json(out / INDEX)["weight_map"].values())) == shards
    check_converted(out, sd)


def test_dry_run_prints_the_plan_and_writes_nothing(net, out):
    proc = run_main("stream", net, out, "--dry-run", "--strip-prefix", P, "--dtype", "float16")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["output", "source", "rule", "from", "dtype", "shape", "shard"]
    rows = {line.split()[0]: line.split() for line in lines[1:9]}
    assert rows["stem.weight"][1:] == [
        P + "stem.weight",
        "conv2d",
        "inferred",
        "float32->float16",
        "8x3x3x3",
        "model.safetensors",
    ]
    assert rows["bn.num_batches_tracked"][2:5] == ["identity", "default", "int64"]
    assert not out.exists()


def test_json_output(net, out):
    dry = run_main("stream", net, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True and plan["tensors_in"] == 8
    assert plan["plan"][P + "up.weight"]["rule"] == "conv2d" and plan["plan"][P + "up.weight"]["shape"] == [8, 2, 2, 4]
    real = run_main("stream", net, out, "--json")
    res = json.loads(real.stdout)
    assert res["tensors_out"] == 8 and res["bytes_out"] == read_json(out / INDEX)["metadata"]["total_size"]
    assert {s["file"]: s["xxh3-128"] for s in res["shards"]} == {
        f: r["xxh3-128"] for f, r in read_json(out / MANIFEST)["shards"].items()
    }
    assert res["rules_by_source"] == {"default": 5, "inferred": 3}


def test_real_process_output_is_clean(dtype_files, out):
    """A conversion whose casts overflow (float64 1e300 -> inf) prints the report and nothing on stderr."""
    proc = run_cli("stream", dtype_files["zip"], out, "--dtype", "float16")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("converted ")
    check_converted(out, torch_load(dtype_files["zip"]), dtype="float16")


def _run_on_a_terminal(args) -> tuple[int, str]:
    """Run ``t2mlx`` with stderr on a pseudo-terminal (where a progress bar shows); return (exit, terminal text)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    proc = subprocess.Popen(
        T2MLX + [str(a) for a in args], stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL
    )
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_progress_bar_on_a_terminal_and_quiet(tmp_path, dtype_files):
    rc, text = _run_on_a_terminal(["stream", dtype_files["zip"], tmp_path / "a"])
    assert rc == 0 and "converting" in text and "B/s" in text, text
    rc, text = _run_on_a_terminal(["stream", dtype_files["zip"], tmp_path / "b", "--quiet"])
    assert rc == 0 and text == "", text


# ---------------------------------------------------------------- dry run reads no tensor data

_IO_SCRIPT = textwrap.dedent("""
    import contextlib, io, json, sys
    from torch2mlx.cli import main
    src, warm, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    with contextlib.redirect_stdout(io.StringIO()):          # lazy imports happen here, not below
        main(["stream", warm, "--dry-run", "--json"])
    maps = []
    sys.addaudithook(lambda event, a: maps.append(a[:2]) if event == "mmap.__new__" else None)
    def rchar():
        with open("/proc/self/io") as f:
            return int(dict(line.split(": ") for line in f.read().splitlines())["rchar"])
    before = rchar()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["stream", src] + args)
    read = rchar() - before
    print(json.dumps({"rc": rc, "read": read, "mmaps": len(maps), "stdout": buf.getvalue()}))
""")


def _io_probe(src, warm, *args) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _IO_SCRIPT, str(src), str(warm), *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def big_sources(tmp_path_factory):
    """~24 MiB of tensors (contiguous and strided views) in each format; a tiny file to warm up."""
    d = tmp_path_factory.mktemp("big")
    g = torch.Generator().manual_seed(SEED)
    w = torch.randn(2048, 3072, generator=g)
    sd = {"w": w, "w.t": w.t(), "w.cols": w[:, ::4], "conv.weight": torch.randn(64, 32, 3, 3, generator=g)}
    shards = d / "shards"
    shards.mkdir()
    save_file({"w": w}, shards / "a.safetensors")
    save_file({"conv.weight": sd["conv.weight"].contiguous(), "b": w[:1000].contiguous()}, shards / "b.safetensors")
    return {
        "zip": torch_save(sd, d / "big.pt"),
        "legacy": torch_save(sd, d / "big_legacy.pt", "legacy"),
        "dir": shards,
        "warm": torch_save({"x": torch.ones(2)}, d / "warm.pt"),
    }


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io read counters")
@pytest.mark.parametrize("kind", ["zip", "legacy", "dir"])
@pytest.mark.slow
def test_dry_run_reads_no_tensor_data(big_sources, tmp_path, kind):
    data_bytes = 2048 * 3072 * 4
    dry = _io_probe(big_sources[kind], big_sources["warm"], tmp_path / "out", "--dry-run", "--json")
    assert dry["rc"] == 0 and json.loads(dry["stdout"])["dry_run"] is True
    assert dry["read"] < 1 << 20, f"dry run read {dry['read']} bytes"
    assert dry["mmaps"] == 0
    assert not (tmp_path / "out").exists()
    # the probe does see reads: the same conversion for real reads every byte of tensor data
    real = _io_probe(big_sources[kind], big_sources["warm"], tmp_path / "out", "--dtype", "float16", "--json")
    assert real["rc"] == 0 and real["read"] + real["mmaps"] * (1 << 20) >= data_bytes


# ---------------------------------------------------------------- bad input: one error line, no index


def _truncate(path, keep: float):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


OUT = object()  # stands for the test's own output directory


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, net) -> dict:
    """case -> (argv after 'stream', text the error line must contain)."""
    tmp_path = tmp_path_factory.mktemp("bad")
    out = OUT
    sd = net_state_dict()
    cases = {"missing path": ([tmp_path / "nope.pt", out], "nope.pt")}
    f = tmp_path / "weights.onnx"
    f.write_bytes(b"\x93NUMPY not a checkpoint")
    cases["unknown format"] = ([f, out], "unknown checkpoint format")
    f = tmp_path / "garbage.pt"
    f.write_bytes(os.urandom(4096))
    cases["garbage .pt"] = ([f, out], "garbage.pt")
    f = tmp_path / "empty.bin"
    f.write_bytes(b"")
    cases["empty .bin"] = ([f, out], "empty.bin")
    for keep in (0.5, 0.999):
        f = _truncate(torch_save(sd, tmp_path / f"cut{keep}.pt"), keep)
        cases[f"truncated zip {keep}"] = ([f, out], f.name)
        f = _truncate(torch_save(sd, tmp_path / f"cut{keep}_legacy.pt", "legacy"), keep)
        cases[f"truncated legacy {keep}"] = ([f, out], f.name)
    f = tmp_path / "cut.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, f)
    cases["truncated safetensors"] = ([_truncate(f, 0.9), out], "cut.safetensors")
    from test_readers_pickle import _repack

    f = _repack(
        torch_save(sd, tmp_path / "pkl.pt"),
        tmp_path / "corrupt_pkl.pt",
        transform=lambda name, data: os.urandom(len(data)) if name.endswith("data.pkl") else data,
    )
    cases["corrupt data.pkl"] = ([f, out], "corrupt_pkl.pt")
    from test_readers_dirs import _model_sd, _write_dir

    d = _write_dir(tmp_path / "missing_shard", _model_sd(), "zip", sidecars=False)
    (d / "pytorch_model-00003-of-00003.bin").unlink()
    cases["index names a missing shard"] = ([d, out], "pytorch_model-00003-of-00003.bin")
    d = _write_dir(tmp_path / "dups", _model_sd(), "safetensors", index=False, sidecars=False)
    save_file({"embed.weight": torch.zeros(1)}, d / "zz.safetensors")
    cases["duplicate names across shards"] = ([d, out], "embed.weight")
    cases["OUT missing"] = ([net], "OUT")
    f = tmp_path / "a_file"
    f.write_text("x")
    cases["OUT is a file"] = ([net, f], "not a directory")
    cases["unknown rule"] = ([net, out, "--rule", "stem=conv9d"], "conv9d")
    cases["bad regex"] = ([net, out, "--exclude", "(unclosed"], "(unclosed")
    cases["rule does not fit"] = ([net, out, "--rule", "bias=conv2d"], "bias")
    cases["bad size"] = ([net, out, "--max-shard-size", "12XB"], "12XB")
    cases["zero size"] = ([net, out, "--max-shard-size", "0"], "0")
    cases["names collide"] = (
        [net, out, "--strip-prefix", P, "--strip-prefix", "stem.", "--strip-prefix", "up."],
        "'weight'",
    )
    cases["everything excluded"] = ([net, out, "--exclude", "."], "nothing to convert")
    cases["key names nothing"] = ([net, out, "--key", "nothing"], "nothing")
    return cases


BAD = [
    "missing path",
    "unknown format",
    "garbage .pt",
    "empty .bin",
    "truncated zip 0.5",
    "truncated zip 0.999",
    "truncated legacy 0.5",
    "truncated legacy 0.999",
    "truncated safetensors",
    "corrupt data.pkl",
    "index names a missing shard",
    "duplicate names across shards",
    "OUT missing",
    "OUT is a file",
    "unknown rule",
    "bad regex",
    "rule does not fit",
    "bad size",
    "zero size",
    "names collide",
    "everything excluded",
    "key names nothing",
]


def _args(bad_inputs, case, out):
    args, mention = bad_inputs[case]
    return [out if a is OUT else a for a in args], mention


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_error_line(bad_inputs, out, case):
    args, mention = _args(bad_inputs, case, out)
    assert_one_error(run_main("stream", *args), mention)
    assert_no_index(out)


@pytest.mark.parametrize("case", ["missing path", "truncated legacy 0.5", "index names a missing shard"])
@pytest.mark.slow
def test_bad_input_in_a_real_process(bad_inputs, out, case):
    args, mention = _args(bad_inputs, case, out)
    assert_one_error(run_cli("stream", *args), mention)
    assert_no_index(out)


def test_non_empty_out_without_overwrite(net, out):
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_one_error(run_main("stream", net, out), "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert run_main("stream", net, out, "--overwrite").returncode == 0
    check_converted(out, torch_load(net))
