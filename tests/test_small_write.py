"""The small write path (``compute.small_write``: at most ``SMALL_ROWS`` rows, compared in plain Python)
gives the same tables, row metadata and returned frames as the frame path, on SQLite and PostgreSQL.

Each sequence runs twice in one database, on two tables of the same schema: once as it is (few rows: the
small path) and once with the small path switched off (``SMALL_ROWS = 0``: the frame path).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import JSON, Column, Float, Integer, String

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
from datapipe_dagster.compute import small_write
from datapipe_dagster.compute.datatable import DataTable
from datapipe_dagster.errors import SchemaError


def _schema() -> list[Column]:
    return [
        Column("k1", String(), primary_key=True),
        Column("k2", Integer(), primary_key=True),
        Column("val", String()),
        Column("n", Integer()),
        Column("f", Float()),
        Column("j", JSON()),
    ]


def _table(dbconn, name: str) -> DataTable:  # noqa: ANN001
    return Catalog({name: Table(TableStoreDB(name, dbconn, _schema()))}).get_datatable(DataStore(dbconn), name)


def _rows(*rows: tuple[Any, ...]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["k1", "k2", "val", "n", "f", "j"])


def _seq_ranked(meta: pd.DataFrame) -> pd.DataFrame:
    """Metadata with ``seq`` replaced by its rank: both tables share the database's sequence."""
    meta = meta.sort_values(["k1", "k2"]).reset_index(drop=True)
    meta["seq"] = meta["seq"].rank(method="first").astype("int64")
    return meta


def _state(dt: DataTable) -> tuple[pd.DataFrame, pd.DataFrame]:
    return dt.get_data(), _seq_ranked(dt.get_metadata(include_deleted=True))


STEPS: list[tuple[str, Callable[[DataTable, float], pd.DataFrame]]] = [
    ("new rows", lambda dt, now: dt.store_chunk(
        _rows(("a", 1, "x", 1, 1.5, {"p": [1, None, "q"]}), ("a", 2, None, None, None, None), ("b", 1, "y", 2, float("nan"), [1, 2])),
        now=now,
    )),
    ("unchanged, changed and new", lambda dt, now: dt.store_chunk(
        _rows(("a", 1, "x", 1, 1.5, {"p": [1, None, "q"]}), ("a", 2, "now set", 5, 0.25, {"z": {"y": 1}}), ("c", 7, "new", 3, 2.0, "text")),
        now=now,
    )),
    ("scoped: rows under the scope kept, the rest deleted", lambda dt, now: dt.store_chunk(
        _rows(("a", 2, "now set", 5, 0.25, {"z": {"y": 1}}), ("a", 3, "added", 1, 1.0, 3)),
        processed_idx=pd.DataFrame({"k1": ["a"]}),
        now=now,
    )),
    ("delete by key", lambda dt, now: dt.delete_by_idx(pd.DataFrame({"k1": ["b"], "k2": [1]}), now=now)),
    ("a deleted key written again", lambda dt, now: dt.store_chunk(_rows(("b", 1, "back", 2, 9.0, None), ("a", 1, "again", 1, 1.5, True)), now=now)),
    ("rows outside the scope", lambda dt, now: dt.store_chunk(
        _rows(("c", 7, "new", 3, 2.0, "text"), ("d", 1, "d", 1, 1.0, {"k": "v"})),
        processed_idx=pd.DataFrame({"k1": ["a", "c"], "k2": [3, 7]}),
        now=now,
    )),
    ("an empty frame under a scope deletes it", lambda dt, now: dt.store_chunk(_rows(), processed_idx=pd.DataFrame({"k1": ["a"]}), now=now)),
    ("unchanged again", lambda dt, now: dt.store_chunk(_rows(("b", 1, "back", 2, 9.0, None)), now=now)),
]


