"""On SQLite the library creates its tables ``WITHOUT ROWID`` (rows in key order in one B-tree); tables
created before, with a rowid, keep their layout and work alike."""

from __future__ import annotations

import sqlite3

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster import DBConn, run_steps
from tests.engine_helpers import event, frame, seed_setup

NOW = 1_700_000_000.0


def layouts(path: str) -> dict[str, bool]:
    """Table name -> created ``WITHOUT ROWID``, for every table of the SQLite file at ``path``."""
    with sqlite3.connect(path) as c:
        rows = c.execute("SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND type = 'table'").fetchall()
    return {name: bool(wr) for name, wr in rows if not name.startswith("sqlite_")}


def exercise(dbconn: DBConn) -> dict[str, pd.DataFrame]:
    """Writes, a change, a delete and runs in between; every output and its row metadata at the end."""
    ds, catalog, steps = seed_setup(dbconn)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(frame(event("u1", "e1"), event("u1", "e2", "view"), event("u2", "e3", ip="2.2.2.2")), now=NOW)
    run_steps(ds, steps)
    events.store_chunk(frame(event("u1", "e2", "click", "3.3.3.3")), now=NOW + 1)
    events.delete_by_idx(pd.DataFrame({"user_id": ["u2"], "event_id": ["e3"]}), now=NOW + 2)
    run_steps(ds, steps)
    out = {}
    for name in ("click_count", "ip"):
        dt = catalog.get_datatable(ds, name)
        out[name] = dt.get_data().sort_values("user_id").reset_index(drop=True)
        with dbconn.engine.connect() as c:
            meta = pd.read_sql(sa.select(dt.meta.table), c)
        out[f"{name}_meta"] = meta[["user_id", "hash", "delete_ts"]].sort_values("user_id").reset_index(drop=True)
    return out


def test_the_library_creates_its_sqlite_tables_without_rowid(tmp_path) -> None:
    path = str(tmp_path / "new.sqlite")
    exercise(DBConn(f"sqlite:///{path}"))
    found = layouts(path)
    meta = {name for name in found if name.endswith("_meta") or name.startswith("datapipe_")}
    assert {"events_meta", "click_count_meta", "ip_meta", "datapipe_seq", "datapipe_watermarks"} <= meta
    assert any(name.endswith("__transform_meta") for name in meta)
    assert all(found[name] for name in meta), found


def test_tables_created_with_a_rowid_keep_it_and_give_the_same_results(tmp_path) -> None:
    """A database from before: the same tables and indexes, but with rowids. Nothing is rebuilt, and
    every write, delete and run ends as on a database of the new layout."""
    new_path, old_path = str(tmp_path / "new.sqlite"), str(tmp_path / "old.sqlite")
    new = exercise(DBConn(f"sqlite:///{new_path}"))
    with sqlite3.connect(new_path) as src:
        ddl = [sql for (sql,) in src.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type DESC")]
    assert any("WITHOUT ROWID" in sql for sql in ddl)
    with sqlite3.connect(old_path) as dst:
        for sql in ddl:
            dst.execute(sql.replace("WITHOUT ROWID", ""))
    assert not any(layouts(old_path).values())
    old = exercise(DBConn(f"sqlite:///{old_path}"))
    assert not any(layouts(old_path).values()), "a table was rebuilt"
    for name, df in new.items():
        pd.testing.assert_frame_equal(old[name], df, check_dtype=False, obj=name)
    assert dict(zip(new["click_count"]["user_id"], new["click_count"]["click_count"], strict=True)) == {"u1": 2}
