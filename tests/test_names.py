"""One name, one meaning: no public class is defined in two modules, and a public function name is shared
only by the modules listed here (variants of one idea: a table's ``get``, a format's ``read_entries``)."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "torch2mlx"

# Top-level functions of one name in several modules, each the same idea in its own place.
SHARED_FUNCTIONS = {
    # the seam through which the stream asks the analyzer, and the analyzer's side of it
    "reverse_inputs",
    "stream_inputs",
    "module_inputs",
    # one per table, format, sink or module
    "get",
    "read_entries",
    "dequantize",
    "write",
    "manifest",
    "shard_name",
    "main",
    "load",
    "check",
    "from_module",
    "infer_kind",
    "generate_forward",
    # one per quantization format (core.quant / quant_fp; prequant's gptq / awq; dequant / prequant.mxfp4 views)
    "quantize",
    "detect",
    "view",
    "group_index",
    "words",
    "zeros",
    "describes",
    "dequantized",
    "read_scales",
    # one per kind of transform the planner attaches (transforms: float8 and quantization; gguf_plan: GGUF blocks)
    "attach",
    "rebuild",
    "error_notes",
    # one per output target (stream/targets: the dispatch and each target's module)
    "apply",
    "source_config",
    "matches",
    "mismatch",
    "config",
}


def _definitions() -> dict[tuple[str, str], list[str]]:
    found = collections.defaultdict(list)
    for p in sorted(PKG.rglob("*.py")):
        for node in ast.parse(p.read_text(), str(p)).body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and not node.name.startswith("_"):
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                found[(kind, node.name)].append(str(p.relative_to(PKG.parent)))
    return found


def test_no_public_class_is_defined_twice():
    twice = {name: where for (kind, name), where in _definitions().items() if kind == "class" and len(where) > 1}
    assert not twice, f"one class name, several classes: {twice}"


def test_public_functions_share_names_only_where_listed():
    twice = {
        name: where
        for (kind, name), where in _definitions().items()
        if kind == "function" and len(where) > 1 and name not in SHARED_FUNCTIONS
    }
    assert not twice, f"one function name, several meanings: {twice}"
