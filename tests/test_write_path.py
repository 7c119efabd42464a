"""The hot write path (issue 11): JSON serialised once in a canonical text, hashes unchanged, the
write-sequence lock taken only after a commit's reads, SQLite's page cache. SQLite and PostgreSQL."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import JSON, Column, Integer, String

from datapipe_dagster import (
    BatchTransform,
    Catalog,
    DataStore,
    Pipeline,
    Table,
    TableStoreDB,
    build_compute,
    run_steps,
)
from datapipe_dagster.store.pgcopy import COPY_MIN_ROWS
from datapipe_dagster.store.rowhash import _NULL, hash_rows, json_encoder
from datapipe_dagster.store.sqlite_wal import READ_CACHE_KB, SQLITE_CACHE_KB
from tests.engine_helpers import recorded_statements


def _docs(dbconn):  # noqa: ANN001, ANN202
    schema = [Column("k", Integer(), primary_key=True), Column("j", JSON())]
    return Catalog({"docs": Table(TableStoreDB("docs", dbconn, schema))}).get_datatable(DataStore(dbconn), "docs")


def _stored_text(dbconn, k: int) -> str:  # noqa: ANN001
    with dbconn.engine.connect() as c:
        t = sa.Table("docs", sa.MetaData(schema=dbconn.schema), autoload_with=c)
        return c.execute(sa.select(sa.cast(t.c.j, sa.Text)).where(t.c.k == k)).scalar_one()


def test_json_is_stored_canonical_on_the_bulk_and_the_small_path(dbconn) -> None:
    dt = _docs(dbconn)
    value = {"b": 1, "a": {"d": [1, None], "c": "x\ty"}}
    bulk = pd.DataFrame({"k": range(COPY_MIN_ROWS), "j": [value] * COPY_MIN_ROWS})
    dt.store_chunk(bulk)  # COPY / executemany of the hash's text
    dt.store_chunk(pd.DataFrame({"k": [10_000], "j": [value]}))  # a plain INSERT through SQLAlchemy
    dt.store_chunk(pd.DataFrame({"k": [0], "j": [{"z": 0, "y": 1}]}))  # an upsert of a changed row
    canonical = json.dumps(value, sort_keys=True)
    assert _stored_text(dbconn, 1) == canonical
    assert _stored_text(dbconn, 10_000) == canonical
    assert _stored_text(dbconn, 0) == '{"y": 1, "z": 0}'
    got = dt.get_data(pd.DataFrame({"k": [1, 10_000]}))
    assert [list(v) for v in got["j"]] == [["a", "b"], ["a", "b"]]
    assert got["j"].tolist() == [value, value]
    # Written once more unchanged: the stored text hashes as the incoming value, nothing is rewritten.
    assert len(dt.store_chunk(bulk.iloc[1:])) == 0


def test_json_nulls_and_strings_read_back_from_the_bulk_text(dbconn) -> None:
    dt = _docs(dbconn)
    values = [None, "a json string", 3.5, [1, "two"], {"k": None}, True]
    n = COPY_MIN_ROWS + len(values)
    dt.store_chunk(pd.DataFrame({"k": range(n), "j": [values[i % len(values)] for i in range(n)]}))
    got = dt.get_data().sort_values("k")["j"].tolist()
    assert got == [values[i % len(values)] for i in range(n)]
    assert dt.store.read_rows(pd.DataFrame({"k": [1, 2]})).sort_values("k")["j"].tolist() == ["a json string", 3.5]


def test_row_hashes_are_those_of_the_sorted_json_dumps() -> None:
    """Stored hashes must not change with the faster encoder: the text is ``json.dumps(sort_keys=True)``."""
    cols = [Column("k", String(), primary_key=True), Column("j", JSON())]
    df = pd.DataFrame({"k": ["a", "b", "c"], "j": [{"b": [1.5, None], "a": "é"}, None, ["x", {"z": 1, "y": 2}]]})
    texts: dict[str, list[str | None]] = {}
    got = hash_rows(df, cols, "t", strict_json=True, json_texts=texts)
    ref_j = [_NULL if v is None else json.dumps(v, sort_keys=True) for v in df["j"]]
    ref = pd.util.hash_pandas_object(pd.DataFrame({"k": df["k"], "j": ref_j}), index=False).to_numpy()
    assert got.tolist() == (ref >> np.uint64(1)).astype(np.int64).tolist()
    assert texts["j"] == [json.dumps(df["j"][0], sort_keys=True), None, json.dumps(df["j"][2], sort_keys=True)]
    assert json_encoder(strict=False)(np.int64(3)) == "3"


def test_a_commit_reads_every_output_before_taking_the_sequence_lock(dbconn) -> None:
    """The write-sequence lock is held to commit: a transform's commit reads (hashes, stored metadata of
    both outputs, superseded keys) and marks its keys first, so the lock spans only the writes."""
    events = [Column("user_id", String(), primary_key=True), Column("event_id", String(), primary_key=True), Column("n", Integer())]
    outs = {name: [Column("user_id", String(), primary_key=True), Column(name, Integer())] for name in ("total", "count")}
    catalog = Catalog(
        {"events": Table(TableStoreDB("events", dbconn, events))}
        | {name: Table(TableStoreDB(name, dbconn, cols)) for name, cols in outs.items()}
    )

    def agg(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        g = df.groupby("user_id", as_index=False)
        return g["n"].sum().rename(columns={"n": "total"}), g["n"].count().rename(columns={"n": "count"})

    ds = DataStore(dbconn)
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(agg, ["events"], ["total", "count"])]))
    catalog.get_datatable(ds, "events").store_chunk(
        pd.DataFrame({"user_id": ["u1", "u1", "u2"], "event_id": ["e1", "e2", "e3"], "n": [1, 2, 3]})
    )
    statements: list[str] = []

    @sa.event.listens_for(dbconn.engine, "before_cursor_execute")
    def record(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        statements.append(" ".join(statement.split()).lower())

    run_steps(ds, steps)
    sa.event.remove(dbconn.engine, "before_cursor_execute", record)
    takes = [i for i, s in enumerate(statements) if s.startswith("update") and "datapipe_seq" in s.split(" set ")[0]]
    assert takes, statements
    first = takes[0]
    after = statements[first:]
    assert not [s for s in after if s.startswith("select") and ("total_meta" in s or "count_meta" in s)], after
    assert not [s for s in after if "__transform_meta" in s], after
    total = catalog.get_datatable(ds, "total").get_data()
    assert dict(zip(total["user_id"], total["total"], strict=True)) == {"u1": 3, "u2": 3}


def test_sqlite_writes_get_a_bigger_page_cache_than_reads(tmp_path) -> None:
    """A write transaction gets 64 MB of page cache (dirty index pages do not spill mid-write), a read
    one 8 MB (a pooled connection kept a large read's pages: 70 MB of a 10M-event full run's peak); the
    same pooled connection switches both ways."""
    from datapipe_dagster import DBConn

    db = DBConn(f"sqlite:///{tmp_path}/c.sqlite")
    db.engine.pool = db.engine.pool.recreate()  # a fresh pool: one connection, reused
    for _ in range(2):
        with db.begin_write() as c:
            assert c.exec_driver_sql("PRAGMA cache_size").scalar_one() == -SQLITE_CACHE_KB
        with db.connect() as c:
            assert c.exec_driver_sql("PRAGMA cache_size").scalar_one() == -READ_CACHE_KB
            # and no memory map: the pages a process mapped stayed in its RSS (940 MB in a 10M-event full run)
            assert c.exec_driver_sql("PRAGMA mmap_size").scalar_one() == 0
    assert db.engine.pool.checkedin() == 1


def test_an_idle_run_queries_no_table_and_a_change_is_still_seen(dbconn) -> None:
    """Once every watermark has reached the current write sequence, a run with nothing stale asks only
    the sequence, the watermarks and the failed keys: no input or output table is scanned."""
    from tests.engine_helpers import event, seed_setup

    ds, catalog, steps = seed_setup(dbconn)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(pd.DataFrame([event("u1", "e1", "click", "1.1.1.1"), event("u2", "e2", "view", "2.2.2.2")]))
    run_steps(ds, steps)
    run_steps(ds, steps)  # the outputs' watermarks catch up with the run's own writes
    statements: list[str] = []

    def record(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        statements.append(statement.lower())

    sa.event.listen(dbconn.engine, "before_cursor_execute", record)
    assert run_steps(ds, steps).steps[0].keys_processed == 0
    sa.event.remove(dbconn.engine, "before_cursor_execute", record)
    assert statements and not [s for s in statements if "events_meta" in s or "click_count_meta" in s or "ip_meta" in s]
    events.store_chunk(pd.DataFrame([event("u1", "e1", "clack", "3.3.3.3")]))
    assert run_steps(ds, steps).steps[0].keys_processed == 1
    ip = catalog.get_datatable(ds, "ip").get_data()
    assert dict(zip(ip["user_id"], ip["ip"], strict=True)) == {"u1": "3.3.3.3", "u2": "2.2.2.2"}


def _statements_of(dbconn, fn):  # noqa: ANN001, ANN202
    out, seen = recorded_statements(dbconn, fn)
    return out, [st.lower() for st, _ in seen]

def test_the_first_idle_run_after_a_run_sweeps_no_output(dbconn) -> None:
    """A commit that finds nothing unseen in an output below its own writes moves that output's watermark
    past them: the run right after a full run no longer rescans every output row the run wrote."""
    from tests.engine_helpers import event, seed_setup

    ds, catalog, steps = seed_setup(dbconn, chunk_size=2)  # three chunks, three commits
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(pd.DataFrame([event(f"u{i}", "e1", "click", f"1.1.1.{i}") for i in range(5)]))
    run_steps(ds, steps)
    summary, statements = _statements_of(dbconn, lambda: run_steps(ds, steps))
    assert summary.steps[0].keys_processed == 0
    assert statements and not [s for s in statements if "click_count_meta" in s or "ip_meta" in s], statements
    # The same after one change: the change's own run leaves nothing for the next one to sweep.
    events.store_chunk(pd.DataFrame([event("u1", "e1", "clack", "3.3.3.3")]))
    assert run_steps(ds, steps).steps[0].keys_processed == 1
    summary, statements = _statements_of(dbconn, lambda: run_steps(ds, steps))
    assert summary.steps[0].keys_processed == 0
    assert not [s for s in statements if "click_count_meta" in s or "ip_meta" in s], statements


def test_an_output_row_written_by_hand_before_a_commit_is_still_swept(dbconn) -> None:
    """A row nobody's key produces, written into an output between two runs, sits below the next commit's
    writes: that commit must not move the output's watermark past it, and the next run deletes it."""
    from tests.engine_helpers import as_dict, event, seed_setup

    ds, catalog, steps = seed_setup(dbconn)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(pd.DataFrame([event("u1", "e1"), event("u2", "e1")]))
    run_steps(ds, steps)
    cc = catalog.get_datatable(ds, "click_count")
    cc.store_chunk(pd.DataFrame([{"user_id": "stray", "click_count": 9}]))
    events.store_chunk(pd.DataFrame([event("u1", "e2")]))
    # Process u1 alone (a changelist run), so the stray key is not processed with it.
    steps[0].process_keys(pd.DataFrame({"user_id": ["u1"]}))
    assert "stray" in set(steps[0].get_stale_keys(advance_watermark=False)["user_id"])
    run_steps(ds, steps, raise_on_error=True)
    assert as_dict(cc.get_data(), "user_id", "click_count") == {"u1": 2, "u2": 1}
    assert len(steps[0].get_stale_keys()) == 0


