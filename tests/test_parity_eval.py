"""Parity with seed 000's ``Pipe.eval(item)``: evaluate keys without writing; the CLI ``eval`` and ``run --key``."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from datapipe_dagster import (
    Catalog,
    ConfigurationError,
    DataStore,
    Pipeline,
    RowTransform,
    Table,
    TableStoreDB,
    build_compute,
    run_steps,
)
from datapipe_dagster.cli import main
from tests.engine_helpers import as_dict, event, frame, seed_setup


def snapshot(catalog: Catalog, ds: DataStore) -> dict[str, pd.DataFrame]:
    return {n: catalog.get_datatable(ds, n).get_metadata(include_deleted=True) for n in ("click_count", "ip")}


def test_eval_shows_what_a_run_would_write_and_writes_nothing(dbconn) -> None:
    ds, catalog, (step,) = seed_setup(dbconn)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(frame(event("1", "1"), event("1", "2"), event("2", "1", ip="2.2.2.2")))
    run_steps(ds, [step])
    events.store_chunk(frame(event("1", "1", etype="clack", ip="333.333.333.333"), event("3", "1")))
    events.delete_by_idx(pd.DataFrame({"user_id": ["2"], "event_id": ["1"]}))
    before = snapshot(catalog, ds)
    stale_before = sorted(step.get_stale_keys(advance_watermark=False)["user_id"])

    res = step.eval(pd.DataFrame({"user_id": ["1", "2", "3"]}))

    cc, ip = res.outputs["click_count"], res.outputs["ip"]
    assert as_dict(cc.updated, "user_id", "click_count") == {"1": 1}
    assert as_dict(cc.inserted, "user_id", "click_count") == {"3": 1}
    assert as_dict(cc.deleted, "user_id", "click_count") == {"2": 1}  # the current row, values included
    assert as_dict(ip.updated, "user_id", "ip") == {"1": "333.333.333.333"}
    assert as_dict(ip.deleted, "user_id", "ip") == {"2": "2.2.2.2"}
    text = str(res)
    assert "nothing written" in text and "click_count: +1 ~1 -1 =0" in text and "~ user_id='1', click_count=1" in text
    # nothing written, state untouched
    after = snapshot(catalog, ds)
    for n in before:
        pd.testing.assert_frame_equal(before[n], after[n])
    assert sorted(step.get_stale_keys(advance_watermark=False)["user_id"]) == stale_before
    # a run then writes exactly that
    run_steps(ds, [step])
    assert as_dict(catalog.get_datatable(ds, "click_count").get_data(), "user_id", "click_count") == {"1": 1, "3": 1}


def test_eval_needs_every_transform_key_column(dbconn) -> None:
    ds, catalog, (step,) = seed_setup(dbconn)
    with pytest.raises(ConfigurationError, match=r"eval needs every transform key column \['user_id'\]"):
        step.eval(pd.DataFrame({"event_id": ["1"]}))


def test_eval_of_a_row_transform_reports_failing_rows(dbconn) -> None:
    def f(row: dict) -> dict:
        if row["x"] < 0:
            raise ValueError("negative")
        return {"y": row["x"] * 2}

    id_ = sa.Column("id", sa.Integer, primary_key=True)
    cat = Catalog(
        {
            "src": Table(TableStoreDB("src", dbconn, [id_, sa.Column("x", sa.Integer)])),
            "dst": Table(TableStoreDB("dst", dbconn, [id_, sa.Column("y", sa.Integer)])),
        }
    )
    ds = DataStore(dbconn)
    (step,) = build_compute(ds, cat, Pipeline([RowTransform(f, ["src"], ["dst"])]))
    cat.get_datatable(ds, "src").store_chunk(pd.DataFrame({"id": [1, 2], "x": [5, -1]}))
    res = step.eval(pd.DataFrame({"id": ["1", "2"]}))  # key values as text (the CLI's) are typed
    assert res.outputs["dst"].inserted.to_dict("records") == [{"id": 1, "y": 10}]
    assert res.failed["id"].tolist() == [2] and "negative" in res.failed["error"].iloc[0]
    assert len(cat.get_datatable(ds, "dst").get_data()) == 0


TARGET = textwrap.dedent(
    """
    import os
    from tests.engine_helpers import seed_catalog, parse_clicks_ip
    from datapipe_dagster import BatchTransform, DataStore, DBConn, Pipeline

    db = DBConn(os.environ["CLI_EVAL_DB"])
    catalog = seed_catalog(db)
    datastore = DataStore(db)
    pipeline = Pipeline([BatchTransform(parse_clicks_ip, ["events"], ["click_count", "ip"])])
    """
)


def test_cli_eval_and_run_with_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cli_eval_mod.py").write_text(TARGET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1]))
    monkeypatch.setenv("CLI_EVAL_DB", f"sqlite:///{tmp_path / 'cli.sqlite'}")
    sys.modules.pop("cli_eval_mod", None)
    import cli_eval_mod

    ds, catalog = cli_eval_mod.datastore, cli_eval_mod.catalog
    catalog.get_datatable(ds, "events").store_chunk(frame(event("u1", "1"), event("u2", "1")))
    runner = CliRunner()
    res = runner.invoke(main, ["eval", "cli_eval_mod", "--step", "parse_clicks_ip", "--key", "user_id=u1"])
    assert res.exit_code == 0, res.output
    assert "click_count: +1 ~0 -0" in res.output and "+ user_id='u1', click_count=1" in res.output
    assert len(catalog.get_datatable(ds, "click_count").get_data()) == 0

    res = runner.invoke(main, ["run", "cli_eval_mod", "--step", "parse_clicks_ip", "--key", "user_id=u1"])
    assert res.exit_code == 0, res.output
    assert "parse_clicks_ip: 1 keys" in res.output
    assert catalog.get_datatable(ds, "click_count").get_data()["user_id"].tolist() == ["u1"]

    res = runner.invoke(main, ["eval", "cli_eval_mod", "--step", "parse_clicks_ip", "--key", "uid=u1"])
    assert res.exit_code == 2 and "transform key column of step 'parse_clicks_ip' ['user_id']" in res.output
    res = runner.invoke(main, ["run", "cli_eval_mod", "--key", "user_id=u1"])
    assert res.exit_code == 2 and "--key needs exactly one --step" in res.output
