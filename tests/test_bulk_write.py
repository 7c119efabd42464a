"""The bulk ingest path (issue 11): ``store_chunk`` of many rows first tries an all-new insert inside a
savepoint, and falls back to the general compare path on any known key. Hashes are pinned, and the
bulk path must write exactly what the general path writes. SQLite and PostgreSQL."""

from __future__ import annotations

import random
import threading

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy import JSON, Column, Float, Integer, String

from datapipe_dagster import Catalog, DataStore, DBConn, Table, TableStoreDB
from datapipe_dagster.compute import bulk_write
from datapipe_dagster.compute.bulk_write import BULK_MIN_ROWS
from datapipe_dagster.compute.datatable import DataTable
from datapipe_dagster.meta.tables import MetaTable, SequenceTable
from datapipe_dagster.store.rowhash import hash_rows

PINNED_COLUMNS = [
    Column("k", String(), primary_key=True),
    Column("n", Integer()),
    Column("x", Float()),
    Column("s", String()),
    Column("j", JSON()),
]
PINNED_FRAME = {
    "k": ["a", "b", "c", "a2", "é"],
    "n": [1, 2, 3, 4, -5],
    "x": [0.5, float("nan"), 1e300, -0.0, 2.0],
    "s": ["x", None, "x", "", "q'\""],
    "j": [{"b": [1.5, None], "a": "é"}, None, ["x", {"z": 1, "y": 2}], "str", {"a": {"a": 1}}],
}
PINNED_HASHES = [2343178508406637347, 3301578055883732033, 4051689204047275222, 706815187614317236, 7069480921423033111]
"""Computed by the code before the hashing was made faster (30f8bef): stored hashes must never change."""


def test_row_hashes_are_pinned() -> None:
    df = pd.DataFrame(PINNED_FRAME)
    assert hash_rows(df, PINNED_COLUMNS, "t", strict_json=True).tolist() == PINNED_HASHES
    assert hash_rows(df, PINNED_COLUMNS, "t", strict_json=False).tolist() == PINNED_HASHES
    # Repeated values (what factorising used to optimise) hash the same at every position.
    twice = pd.concat([df, df], ignore_index=True)
    assert hash_rows(twice, PINNED_COLUMNS, "t").tolist() == PINNED_HASHES * 2


# ------------------------------------------------------------------ the bulk path against the general path

SCHEMA = [
    Column("user_id", String(), primary_key=True),
    Column("event_id", Integer(), primary_key=True),
    Column("event", JSON()),
    Column("score", Float()),
    Column("note", String()),
]
N = BULK_MIN_ROWS + 234
NOW = 1_700_000_000.25


def rows(ids: range, tag: str = "a") -> pd.DataFrame:
    """Rows of every column type, missing values and text that needs escaping in COPY included."""
    return pd.DataFrame({
        "user_id": [f"u{i % 97}" for i in ids],
        "event_id": list(ids),
        "event": [None if i % 11 == 0 else {"t": tag, "i": i, "s": "a\tb\\c\nd" if i % 5 == 0 else "é"} for i in ids],
        "score": [float("nan") if i % 7 == 0 else i / 3 for i in ids],
        "note": [None if i % 13 == 0 else f"{tag}{i}" for i in ids],
    })


def table(dbconn: DBConn, name: str) -> DataTable:
    return Catalog({name: Table(TableStoreDB(name, dbconn, [c._copy() for c in SCHEMA]))}).get_datatable(DataStore(dbconn), name)


def state(dt: DataTable) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The table's rows as stored (JSON as its text) and its metadata, sequence numbers from 0."""
    with dt.ds.meta_dbconn.engine.connect() as c:
        t = dt.store.data_table
        cols = [sa.cast(col, sa.Text).label(col.name) if isinstance(col.type, JSON) else col for col in t.columns]
        data = pd.DataFrame(c.execute(sa.select(*cols).order_by(*[t.c[k] for k in dt.primary_keys])).mappings().all())
        meta = dt.meta.get_metadata(c, include_deleted=True)
    meta["seq"] -= meta["seq"].min()
    return data, meta


