"""The ``datapipe-dagster`` command line on a real SQLite pipeline (click's runner, no mocks)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from datapipe_dagster.cli import main

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
    assert "clicks: keys ['user_id'], 3 stale, 0 failed" in res.output

    res = runner.invoke(main, ["run", target])
    assert res.exit_code == 1  # a key failed
    assert "clicks: 2 keys" in res.output and "user_id='bad'" in res.output

    res = runner.invoke(main, ["failed", target, "--traceback"])
    assert res.exit_code == 0
    assert "clicks: 1 failed key(s)" in res.output
    assert "user_id='bad': ValueError: user bad has a broken event" in res.output
    assert "Traceback" in res.output

    res = runner.invoke(main, ["status", target])
    assert "1 stale, 1 failed" in res.output

    res = runner.invoke(main, ["reparse", target, "--step", "clicks"])
    assert res.exit_code == 1 and "clicks: 2 keys" in res.output


def test_bad_targets_and_steps_are_clear_errors(target: str) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["status", "no_such_module_xyz"])
    assert res.exit_code == 2 and "cannot import 'no_such_module_xyz'" in res.output
    res = runner.invoke(main, ["status", f"{target}:nothing"])
    assert res.exit_code == 2 and "has no attribute 'nothing'" in res.output
    res = runner.invoke(main, ["run", target, "--step", "clickz"])
    assert res.exit_code == 2 and "unknown step 'clickz'; steps: clicks" in res.output


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "datapipe-dagster"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    assert "Run and inspect a datapipe_dagster pipeline" in out
