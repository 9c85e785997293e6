"""One definition of each public verb: ``torch2mlx.convert`` / ``to_torch`` are the stream's own functions, which
take every source (path, ``Checkpoint``, state dict, live module) and every target (a directory, one
``.safetensors`` file, or -- for ``to_torch`` -- memory); the CLI parses and calls them.

torch is the oracle for values (its tensors in, the bytes and tensors out compared bit for bit).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import assert_one_error, assert_same, canon_bits, canon_torch, run_main, torch_save
from safetensors.numpy import load_file

import torch2mlx
from torch2mlx import stream
from torch2mlx.core.spec import RuleSpec
from torch2mlx.errors import Torch2MLXError

PKG = Path(torch2mlx.__file__).resolve().parent
VERBS = ("open_checkpoint", "convert", "to_torch", "analyze", "generate", "load_converted", "export", "convert_adapter")


def _module_level_defs(name: str) -> list[str]:
    found = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:  # module level: methods are not verbs
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                found.append(str(path.relative_to(PKG.parent)))
    return found


@pytest.mark.parametrize("verb", VERBS)
def test_each_public_verb_is_defined_once(verb):
    assert len(_module_level_defs(verb)) == 1, _module_level_defs(verb)


def test_the_package_verbs_are_the_library_functions_themselves():
    assert torch2mlx.convert is stream.convert
    assert torch2mlx.to_torch is stream.to_torch
    assert torch2mlx.stream.open.__name__ == "open_checkpoint"
    from torch2mlx.analysis import analyze
    from torch2mlx.codegen import generate
    from torch2mlx.model_api import export, load_converted

    assert (torch2mlx.analyze, torch2mlx.generate, torch2mlx.export, torch2mlx.load_converted) == (
        analyze,
        generate,
        export,
        load_converted,
    )
    from torch2mlx.adapters import convert_adapter

    assert torch2mlx.convert_adapter is convert_adapter
    for fn in (
        stream.open,
        stream.convert,
        stream.to_torch,
        analyze,
        generate,
        load_converted,
        export,
        convert_adapter,
    ):
        doc = fn.__doc__ or ""
        assert all(part in doc for part in ("Args:", "Returns:", "Raises:", "Example:")), fn.__name__
    assert {"convert", "to_torch", "analyze", "generate", "export", "load_converted", "stream"} <= set(dir(torch2mlx))
    with pytest.raises(AttributeError):
        torch2mlx.no_such_verb  # noqa: B018


def test_the_lazy_table_imports_nothing_heavy_until_a_verb_is_used():
    code = (
        "import sys, torch2mlx\n"
        "assert not {'torch', 'mlx', 'torch2mlx.stream', 'torch2mlx.analysis'} "
        "& set(sys.modules), sorted(sys.modules)\n"
        "torch2mlx.convert\n"
        "assert 'torch2mlx.stream.convert' in sys.modules and 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_stream_convert_takes_a_state_dict_and_writes_one_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {"conv.weight": torch.randn(4, 3, 3, 3, generator=g), "fc.weight": torch.randn(5, 4, generator=g)}
    res = stream.convert(sd, tmp_path / "w.safetensors", model=[RuleSpec("c", ("conv.weight",), "conv2d")])
    assert res.source == "<state dict>" and sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    got = load_file(tmp_path / "w.safetensors")
    assert_same(canon_bits("float32", got["c"]), canon_torch(sd["conv.weight"].permute(0, 2, 3, 1)), "c")
    assert_same(canon_bits("float32", got["fc.weight"]), canon_torch(sd["fc.weight"]), "fc.weight")
    # a Checkpoint opened beforehand, written into the same file again (replaced whole)
    stream.convert(stream.open(torch_save(sd, tmp_path / "m.pt")), tmp_path / "w.safetensors", dtype="float16")
    assert load_file(tmp_path / "w.safetensors")["fc.weight"].dtype == np.float16


@pytest.mark.parametrize(
    "kw, why",
    [
        (dict(resume=True), "resume=True applies to a directory"),
        (dict(format="zarr"), "format='zarr' writes a directory"),
        (dict(hook=lambda n, a, d: (n, a)), "a hook writes a directory"),
    ],
)
def test_one_file_refuses_what_needs_a_directory(tmp_path, kw, why):
    with pytest.raises(Torch2MLXError, match=why):
        stream.convert({"w": np.ones(3, np.float32)}, tmp_path / "w.safetensors", **kw)
    assert not any(tmp_path.iterdir())


def test_stream_to_torch_writes_a_live_models_directory_and_returns_memory_without_out(tmp_path):
    m = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Linear(3, 4)).eval()
    res = torch2mlx.convert(m, tmp_path / "mlx")
    assert res.source == "<Sequential state dict>"
    sd = m.state_dict()
    # to a directory, the live model giving the rules (no manifest used: model= wins)
    stream.to_torch(tmp_path / "mlx", tmp_path / "back", model=m, format="bin")
    index = json.loads((tmp_path / "back" / "pytorch_model.bin.index.json").read_text())
    files = set(index["weight_map"].values())
    back = {}
    for f in files:
        back.update(torch.load(tmp_path / "back" / f, weights_only=True))
    assert sorted(back) == sorted(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    # in memory: the same tensors, in the model's order
    state = stream.to_torch(tmp_path / "mlx", model=m)
    assert list(state) == list(sd) and all(torch.equal(state[k], sd[k]) for k in sd)


def test_to_torch_says_where_the_model_goes(tmp_path):
    m = nn.Linear(2, 2)
    torch2mlx.convert(m, tmp_path / "w.safetensors")
    with pytest.raises(Torch2MLXError, match="the torch model goes in model="):
        torch2mlx.to_torch(tmp_path / "w.safetensors", m)
    with pytest.raises(Torch2MLXError, match="the torch model goes in model="):
        torch2mlx.to_torch(m)


def test_to_torch_refuses_resume_in_the_library_and_the_cli_spells_it(tmp_path):
    torch_save({"w": torch.ones(3)}, tmp_path / "m.pt")
    stream.convert(tmp_path / "m.pt", tmp_path / "mlx", model=False)
    with pytest.raises(Torch2MLXError) as e:
        stream.to_torch(tmp_path / "mlx", tmp_path / "back", resume=True)
    assert str(e.value) == "resume does not apply to to_torch (it writes the whole output again)"
    proc = run_main("stream", tmp_path / "mlx", tmp_path / "back", "--to", "torch", "--resume")
    msg = assert_one_error(proc, "--resume")
    assert msg == "error: --resume does not apply with --to torch (it writes the whole output again)"
    assert not (tmp_path / "back").exists()


def test_cli_no_model_is_parsed_as_model_false():
    from torch2mlx.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["stream", "a", "b", "--no-model"]).model is False
    assert parse(["stream", "a", "b", "--model", "x:Y"]).model == "x:Y"
    assert parse(["stream", "a", "b"]).model is None


def test_the_cli_writes_one_file_when_out_names_one(tmp_path):
    sd = {"fc.weight": torch.randn(5, 4, generator=torch.Generator().manual_seed(1))}
    torch_save(sd, tmp_path / "m.pt")
    proc = run_main("stream", tmp_path / "m.pt", tmp_path / "w.safetensors", "--no-model", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "w.safetensors").is_file()
    got = load_file(tmp_path / "w.safetensors")
    assert_same(canon_bits("float32", got["fc.weight"]), canon_torch(sd["fc.weight"]), "fc.weight")
    msg = assert_one_error(run_main("stream", tmp_path / "m.pt", tmp_path / "w.safetensors", "--resume"), "resume")
    assert "one .safetensors file is written whole" in msg


_NO_TORCH_SCRIPT = """
import sys
sys.modules["torch"] = None  # any import of torch fails
import numpy as np, mlx.core as mx
import torch2mlx
from torch2mlx.core.spec import RuleSpec
out, back = sys.argv[1], sys.argv[2]
w = np.arange(4 * 3 * 3 * 3, dtype=np.float32).reshape(4, 3, 3, 3)
rules = [RuleSpec("conv.weight", ("conv.weight",), "conv2d")]
torch2mlx.convert({"conv.weight": w, "b": mx.ones(4, dtype=mx.bfloat16)}, out, model=rules)
torch2mlx.to_torch(out, back, model=rules, format="bin")
"""


def test_in_memory_sources_and_the_way_back_to_disk_need_no_torch(tmp_path):
    out, back = tmp_path / "w.safetensors", tmp_path / "back"
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH_SCRIPT, str(out), str(back)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    w = torch.arange(4 * 3 * 3 * 3, dtype=torch.float32).reshape(4, 3, 3, 3)
    from safetensors.torch import load_file as load_torch

    assert torch.equal(load_torch(out)["conv.weight"], w.permute(0, 2, 3, 1))
    (f,) = set(json.loads((back / "pytorch_model.bin.index.json").read_text())["weight_map"].values())
    got = torch.load(back / f, weights_only=True)
    assert torch.equal(got["conv.weight"], w) and torch.equal(got["b"], torch.ones(4, dtype=torch.bfloat16))
