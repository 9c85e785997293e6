"""Options that would silently do nothing: each is refused with one line, or warned about in the report.

CLI and library agree: the checks live in the library (``Options.make``, ``planner.build``,
``stream.convert``), so ``torch2mlx.convert`` and ``torch2mlx.stream.convert`` refuse
and warn as ``t2mlx stream`` does.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SEED
from helpers import assert_one_error, check_converted, convert, read_json, run_main, torch_save

import torch2mlx
from torch2mlx.errors import Torch2MLXError


def prefixed_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    return {
        "model.0.weight": torch.randn(4, 3, 3, 3, generator=g),  # a 4-D *.weight: inferred conv2d
        "model.0.bias": torch.randn(4, generator=g),
        "model.1.weight": torch.randn(5, 4, generator=g),
    }


@pytest.fixture
def ckpt(tmp_path):
    return torch_save(prefixed_state_dict(), tmp_path / "m.pt")


def test_q_group_size_without_q_bits_is_refused(ckpt, tmp_path):
    proc = run_main("stream", ckpt, tmp_path / "o", "--q-group-size", "32")
    assert_one_error(proc, "--q-group-size", "--q-bits")
    assert not (tmp_path / "o").exists()
    with pytest.raises(Torch2MLXError, match="q_group_size 32 has no effect without q_bits"):
        torch2mlx.stream.convert(ckpt, tmp_path / "o2", q_group_size=32, model=False)
    with pytest.raises(Torch2MLXError, match="q_group_size"):
        torch2mlx.convert(prefixed_state_dict(), tmp_path / "o3.safetensors", q_group_size=32)


def test_q_group_size_with_q_bits_still_applies(ckpt, tmp_path):
    res = convert(ckpt, tmp_path / "o", q_bits=4, q_group_size=32, model=False)
    assert res.plan.quantization["group_size"] == 32
    res = convert(ckpt, tmp_path / "o64", q_bits=4, model=False)  # the default
    assert res.plan.quantization["group_size"] == 64


def test_resume_with_overwrite_is_refused(ckpt, tmp_path):
    out = tmp_path / "o"
    convert(ckpt, out, model=False)
    before = sorted(p.name for p in out.iterdir())
    proc = run_main("stream", ckpt, out, "--resume", "--overwrite", "--no-model")
    assert_one_error(proc, "--resume", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == before
    with pytest.raises(Torch2MLXError, match="resume and overwrite contradict"):
        convert(ckpt, out, resume=True, overwrite=True, model=False)


def test_strip_prefix_that_matches_nothing_is_warned(ckpt, tmp_path):
    proc = run_main(
        "stream", ckpt, tmp_path / "o", "--no-model", "--strip-prefix", "nothere.", "--strip-prefix", "model."
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning: --strip-prefix 'nothere.' matched no tensor name" in proc.stdout
    assert "'model.' matched" not in proc.stdout
    res = convert(ckpt, tmp_path / "o2", strip_prefix=["nothere."], model=False)
    assert "--strip-prefix 'nothere.' matched no tensor name" in res.plan.warnings
    assert (
        "--strip-prefix 'nothere.' matched no tensor name" in read_json(tmp_path / "o2" / "torch2mlx.json")["warnings"]
    )


def test_rule_written_against_the_stripped_name_applies(ckpt, tmp_path):
    """Rules and excludes see both the source name and the name after --strip-prefix."""
    out = tmp_path / "o"
    proc = run_main(
        "stream",
        ckpt,
        out,
        "--no-model",
        "--strip-prefix",
        "model.",
        "--rule",
        r"^0\.weight=identity",
        "--exclude",
        r"^1\.weight$",
    )
    assert proc.returncode == 0, proc.stderr
    assert "matched no tensor" not in proc.stdout
    sd = prefixed_state_dict()
    check_converted(
        out,
        sd,
        names={"0.weight": "model.0.weight", "0.bias": "model.0.bias"},
        rules={"0.weight": "identity"},
        rule_sources={"0.weight": "user"},
    )
    # the source (pre-strip) name works as before
    out2 = tmp_path / "o2"
    convert(ckpt, out2, strip_prefix=["model."], rules=[r"^model\.0\.weight=identity"], model=False)
    check_converted(
        out2,
        sd,
        names={"0.weight": "model.0.weight", "0.bias": "model.0.bias", "1.weight": "model.1.weight"},
        rules={"0.weight": "identity"},
    )


def test_rule_and_exclude_matching_nothing_are_warned(ckpt, tmp_path):
    res = convert(
        ckpt,
        tmp_path / "o",
        rules=[r"^nomatch=identity", r"0\.weight=identity", r"model\.0\.weight=conv2d"],
        exclude=["^gone$"],
        model=False,
    )
    assert "--rule '^nomatch=identity' matched no tensor" in res.plan.warnings
    assert "--exclude '^gone$' matched no tensor" in res.plan.warnings
    # shadowed by an earlier rule for model.0.weight, but it matches a name: not a no-op
    assert not any("conv2d" in w for w in res.plan.warnings)
