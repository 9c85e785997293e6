"""When ``t2mlx stream`` imports torch, checked against what the README, --help and help(torch2mlx) say.

The claim: torch (and transformers) are imported only to build the model for exact rules --
``--model``, or a directory with a config.json whose rules are not kept as data (an architecture
outside the registered ones, or tensors their rules do not cover) when both are installed and no cached
analysis matches (the first run, which says so on a terminal unless --quiet/--json); ``--no-model``
never imports it. Each case runs the real CLI in a fresh process and reads ``sys.modules`` afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from llm_checkpoints import build_model, save_safetensors

ROOT = Path(__file__).resolve().parent.parent
STATUS = "analyzing the model (first run; cached afterwards)..."

_RUN = textwrap.dedent("""
    import json, sys
    from torch2mlx.cli import main
    rc = main(sys.argv[1:])
    print(json.dumps({"rc": rc, "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
""")


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return save_safetensors(build_model("llama"), tmp_path_factory.mktemp("claims") / "llama")


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory):
    # an architecture whose rules are not kept as data: the analyzer builds it
    return save_safetensors(build_model("gemma"), tmp_path_factory.mktemp("claims") / "gemma")


def _stream(*args, cache: Path) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("T2MLX_NO_CACHE", "T2MLX_DEBUG")}
    env["T2MLX_CACHE_DIR"] = str(cache)
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, "stream", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.slow
def test_torch_is_imported_exactly_when_the_docs_say(llm_dir, other_dir, tmp_path):
    cache = tmp_path / "cache"
    # --no-model: never, even with a config.json transformers knows and nothing cached
    got, err = _stream(other_dir, tmp_path / "a", "--no-model", cache=cache)
    assert (got["rc"], got["torch"], got["transformers"]) == (0, False, False) and STATUS not in err
    assert not cache.exists() or not any(cache.iterdir())
    # first run on a registered architecture: its rules are kept as data, nothing is built or cached
    got, err = _stream(llm_dir, tmp_path / "d", cache=cache)
    assert (got["rc"], got["torch"], got["transformers"]) == (0, False, False) and STATUS not in err
    assert not cache.exists() or not any(cache.iterdir())
    # first run on a config.json the data does not cover: the analyzer builds the model (stderr is no
    # terminal here, so no status line: a script's stderr holds only warnings and errors)
    got, err = _stream(other_dir, tmp_path / "b", cache=cache)
    assert (got["rc"], got["torch"], got["transformers"]) == (0, True, True)
    assert STATUS not in err
    # a repeat run: the cached analysis, no torch, no status line
    got, err = _stream(other_dir, tmp_path / "c", cache=cache)
    assert (got["rc"], got["torch"], got["transformers"]) == (0, False, False) and STATUS not in err


@pytest.mark.slow
def test_first_run_says_what_it_is_doing_on_a_terminal(other_dir, tmp_path, monkeypatch):
    """The seconds of torch import show as a transient line (erased before the bar, as the bar is erased)."""
    from test_cli import _run_on_a_terminal

    monkeypatch.setenv("T2MLX_NO_CACHE", "1")  # every run a first run
    rc, text = _run_on_a_terminal(["stream", other_dir, tmp_path / "a"])
    assert rc == 0 and STATUS in text and "\r\x1b[K" in text[text.index(STATUS) :], text
    for flag in ("--quiet", "--json"):
        rc, text = _run_on_a_terminal(["stream", other_dir, tmp_path / flag.strip("-"), flag])
        assert rc == 0 and STATUS not in text, (flag, text)
    monkeypatch.delenv("T2MLX_NO_CACHE")
    monkeypatch.setenv("T2MLX_CACHE_DIR", str(tmp_path / "cache"))
    assert _run_on_a_terminal(["stream", other_dir, tmp_path / "b"])[0] == 0
    rc, text = _run_on_a_terminal(["stream", other_dir, tmp_path / "c"])  # cached: nothing slow to announce
    assert rc == 0 and STATUS not in text and "converting" in text, text


def _claims() -> dict[str, str]:
    """Every place that tells a user whether the stream imports torch."""
    import torch2mlx
    import torch2mlx.stream
    from torch2mlx.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    intro = readme[: readme.index("## The two commands")]
    safety = (ROOT / "docs" / "safety.md").read_text()
    library = (ROOT / "docs" / "library-api.md").read_text()
    stream_help = next(
        p for a in build_parser()._subparsers._group_actions for n, p in a.choices.items() if n == "stream"
    ).format_help()
    return {
        "README intro": intro,
        "docs/safety.md": safety,
        "docs/library-api.md": library,
        "t2mlx stream --help": stream_help,
        "help(torch2mlx)": torch2mlx.__doc__,
        "help(torch2mlx.stream)": torch2mlx.stream.__doc__,
    }


@pytest.mark.parametrize(
    "where",
    [
        "README intro",
        "docs/safety.md",
        "docs/library-api.md",
        "t2mlx stream --help",
        "help(torch2mlx)",
        "help(torch2mlx.stream)",
    ],
)
def test_every_claim_states_the_conditions(where):
    text = " ".join(_claims()[where].split())
    # no unconditional promise (what the behaviour above disproves) ...
    for absolute in (
        "without importing torch and",
        "torch is never imported",
        "Never imports torch",
        "Nothing here imports torch",
        "None of `torch2mlx.stream` imports torch",
        "engine (``torch2mlx.stream``, ``t2mlx stream``) never imports torch",
    ):
        assert absolute not in text, f"{where}: {absolute!r}"
    # ... but the conditions the test above checks: config.json, a cache, and the way out
    assert "config.json" in text and re.search(r"cach", text), where
    assert "--no-model" in text or "model=False" in text, where
    assert "kept as data" in text, where  # the registered architectures' first run imports nothing