def test_small_writes_equal_the_frame_path(dbconn, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    small, general = _table(dbconn, "small"), _table(dbconn, "general")
    took: list[str] = []
    real_prepare = small_write.prepare_small

    def spy(w, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        took.append(w.name)
        return real_prepare(w, *a, **kw)

    monkeypatch.setattr("datapipe_dagster.compute.table_write.prepare_small", spy)
    for i, (what, step) in enumerate(STEPS):
        now = 100.0 * (i + 1)
        got = step(small, now)
        with monkeypatch.context() as m:
            m.setattr(small_write, "SMALL_ROWS", 0)
            want = step(general, now)
        pd.testing.assert_frame_equal(got, want, obj=f"returned keys after {what!r}")
        for g, w in zip(_state(small), _state(general), strict=True):
            pd.testing.assert_frame_equal(g, w, obj=f"table after {what!r}")
    assert set(took) == {"small"} and len(took) == len(STEPS)
    meta = small.get_metadata(include_deleted=True).set_index(["k1", "k2"])
    # Times: created once, updated when the content changed, deleted and revived.
    assert meta.loc[("a", 2), ["create_ts", "update_ts", "delete_ts"]].tolist() == [100.0, 700.0, 700.0]
    assert meta.loc[("c", 7), ["create_ts", "update_ts"]].tolist() == [200.0, 200.0]
    assert meta.loc[("b", 1), ["create_ts", "update_ts"]].tolist() == [500.0, 500.0]
    assert pd.isna(meta.loc[("b", 1), "delete_ts"]) and meta.loc[("a", 3), "delete_ts"] == 600.0


def test_bad_input_on_the_small_path_writes_nothing(dbconn) -> None:  # noqa: ANN001
    dt = _table(dbconn, "bad")
    dt.store_chunk(_rows(("a", 1, "x", 1, 1.0, None)))
    with pytest.raises(SchemaError, match="value is not JSON-serialisable") as e:
        dt.store_chunk(_rows(("a", 1, "changed", 1, 1.0, None), ("a", 2, "x", 1, 1.0, {"bad": {1, 2}})))
    assert e.value.table == "bad" and e.value.column == "j" and e.value.key == {"k1": "a", "k2": 2}
    with pytest.raises(SchemaError, match="duplicate key"):
        dt.store_chunk(_rows(("a", 5, "x", 1, 1.0, None), ("a", 5, "y", 1, 1.0, None)))
    assert dt.get_data()["val"].tolist() == ["x"] and len(dt.get_metadata(include_deleted=True)) == 1


def _clicks(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    ev = df["event"]
    g = pd.DataFrame({"user_id": df["user_id"], "click": (ev.map(lambda e: e["t"]) == "click").astype("int64"), "ip": ev.map(lambda e: e["ip"])})
    agg = g.groupby("user_id", sort=False).agg(click_count=("click", "sum"), ip=("ip", "last")).reset_index()
    return agg[["user_id", "click_count"]], agg[["user_id", "ip"]]


def _pipeline(dbconn, prefix: str):  # noqa: ANN001, ANN202
    schemas = {
        "events": [Column("user_id", String(), primary_key=True), Column("event_id", String(), primary_key=True), Column("event", JSON())],
        "clicks": [Column("user_id", String(), primary_key=True), Column("click_count", Integer())],
        "ip": [Column("user_id", String(), primary_key=True), Column("ip", String())],
    }
    catalog = Catalog({f"{prefix}_{n}": Table(TableStoreDB(f"{prefix}_{n}", dbconn, cols)) for n, cols in schemas.items()})
    ds = DataStore(dbconn)
    names = [f"{prefix}_events"], [f"{prefix}_clicks", f"{prefix}_ip"]
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(_clicks, *names, name=f"{prefix}_clicks")]))
    return ds, catalog, steps


def _ev(*rows: tuple[str, str, str, str]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [r[0] for r in rows], "event_id": [r[1] for r in rows], "event": [{"t": r[2], "ip": r[3]} for r in rows]})


