"""The README's quickstart runs as written, and its first screen shows the two commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def quickstart() -> str:
    text = README.read_text()
    section = text.split("## Quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_first_screen_shows_the_two_commands() -> None:
    first = "\n".join(README.read_text().splitlines()[:30])
    assert "make demo" in first and "make test" in first
    assert len(quickstart().strip().splitlines()) <= 25


def test_quickstart_runs_as_written(tmp_path: Path) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart() + "\nprint(sorted(a.key.to_user_string() for a in defs.resolve_all_asset_specs()))\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["user_id", "n"]
    assert [ln.split()[1:] for ln in lines[1:3]] == [["1", "1"], ["2", "1"]]
    assert "['clicks', 'events']" in lines[-1]
