"""Usage errors, exit codes, option choices and error wording: what --help and the docs promise, checked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import assert_one_error, run_cli, run_main, torch_save

from torch2mlx.core import quant
from torch2mlx.core.quant_recipes import MIXED_RECIPES
from torch2mlx.formats.checkpoint import WEIGHT_SUFFIXES
from torch2mlx.stream.options import OUT_DTYPES
from torch2mlx.stream.writers.zarr_store import COMPRESSORS

# seconds per test (subprocesses, real models or many examples): `make test-fast` leaves this file out
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CLI_DOC = (ROOT / "docs" / "cli.md").read_text()
SAFETY_DOC = (ROOT / "docs" / "safety.md").read_text()
LLM_DOC = (ROOT / "docs" / "llm.md").read_text()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    sd = {"fc.weight": torch.randn(8, 64, generator=g), "fc.bias": torch.randn(8, generator=g)}
    return torch_save(sd, tmp_path_factory.mktemp("usage") / "small.pt")


def _listed(values) -> str:
    return ", ".join(map(str, values))


USAGE = {  # argv after 'stream SRC OUT' -> what the one error line must say
    "dtype": (["--dtype", "fp16"], ["--dtype", "'fp16'", f"(choose from {_listed(OUT_DTYPES)})"]),
    "q-bits out of range": (["--q-bits", "7"], ["--q-bits", " 7 ", f"(choose from {_listed(quant.BITS)})"]),
    "q-bits not a number": (["--q-bits", "four"], ["--q-bits", "'four'", f"(choose from {_listed(quant.BITS)})"]),
    "q-group-size": (["--q-group-size", "48"], ["--q-group-size", f"(choose from {_listed(quant.GROUP_SIZES)})"]),
    "q-recipe": (["--q-recipe", "mixed_9"], ["--q-recipe", f"(choose from {_listed(MIXED_RECIPES)})"]),
    "zarr-compressor": (["--zarr-compressor", "lz4"], [f"(choose from {_listed(COMPRESSORS)})"]),
    "workers zero": (["--workers", "0"], ["--workers", "positive", "'0'"]),
    "workers negative": (["--workers", "-2"], ["--workers", "positive"]),
    "unknown option": (["--bogus"], ["--bogus", "--help"]),
}


@pytest.mark.parametrize("case", sorted(USAGE))
def test_usage_error_is_one_line_naming_the_choices(small, tmp_path, case):
    argv, mentions = USAGE[case]
    proc = run_cli("stream", small, tmp_path / "out", *argv)
    assert_one_error(proc, *mentions)  # exit 1 (2 is for bugs), one 'error:' line, no usage block
    assert "usage:" not in proc.stderr and not (tmp_path / "out").exists()


def test_missing_arguments_are_usage_errors_too():
    assert_one_error(run_cli("stream"), "SRC", "t2mlx stream --help")
    assert_one_error(run_cli(), "COMMAND", "t2mlx --help")


# ---------------------------------------------------------------- exit codes: --help, docs and behaviour agree

HELP_CODES = (
    "exit status: 0 done; 1 bad input or usage (one line 'error: ...' on stderr; for verify also: a "
    "check failed); 2 internal error (a bug in torch2mlx: please report it); 130 interrupted."
)


@pytest.mark.parametrize("command", [[], ["stream"], ["analyze"], ["verify"], ["codegen"]])
def test_every_help_lists_the_exit_codes(command):
    proc = run_cli(*command, "--help")
    assert proc.returncode == 0
    assert HELP_CODES in " ".join(proc.stdout.split())


def test_docs_give_the_same_exit_codes():
    text = " ".join(CLI_DOC.split())
    assert re.search(
        r"Exit status \(also in `t2mlx --help`\): 0 done; 1 bad input or usage .*?`verify`, a failed "
        r"check; 2 internal error \(a bug in torch2mlx: please report it\); 130 interrupted",
        text,
    )
    assert "Exit status 2 (`internal error`) means a bug in torch2mlx" in " ".join(SAFETY_DOC.split())


def test_exit_codes_as_documented(small, tmp_path, monkeypatch):
    assert run_main("stream", small, tmp_path / "ok", "--quiet").returncode == 0
    assert assert_one_error(run_main("stream", tmp_path / "nope.pt", tmp_path / "o1"), "nope.pt")
    import torch2mlx.stream as s

    def bug(*a, **k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(s, "convert", bug)
    proc = run_main("stream", small, tmp_path / "o2")
    assert proc.returncode == 2 and proc.stderr.startswith("error: internal error: RuntimeError: a bug")


# ---------------------------------------------------------------- choices from the tables, in --help and docs


def _stream_parser():
    from torch2mlx.cli import build_parser

    return next(p for a in build_parser()._subparsers._group_actions for n, p in a.choices.items() if n == "stream")


def test_choices_come_from_the_library_tables():
    acts = {a.dest: a for a in _stream_parser()._actions}
    assert tuple(acts["q_bits"].choices) == quant.BITS
    assert tuple(acts["q_group_size"].choices) == quant.GROUP_SIZES
    assert tuple(acts["q_recipe"].choices) == tuple(MIXED_RECIPES)
    assert tuple(acts["dtype"].choices) == OUT_DTYPES
    assert tuple(acts["zarr_compressor"].choices) == COMPRESSORS


def test_help_and_docs_list_the_same_choices():
    helptext = " ".join(_stream_parser().format_help().split())
    assert f"BITS ({_listed(quant.BITS)})" in helptext
    assert f"group size: {_listed(quant.GROUP_SIZES)}" in helptext
    assert f"({_listed(MIXED_RECIPES)})" in helptext
    assert "--workers N worker threads (default: cores + 1, at most 4)" in helptext
    rows = [line for line in (CLI_DOC + LLM_DOC).splitlines() if line.startswith("| `--")]
    bits = "`--q-bits " + "\\|".join(map(str, quant.BITS)) + "`"
    groups = "`--q-group-size " + "\\|".join(map(str, quant.GROUP_SIZES)) + "`"
    recipes = "`--q-recipe " + "\\|".join(MIXED_RECIPES) + "`"
    for cell in (bits, groups, recipes):
        assert sum(cell in r for r in rows) == 2, cell  # the stream table (cli.md) and the mlx-lm table (llm.md)
    assert any(r.startswith("| `--workers N` | worker threads (default: cores + 1, at most 4)") for r in rows)


def test_q_bits_1_offered_by_the_cli_works(tmp_path, small):
    """--q-bits 1 (in quant.BITS, so now offered) gives what mx.quantize gives."""
    out = tmp_path / "q1"
    assert run_main("stream", small, out, "--q-bits", "1", "--q-group-size", "32", "--quiet").returncode == 0
    got = mx.load(str(out / "model.safetensors"))
    w = mx.array(torch.load(small, weights_only=True)["fc.weight"].numpy())
    want = mx.quantize(w, group_size=32, bits=1)
    for k, v in zip(("weight", "scales", "biases"), want, strict=True):
        assert np.array_equal(np.array(got[f"fc.{k}"]), np.array(v)), k


# ---------------------------------------------------------------- errors name their file or option


def test_size_errors_name_the_option(small, tmp_path):
    for size in ("0", "12XB"):
        assert_one_error(
            run_main("stream", small, tmp_path / "o", "--max-shard-size", size), "--max-shard-size", repr(size)
        )
    from torch2mlx.errors import Torch2MLXError
    from torch2mlx.stream import ShardWriter

    with pytest.raises(Torch2MLXError, match=r"max_shard_size.*'0'"):
        ShardWriter(tmp_path / "w", max_shard_size="0")


def test_unknown_format_lists_every_format_read(tmp_path):
    f = tmp_path / "weights.onnx"  # (.gguf is read since: docs/gguf.md)
    f.write_bytes(b"ONNX not ours")
    err = assert_one_error(run_main("stream", f, tmp_path / "o"), str(f), "unknown checkpoint format")
    for suffix in WEIGHT_SUFFIXES + (".gguf", "zarr"):
        assert suffix in err, suffix
    d = tmp_path / "empty_dir"
    d.mkdir()
    (d / "notes.txt").write_text("x")
    err = assert_one_error(run_main("stream", d, tmp_path / "o"), str(d), "no weight files")
    for suffix in WEIGHT_SUFFIXES + ("zarr",):
        assert suffix in err, suffix


# ---------------------------------------------------------------- Checkpoint repr, report units


def test_checkpoint_repr_is_short(tmp_path):
    import torch2mlx.stream as s

    d = tmp_path / "ck"
    d.mkdir()
    torch_save({f"layers.{i}.weight": torch.zeros(16, 16) for i in range(200)}, d / "a.bin")
    torch_save({"head.weight": torch.zeros(4, 16)}, d / "b.bin")
    (d / "config.json").write_text(json.dumps({"model_type": "x", "secret_key_in_config": list(range(100))}))
    ck = s.open(d)
    text = repr(ck)
    assert str(ck) == text and "\n" not in text and len(text) < 200, text
    assert text == (
        f"<Checkpoint {str(d)!r}: pickle, 201 tensors, {ck.nbytes / 2**10:.2f} KiB "
        f"({ck.nbytes:,} bytes) in 2 files, 1 sidecar file>"
    )
    assert "layers" not in text and "secret" not in text


def test_report_units_are_mib(small, tmp_path):
    proc = run_main("stream", small, tmp_path / "o")
    line = proc.stdout.splitlines()[1]
    assert re.fullmatch(r"[\d.]+ (B|KiB|MiB|GiB) in, [\d.]+ (B|KiB|MiB|GiB) out, [\d.]+ s, \d+ MiB/s", line), line
    assert "MB" not in proc.stdout.replace("MiB", "")
    rep = json.loads(run_main("stream", small, tmp_path / "j", "--json").stdout)
    assert "mib_per_s" in rep and "mb_per_s" not in rep


def test_missing_torch_names_the_model_class(monkeypatch):
    import sys

    from torch2mlx.analysis import build
    from torch2mlx.errors import Torch2MLXError

    monkeypatch.setitem(sys.modules, "torch", None)  # importlib.util.find_spec now reports it missing
    with pytest.raises(Torch2MLXError, match=r"the model class mypkg\.nets:Net needs torch, which is not installed"):
        build.from_class("mypkg.nets:Net")


def test_missing_zarr_names_the_store_or_the_option(small, tmp_path, monkeypatch):
    import sys

    assert run_main("stream", small, tmp_path / "s.zarr", "--format", "zarr", "--quiet").returncode == 0
    monkeypatch.setitem(sys.modules, "zarr", None)  # `import zarr` now fails as if it were not installed
    assert_one_error(
        run_main("stream", small, tmp_path / "o.zarr", "--format", "zarr"), "--format zarr", "needs the zarr package"
    )
    assert_one_error(
        run_main("stream", tmp_path / "s.zarr", tmp_path / "o"),
        str(tmp_path / "s.zarr"),
        "reading a zarr store needs the zarr package",
    )
