"""Every file, folder, module and test the user-facing docs name exists, and no doc cites team-only notes."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "example_project" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TOP_LEVEL = {p.name for p in REPO.iterdir() if not p.name.startswith(".") or p.name == ".ci"} - {"test-artifacts"}

LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\s]+)`")
PATHLIKE = re.compile(r"^[\w.-]+(/[\w.*-]+)*/?(::\w+)?$")
MODULE = re.compile(r"^(datapipe_dagster|example_project|benchmarks)(\.\w+)+$")


def links(doc: Path) -> list[str]:
    """Relative link targets of a markdown file (web links and pure anchors left out)."""
    out = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        out.append(target.split("#", 1)[0])
    return out


def named_paths(doc: Path) -> list[str]:
    """Repository paths named in inline code: ``docs/design.md``, ``tests/test_engine.py::test_x``, ``Makefile``."""
    out = []
    for token in CODE.findall(doc.read_text()):
        token = token.rstrip(".,;:")
        if not PATHLIKE.match(token):
            continue
        first = token.split("/", 1)[0].split("::", 1)[0]
        if first in TOP_LEVEL and ("/" in token or "." in first or first == "Makefile"):
            out.append(token)
    return out


def named_modules(doc: Path) -> list[str]:
    return [t for t in CODE.findall(doc.read_text()) if MODULE.match(t)]


def importable(dotted: str) -> bool:
    """A module, or an attribute of one (``datapipe_dagster.DatapipeComponent``,
    ``example_project.catalog.make_catalog``)."""
    try:
        if importlib.util.find_spec(dotted) is not None:
            return True
    except (ImportError, AttributeError):  # a parent is a module, not a package
        pass
    module, _, attr = dotted.rpartition(".")
    if not module:
        return False
    try:
        return hasattr(importlib.import_module(module), attr)
    except ImportError:
        return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc: Path) -> None:
    missing = [t for t in links(doc) if not (doc.parent / t).exists()]
    assert not missing, f"{doc.relative_to(REPO)} links to missing files: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_named_files_and_tests_exist(doc: Path) -> None:
    missing = []
    for token in named_paths(doc):
        path, _, test = token.partition("::")
        if not (REPO / path).exists():
            missing.append(token)
        elif test and not re.search(rf"def {test}\b", (REPO / path).read_text()):
            missing.append(token)
    for mod in named_modules(doc):
        if not importable(mod):
            missing.append(mod)
    assert not missing, f"{doc.relative_to(REPO)} names paths or modules that do not exist: {missing}"


def test_the_checks_see_what_the_docs_name() -> None:
    """Guard the guard: the extractors find the references the README is known to make."""
    readme = REPO / "README.md"
    assert "docs/design.md" in links(readme) and "docs/api.md" in links(readme)
    assert "example_project/dagster.postgres.yaml" in named_paths(readme)
    assert any(t.startswith("tests/") for d in DOCS for t in named_paths(d))


def test_no_file_cites_team_only_notes() -> None:
    """Users get the repository, not the team's shared folder: nothing may send them there."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    banned = ("ENGINEERING" + ".md", "ENGINEERING" + " §", "../" + "shared")
    hits = []
    for name in files:
        path = REPO / name
        if not path.is_file() or path.suffix in (".png", ".jpg"):
            continue
        text = path.read_text(errors="replace")
        hits += [f"{name}: {b}" for b in banned if b in text]
    assert not hits, hits


API = REPO / "docs" / "api.md"
PRINTED = re.compile(r"^\s*print\(.*\)\s+# (.+)$", re.M)


def python_blocks(doc: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)


def test_every_public_name_has_a_section_in_the_api_reference() -> None:
    import datapipe_dagster

    headings = re.findall(r"^### `(\w+)`$", API.read_text(), re.M)
    missing = sorted(set(datapipe_dagster.__all__) - set(headings))
    stray = sorted(set(headings) - set(datapipe_dagster.__all__))
    assert not missing, f"docs/api.md has no section for {missing}"
    assert not stray, f"docs/api.md documents names that are not public: {stray}"
    assert len(headings) == len(set(headings))


def test_api_snippets_run(tmp_path: Path) -> None:
    """The reference's snippets, in order, as one script in an empty folder; each ``print(x)  # text`` prints text."""
    blocks = python_blocks(API)
    assert len(blocks) >= 25
    script = tmp_path / "api_session.py"
    script.write_text("\n\n".join(blocks))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    printed = proc.stdout.splitlines()
    expected = PRINTED.findall("\n".join(blocks))
    assert len(expected) >= 4
    for want in expected:
        assert want.strip() in printed, f"{want!r} not printed; got:\n{proc.stdout}"
