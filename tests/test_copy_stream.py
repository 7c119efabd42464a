"""The streamed COPY of an all-new write (issue 11): on PostgreSQL the data rows are sent in batches, each
batch's JSON encoded as it is sent, and the rows hashed from those texts afterwards; numeric columns of one
value are rendered once. Results, errors and races must be those of the general path. SQLite and PostgreSQL
(SQLite takes the hash-first insert: the same assertions hold for it)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy import JSON, BigInteger, Column, Float, Integer

from datapipe_dagster import Catalog, DataStore, Table, TableStoreDB
from datapipe_dagster.compute import bulk_write
from datapipe_dagster.errors import SchemaError
from datapipe_dagster.store import pgcopy
from tests import test_bulk_write as bw

BATCH = 97
"""A batch size that splits the test frames (about 1,200 rows) in many uneven batches."""


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgcopy, "COPY_BATCH_ROWS", BATCH)


def test_streamed_batches_write_what_the_general_path_writes(dbconn, monkeypatch, small_batches) -> None:
    frames = bw.rows(range(bw.N)), bw.rows(range(bw.N, 2 * bw.N), tag="b")
    bulk, general = bw.write_both(dbconn, monkeypatch, *frames)
    bw.assert_same(bulk, general)
    assert len(bulk[1]) == 2 * bw.N and bulk[2]["seq"].tolist() == list(range(2 * bw.N))


def _failure(dbconn, monkeypatch, name: str, df: pd.DataFrame, min_rows: int, refuse: bool) -> tuple[type, str]:  # noqa: ANN001
    monkeypatch.setattr(bulk_write, "BULK_MIN_ROWS", min_rows)
    dt = bw.table(dbconn, name)
    dt.ensure_ready()
    if refuse:  # the server refuses row 3, in the first batch the bulk path sends
        with dbconn.engine.begin() as c:
            target = c.dialect.identifier_preparer.format_table(dt.store.data_table)
            c.exec_driver_sql(f"ALTER TABLE {target} DROP CONSTRAINT IF EXISTS no_a3, ADD CONSTRAINT no_a3 CHECK (note <> 'a3')")
    with dbconn.engine.connect() as c:
        seq = dt.ds.seq.current(c)
    with pytest.raises(Exception) as err:
        dt.store_chunk(df, now=bw.NOW)
    data, meta = bw.state(dt)
    assert len(data) == len(meta) == 0, "nothing written"
    with dbconn.engine.connect() as c:
        assert dt.ds.seq.current(c) == seq, "no sequence number taken"
    return err.type, str(err.value)


@pytest.mark.parametrize("case", ["late_bad_json", "server_refuses_then_bad_json"])
def test_bad_input_fails_as_on_the_general_path_and_writes_nothing(dbconn, monkeypatch, small_batches, case: str) -> None:
    """Bad JSON found while a later batch is encoded (the first batches already sent) fails with the
    general path's error, naming table, column and key; so does a frame whose first batch the server
    refuses (a CHECK constraint) when the general path's hashing refuses it first."""
    df = bw.rows(range(bw.N))
    events = df["event"].tolist()
    events[900] = {"bad": {1, 2}}  # a set: not JSON
    df = df.assign(event=events)
    refuse = case == "server_refuses_then_bad_json"
    if refuse and dbconn.backend != "postgresql":
        pytest.skip("a constraint added to the table: PostgreSQL")
    bulk = _failure(dbconn, monkeypatch, "bad_bulk", df, bw.BULK_MIN_ROWS, refuse)
    general = _failure(dbconn, monkeypatch, "bad_bulk", df, 10**9, refuse)
    assert bulk == general
    assert bulk[0] is SchemaError and "bad_bulk" in bulk[1] and "event" in bulk[1] and "900" in bulk[1], bulk


CONSTANTS = {
    "f": [-0.0, 0.0, float("nan"), 1e300, 0.1 + 0.2],
    "i": [7, -3, 0],
    "b": [2**62, -(2**62)],
}


@pytest.mark.parametrize("column", sorted(CONSTANTS))
def test_numeric_columns_of_one_value_are_stored_exactly(dbconn, column: str) -> None:
    """One value throughout a column is rendered once for COPY: bit for bit (``-0.0`` stays negative,
    NaN is NULL), and a column that changes value after the first row is not taken for constant."""
    types = {"f": Float(), "i": Integer(), "b": BigInteger()}
    schema = [Column("k", Integer(), primary_key=True), Column("v", types[column])]
    n = pgcopy.COPY_MIN_ROWS + 10
    for j, value in enumerate(CONSTANTS[column]):
        name = f"const_{column}{j}"
        dt = Catalog({name: Table(TableStoreDB(name, dbconn, [c._copy() for c in schema]))}).get_datatable(DataStore(dbconn), name)
        values = [value] * n
        if j == 0:
            values[-1] = CONSTANTS[column][1]  # not constant: the last row differs
        dt.store_chunk(pd.DataFrame({"k": range(n), "v": values}))
        with dbconn.engine.connect() as c:
            got = [r[0] for r in c.execute(sa.select(dt.store.data_table.c.v).order_by(dt.store.data_table.c.k))]
        want = [None if isinstance(v, float) and np.isnan(v) else v for v in values]
        assert got == want
        if column == "f" and dbconn.backend == "postgresql":  # SQLite stores a whole REAL as an integer
            assert [np.signbit(v) for v in got if v is not None] == [np.signbit(v) for v in want if v is not None]


def test_two_streaming_writers_on_overlapping_new_keys_lose_nothing(dbconn, monkeypatch, small_batches) -> None:
    """Three writers storing overlapping new (and some known) keys, their COPY streams in many batches:
    each key ends with the row of the last committed write that held it (``test_bulk_write``'s race)."""
    bw.test_writers_racing_on_new_and_known_keys_lose_nothing(dbconn, monkeypatch)


def test_of_two_bad_json_columns_the_general_paths_is_named(dbconn, monkeypatch, small_batches) -> None:
    """Column ``a`` is bad in a late batch, ``b`` in the first: the streamed encoding meets ``b`` first,
    the general path (column by column) names ``a``, and so must the bulk path."""
    schema = [Column("k", Integer(), primary_key=True), Column("a", JSON()), Column("b", JSON())]
    n = bw.BULK_MIN_ROWS + 10
    a, b = [{"i": i} for i in range(n)], [[i] for i in range(n)]
    a[900], b[10] = {"bad": {1}}, [{2}]
    df = pd.DataFrame({"k": range(n), "a": a, "b": b})
    got = []
    for min_rows in (bw.BULK_MIN_ROWS, 10**9):
        monkeypatch.setattr(bulk_write, "BULK_MIN_ROWS", min_rows)
        dt = Catalog({"two": Table(TableStoreDB("two", dbconn, [c._copy() for c in schema]))}).get_datatable(DataStore(dbconn), "two")
        with pytest.raises(SchemaError) as err:
            dt.store_chunk(df)
        got.append(str(err.value))
        assert len(dt.get_data()) == 0
    assert got[0] == got[1] and "'a'" in got[0] and "900" in got[0], got
