"""A transform commit's outputs first inserted as all new, without reading their metadata (issue 11):
the same tables, metadata and changed keys as the general path, on a first run, a re-run with changes
and deletes, output rows a user wrote first, and a user writing an output during the insert. SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import threading

import pandas as pd
import pytest
from sqlalchemy import JSON, Column, Integer, String

from datapipe_dagster import (
    BatchTransform,
    Catalog,
    DataStore,
    DBConn,
    Pipeline,
    Table,
    TableStoreDB,
    build_compute,
    run_steps,
)
from datapipe_dagster.compute.chunk_commit import CommittingStep
from tests.engine_helpers import parse_clicks_ip, recorded_statements
from tests.test_bulk_write import (
    GATE_TIMEOUT,
    rollbacks,
    run_thread,
    spy_existing,
    state,
    waited_then_finished,
)

USERS = 1300  # two chunks of 1,000 keys: the first large enough for the all-new insert, the second not


def setup(dbconn: DBConn, prefix: str):  # noqa: ANN201
    names = {t: f"{prefix}_{t}" for t in ("events", "click_count", "ip")}
    tables = {
        names["events"]: Table(TableStoreDB(names["events"], dbconn, [Column("user_id", String(), primary_key=True), Column("event_id", String(), primary_key=True), Column("event", JSON())])),
        names["click_count"]: Table(TableStoreDB(names["click_count"], dbconn, [Column("user_id", String(), primary_key=True), Column("click_count", Integer())])),
        names["ip"]: Table(TableStoreDB(names["ip"], dbconn, [Column("user_id", String(), primary_key=True), Column("ip", String())])),
    }
    ds = DataStore(dbconn)
    catalog = Catalog(tables)
    step = BatchTransform(parse_clicks_ip, [names["events"]], [names["click_count"], names["ip"]], chunk_size=1000, name=f"{prefix}_step")
    steps = build_compute(ds, catalog, Pipeline([step]))
    return ds, {t: catalog.get_datatable(ds, n) for t, n in names.items()}, steps


def events(users: range, tag: str = "a") -> pd.DataFrame:
    return pd.DataFrame([
        {"user_id": f"u{u}", "event_id": f"e{u}-{i}", "event": json.dumps({"event_type": "click" if (u + i) % 2 else "view", "ip": f"{tag}{u}"})}
        for u in users for i in range(2)
    ])


def outputs(dts: dict) -> list[pd.DataFrame]:
    return [f for t in ("click_count", "ip") for f in state(dts[t])]


def changed(summary) -> list[pd.DataFrame]:  # noqa: ANN001
    res = summary.steps[0]
    keys = [res.changed_keys(t) for t in sorted(res.outputs)]
    return [k.sort_values("user_id").reset_index(drop=True) if len(k) else k for k in keys]


def both_paths(dbconn: DBConn, monkeypatch: pytest.MonkeyPatch, before=None, between=None) -> list[list]:  # noqa: ANN001
    """Per path (all new tried, or never): the end state and changed keys of a first run and a re-run."""
    out = []
    for prefix, skip in (("bulk", 0), ("general", 10**9)):
        monkeypatch.setattr(CommittingStep, "_all_new_skip", skip)
        ds, dts, steps = setup(dbconn, prefix)
        dts["events"].store_chunk(events(range(USERS)))
        if before:
            before(dts)
        first = changed(run_steps(ds, steps))
        if between:
            between(dts)
        second = changed(run_steps(ds, steps))
        out.append([*first, *outputs(dts), *second])
    return out


def assert_same(bulk: list, general: list) -> None:
    assert len(bulk) == len(general)
    for got, want in zip(bulk, general, strict=True):
        pd.testing.assert_frame_equal(got, want)


def test_a_first_run_inserts_outputs_without_reading_their_metadata(dbconn, monkeypatch) -> None:
    calls = spy_existing(monkeypatch)
    monkeypatch.setattr(CommittingStep, "_all_new_skip", 0)
    ds, dts, steps = setup(dbconn, "spy")
    dts["events"].store_chunk(events(range(USERS)))
    run_steps(ds, steps)
    assert calls == [300, 300], "the 1,000-key chunk read no output metadata; the 300-key chunk did"


def test_first_run_and_rerun_write_what_the_general_path_writes(dbconn, monkeypatch) -> None:
    def between(dts: dict) -> None:
        dts["events"].store_chunk(events(range(0, USERS, 3), tag="b"))  # rewritten: a re-run of known keys
        dts["events"].delete_by_idx(pd.DataFrame({"user_id": [f"u{u}" for u in range(1, 40, 2)]}))

    assert_same(*both_paths(dbconn, monkeypatch, between=between))


def test_a_rerun_of_known_keys_skips_the_all_new_attempt(dbconn, monkeypatch) -> None:
    """Outputs whose keys all exist (a re-run after rewritten events): the probe sends the commit the general
    way at once, without an INSERT tried and rolled back."""
    monkeypatch.setattr(CommittingStep, "_all_new_skip", 0)
    ds, dts, steps = setup(dbconn, "rerun")
    dts["events"].store_chunk(events(range(USERS)))
    run_steps(ds, steps)
    dts["events"].store_chunk(events(range(1000), tag="b"))
    summary, statements = recorded_statements(dbconn, lambda: run_steps(ds, steps))
    assert summary.steps[0].keys_processed == 1000
    assert rollbacks(statements) == 0


def test_output_rows_a_user_wrote_first_fall_back_to_the_general_path(dbconn, monkeypatch) -> None:
    def before(dts: dict) -> None:
        dts["click_count"].store_chunk(pd.DataFrame({"user_id": ["u5", "zz"], "click_count": [99, 1]}))

    bulk, general = both_paths(dbconn, monkeypatch, before=before)
    assert_same(bulk, general)


def test_a_user_writing_an_output_waits_for_the_all_new_insert_and_wins(dbconn, monkeypatch) -> None:
    """The processor is inside its savepoint insert of click_count; a user stores click_count of one of its keys: the
    user's write waits (the sequence lock), is numbered after, and compares against the inserted row."""
    ds, dts, steps = setup(dbconn, "race")
    dts["events"].store_chunk(events(range(USERS)))
    entered, release = threading.Event(), threading.Event()
    orig = DBConn.insert_plain

    def gated(self, conn, t, df, encoded=None, **kw):  # noqa: ANN001, ANN003, ANN202
        if threading.current_thread().name == "P" and t.name == "race_click_count" and not release.is_set():
            held.extend(df["user_id"])
            entered.set()
            assert release.wait(GATE_TIMEOUT), "gate never opened"
        return orig(self, conn, t, df, encoded, **kw)

    held: list[str] = []
    monkeypatch.setattr(DBConn, "insert_plain", gated)
    monkeypatch.setattr(CommittingStep, "_all_new_skip", 0)
    tp, out_p = run_thread(lambda: run_steps(ds, steps), name="P")
    assert entered.wait(GATE_TIMEOUT)
    user = setup(DBConn(dbconn.connstr, schema=dbconn.schema), "race")[1]["click_count"]
    key = held[len(held) // 2]  # a key of the chunk being inserted
    tu, out_u = run_thread(lambda: user.store_chunk(pd.DataFrame({"user_id": [key], "click_count": [-1]})))
    waited_then_finished(release, (tp, out_p), (tu, out_u))
    assert out_u[0]["user_id"].tolist() == [key], "the user's row differs from the inserted one: rewritten"
    data, meta = state(dts["click_count"])
    assert len(data) == len(meta) == USERS
    assert data.set_index("user_id").loc[key, "click_count"] == -1
    seq = meta.set_index("user_id")["seq"]
    assert seq[key] > seq[[k for k in held if k != key]].max(), "numbered after the gated chunk"
