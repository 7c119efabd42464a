"""The step kinds beyond BatchTransform: BatchGenerate, RowTransform and UpdateExternalTable."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from datapipe_dagster import (
    BatchGenerate,
    BatchTransform,
    Catalog,
    ChangeList,
    ConfigurationError,
    DataStore,
    DBConn,
    JSONFile,
    Pipeline,
    RowTransform,
    SkipRow,
    Table,
    TableStoreDB,
    TableStoreFiledir,
    UpdateExternalTable,
    build_compute,
    run_steps,
    run_steps_changelist,
)

ID = sa.Column("id", sa.Integer, primary_key=True)


def db_table(dbconn: DBConn, name: str, *cols: sa.Column) -> Table:
    return Table(TableStoreDB(name, dbconn, [ID, *cols]))


def data(ds: DataStore, catalog: Catalog, name: str, sort: list[str] | None = None) -> list[dict[str, Any]]:
    df = catalog.get_datatable(ds, name).get_data()
    return df.sort_values(sort or list(df.columns[:1])).to_dict("records") if len(df) else []


# ---------------------------------------------------------------- BatchGenerate


def test_generate_fills_tables_and_deletes_rows_not_produced(dbconn: DBConn) -> None:
    ds = DataStore(dbconn)
    catalog = Catalog(
        {
            "src": db_table(dbconn, "src", sa.Column("v", sa.String)),
            "out": db_table(dbconn, "out", sa.Column("n", sa.Integer)),
        }
    )

    def source(ids: list[int]) -> Iterator[pd.DataFrame]:
        for start in range(0, len(ids), 2):
            yield pd.DataFrame({"id": ids[start : start + 2], "v": [f"v{i}" for i in ids[start : start + 2]]})

    def length(df: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"id": df["id"], "n": df["v"].str.len()})

    gen = BatchGenerate(source, outputs=["src"], kwargs={"ids": [1, 2, 3, 10]})
    steps = build_compute(
        ds, catalog, Pipeline([gen, BatchTransform(length, inputs=["src"], outputs=["out"])])
    )
    summary = run_steps(ds, steps)
    assert summary.ok and summary["source"].outputs["src"].inserted == 4
    assert data(ds, catalog, "out") == [
        {"id": 1, "n": 2},
        {"id": 2, "n": 2},
        {"id": 3, "n": 2},
        {"id": 10, "n": 3},
    ]

    gen.kwargs["ids"] = [1, 2, 3, 10]
    again = run_steps(ds, steps)
    assert len(again["source"].changed.get("src")) == 0 and again["length"].keys_processed == 0

    gen.kwargs["ids"] = [2, 10]
    res = run_steps(ds, steps)
    assert res["source"].outputs["src"].deleted == 2
    assert [r["id"] for r in data(ds, catalog, "out")] == [2, 10]
    # a changelist run leaves sources alone
    assert run_steps_changelist(ds, steps, ChangeList()).steps[0].keys_processed == 0


def test_generate_several_outputs_keep_stale_and_failures(dbconn: DBConn) -> None:
    ds = DataStore(dbconn)
    catalog = Catalog(
        {
            "a": db_table(dbconn, "a", sa.Column("x", sa.Integer)),
            "b": db_table(dbconn, "b", sa.Column("y", sa.Integer)),
        }
    )

    def two(n: int, fail: bool = False) -> Iterator[tuple[pd.DataFrame | None, pd.DataFrame | None]]:
        yield pd.DataFrame({"id": range(n), "x": range(n)}), None
        if fail:
            raise RuntimeError("source down")
        yield None, pd.DataFrame({"id": [7], "y": [70]})

    gen = BatchGenerate(two, outputs=["a", "b"], kwargs={"n": 3})
    steps = build_compute(ds, catalog, Pipeline([gen]))
    run_steps(ds, steps)
    assert len(data(ds, catalog, "a")) == 3 and data(ds, catalog, "b") == [{"id": 7, "y": 70}]

    gen.kwargs.update(n=1, fail=True)
    res = run_steps(ds, steps)
    assert not res.ok and "source down" in res["two"].failed["error"].iloc[0]
    assert len(data(ds, catalog, "a")) == 3, "a run that failed midway deletes nothing"

    keep = build_compute(
        ds,
        catalog,
        Pipeline([BatchGenerate(two, outputs=["a", "b"], delete_stale=False, name="keep", kwargs={"n": 1})]),
    )
    run_steps(ds, keep)
    assert len(data(ds, catalog, "a")) == 3

    bad = build_compute(
        ds,
        catalog,
        Pipeline([BatchGenerate(lambda: iter([pd.DataFrame({"id": [1]})]), outputs=["a", "b"], name="bad")]),
    )
    res = run_steps(ds, bad)
    assert "expected a tuple of 2 DataFrames" in res["bad"].failed["error"].iloc[0]
    with pytest.raises(ConfigurationError, match="at least one output"):
        BatchGenerate(two, outputs=[])


# ---------------------------------------------------------------- RowTransform


def _row_catalog(dbconn: DBConn) -> Catalog:
    return Catalog(
        {
            "docs": db_table(dbconn, "docs", sa.Column("text", sa.String)),
            "words": Table(
                TableStoreDB(
                    "words",
                    dbconn,
                    [ID, sa.Column("pos", sa.Integer, primary_key=True), sa.Column("word", sa.String)],
                )
            ),
            "stats": db_table(dbconn, "stats", sa.Column("n_words", sa.Integer)),
        }
    )


def split_words(row: dict[str, Any]) -> dict[str, Any]:
    if row["text"] == "skip":
        raise SkipRow()
    if row["text"] == "boom":
        raise ValueError(f"cannot parse doc {row['id']}")
    words = row["text"].split()
    return {"words": [{"pos": i, "word": w} for i, w in enumerate(words)], "stats": {"n_words": len(words)}}


def test_row_transform_one_to_many_skip_errors_and_reparse(dbconn: DBConn) -> None:
    ds = DataStore(dbconn)
    catalog = _row_catalog(dbconn)
    docs = catalog.get_datatable(ds, "docs")
    docs.store_chunk(pd.DataFrame({"id": [1, 2, 3, 4], "text": ["a b c", "skip", "boom", "d"]}))
    steps = build_compute(
        ds,
        catalog,
        Pipeline([RowTransform(split_words, inputs=["docs"], outputs=["words", "stats"], chunk_size=10)]),
    )
    res = run_steps(ds, steps)
    failed = res["split_words"].failed
    assert failed[["id", "error"]].to_dict("records") == [
        {"id": 3, "error": "ValueError: cannot parse doc 3"}
    ]
    assert "split_words" in failed["traceback"].iloc[0]
    assert data(ds, catalog, "stats") == [{"id": 1, "n_words": 3}, {"id": 4, "n_words": 1}]
    assert len(data(ds, catalog, "words")) == 4

    # a row that now produces fewer outputs loses the others; a deleted row loses all of them
    docs.store_chunk(pd.DataFrame({"id": [1], "text": ["a"]}))
    docs.delete_by_idx(pd.DataFrame({"id": [4]}))
    res = run_steps(ds, steps)
    assert res["split_words"].outputs["words"].deleted == 3
    assert data(ds, catalog, "words", ["id", "pos"]) == [{"id": 1, "pos": 0, "word": "a"}]
    assert data(ds, catalog, "stats") == [{"id": 1, "n_words": 1}]
    assert res["split_words"].failed["id"].tolist() == [3], "the failed row is retried, and fails again"

    # code fixed: the failed row is retried and succeeds
    def fixed(row: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        text = "x y" if row["text"] == "boom" else row["text"]
        return [{"pos": i, "word": w} for i, w in enumerate(text.split())], {"n_words": len(text.split())}

    steps = build_compute(
        ds,
        catalog,
        Pipeline([RowTransform(fixed, inputs=["docs"], outputs=["words", "stats"], name="split_words")]),
    )
    res = run_steps(ds, steps)
    assert res.ok and res["split_words"].keys_processed == 1
    assert data(ds, catalog, "stats") == [{"id": 1, "n_words": 1}, {"id": 3, "n_words": 2}]


def test_row_transform_failed_row_keeps_old_outputs_and_changelist(dbconn: DBConn) -> None:
    ds = DataStore(dbconn)
    catalog = _row_catalog(dbconn)
    docs = catalog.get_datatable(ds, "docs")
    docs.store_chunk(pd.DataFrame({"id": [1, 2], "text": ["a b", "c"]}))
    steps = build_compute(
        ds, catalog, Pipeline([RowTransform(split_words, inputs=["docs"], outputs=["words", "stats"])])
    )
    run_steps(ds, steps)
    cl = ChangeList.create("docs", docs.store_chunk(pd.DataFrame({"id": [1, 2], "text": ["boom", "c d"]})))
    res = run_steps_changelist(ds, steps, cl)
    assert res["split_words"].failed["id"].tolist() == [1]
    assert data(ds, catalog, "stats") == [{"id": 1, "n_words": 2}, {"id": 2, "n_words": 2}]
    assert sorted(res["split_words"].changed.get("stats")["id"]) == [2]


def test_row_transform_bad_outputs_are_row_errors(dbconn: DBConn) -> None:
    ds = DataStore(dbconn)
    catalog = _row_catalog(dbconn)
    catalog.get_datatable(ds, "docs").store_chunk(
        pd.DataFrame({"id": [1, 2, 3, 4], "text": ["a", "b", "c", "d"]})
    )

    calls: list[int] = []

    def sloppy(row: dict[str, Any]) -> Any:
        calls.append(row["id"])
        return {
            1: {"n_words": 1},
            2: {"id": 99, "n_words": 1},
            3: {"n_words": "many"},
            4: [{"n_words": 1}, {"n_words": 2}],
        }[row["id"]]

    steps = build_compute(ds, catalog, Pipeline([RowTransform(sloppy, inputs=["docs"], outputs=["stats"])]))
    failed = run_steps(ds, steps)["sloppy"].failed.sort_values("id")
    assert failed["id"].tolist() == [2, 3, 4]
    assert sorted(calls) == [1, 2, 3, 4], "bad output rows are isolated without calling the function again"
    assert "key column 'id' is 99" in failed["error"].iloc[0]
    assert "'stats'" in failed["error"].iloc[1] and "'n_words'" in failed["error"].iloc[1]
    assert "duplicate key" in failed["error"].iloc[2]
    assert data(ds, catalog, "stats") == [{"id": 1, "n_words": 1}]
    with pytest.raises(ConfigurationError, match="exactly one input"):
        RowTransform(sloppy, inputs=["docs", "stats"], outputs=["words"])


# ---------------------------------------------------------------- UpdateExternalTable: folder


def test_external_folder_reads_only_changed_files(tmp_path: Path, dbconn: DBConn) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    adapter = JSONFile()
    schema = [sa.Column("item_id", sa.Integer, primary_key=True), sa.Column("price", sa.Float)]
    catalog = Catalog(
        {
            "items": Table(TableStoreFiledir(folder / "{item_id}.json", adapter, schema)),
            "doubled": Table(TableStoreDB("doubled", dbconn, schema)),
        }
    )

    def double(df: pd.DataFrame) -> pd.DataFrame:
        return df.assign(price=df["price"] * 2)

    ds = DataStore(dbconn)
    steps = build_compute(
        ds,
        catalog,
        Pipeline(
            [UpdateExternalTable("items"), BatchTransform(double, inputs=["items"], outputs=["doubled"])]
        ),
    )
    for i in range(5):
        (folder / f"{i}.json").write_text(json.dumps({"price": i}))
    res = run_steps(ds, steps)
    assert res["update_items"].outputs["items"].inserted == 5 and len(data(ds, catalog, "doubled")) == 5

    adapter.reads = 0
    res = run_steps(ds, steps)
    assert adapter.reads == 0 and res["update_items"].changed.empty() and res["double"].keys_processed == 0

    (folder / "1.json").write_text(json.dumps({"price": 100}))  # changed
    os.utime(folder / "2.json", ns=(1, 1))  # touched, same content
    (folder / "3.json").rename(folder / "33.json")  # renamed
    (folder / "4.json").unlink()  # deleted
    adapter.reads = 0
    scan = steps[0].run_full()
    o = scan.outputs["items"]
    assert adapter.reads == 3 and (o.inserted, o.updated, o.deleted) == (1, 1, 2)
    adapter.reads = 0
    assert run_steps_changelist(ds, steps[1:], scan.changed)["double"].keys_processed == 4
    assert adapter.reads == 2, "the transform reads only the files of the changed keys"
    assert data(ds, catalog, "doubled") == [
        {"item_id": 0, "price": 0.0},
        {"item_id": 1, "price": 200.0},
        {"item_id": 2, "price": 4.0},
        {"item_id": 33, "price": 6.0},
    ]
    adapter.reads = 0
    assert run_steps(ds, steps)["update_items"].changed.empty() and adapter.reads == 0
    assert steps[0].scan(full=True).changed.empty() and adapter.reads == 4, "full=True re-reads every file"

    (folder / "5.json").write_text('{"price": ')  # half-written by the other service
    (folder / "6.json").write_text(json.dumps({"price": 6}))
    res = steps[0].run_full()
    assert (
        res.failed[["item_id"]].to_dict("records") == [{"item_id": 5}]
        and "5.json" in res.failed["error"].iloc[0]
    )
    assert res.outputs["items"].inserted == 1, "the other files go on"
    (folder / "5.json").write_text(json.dumps({"price": 5}))
    res = steps[0].run_full()
    assert res.keys_failed == 0
    assert res.outputs["items"].inserted == 1, "the failed file is retried"

    gone = build_compute(
        ds,
        Catalog({"x": Table(TableStoreFiledir(tmp_path / "nope" / "{id}.txt", JSONFile(), schema[1:]))}),
        Pipeline([UpdateExternalTable("x")]),
    )
    with pytest.raises(ConfigurationError, match="does not exist"):
        run_steps(ds, gone)


# ---------------------------------------------------------------- UpdateExternalTable: SQL


def _external_sql(dbconn: DBConn) -> tuple[TableStoreDB, sa.Table]:
    store = TableStoreDB(
        "ext_orders",
        dbconn,
        [ID, sa.Column("amount", sa.Integer), sa.Column("updated_at", sa.Integer, index=True)],
    )
    dbconn.ensure_table(store.data_table)
    return store, store.data_table


def test_external_sql_full_scan_sees_inserts_updates_deletes(dbconn: DBConn) -> None:
    store, t = _external_sql(dbconn)
    ds = DataStore(dbconn)
    catalog = Catalog({"orders": Table(store)})
    steps = build_compute(ds, catalog, Pipeline([UpdateExternalTable("orders")]))
    with dbconn.engine.begin() as c:  # another service writes the table
        c.execute(sa.insert(t), [{"id": i, "amount": i * 10, "updated_at": 1} for i in range(4)])
    assert run_steps(ds, steps)["update_orders"].outputs["orders"].inserted == 4
    with dbconn.engine.begin() as c:
        c.execute(sa.update(t).where(t.c.id == 1).values(amount=11, updated_at=2))
        c.execute(sa.delete(t).where(t.c.id == 2))
    o = run_steps(ds, steps)["update_orders"].outputs["orders"]
    assert (o.inserted, o.updated, o.deleted) == (0, 1, 1)
    assert run_steps(ds, steps)["update_orders"].changed.empty()


def test_external_sql_full_scan_in_pages_sees_inserts_updates_deletes(dbconn: DBConn) -> None:
    """A full scan reads the table in pages of SCAN_CHUNK rows in key order (two key columns here):
    changes at page boundaries, before the first and after the last row are all seen, and the largest
    updated-at value over every page is kept."""
    store = TableStoreDB(
        "ext_lines",
        dbconn,
        [sa.Column("o", sa.String, primary_key=True), sa.Column("n", sa.Integer, primary_key=True),
         sa.Column("qty", sa.Integer), sa.Column("at", sa.Integer)],
    )
    dbconn.ensure_table(store.data_table)
    t = store.data_table
    ds = DataStore(dbconn)
    catalog = Catalog({"lines": Table(store)})
    (step,) = build_compute(ds, catalog, Pipeline([UpdateExternalTable("lines", updated_at_column="at")]))
    step.SCAN_CHUNK = 3  # type: ignore[attr-defined]
    rows = [{"o": o, "n": n, "qty": n, "at": 1} for o in ("a", "b", "c") for n in (1, 2, 10)] + [{"o": "d", "n": 1, "qty": 1, "at": 1}]
    with dbconn.engine.begin() as c:
        c.execute(sa.insert(t), rows)
    first = step.scan(full=True)
    assert (first.rows_read, first.outputs["lines"].inserted) == (10, 10)
    with dbconn.engine.begin() as c:
        c.execute(sa.update(t).where(t.c.o == "b", t.c.n == 10).values(qty=99, at=5))  # a page's last row
        c.execute(sa.delete(t).where(t.c.o == "c", t.c.n == 1))  # a page's first row
        c.execute(sa.delete(t).where(t.c.o == "d"))  # after the last row left
        c.execute(sa.insert(t), [{"o": "0", "n": 1, "qty": 0, "at": 2}, {"o": "b", "n": 3, "qty": 3, "at": 2}])
    pages: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        if "ext_lines" in statement and "LIMIT" in statement.upper() and "_meta" not in statement.split("FROM")[1]:
            pages.append(statement)

    sa.event.listen(dbconn.engine, "before_cursor_execute", count)
    o = step.scan(full=True).outputs["lines"]
    sa.event.remove(dbconn.engine, "before_cursor_execute", count)
    assert (o.inserted, o.updated, o.deleted) == (2, 1, 2)
    assert len(pages) == 4  # 10 rows in pages of 3: never the whole table at once
    got = catalog.get_datatable(ds, "lines").get_data()
    assert sorted(zip(got["o"], got["n"], got["qty"], strict=True)) == sorted(
        (r["o"], r["n"], r["qty"]) for r in [*rows[:5], {"o": "b", "n": 10, "qty": 99}, *rows[7:9],
                                              {"o": "0", "n": 1, "qty": 0}, {"o": "b", "n": 3, "qty": 3}]
    )
    assert step.scan(full=True).changed.empty()
    assert step.scan().rows_read == 1  # the updated-at value of the whole scan (5), not of the last page


def test_external_sql_updated_at_mode_reads_only_new_rows(dbconn: DBConn) -> None:
    store, t = _external_sql(dbconn)
    ds = DataStore(dbconn)
    catalog = Catalog(
        {"orders": Table(store), "big": db_table(dbconn, "big", sa.Column("amount", sa.Integer))}
    )

    def big(df: pd.DataFrame) -> pd.DataFrame:
        return df.loc[df["amount"] >= 100, ["id", "amount"]]

    upd = UpdateExternalTable("orders", updated_at_column="updated_at")
    steps = build_compute(
        ds, catalog, Pipeline([upd, BatchTransform(big, inputs=["orders"], outputs=["big"])])
    )
    with dbconn.engine.begin() as c:
        c.execute(sa.insert(t), [{"id": i, "amount": i * 50, "updated_at": i} for i in range(10)])
    assert run_steps(ds, steps)["update_orders"].rows_read == 10  # first scan is full
    with dbconn.engine.begin() as c:
        c.execute(
            sa.insert(t),
            [{"id": 10, "amount": 500, "updated_at": 10}, {"id": 11, "amount": 5, "updated_at": 10}],
        )
        c.execute(sa.update(t).where(t.c.id == 0).values(amount=999, updated_at=11))
        c.execute(sa.delete(t).where(t.c.id == 9))
    res = run_steps(ds, steps)
    assert res["update_orders"].rows_read == 3 and res["update_orders"].outputs["orders"].deleted == 0
    assert [r["id"] for r in data(ds, catalog, "big")] == [0, 2, 3, 4, 5, 6, 7, 8, 9, 10], (
        "the delete is not seen yet"
    )
    res = run_steps(ds, steps)
    assert (
        res["update_orders"].rows_read == 1 and res["update_orders"].changed.empty()
    )  # the row at the last value

    step = steps[0]
    full = step.scan(full=True)
    assert full.outputs["orders"].deleted == 1
    run_steps_changelist(ds, steps[1:], full.changed)
    assert 9 not in [r["id"] for r in data(ds, catalog, "big")]

    periodic = build_compute(
        ds, catalog, Pipeline([UpdateExternalTable("orders", "updated_at", full_scan_interval=0, name="p")])
    )
    assert run_steps(ds, periodic)["p"].rows_read == 11 and run_steps(ds, periodic)["p"].rows_read == 11


def test_external_configuration_errors(tmp_path: Path, dbconn: DBConn) -> None:
    store, _ = _external_sql(dbconn)
    ds = DataStore(dbconn)
    files = TableStoreFiledir(tmp_path / "{id}.json", JSONFile(), [sa.Column("amount", sa.Integer)])
    catalog = Catalog({"orders": Table(store), "files": Table(files)})
    with pytest.raises(ConfigurationError, match="no column 'changed'"):
        build_compute(ds, catalog, Pipeline([UpdateExternalTable("orders", updated_at_column="changed")]))
    with pytest.raises(ConfigurationError, match="needs a SQL table"):
        build_compute(ds, catalog, Pipeline([UpdateExternalTable("files", updated_at_column="amount")]))
