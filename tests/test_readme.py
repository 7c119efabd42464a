"""The README's quickstart runs as written and prints what it says; its first screen shows the commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"
PRINTED = re.compile(r"^print\(.*\)\s+# (.+)$", re.M)


def quickstart_files() -> dict[str, str]:
    """The quickstart's code blocks by the file name on their first line (``# clicks.py``)."""
    section = README.read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    files = {}
    for block in re.findall(r"```python\n(.*?)```", section, re.S):
        first = block.splitlines()[0]
        assert re.fullmatch(r"# \w+\.py", first), f"a quickstart block must start with its file name: {first!r}"
        files[first[2:]] = block
    return files


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=180, env=dict(os.environ))


def test_first_screen_shows_the_commands() -> None:
    first = "\n".join(README.read_text().splitlines()[:16])
    for command in ("make demo", "make dev", "make test-fast", "make test ", "PYTEST_ARGS"):
        assert command in first, command
    assert all(len(code.strip().splitlines()) <= 25 for code in quickstart_files().values())


def test_quickstart_runs_as_written_and_prints_its_summaries(tmp_path: Path) -> None:
    files = quickstart_files()
    assert list(files) == ["clicks.py", "quickstart.py"]
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    for _ in range(2):  # a second run starts from scratch and prints the same
        proc = run([sys.executable, "quickstart.py"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines == [
            "count_clicks: 2 keys, 3 rows read, [clicks: +2 ~0 -0]",
            "count_clicks: 1 keys, 2 rows read, [clicks: +0 ~1 -0]",  # one key recomputed
            "['1']",
            "[{'user_id': '2', 'n': 1}, {'user_id': '1', 'n': 2}]",
        ]
    # What the README claims the script prints is what it prints.
    assert PRINTED.findall(files["quickstart.py"]) == lines[:3]
    assert f"then `{lines[3]}`" in README.read_text().replace("\n", " ")


def test_quickstart_definitions_module_writes_nothing(tmp_path: Path) -> None:
    """``clicks.py`` is a code location: importing it (as Dagster does) creates no database and runs nothing."""
    (tmp_path / "clicks.py").write_text(quickstart_files()["clicks.py"])
    code = "import clicks; print(sorted(a.key.to_user_string() for a in clicks.defs.resolve_all_asset_specs()))"
    proc = run([sys.executable, "-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['clicks', 'events']"
    assert not (tmp_path / "quickstart.sqlite").exists()


def test_quickstart_module_is_a_command_line_target(tmp_path: Path) -> None:
    """The README says ``datapipe-dagster run clicks`` works on the quickstart's module as it is."""
    for name, code in quickstart_files().items():
        (tmp_path / name).write_text(code)
    assert run([sys.executable, "quickstart.py"], tmp_path).returncode == 0
    exe = Path(sys.executable).parent / "datapipe-dagster"
    proc = run([str(exe), "status", "clicks"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "count_clicks: 0 stale keys, 0 failed (keyed by user_id)\n"
    assert "`datapipe-dagster run clicks`" in README.read_text()
