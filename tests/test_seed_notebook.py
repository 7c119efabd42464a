"""The 002 seed notebook, ported with changed imports only, prints exactly what the seed printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "seeds"


@pytest.mark.parametrize("mode", ["changelist", "run_steps"])
def test_seed_notebook_prints_the_seed_output(mode: str, backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = dict(os.environ, SEED_MODE=mode)
    if backend == "postgres":
        env["SEED_DB"] = request.getfixturevalue("pg_database").replace("postgresql+psycopg2://", "postgresql://")
    proc = subprocess.run(
        [sys.executable, str(HERE / "seed_002_notebook.py")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (HERE / "seed_002_expected.txt").read_text()
    if backend == "sqlite":
        assert (tmp_path / "store.sqlite").exists()
