"""The ``datapipe-dagster`` command line on a real SQLite pipeline (click's runner, no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from datapipe_dagster.cli import main

REPO = Path(__file__).resolve().parents[1]

TARGET = textwrap.dedent(
    """
    import json, os
    import pandas as pd
    from tests.engine_helpers import seed_catalog, parse_clicks_ip
    from datapipe_dagster import BatchTransform, DataStore, DBConn, Pipeline

    db = DBConn(os.environ["CLI_TEST_DB"])
    catalog = seed_catalog(db)
    datastore = DataStore(db)

    def clicks(df):
        if "bad" in set(df["user_id"]):
            raise ValueError("user bad has a broken event")
        return parse_clicks_ip(df)

    pipeline = Pipeline([BatchTransform(clicks, ["events"], ["click_count", "ip"])])
    """
)


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "cli_target_mod.py").write_text(TARGET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1]))
    monkeypatch.setenv("CLI_TEST_DB", f"sqlite:///{tmp_path / 'cli.sqlite'}")
    sys.modules.pop("cli_target_mod", None)
    import cli_target_mod  # noqa: F401 - imported once so the runner's invocations share it

    from tests.engine_helpers import event, frame

    cli_target_mod.catalog.get_datatable(cli_target_mod.datastore, "events").store_chunk(
        frame(event("1", "1"), event("2", "1"), event("bad", "1"))
    )
    return "cli_target_mod"


def test_status_run_failed_reparse(target: str) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["status", target])
    assert res.exit_code == 0, res.output
    assert res.stdout == "clicks: 3 stale keys, 0 failed (keyed by user_id)\n"

    res = runner.invoke(main, ["run", target])
    assert res.exit_code == 1  # a key failed
    # One line per step on stdout; the hint where to read the errors on stderr.
    assert res.stdout.splitlines() == [
        "clicks: 2 keys, 2 rows read, [click_count: +2 ~0 -0, ip: +2 ~0 -0]; 1 of 3 keys FAILED, "
        "first: user_id='bad': ValueError: user bad has a broken event"
    ]
    assert res.stderr == f"1 key(s) failed; their errors: datapipe-dagster failed {target}\n"

    res = runner.invoke(main, ["failed", target, "--traceback"])
    assert res.exit_code == 0
    assert "clicks: 1 failed key(s)" in res.output
    assert "user_id='bad': ValueError: user bad has a broken event" in res.output
    assert "Traceback" in res.output

    res = runner.invoke(main, ["status", target])
    assert res.stdout == "clicks: 1 stale keys, 1 failed (keyed by user_id)\n"

    res = runner.invoke(main, ["reparse", target, "--step", "clicks"])
    assert res.exit_code == 1 and res.stdout.startswith("clicks: 2 keys, 2 rows read, [click_count: +0 ~0 -0")


def test_json_output_for_scripts(target: str) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["status", target, "--json"])
    assert json.loads(res.stdout) == {
        "steps": [{"step": "clicks", "kind": "BatchTransformStep", "transform_keys": ["user_id"], "stale": 3, "failed": 0}]
    }

    res = runner.invoke(main, ["run", target, "--json"])
    assert res.exit_code == 1
    out = json.loads(res.stdout)  # stdout is the JSON document alone
    (step,) = out["steps"]
    assert out["ok"] is False and step["step"] == "clicks"
    assert (step["keys_processed"], step["keys_failed"], step["rows_read"]) == (2, 1, 2)
    assert step["outputs"] == {"click_count": {"inserted": 2, "updated": 0, "deleted": 0}, "ip": {"inserted": 2, "updated": 0, "deleted": 0}}
    assert step["failed"] == [{"key": {"user_id": "bad"}, "error": "ValueError: user bad has a broken event"}]
    assert isinstance(step["elapsed_s"], float)

    res = runner.invoke(main, ["failed", target, "--json", "--traceback"])
    (failed,) = json.loads(res.stdout)["steps"]
    assert failed["step"] == "clicks" and failed["failed"] == 1
    assert failed["keys"][0]["key"] == {"user_id": "bad"} and "Traceback" in failed["keys"][0]["traceback"]

    res = runner.invoke(main, ["run", target, "--json"])  # nothing stale but the failed key
    assert json.loads(res.stdout)["steps"][0]["keys_processed"] == 0


def test_a_failing_key_is_printed_once_by_the_real_command(tmp_path: Path) -> None:
    """The installed command in its own process: the engine's log warnings do not repeat the step line."""
    (tmp_path / "cli_target_once.py").write_text(
        TARGET + "from tests.engine_helpers import event, frame\n"
        "catalog.get_datatable(datastore, 'events').store_chunk(frame(event('1', '1'), event('bad', '1')))\n"
    )
    exe = Path(sys.executable).parent / "datapipe-dagster"
    env = {**os.environ, "CLI_TEST_DB": f"sqlite:///{tmp_path / 'once.sqlite'}", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([str(exe), "run", "cli_target_once"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 1, proc.stderr
    both = proc.stdout + proc.stderr
    assert both.count("user_id='bad'") == 1, both
    assert proc.stdout.count("\n") == 1  # one step, one line

    proc = subprocess.run([str(exe), "-v", "run", "cli_target_once"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert "WARNING datapipe_dagster" in proc.stderr  # --verbose shows the library's log


def test_bare_module_target_with_ds_attribute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``MODULE`` alone uses the module's own ``catalog``, ``pipeline`` and ``ds`` (the quickstart's names)."""
    (tmp_path / "bare_target_mod.py").write_text(TARGET.replace("datastore = DataStore(db)", "ds = DataStore(db)"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("CLI_TEST_DB", f"sqlite:///{tmp_path / 'bare.sqlite'}")
    sys.modules.pop("bare_target_mod", None)
    res = CliRunner().invoke(main, ["status", "bare_target_mod"])
    assert res.exit_code == 0, res.output
    assert res.stdout == "clicks: 0 stale keys, 0 failed (keyed by user_id)\n"
    (tmp_path / "no_ds_mod.py").write_text("catalog = pipeline = object()\n")
    res = CliRunner().invoke(main, ["status", "no_ds_mod"])
    assert res.exit_code == 2 and "'no_ds_mod' has no datastore (or ds) attribute(s)" in res.output


def test_bad_targets_and_steps_are_clear_errors(target: str) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["status", "no_such_module_xyz"])
    assert res.exit_code == 2 and "cannot import 'no_such_module_xyz'" in res.output
    res = runner.invoke(main, ["status", f"{target}:nothing"])
    assert res.exit_code == 2 and "has no attribute 'nothing'" in res.output
    res = runner.invoke(main, ["run", target, "--step", "clickz"])
    assert res.exit_code == 2 and "unknown step 'clickz'; steps: clicks" in res.output


@pytest.mark.parametrize("command", [[], ["status"], ["run"], ["failed"], ["reparse"]])
def test_help_explains_targets_with_examples(command: list[str]) -> None:
    out = CliRunner().invoke(main, [*command, "--help"]).output
    assert "MODULE:ATTR" in out and "`datastore` (or `ds`)" in out and "MODULE       the module itself" in out
    assert "Examples:" in out or "Example:" in out
    assert "datapipe-dagster " + (command[0] if command else "status") + " example_project.definitions:datapipe_target" in " ".join(out.split())


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "datapipe-dagster"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    assert "Run and inspect a datapipe_dagster pipeline" in out
