"""The package's layers import only downward, no two modules import each other, and the low layers never reach torch.

Imports are read statically with ``ast`` -- including those inside functions, which is where cycles and torch imports
used to hide -- so the rules hold by structure, not because a code path happened not to run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "torch2mlx"

# Lowest first. A module may import modules of its own layer or of any layer before it, never one after it.
# A module belongs to the first (longest) prefix that matches its dotted name.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("torch2mlx.errors",)),
    ("core", ("torch2mlx.core",)),
    ("formats", ("torch2mlx.formats",)),
    ("stream", ("torch2mlx.stream",)),
    ("analysis", ("torch2mlx.analysis",)),
    ("api", ("torch2mlx.model_api",)),
    ("codegen", ("torch2mlx.codegen",)),
    ("training", ("torch2mlx.training", "torch2mlx.recipes", "torch2mlx.lightning", "torch2mlx.templates")),
    ("entry", ("torch2mlx.cli", "torch2mlx.__main__", "torch2mlx.docs", "torch2mlx")),
]
# Layers that may import only some of the layers below them (besides their own): the analyzer reads checkpoints
# (formats) and rules (core), and knows nothing of the engine that runs plans (stream).
ONLY: dict[str, tuple[str, ...]] = {"analysis": ("base", "core", "formats")}
# The torch-free layers: nothing in them may import torch or transformers, directly or through our own modules.
TORCH_FREE = ("base", "core", "formats", "stream")
FORBIDDEN = ("torch", "transformers")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _targets(name: str, path: Path) -> list[tuple[str, list[str]]]:
    return _targets_in(ast.parse(path.read_text(), str(path)), name, path.name == "__init__.py")


def _targets_in(tree: ast.AST, name: str, is_pkg: bool) -> list[tuple[str, list[str]]]:
    """(module, names imported from it) for every import statement anywhere in ``tree``, relative ones resolved."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, [a.name for a in node.names]))
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports anywhere in its body: our modules by full name, third-party ones by top name."""
    return _resolve(name, _targets(name, path), known)


def _resolve(name: str, targets: list[tuple[str, list[str]]], known: set[str]) -> set[str]:
    out: set[str] = set()
    for mod, names in targets:
        # `from pkg import sub` imports the submodule when one exists, else a name from pkg itself
        out.update(f"{mod}.{n}" if f"{mod}.{n}" in known else mod for n in names or [None])
    resolved = set()
    for mod in out:
        if mod.split(".")[0] != "torch2mlx":
            resolved.add(mod.split(".")[0])
            continue
        while mod not in known and "." in mod:  # `import torch2mlx.x.y` of a name defined in x
            mod = mod.rsplit(".", 1)[0]
        resolved.add(mod)
    resolved.discard(name)
    return resolved


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _layer(name: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{name} belongs to no layer: add it to LAYERS"
    return best


def _ours(graph: dict[str, set[str]], name: str) -> set[str]:
    return {m for m in graph[name] if m in graph}


def test_every_import_of_ours_names_a_module_that_exists():
    """A module moved to another layer leaves no import of its old path (an editable install of another checkout
    could still satisfy it at run time, so only reading the imports shows it)."""
    mods = _modules()
    bad = [
        f"{name}: {mod}"
        for name, path in mods.items()
        for mod, _ in _targets(name, path)
        if mod.split(".")[0] == "torch2mlx" and mod not in mods
    ]
    assert not bad, "imports of modules that do not exist:\n" + "\n".join(bad)


def test_every_module_has_a_layer():
    for name in _graph():
        _layer(name)


def test_imports_point_down():
    graph = _graph()
    bad = []
    for name in graph:
        for dep in _ours(graph, name):
            # a package's __init__ re-exports from its own submodules, and a submodule may import its package
            if dep.startswith(name + ".") or name.startswith(dep + ".") and dep != "torch2mlx":
                continue
            if _layer(dep) > _layer(name):
                bad.append(f"{name} ({LAYERS[_layer(name)][0]}) imports {dep} ({LAYERS[_layer(dep)][0]})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def _narrow_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for name in graph:
        layer = LAYERS[_layer(name)][0]
        allowed = ONLY.get(layer)
        if allowed is None:
            continue
        for dep in _ours(graph, name):
            dep_layer = LAYERS[_layer(dep)][0]
            if dep_layer != layer and dep_layer not in allowed:
                bad.append(f"{name} ({layer}) imports {dep} ({dep_layer}); {layer} imports only {', '.join(allowed)}")
    return sorted(bad)


def test_analysis_imports_only_core_and_formats():
    bad = _narrow_violations(_graph())
    assert not bad, "imports outside a layer's allowed ones:\n" + "\n".join(bad)


def test_the_narrow_check_sees_an_analysis_import_of_the_engine():
    graph = {
        "torch2mlx.analysis.x": {"torch2mlx.stream.plan", "torch2mlx.formats.checkpoint", "torch2mlx.errors", "numpy"},
        "torch2mlx.stream.plan": set(),
        "torch2mlx.formats.checkpoint": set(),
        "torch2mlx.errors": set(),
    }
    assert _narrow_violations(graph) == [
        "torch2mlx.analysis.x (analysis) imports torch2mlx.stream.plan (stream); "
        "analysis imports only base, core, formats"
    ]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), edges between our modules only."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in _edges(graph, v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _edges(graph: dict[str, set[str]], name: str) -> set[str]:
    # a package's __init__ importing its submodules (re-exports) and a submodule importing its package's
    # __init__ are the same package, not a cycle between modules; every other edge counts
    return {d for d in _ours(graph, name) if not d.startswith(name + ".") and not name.startswith(d + ".")}


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_low_layers_never_reach_torch():
    graph = _graph()
    bad = [p for n in sorted(graph) if LAYERS[_layer(n)][0] in TORCH_FREE for p in _reach(graph, n)]
    assert not bad, "torch-free layers reach torch/transformers:\n" + "\n".join(bad)


def _reach(graph: dict[str, set[str]], start: str) -> list[str]:
    """Paths from ``start`` to torch or transformers through our modules' imports."""
    seen, todo, parent, bad = {start}, [start], {}, []
    while todo:
        m = todo.pop()
        for dep in graph[m]:
            if dep in FORBIDDEN:
                path = [m]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                bad.append(" -> ".join(reversed(path)) + f" -> {dep}")
            elif dep in graph and dep not in seen:
                seen.add(dep)
                parent[dep] = m
                todo.append(dep)
    return bad


