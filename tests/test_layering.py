"""The layers of docs/design.md, pinned: who may import whom (read from the source, nothing imported).

- only ``datapipe_dagster/dagster/`` imports dagster, and at most one module of it Dagster's private
  (``dagster._…``) names;
- ``datapipe_dagster/dagster/`` never imports sqlalchemy: it maps engine answers to Dagster objects and
  leaves SQL, connections and metadata tables to the engine (its ``templates/`` are user code);
- no upward imports: store -> meta/compute/dagster, meta -> compute/dagster, compute -> dagster; the
  shared modules (types, errors, frames) import none of the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "datapipe_dagster"
LAYERS = ["shared", "store", "meta", "compute", "dagster"]
"""Bottom to top: a module may import its own layer and the layers before it."""


def _layer(rel: Path) -> str:
    """The layer of a module (path relative to the package) or of an imported ``datapipe_dagster`` name."""
    first = rel.parts[0]
    return first if first in ("store", "meta", "compute", "dagster") else "shared"


def _imports(path: Path) -> list[str]:
    """Every module name ``path`` imports, anywhere in it (functions and TYPE_CHECKING blocks too)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


MODULES = sorted(p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py"))
TOP_MODULES = {"__init__.py", "cli.py", "testing"}
"""The package's facade, CLI and conformance suites (the ``testing`` package) sit above the layers (they
may import any of them)."""


@pytest.mark.parametrize("rel", MODULES, ids=str)
def test_only_the_dagster_layer_imports_dagster(rel: Path) -> None:
    roots = {n.split(".")[0] for n in _imports(PACKAGE / rel)}
    if rel.parts[0] != "dagster":
        assert not roots & {"dagster", "dagster_postgres", "dagster_celery"}, f"{rel} imports dagster"


def test_at_most_one_module_uses_dagster_private_names() -> None:
    private = [rel for rel in MODULES if any(n.startswith("dagster._") for n in _imports(PACKAGE / rel))]
    assert len(private) <= 1, f"Dagster's private names are imported by {private}; keep them in one small module"
    assert all(rel.parts[0] == "dagster" for rel in private), private


@pytest.mark.parametrize("rel", [m for m in MODULES if m.parts[0] == "dagster" and "templates" not in m.parts], ids=str)
def test_the_dagster_layer_writes_no_sql(rel: Path) -> None:
    roots = {n.split(".")[0] for n in _imports(PACKAGE / rel)}
    assert "sqlalchemy" not in roots, f"{rel} imports sqlalchemy: ask the engine (compute/) instead"


@pytest.mark.parametrize("rel", [m for m in MODULES if m.parts[0] not in TOP_MODULES], ids=str)
def test_no_upward_imports(rel: Path) -> None:
    own = LAYERS.index(_layer(rel))
    for name in _imports(PACKAGE / rel):
        if not name.startswith("datapipe_dagster."):
            continue
        parts = name.split(".")[1:]
        target = _layer(Path(*parts))
        if parts[0] in ("testing", "cli") or (len(parts) == 1 and parts[0] in ("build_definitions", "DatapipeComponent")):
            target = "dagster"  # above every layer
        assert LAYERS.index(target) <= own, f"{rel} ({_layer(rel)}) imports {name} ({target}): an upward import"


MAX_LINES = 400
"""House style: a module of at most 400 lines, one job each (split by job, not by line count)."""


@pytest.mark.parametrize("rel", MODULES, ids=str)
def test_modules_stay_small(rel: Path) -> None:
    lines = len((PACKAGE / rel).read_text().splitlines())
    assert lines <= MAX_LINES, f"{rel} has {lines} lines (> {MAX_LINES}): split it by its jobs (docs/design.md)"


def test_the_rules_see_a_violation(tmp_path: Path) -> None:
    """The checks read real imports (a guard against a parser that finds nothing)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from datapipe_dagster.compute.run import run_steps\n    import sqlalchemy as sa\n")
    assert _imports(bad) == ["datapipe_dagster.compute.run", "datapipe_dagster.compute.run.run_steps", "sqlalchemy"]
    assert _layer(Path("compute", "run.py")) == "compute" and _layer(Path("errors.py")) == "shared"