def test_one_key_runs_equal_the_frame_path(dbconn, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A run of one changed key (the small path for its outputs) against the same run on the frame path:
    the same summaries, output rows and metadata (hash, deletes, seq order)."""
    runs = {"s": _pipeline(dbconn, "s"), "g": _pipeline(dbconn, "g")}
    changes = [
        _ev(("u1", "e1", "click", "1.1.1.1"), ("u1", "e2", "view", "1.1.1.2"), ("u2", "e3", "click", "2.2.2.2")),
        _ev(("u1", "e1", "clack", "3.3.3.3")),  # the notebook's rewrite: the last written event's ip
        _ev(("u2", "e3", "click", "2.2.2.2")),  # unchanged: nothing to run
        _ev(("u3", "e9", "view", "9.9.9.9")),
    ]
    lines: dict[str, str] = {}
    for i, change in enumerate([*changes, None]):
        for prefix, (ds, catalog, steps) in runs.items():
            with monkeypatch.context() as m:
                if prefix == "g":
                    m.setattr(small_write, "SMALL_ROWS", 0)
                events = catalog.get_datatable(ds, f"{prefix}_events")
                if change is None:
                    events.delete_by_idx(pd.DataFrame({"user_id": ["u2"]}))
                else:
                    events.store_chunk(change)
                summary = run_steps(ds, steps)
            runs[prefix] = (ds, catalog, steps)
            lines[prefix] = summary.steps[0].summary_line().split(":", 1)[1].replace(f"{prefix}_", "")
        assert lines["s"] == lines["g"], i
        for name in ("clicks", "ip"):
            got, want = (runs[p][1].get_datatable(runs[p][0], f"{p}_{name}") for p in ("s", "g"))
            pd.testing.assert_frame_equal(got.get_data(), want.get_data(), obj=f"{name} after change {i}")
            gm, wm = (_seq_ranked_by(dt.get_metadata(include_deleted=True)) for dt in (got, want))
            pd.testing.assert_frame_equal(gm, wm, obj=f"{name} metadata after change {i}")
    ip = runs["s"][1].get_datatable(runs["s"][0], "s_ip").get_data()
    assert ip.set_index("user_id")["ip"].to_dict() == {"u1": "3.3.3.3", "u3": "9.9.9.9"}  # the rewritten event came last


def _seq_ranked_by(meta: pd.DataFrame) -> pd.DataFrame:
    meta = meta.sort_values("user_id").reset_index(drop=True)
    meta["seq"] = meta["seq"].rank(method="first").astype("int64")
    return meta[["user_id", "hash", "seq"]].assign(deleted=meta["delete_ts"].notna())


def test_two_small_writers_racing_on_one_key_lose_nothing(dbconn) -> None:  # noqa: ANN001
    """Two writers of the same key on the small path, the second starting its write while the first has
    prepared (read the metadata) but not committed: the second waits for the first's commit (the
    sequence lock, or SQLite's write lock) and both writes are kept, numbered in commit order."""
    dt = _table(dbconn, "race")
    dt.store_chunk(_rows(("a", 1, "v0", 0, 0.0, None)))
    prepared, release = threading.Event(), threading.Event()
    real_prepare = small_write.prepare_small
    errors: list[BaseException] = []

    def slow_prepare(w, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        res = real_prepare(w, *a, **kw)
        if threading.current_thread().name == "first":
            prepared.set()
            release.wait(10)
        return res

    def write(val: str) -> None:
        try:
            _table(dbconn, "race").store_chunk(_rows(("a", 1, val, 1, 1.0, {"w": val}), ("a", 2, val, 1, 1.0, None)))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    import unittest.mock

    with unittest.mock.patch("datapipe_dagster.compute.table_write.prepare_small", slow_prepare):
        first = threading.Thread(target=write, args=("first",), name="first")
        first.start()
        assert prepared.wait(10)
        second = threading.Thread(target=write, args=("second",), name="second")
        second.start()
        second.join(0.5)  # the second is blocked behind the first's write transaction
        release.set()
        first.join(10)
        second.join(10)
    assert not errors, errors
    data = dt.get_data().set_index("k2")
    # One writer's rows win whole (SQLite: the second, queued behind the first's write transaction;
    # PostgreSQL: either, as their sequence numbers fall), and the metadata describes exactly them.
    assert data.loc[2, "val"] == data.loc[1, "val"]
    if dbconn.backend == "sqlite":
        assert data.loc[1, "val"] == "second"
    meta = dt.get_metadata().set_index("k2")
    hashes = dt.table_store.hash_rows(dt.table_store.validate(dt.get_data()), "race").tolist()
    assert sorted(meta["hash"].tolist()) == sorted(hashes)
    assert meta.loc[1, "create_ts"] < meta.loc[1, "update_ts"]


def test_write_results_equal_the_frame_path(dbconn, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """``DataTable.write``'s result (what the IO manager reports) part by part, on both paths."""
    results = []
    for name, rows in (("rs", 64), ("rg", 0)):
        monkeypatch.setattr(small_write, "SMALL_ROWS", rows)
        dt = _table(dbconn, name)
        dt.store_chunk(_rows(("a", 1, "x", 1, 1.0, None), ("a", 2, "y", 1, 1.0, None), ("b", 1, "z", 1, 1.0, None)), now=1.0)
        with dt.ds.meta_dbconn.begin_write() as conn:
            res = dt.write(conn, _rows(("a", 1, "x", 1, 1.0, None), ("a", 2, "changed", 1, 1.0, None), ("a", 3, "new", 1, 1.0, [1])),
                           processed_idx=pd.DataFrame({"k1": ["a", "b"]}), now=2.0)
        results.append(res)
    small, general = results
    assert type(small).__name__ == "SmallResult" and type(general).__name__ == "WriteResult"
    for part in ("inserted", "updated", "deleted"):
        pd.testing.assert_frame_equal(getattr(small, part), getattr(general, part), obj=part)
    pd.testing.assert_frame_equal(small.changed_idx(), general.changed_idx())
    assert small.counts() == general.counts() == (1, 1, 1) and small.unchanged == general.unchanged == 1


@pytest.mark.parametrize("key_dtype", ["str", "object", "int64", "Int64"])
def test_changed_keys_of_a_small_write_equal_the_concatenation(key_dtype: str) -> None:
    """``SmallResult.changed_idx`` builds the keys of the written rows at once, in the dtypes pandas'
    concatenation of its parts (inserted, updated, deleted) gives, learned once per dtype signature: every
    mix of parts, asked twice (learned, then built), equals ``pd.concat`` of the parts."""
    from datapipe_dagster.compute.small_result import SmallResult
    from datapipe_dagster.compute.small_write import _no_keys

    values = ["x", "y", "z"] if key_dtype in ("str", "object") else [1, 2, 3]
    df = pd.DataFrame({"k": pd.array(values, dtype=key_dtype), "b": pd.array(["p", "q", "r"], dtype="str"), "v": [1.0, 2.0, 3.0]})
    pks = ["k", "b"]
    for new, changed in [([], []), ([0], []), ([], [1]), ([0, 2], [1]), ([0, 1, 2], []), ([2], [0])]:
        for deleted in (_no_keys(pks), df[pks].iloc[0:0].reset_index(drop=True), df[pks].iloc[[1]].reset_index(drop=True)):
            parts = [df[pks].iloc[rows].reset_index(drop=True) for rows in (new, changed)]
            expected = pd.concat([*parts, deleted], ignore_index=True)
            for _ in range(2):
                got = SmallResult(df, pks, new, changed, deleted.copy()).changed_idx()
                pd.testing.assert_frame_equal(got, expected, check_index_type=True, check_column_type=True)