def test_the_package_init_runs_torch_free():
    """Python runs torch2mlx/__init__.py before any submodule, so what it imports at module level (not inside
    its lazy functions) must be as torch-free as the stream."""
    graph = _graph()
    mods = _modules()
    root = mods["torch2mlx"]
    known = set(graph)
    top = ast.parse(root.read_text())
    eager = set()
    for node in top.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            eager |= _resolve("torch2mlx", _targets_in(node, "torch2mlx", True), known)
    assert eager, "the package __init__ imports something at module level (the version, the errors)"
    bad = [p for d in sorted(eager) for p in (_reach(graph, d) if d in graph else [d] if d in FORBIDDEN else [])]
    assert not bad, "import torch2mlx reaches torch/transformers:\n" + "\n".join(bad)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """The parser resolves relative imports and finds imports nested in functions (where cycles used to hide)."""
    pkg = tmp_path / "torch2mlx"
    (pkg / "a").mkdir(parents=True)
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("def f():\n    from .y import g\n    import torch\n")
    (pkg / "a" / "y.py").write_text("from . import x\n")
    known = {"torch2mlx.a", "torch2mlx.a.x", "torch2mlx.a.y"}
    assert _imports("torch2mlx.a.x", pkg / "a" / "x.py", known) == {"torch2mlx.a.y", "torch"}
    assert _imports("torch2mlx.a.y", pkg / "a" / "y.py", known) == {"torch2mlx.a.x"}
    graph = {"torch2mlx.a.x": {"torch2mlx.a.y", "torch"}, "torch2mlx.a.y": {"torch2mlx.a.x"}}
    assert _cycles(graph) == [["torch2mlx.a.x", "torch2mlx.a.y"]]