def spy_existing(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the metadata's "which of these keys exist" queries."""
    calls: list[int] = []
    orig = MetaTable.get_existing

    def counted(self, conn, idx):  # noqa: ANN001, ANN202
        calls.append(len(idx))
        return orig(self, conn, idx)

    monkeypatch.setattr(MetaTable, "get_existing", counted)
    return calls


def write_both(dbconn: DBConn, monkeypatch: pytest.MonkeyPatch, *frames: pd.DataFrame) -> list[tuple]:
    """Each frame stored in turn into a table on the bulk path and into one on the general path
    (``now`` fixed); returns both tables' returned frames and end states."""
    out = []
    for name, min_rows in (("bulk", BULK_MIN_ROWS), ("general", 10**9)):
        monkeypatch.setattr(bulk_write, "BULK_MIN_ROWS", min_rows)
        dt = table(dbconn, name)
        returned = [dt.store_chunk(f, now=NOW + i) for i, f in enumerate(frames)]
        out.append((returned, *state(dt), dt.get_data()))
    return out


def assert_same(bulk: tuple, general: tuple) -> None:
    for got, want in zip(bulk[0], general[0], strict=True):
        pd.testing.assert_frame_equal(got, want)
    for got, want in zip(bulk[1:], general[1:], strict=True):
        pd.testing.assert_frame_equal(got, want)


def test_new_rows_take_the_bulk_path_and_write_what_the_general_path_writes(dbconn, monkeypatch) -> None:
    calls = spy_existing(monkeypatch)
    bulk, general = write_both(dbconn, monkeypatch, rows(range(N)), rows(range(N, 2 * N)))
    assert calls == [N, N], "the bulk path asks no existence query; the general one asks one per write"
    assert_same(bulk, general)
    assert len(bulk[1]) == 2 * N and bulk[2]["seq"].tolist() == list(range(2 * N))


def test_a_known_key_falls_back_to_the_general_path(dbconn, monkeypatch) -> None:
    """A rewritten row, an unchanged row, a deleted key written again: the savepoint is rolled back (its
    sequence numbers with it) and the result is the general path's."""
    first = rows(range(N))
    mixed = pd.concat([rows(range(N, 2 * N)), rows(range(5), tag="b"), first.iloc[[7]]], ignore_index=True)
    again = rows(range(2 * N, 3 * N))
    calls = spy_existing(monkeypatch)
    out = []
    for name, min_rows in (("bulk", BULK_MIN_ROWS), ("general", 10**9)):
        monkeypatch.setattr(bulk_write, "BULK_MIN_ROWS", min_rows)
        dt = table(dbconn, name)
        returned = [dt.store_chunk(first, now=NOW)]
        dt.delete_by_idx(first.iloc[[9]], now=NOW + 1)
        returned.append(dt.store_chunk(pd.concat([mixed, first.iloc[[9]]], ignore_index=True), now=NOW + 2))
        returned.append(dt.store_chunk(again, now=NOW + 3))
        out.append((returned, *state(dt), dt.get_data()))
    assert calls == [N + 7, N, N + 7, N], "bulk: only the write with known keys compared"
    assert_same(*out)
    assert len(out[0][0][1]) == N + 4 + 1  # 4 rewritten (row 0 reads the same), the deleted key back


def plain_inserts(statements: list[tuple[str, object]], name: str) -> int:
    """INSERTs into ``name`` without ``ON CONFLICT`` (the all-new attempt's), COPY included."""
    quoted = (f"INSERT INTO {name} ", f'INSERT INTO "{name}" ', f"COPY {name} ", f'COPY "{name}" ')
    return sum(1 for st, _ in statements if st.lstrip().startswith(quoted) and "ON CONFLICT" not in st)


def rollbacks(statements: list[tuple[str, object]]) -> int:
    return sum(1 for st, _ in statements if st.startswith("ROLLBACK TO SAVEPOINT"))


def test_rewritten_rows_skip_the_all_new_attempt(dbconn, monkeypatch) -> None:
    """A frame of known keys is recognised by the probe: no INSERT is tried and failed, the rows are
    hashed once, and the result is the general path's."""
    from tests.engine_helpers import recorded_statements

    hashed: list[int] = []
    orig = DataTable._hash

    def counted(self, df, texts):  # noqa: ANN001, ANN202
        hashed.append(len(df))
        return orig(self, df, texts)

    monkeypatch.setattr(DataTable, "_hash", counted)
    first, rewritten = rows(range(N)), rows(range(N), tag="b")
    bulk, general = write_both(dbconn, monkeypatch, first, rewritten)
    assert_same(bulk, general)
    monkeypatch.setattr(bulk_write, "BULK_MIN_ROWS", BULK_MIN_ROWS)
    dt = table(dbconn, "bulk")
    hashed.clear()
    returned, statements = recorded_statements(dbconn, lambda: dt.store_chunk(rows(range(N), tag="c"), now=NOW + 5))
    assert 0 < len(returned) <= N  # rows without the tag in them read the same
    assert plain_inserts(statements, "bulk") == plain_inserts(statements, "bulk_meta") == 0, "no all-new attempt"
    assert rollbacks(statements) == 0
    assert hashed == [N], "hashed once"


def test_a_known_key_the_probe_misses_still_falls_back(dbconn, monkeypatch) -> None:
    """Known keys away from the probed positions: the all-new INSERT is tried, fails and is rolled back,
    and the result is the general path's."""
    from tests.engine_helpers import recorded_statements

    first = rows(range(N))
    probed = set(np.unique(np.linspace(0, N, bulk_write.PROBE_KEYS).astype(np.int64)).tolist())  # N + 1 rows
    known = next(i for i in range(N // 2, N) if i not in probed)
    ids = list(range(N, 2 * N))
    mixed = pd.concat([rows(ids[:known]), first.iloc[[3]], rows(ids[known:])], ignore_index=True)
    assert len(mixed) == N + 1 and mixed.index[mixed["event_id"] == 3].tolist() == [known]
    out = []
    for name, min_rows in (("bulk", BULK_MIN_ROWS), ("general", 10**9)):
        monkeypatch.setattr(bulk_write, "BULK_MIN_ROWS", min_rows)
        dt = table(dbconn, name)
        returned = [dt.store_chunk(first, now=NOW)]
        got, statements = recorded_statements(dbconn, lambda dt=dt: dt.store_chunk(mixed, now=NOW + 1))
        returned.append(got)
        if name == "bulk":
            assert rollbacks(statements) == 1, "the all-new INSERT was tried, failed and rolled back"
        out.append((returned, *state(dt), dt.get_data()))
    assert_same(*out)


def physical_keys(dbconn: DBConn, t: sa.Table) -> list[tuple]:
    """The key columns of ``t``'s rows in the order they lie in the table (SQLite rowid, PostgreSQL ctid)."""
    place = sa.literal_column("rowid" if dbconn.backend == "sqlite" else "ctid")
    with dbconn.engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.select(t.c.user_id, t.c.event_id).order_by(place))]


@pytest.mark.parametrize("path", ["bulk", "general"])
def test_many_new_rows_are_inserted_in_key_order_and_numbered_in_frame_order(dbconn, monkeypatch, path) -> None:
    """Data and metadata rows of a large insert lie in key order (each index page taken once, not once per
    row), while their sequence numbers, what the engine reads, follow the frame."""
    monkeypatch.setattr(bulk_write, "BULK_MIN_ROWS", BULK_MIN_ROWS if path == "bulk" else 10**9)
    frame = rows(range(N)).sample(frac=1, random_state=3).reset_index(drop=True)
    dt = table(dbconn, path)
    dt.store_chunk(frame, now=NOW)
    by_key = sorted(zip(frame["user_id"], frame["event_id"], strict=True))
    assert physical_keys(dbconn, dt.store.data_table) == by_key
    assert physical_keys(dbconn, dt.meta.table) == by_key
    _, meta = state(dt)
    seq = dict(zip(zip(meta["user_id"], meta["event_id"], strict=True), meta["seq"], strict=True))
    assert [seq[k] for k in zip(frame["user_id"], frame["event_id"], strict=True)] == list(range(N))
    pd.testing.assert_frame_equal(dt.get_data(), frame[dt.get_data().columns], check_dtype=False)


def test_data_written_outside_the_library_falls_back_to_an_upsert(dbconn) -> None:
    dt = table(dbconn, "outside")
    dt.ensure_ready()
    with dbconn.engine.begin() as c:
        c.execute(sa.insert(dt.store.data_table), [{"user_id": "u3", "event_id": 3, "note": "stale"}])
    dt.store_chunk(rows(range(N)), now=NOW)
    data, meta = state(dt)
    assert len(data) == len(meta) == N
    assert data.set_index("event_id").loc[3, "note"] == "a3"


# ------------------------------------------------------------------ two writers racing on new keys

GATE_TIMEOUT = 30


def other_writer(dbconn: DBConn, name: str) -> DataTable:
    """The same table seen by another process: its own connection pool, DataStore and DataTable."""
    return table(DBConn(dbconn.connstr, schema=dbconn.schema), name)


def tagged(ids: list[int], tag: str) -> pd.DataFrame:
    df = pd.DataFrame({"user_id": [f"u{i % 97}" for i in ids], "event_id": ids, "event": [{"w": tag}] * len(ids)})
    return df.assign(score=1.0, note=tag)


def run_thread(fn, name: str | None = None) -> tuple[threading.Thread, list]:  # noqa: ANN001
    out: list = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - surfaced by the test
            out.append(e)

    t = threading.Thread(target=target, name=name)
    t.start()
    return t, out


def waited_then_finished(release: threading.Event, held: tuple, waiting: tuple) -> None:
    """Asserts that the ``waiting`` thread is blocked while ``held`` stays at its gate, then opens the
    gate and asserts both finish without an error (thread, output list pairs of ``run_thread``)."""
    waiting[0].join(1.0)
    assert waiting[0].is_alive(), "the second writer must wait for the first (the sequence lock)"
    release.set()
    for t, out in (held, waiting):
        t.join(GATE_TIMEOUT)
        assert out and not isinstance(out[0], BaseException), out


def test_a_writer_waits_for_a_bulk_insert_in_progress_then_compares(dbconn, monkeypatch) -> None:
    """A is inside its savepoint insert of keys 0..1499; B stores keys 1000..2499 (other content) and must
    wait; once A commits, B's insert fails on A's keys and B takes the general path: its rows win."""
    a, b = table(dbconn, "race"), other_writer(dbconn, "race")
    entered, release = threading.Event(), threading.Event()
    orig = DBConn.insert_plain

    def gated(self, conn, t, df, encoded=None, **kw):  # noqa: ANN001, ANN003, ANN202
        if threading.current_thread().name == "A" and t.name == "race" and not release.is_set():
            entered.set()
            assert release.wait(GATE_TIMEOUT), "gate never opened"
        return orig(self, conn, t, df, encoded, **kw)

    monkeypatch.setattr(DBConn, "insert_plain", gated)
    calls = spy_existing(monkeypatch)
    ta, out_a = run_thread(lambda: a.store_chunk(tagged(list(range(1500)), "A")), name="A")
    assert entered.wait(GATE_TIMEOUT), "A never reached its insert"
    tb, out_b = run_thread(lambda: b.store_chunk(tagged(list(range(1000, 2500)), "B")))
    waited_then_finished(release, (ta, out_a), (tb, out_b))
    assert len(out_a[0]) == 1500 and len(out_b[0]) == 1500
    assert calls == [1500], "A took the bulk path, B compared once"
    data, meta = state(a)
    assert len(data) == len(meta) == 2500 and meta["delete_ts"].isna().all()
    by_key = data.set_index("event_id")["note"].sort_index()
    assert (by_key.loc[:999] == "A").all() and (by_key.loc[1000:] == "B").all()
    seq = meta.set_index("event_id")["seq"].sort_index()
    assert seq.loc[1000:].min() > seq.loc[:999].max(), "B's write is numbered after A's"


def test_writers_racing_on_new_and_known_keys_lose_nothing(dbconn, monkeypatch) -> None:
    """Three writers, four rounds each; in each round all of them store overlapping new keys (plus a few
    known ones), every write with its own content. The end state is each key's row from the write with
    the highest committed sequence number that held it."""
    committed: dict[str, int] = {}
    local = threading.local()
    orig = SequenceTable.allocate

    def recorded(self, conn, n):  # noqa: ANN001, ANN202
        first = orig(self, conn, n)
        local.last = first  # a rolled-back bulk attempt is followed by the general path's allocation
        return first

    monkeypatch.setattr(SequenceTable, "allocate", recorded)
    writes: dict[str, list[int]] = {}
    lock = threading.Lock()
    paths: list[str] = []
    orig_existing = MetaTable.get_existing

    def compared(self, conn, idx):  # noqa: ANN001, ANN202
        local.compared = True
        return orig_existing(self, conn, idx)

    monkeypatch.setattr(MetaTable, "get_existing", compared)

    def writer(w: int) -> None:
        dt = other_writer(dbconn, "rand")
        rng = random.Random(w)
        for r in range(4):
            ids = rng.sample(range(r * 1000, r * 1000 + 1300), 1100)
            ids += rng.sample(range(r * 1000), 5) if r % 2 else []  # known keys: the bulk attempt must fail
            tag = f"w{w}r{r}"
            local.last, local.compared = None, False
            dt.store_chunk(tagged(sorted(set(ids)), tag))
            with lock:
                writes[tag] = sorted(set(ids))
                committed[tag] = local.last
                paths.append("general" if local.compared else "bulk")

    threads = [run_thread(lambda w=w: writer(w)) for w in range(3)]
    for t, out in threads:
        t.join(120)
        assert out == [None], out
    expected: dict[int, str] = {}
    for tag in sorted(writes, key=lambda t: committed[t]):
        expected.update(dict.fromkeys(writes[tag], tag))
    data, meta = state(table(dbconn, "rand"))
    assert len(meta) == len(data) == len(expected), "no lost row, one metadata row per key"
    assert dict(zip(data["event_id"], data["note"], strict=True)) == expected
    assert "bulk" in paths and "general" in paths, paths
