"""Every step kind passes the same conformance suite, on SQLite and PostgreSQL.

``DatatableTransform`` below is a step kind defined only here (a function that receives whole tables),
implementing the ``Step`` protocol without subclassing anything of the library: it passes the suite and
runs under ``build_definitions`` with no change to the Dagster adapter or the CLI.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
from test_dagster_support import materialize

from datapipe_dagster import (
    BatchTransform,
    Catalog,
    ChangeList,
    DataStore,
    DBConn,
    Pipeline,
    RowTransform,
    StepResult,
    Table,
    TableStoreDB,
    build_compute,
    build_definitions,
)
from datapipe_dagster.compute.catalog import ComputeStep
from datapipe_dagster.compute.datatable import DataTable
from datapipe_dagster.compute.external import UpdateExternalTable
from datapipe_dagster.compute.generate import BatchGenerate
from datapipe_dagster.compute.result import OutputStats
from datapipe_dagster.compute.steps import GeneratingStep, KeyedStep, ScanningStep, Step, is_keyed
from datapipe_dagster.dagster.inprocess import execute_request, tick_sensor
from datapipe_dagster.errors import ConfigurationError
from datapipe_dagster.testing import StepCase, StepConformance

# ------------------------------------------------------------------ a step kind defined only here


class DatatableTransform:
    """A declared step whose function receives every input table whole and returns every output whole.

    A run recomputes everything; unchanged rows are not rewritten (the row metadata sees to that), and
    output rows the function no longer returns are deleted.
    """

    def __init__(self, func: Callable[..., Any], inputs: list[str], outputs: list[str], name: str):
        self.func, self.inputs, self.outputs, self.name = func, inputs, outputs, name

    def build_compute(self, ds: DataStore, catalog: Catalog) -> list[Any]:
        return [
            DatatableTransformStep(
                self.name,
                self.func,
                [catalog.get_datatable(ds, n) for n in self.inputs],
                [catalog.get_datatable(ds, n) for n in self.outputs],
            )
        ]


class DatatableTransformStep:
    """Implements ``Step`` (structurally: no base class)."""

    shared_outputs: frozenset[str] = frozenset()

    def __init__(self, name: str, func: Callable[..., Any], input_dts: list[DataTable], output_dts: list[DataTable]):
        self.name = name
        self.func = func
        self.input_dts = input_dts
        self.output_dts = output_dts
        self.code_version: str | None = "1"

    def run_full(self) -> StepResult:
        result = StepResult(self.name, outputs={dt.name: OutputStats() for dt in self.output_dts})
        frames = [dt.get_data() for dt in self.input_dts]
        result.rows_read = sum(len(f) for f in frames)
        outs = self.func(*frames)
        for dt, df in zip(self.output_dts, outs if isinstance(outs, tuple) else (outs,), strict=True):
            stats = result.outputs[dt.name]
            pk = dt.primary_keys
            old = dt.get_metadata()[pk]
            changed = dt.store_chunk(df)
            gone = old.merge(df[pk].drop_duplicates(), on=pk, how="left", indicator=True)
            gone = gone.loc[gone["_merge"] == "left_only", pk].reset_index(drop=True)
            deleted = dt.delete_by_idx(gone) if len(gone) else gone
            fresh = changed.merge(old, on=pk, how="left", indicator=True)
            stats.inserted += int((fresh["_merge"] == "left_only").sum())
            stats.updated += int((fresh["_merge"] == "both").sum())
            stats.deleted += len(deleted)
            result.changed.append(dt.name, pd.concat([changed[pk], deleted[pk]], ignore_index=True))
        result.keys_processed = 1
        return result

    def run_changelist(self, changelist: ChangeList) -> StepResult:
        if any(len(changelist.get(dt.name) if changelist.get(dt.name) is not None else ()) for dt in self.input_dts):
            return self.run_full()
        return StepResult(self.name)


def totals_by_user(events: pd.DataFrame) -> pd.DataFrame:
    return events.groupby("user_id", as_index=False)["v"].sum().rename(columns={"v": "total"})


# ------------------------------------------------------------------ cases: one per step kind

EVENTS = [
    sa.Column("user_id", sa.String(), primary_key=True),
    sa.Column("event_id", sa.Integer(), primary_key=True),
    sa.Column("v", sa.Integer()),
]
TOTALS = [sa.Column("user_id", sa.String(), primary_key=True), sa.Column("total", sa.Integer())]
COPIES = [
    sa.Column("user_id", sa.String(), primary_key=True),
    sa.Column("event_id", sa.Integer(), primary_key=True),
    sa.Column("double", sa.Integer()),
]
SUMMARY = [sa.Column("n", sa.Integer(), primary_key=True), sa.Column("total", sa.Integer())]

SEED = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u3"], "event_id": [1, 2, 1, 1], "v": [1, 2, 3, 4]})
CHANGE = pd.DataFrame({"user_id": ["u1"], "event_id": [1], "v": [10]})


def _catalog(conn: DBConn, **tables: list[sa.Column]) -> Catalog:
    return Catalog({n: Table(TableStoreDB(n, conn, [c.copy() for c in cols])) for n, cols in tables.items()})


def _transform_case(conn: DBConn, decl: Any, outputs: dict[str, list[sa.Column]]) -> StepCase:
    """A step reading ``events``: seeded with SEED, changed with CHANGE."""
    ds = DataStore(conn)
    catalog = _catalog(conn, events=EVENTS, **outputs)
    (step,) = build_compute(ds, catalog, Pipeline([decl]))
    events = catalog.get_datatable(ds, "events")

    def change() -> ChangeList:
        return ChangeList.create("events", events.store_chunk(CHANGE))

    return StepCase(ds, step, seed=lambda: events.store_chunk(SEED), change=change)


def batch_case(conn: DBConn) -> StepCase:
    return _transform_case(conn, BatchTransform(totals_by_user, ["events"], ["totals"], name="totals"), {"totals": TOTALS})


def keyless_batch_case(conn: DBConn) -> StepCase:
    def summary(events: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"n": [len(events)], "total": [int(events["v"].sum())]})

    decl = BatchTransform(summary, ["events"], ["summary"], transform_keys=[], name="summary")
    return _transform_case(conn, decl, {"summary": SUMMARY})


def row_case(conn: DBConn) -> StepCase:
    def double(row: dict[str, Any]) -> dict[str, Any]:
        return {"double": row["v"] * 2}

    return _transform_case(conn, RowTransform(double, ["events"], ["copies"], name="double"), {"copies": COPIES})


def datatable_case(conn: DBConn) -> StepCase:
    decl = DatatableTransform(totals_by_user, ["events"], ["totals"], name="whole_totals")
    return _transform_case(conn, decl, {"totals": TOTALS})


def generate_case(conn: DBConn) -> StepCase:
    source = {"rows": SEED.iloc[:0]}

    def produce() -> Iterator[pd.DataFrame]:
        yield source["rows"]

    ds = DataStore(conn)
    (step,) = build_compute(ds, _catalog(conn, events=EVENTS), Pipeline([BatchGenerate(produce, ["events"], name="produce")]))

    def seed() -> None:
        source["rows"] = SEED

    def change() -> ChangeList:
        source["rows"] = pd.concat([SEED.iloc[1:], CHANGE], ignore_index=True)  # one row changed, one gone
        return ChangeList()

    return StepCase(ds, step, seed=seed, change=change)


def external_case(conn: DBConn) -> StepCase:
    ds = DataStore(conn)
    catalog = _catalog(conn, events=EVENTS)
    (step,) = build_compute(ds, catalog, Pipeline([UpdateExternalTable("events", name="scan_events")]))
    store = catalog.get_table("events").store

    def change() -> ChangeList:
        store.write_rows(store.validate(CHANGE))  # written outside the pipeline: only a scan sees it
        return ChangeList()

    return StepCase(ds, step, seed=lambda: store.write_rows(store.validate(SEED)), change=change)


CASES: dict[str, Callable[[DBConn], StepCase]] = {
    "batch": batch_case,
    "batch-keyless": keyless_batch_case,
    "row": row_case,
    "generate": generate_case,
    "external": external_case,
    "datatable-test-only": datatable_case,
}


class TestStepConformance(StepConformance):
    @pytest.fixture(params=list(CASES))
    def step_case(self, request: pytest.FixtureRequest, dbconn: DBConn) -> StepCase:
        return CASES[request.param](dbconn)


# ------------------------------------------------------------------ capabilities, by isinstance


def test_each_kind_declares_its_capabilities(tmp_path) -> None:  # noqa: ANN001
    conn = DBConn(f"sqlite:///{tmp_path / 'caps.sqlite'}")
    caps = {
        name: {
            p.__name__
            for p in (Step, KeyedStep, ScanningStep, GeneratingStep)
            if isinstance(case(conn).step, p)
        }
        for name, case in CASES.items()
    }
    assert caps == {
        "batch": {"Step", "KeyedStep"},
        "batch-keyless": {"Step", "KeyedStep"},
        "row": {"Step", "KeyedStep"},
        "generate": {"Step", "GeneratingStep"},
        "external": {"Step", "ScanningStep"},
        "datatable-test-only": {"Step"},
    }
    assert [n for n, case in CASES.items() if is_keyed(case(conn).step)] == ["batch", "batch-keyless", "row"]
    assert not isinstance(datatable_case(conn).step, ComputeStep), "the test-only kind uses no library base class"


def test_an_object_missing_a_member_is_not_a_step() -> None:
    class Half:
        name = "half"
        input_dts: list[DataTable] = []
        output_dts: list[DataTable] = []
        code_version = None

        def run_full(self) -> StepResult:
            return StepResult(self.name)

    assert not isinstance(Half(), Step)  # no run_changelist


# ------------------------------------------------------------------ the test-only kind under Dagster


def test_a_new_step_kind_runs_under_dagster(tmp_path) -> None:  # noqa: ANN001
    conn = DBConn(f"sqlite:///{tmp_path / 'dg.sqlite'}")
    ds = DataStore(conn)
    catalog = _catalog(conn, events=EVENTS, totals=TOTALS)
    pipeline = Pipeline([DatatableTransform(totals_by_user, ["events"], ["totals"], name="whole_totals")])
    catalog.get_datatable(ds, "events").store_chunk(SEED)
    defs = build_definitions(catalog, pipeline, ds)
    with dg.instance_for_test() as instance:
        res = materialize(defs, instance, [dg.AssetKey("totals")])
        assert [e.asset_key for e in res.get_asset_materialization_events()] == [dg.AssetKey("totals")]
        quiet = tick_sensor(defs, instance, "whole_totals_stale_sensor")
        catalog.get_datatable(ds, "events").store_chunk(CHANGE)
        # Its sensor sees the input change (an unkeyed step: one run when any input row was written).
        (req,) = tick_sensor(defs, instance, "whole_totals_stale_sensor", quiet.cursor).run_requests
        assert execute_request(defs, instance, req).success
    got = catalog.get_datatable(ds, "totals").get_data().sort_values("user_id")
    assert got.to_dict("list") == {"user_id": ["u1", "u2", "u3"], "total": [12, 3, 4]}


# ------------------------------------------------------------------ the test-only kind from the CLI


def cli_target() -> Any:
    """What ``datapipe-dagster`` loads: ``test_step_conformance:cli_target`` (called, as the CLI does)."""
    from types import SimpleNamespace

    conn = DBConn(os.environ["STEP_CONFORMANCE_DB"])
    catalog = _catalog(conn, events=EVENTS, totals=TOTALS)
    pipeline = Pipeline([DatatableTransform(totals_by_user, ["events"], ["totals"], name="whole_totals")])
    return SimpleNamespace(catalog=catalog, pipeline=pipeline, datastore=DataStore(conn))


def test_a_new_step_kind_runs_from_the_cli(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from click.testing import CliRunner

    from datapipe_dagster.cli import main

    monkeypatch.setenv("STEP_CONFORMANCE_DB", f"sqlite:///{tmp_path / 'cli.sqlite'}")
    target = cli_target()
    target.catalog.get_datatable(target.datastore, "events").store_chunk(SEED)
    runner = CliRunner()
    status = runner.invoke(main, ["status", "test_step_conformance:cli_target"])
    assert status.exit_code == 0 and "whole_totals: DatatableTransformStep, runs in full" in status.output, status.output
    res = runner.invoke(main, ["run", "test_step_conformance:cli_target"])
    assert res.exit_code == 0, res.output
    assert "whole_totals:" in res.output and "totals: +3" in res.output, res.output
    got = target.catalog.get_datatable(target.datastore, "totals").get_data().sort_values("user_id")
    assert got.to_dict("list") == {"user_id": ["u1", "u2", "u3"], "total": [3, 3, 4]}


def test_which_scans_are_incremental(tmp_path) -> None:  # noqa: ANN001
    """A full scan of a SQL table reads every row (a run's job); a folder listing or an updated-at scan
    reads only what changed (a sensor tick's)."""
    from datapipe_dagster import JSONFile, TableStoreFiledir

    conn = DBConn(f"sqlite:///{tmp_path / 'scan.sqlite'}")
    ds = DataStore(conn)
    stamped = [*EVENTS, sa.Column("at", sa.Integer())]
    catalog = _catalog(conn, events=EVENTS, stamped=stamped)
    catalog.add_datatable("docs", Table(TableStoreFiledir(tmp_path / "docs" / "{id}.json", JSONFile(), name="docs")))
    pipeline = Pipeline(
        [UpdateExternalTable("events"), UpdateExternalTable("stamped", updated_at_column="at"), UpdateExternalTable("docs")]
    )
    steps = build_compute(ds, catalog, pipeline)
    assert all(isinstance(s, ScanningStep) for s in steps)
    assert {s.name: s.incremental_scan for s in steps if isinstance(s, ScanningStep)} == {
        "update_events": False,
        "update_stamped": True,
        "update_docs": True,
    }


def test_build_compute_refuses_what_is_not_a_step(tmp_path) -> None:  # noqa: ANN001
    class NoChangelist:
        name = "half"
        input_dts: list[DataTable] = []
        output_dts: list[DataTable] = []
        code_version = None

        def run_full(self) -> StepResult:
            return StepResult(self.name)

    class Half:
        def build_compute(self, ds: DataStore, catalog: Catalog) -> list[Any]:
            return [NoChangelist()]

    conn = DBConn(f"sqlite:///{tmp_path / 'half.sqlite'}")
    with pytest.raises(ConfigurationError, match=r"Half.build_compute returned NoChangelist, which lacks \['run_changelist'\]"):
        build_compute(DataStore(conn), _catalog(conn, events=EVENTS), Pipeline([Half()]))