def test_a_watermark_never_moves_down(dbconn) -> None:
    """``advance`` keeps the larger value in the upsert itself, so a late, lower advance (a stale query read
    before a commit moved the mark) cannot undo a higher one."""
    from datapipe_dagster.meta.watermarks import WatermarkTable

    marks = WatermarkTable(dbconn)
    marks.create()
    with dbconn.begin_write() as conn:
        marks.advance(conn, "t", {"a": 10})
    with dbconn.begin_write() as conn:
        marks.advance(conn, "t", {"a": 5, "b": 3})
    with dbconn.connect() as conn:
        assert marks.get(conn, "t") == {"a": 10, "b": 3}


def test_a_lower_advance_racing_a_higher_one_keeps_the_higher(pg_schema_conn) -> None:
    """PostgreSQL: the higher advance is uncommitted when the lower one starts; the lower one waits on the
    row and must not overwrite the committed higher value with its own."""
    import threading

    from datapipe_dagster import DBConn
    from datapipe_dagster.meta.watermarks import WatermarkTable

    marks = WatermarkTable(pg_schema_conn)
    marks.create()
    other = DBConn(pg_schema_conn.connstr, schema=pg_schema_conn.schema)
    done = threading.Event()

    def lower() -> None:
        with other.begin_write() as conn:
            WatermarkTable(other).advance(conn, "t", {"a": 5})
        done.set()

    with pg_schema_conn.begin_write() as conn:
        marks.advance(conn, "t", {"a": 10})
        t = threading.Thread(target=lower)
        t.start()
        assert not done.wait(0.5), "the lower advance must wait for the row"
    t.join(30)
    assert done.is_set()
    with pg_schema_conn.connect() as conn:
        assert marks.get(conn, "t") == {"a": 10}
    other.engine.dispose()
