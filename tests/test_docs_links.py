"""The README and docs stand alone: every relative link and path they give exists in a clone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "bench/README.md", "CONTRIBUTING.md"] + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")
)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CLIMB = re.compile(r"(?<![\w.])((?:\.\./)+[\w.\-/]+)")


def _in_clone() -> set[str]:
    """Files a clone holds: git's list when this is a checkout, else what is on disk."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = set(out.splitlines())
    except (OSError, subprocess.CalledProcessError):
        files = set()
    return files or {str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()}


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", markdown, re.M):
        text = re.sub(r"[`*_]", "", heading).strip().lower()
        out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_exist_in_a_clone(doc):
    files = _in_clone()
    dirs = {str(Path(f).parent) for f in files} | {str(p) for f in files for p in Path(f).parents}
    text = (ROOT / doc).read_text()
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.\-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        if not path:
            if anchor not in _anchors(text):
                bad.append(f"#{anchor} (no such heading)")
            continue
        resolved = (ROOT / doc).parent.joinpath(path).resolve()
        try:
            rel = str(resolved.relative_to(ROOT))
        except ValueError:
            bad.append(f"{target} (outside the repository)")
            continue
        if rel not in files and rel.rstrip("/") not in dirs:
            bad.append(f"{target} (not in the repository)")
        elif anchor and rel.endswith(".md") and anchor not in _anchors(resolved.read_text()):
            bad.append(f"{target} (no such heading in {rel})")
    assert not bad, f"{doc}: {bad}"


@pytest.mark.parametrize("doc", DOCS)
def test_no_path_leaves_the_repository(doc):
    """A path in prose or code (`../shared/DESIGN.md`) that climbs out of the clone points at nothing."""
    text = (ROOT / doc).read_text()
    outside = []
    for path in CLIMB.findall(text):
        try:
            (ROOT / doc).parent.joinpath(path).resolve().relative_to(ROOT)
        except ValueError:
            outside.append(path)
    assert not outside, f"{doc}: {outside}"


def test_the_checks_see_links():
    """The patterns find what the README and docs link (a check that finds nothing proves nothing)."""
    readme = (ROOT / "README.md").read_text()
    targets = LINK.findall(readme)
    assert "docs/support-matrix.md" in targets and "#quickstart" in targets and "quickstart" in _anchors(readme)
    assert "docs/cli.md#check-a-conversion-t2mlx-verify" in targets
    assert "check-a-conversion-t2mlx-verify" in _anchors((ROOT / "docs" / "cli.md").read_text())
    assert "../bench/throughput.png" in LINK.findall((ROOT / "docs" / "benchmarks.md").read_text())
    assert CLIMB.findall("see `../shared/DESIGN.md`") == ["../shared/DESIGN.md"]


def test_readme_is_short_and_links_every_docs_page():
    """The README is the way in: at most 250 lines, and every page under docs/ is reachable from it."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    linked = {
        str((ROOT / t.partition("#")[0]).resolve().relative_to(ROOT))
        for t in LINK.findall(readme)
        if t.startswith("docs/")
    }
    pages = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")}
    assert len(pages) >= 11 and pages <= linked, sorted(pages - linked)


@pytest.mark.parametrize("doc", [d for d in DOCS if d.startswith("docs/") and d != "docs/support-matrix.md"])
def test_every_docs_page_links_back_to_the_readme(doc):
    assert "../README.md" in LINK.findall((ROOT / doc).read_text())
