"""The narrow ``stream.convert`` / ``stream.to_torch``: settings as one ``Options`` (or keywords that build it),
rules as one ``model`` object, errors that name parameters (the CLI spells them as flags).

torch is the oracle for values (``torch.save`` in, the safetensors bytes out).
"""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import SEED
from helpers import assert_one_error, run_main, torch_save
from safetensors.numpy import load_file

import torch2mlx
from torch2mlx import stream
from torch2mlx.analysis.stream_inputs import StreamInputs
from torch2mlx.core.spec import RuleSpec
from torch2mlx.errors import Torch2MLXError


@pytest.fixture
def ckpt(tmp_path):
    g = torch.Generator().manual_seed(SEED)
    return torch_save(
        {"conv.weight": torch.randn(4, 3, 3, 3, generator=g), "fc.weight": torch.randn(5, 4, generator=g)},
        tmp_path / "m.pt",
    )


def test_options_passed_whole_equal_the_keyword_shortcut(ckpt, tmp_path):
    opts = stream.Options.make(dtype="float16", max_shard_size="200B")
    a = stream.convert(ckpt, tmp_path / "a", opts, model=False)
    b = stream.convert(ckpt, tmp_path / "b", model=False, dtype="float16", max_shard_size="200B")
    assert [s.file for s in a.shards] == [s.file for s in b.shards] and len(a.shards) > 1
    for s in a.shards:
        assert (tmp_path / "a" / s.file).read_bytes() == (tmp_path / "b" / s.file).read_bytes()
    out = {k: v for s in a.shards for k, v in load_file(str(tmp_path / "a" / s.file)).items()}
    sd = torch.load(ckpt)
    assert (out["conv.weight"] == sd["conv.weight"].permute(0, 2, 3, 1).half().numpy()).all()
    assert (out["fc.weight"] == sd["fc.weight"].half().numpy()).all()
    with pytest.raises(Torch2MLXError, match="not both"):
        stream.convert(ckpt, tmp_path / "c", opts, model=False, dtype="float32")


def test_rules_arrive_as_one_object(ckpt, tmp_path):
    """An analyzer result gives specs and drops; no other rule parameter exists."""
    given = StreamInputs(
        specs=[RuleSpec("renamed", ("conv.weight",), "identity", {}, "user")], drop={"fc.weight": "not wanted"}
    )
    res = stream.convert(ckpt, tmp_path / "o", model=given)
    out = load_file(str(tmp_path / "o" / res.shards[0].file))
    assert sorted(out) == ["renamed"]
    assert (out["renamed"] == torch.load(ckpt)["conv.weight"].numpy()).all()  # identity: torch layout kept
    with pytest.raises(Torch2MLXError, match="model must be"):
        stream.convert(ckpt, tmp_path / "x", model=[1, 2])
    for old in ("specs", "drop", "module_types", "inputs", "use_model", "to", "transform", "checkpoint"):
        with pytest.raises(TypeError):
            stream.convert(ckpt, tmp_path / "y", **{old: None})


def test_signatures_stay_narrow():
    for fn in (stream.convert, stream.to_torch):
        params = [p for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD]
        assert len(params) <= 12, (fn.__name__, [p.name for p in params])


def test_library_errors_name_parameters_and_the_cli_names_flags(ckpt, tmp_path):
    with pytest.raises(Torch2MLXError) as e:
        stream.convert(ckpt, tmp_path / "o", model=False, q_bits=7)
    assert str(e.value).startswith("q_bits must be one of") and "--" not in str(e.value)
    stream.convert(ckpt, tmp_path / "mlx", model=False)
    with pytest.raises(Torch2MLXError) as e:
        stream.to_torch(tmp_path / "mlx", tmp_path / "back", q_bits=4)
    assert "q_bits" in str(e.value) and "--" not in str(e.value)
    with pytest.raises(Torch2MLXError, match="out is required"):
        stream.convert(ckpt, None, model=False)
    assert_one_error(run_main("stream", ckpt), "OUT is required", "--dry-run")
    assert_one_error(run_main("stream", ckpt, tmp_path / "o2", "--q-group-size", "32"), "--q-group-size", "--q-bits")


def test_to_torch_is_its_own_entry_point(ckpt, tmp_path):
    stream.convert(ckpt, tmp_path / "mlx", model=False)
    res = stream.to_torch(tmp_path / "mlx", tmp_path / "back", format="bin")
    got = torch.load(tmp_path / "back" / res.shards[0].file, weights_only=True)
    sd = torch.load(ckpt)
    assert sorted(got) == sorted(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    assert torch2mlx.stream.to_torch is stream.to_torch


def test_cli_spelling_turns_parameter_names_into_flags():
    """The library's wording, and what ``t2mlx`` prints for it."""
    from torch2mlx.cli import cli_spelling

    assert (
        cli_spelling("q_group_size 32 has no effect without q_bits or q_recipe")
        == "--q-group-size 32 has no effect without --q-bits or --q-recipe"
    )
    assert (
        cli_spelling("the pickle calls a.b, ...; nothing was executed (allow_globals a.b accepts it)")
        == "the pickle calls a.b, ...; nothing was executed (--allow-global a.b accepts it)"
    )
    assert (
        cli_spelling("resume: x changed since y (inode); rerun with overwrite to convert afresh")
        == "--resume: x changed since y (inode); rerun with --overwrite to convert afresh"
    )
    assert cli_spelling("its dtype float8 has no format") == "its dtype float8 has no format"  # prose is left alone
