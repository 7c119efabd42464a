"""What is particular to the file stores: paths, atomic writes, bad keys and files, optional openpyxl."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from datapipe_dagster import (
    BytesFile,
    Catalog,
    ConfigurationError,
    DataStore,
    DataTable,
    DBConn,
    JSONFile,
    Pipeline,
    SchemaError,
    Table,
    TableStoreCSV,
    TableStoreExcel,
    TableStoreFiledir,
    TableStoreJsonLine,
    TextFile,
    UpdateExternalTable,
    build_compute,
    run_steps,
)

ITEM_SCHEMA = [
    sa.Column("item_id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String),
    sa.Column("price", sa.Float),
]


def _dt(store, dbconn: DBConn, name: str = "t") -> DataTable:
    return DataTable(DataStore(dbconn), name, store)


def _files(root: Path) -> list[str]:
    """Data files under ``root`` (the SQLite metadata database of the ``dbconn`` fixture excluded)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("store.sqlite")
    )


# ---------------------------------------------------------------- folder of files


def test_filedir_layout_and_typed_keys(tmp_path: Path, dbconn: DBConn) -> None:
    store = TableStoreFiledir(
        tmp_path / "raw" / "{date}" / "{event_id}.txt",
        TextFile(),
        [sa.Column("event_id", sa.Integer, primary_key=True)],
    )
    assert store.primary_keys == ["date", "event_id"]
    dt = _dt(store, dbconn)
    dt.store_chunk(
        pd.DataFrame({"date": ["2024-01-01", "2024-01-02"], "event_id": [1, 2], "data": ["a\nb", ""]})
    )
    assert _files(tmp_path) == ["raw/2024-01-01/1.txt", "raw/2024-01-02/2.txt"]
    assert (tmp_path / "raw/2024-01-01/1.txt").read_text() == "a\nb"
    listing = store.list_files()
    assert sorted(listing["event_id"]) == [1, 2] and sorted(listing["_path"].map(os.path.basename)) == [
        "1.txt",
        "2.txt",
    ]
    assert str(listing["event_id"].dtype) == "int64"
    got = dt.get_data(pd.DataFrame({"date": ["2024-01-02"]}))
    assert got.to_dict("records") == [{"date": "2024-01-02", "event_id": 2, "data": ""}]


def test_filedir_reads_only_requested_files(tmp_path: Path) -> None:
    adapter = JSONFile()
    store = TableStoreFiledir(tmp_path / "items" / "{item_id}.json", adapter, ITEM_SCHEMA)
    store.write_rows(store.validate(pd.DataFrame({"item_id": range(50), "name": "x", "price": 1.0})))
    assert json.loads((tmp_path / "items" / "7.json").read_text()) == {"name": "x", "price": 1.0}
    adapter.reads = 0
    got = store.read_rows(pd.DataFrame({"item_id": [3, 7, 1000]}))
    assert sorted(got["item_id"]) == [3, 7] and adapter.reads == 2
    assert len(store.list_files()) == 50 and adapter.reads == 2


def test_filedir_ignores_foreign_and_temporary_files(tmp_path: Path) -> None:
    store = TableStoreFiledir(tmp_path / "{item_id}.json", JSONFile(), ITEM_SCHEMA)
    (tmp_path / "notes.txt").write_text("not a row")
    (tmp_path / "readme.json").write_text("{}")  # the key is an integer: not a row either
    (tmp_path / "05.json").write_text("{}")  # nor is a non-canonical integer
    (tmp_path / ".datapipe-tmp-123").write_text("{}")
    (tmp_path / "5.json").write_text('{"name": "five", "price": 5, "extra": true}')
    assert store.read_rows().to_dict("records") == [{"item_id": 5, "name": "five", "price": 5.0}]


def test_filedir_atomic_write_leaves_no_temp_files(tmp_path: Path, dbconn: DBConn) -> None:
    dt = _dt(TableStoreFiledir(tmp_path / "b" / "{id}.bin", BytesFile()), dbconn)
    dt.store_chunk(pd.DataFrame({"id": ["a", "b"], "data": [b"\x00\x01", b""]}))
    dt.store_chunk(pd.DataFrame({"id": ["a"], "data": [b"\x02"]}))
    assert _files(tmp_path) == ["b/a.bin", "b/b.bin"]
    assert (tmp_path / "b" / "a.bin").read_bytes() == b"\x02"
    dt.delete_by_idx(pd.DataFrame({"id": ["b"]}))
    assert _files(tmp_path) == ["b/a.bin"]


@pytest.mark.parametrize("bad", ["a/b", "..", "", ".datapipe-tmp-x"])
def test_filedir_bad_key_names_table_column_key_and_writes_nothing(
    tmp_path: Path, dbconn: DBConn, bad: str
) -> None:
    dt = _dt(TableStoreFiledir(tmp_path / "t" / "{name}.txt", TextFile(), name="notes"), dbconn)
    with pytest.raises(SchemaError) as ei:
        dt.store_chunk(pd.DataFrame({"name": ["ok", bad], "data": ["1", "2"]}))
    assert "'notes'" in str(ei.value) and ei.value.column == "name" and ei.value.key == {"name": bad}
    assert not (tmp_path / "t").exists() and len(dt.get_data()) == 0


def test_filedir_key_that_does_not_round_trip(tmp_path: Path) -> None:
    store = TableStoreFiledir(tmp_path / "{a}_{b}.txt", TextFile(), name="pairs")
    with pytest.raises(SchemaError, match="round-trip"):
        store.write_rows(store.validate(pd.DataFrame({"a": ["x_y"], "b": ["z"], "data": ["d"]})))


def test_filedir_bad_file_content(tmp_path: Path) -> None:
    store = TableStoreFiledir(tmp_path / "{item_id}.json", JSONFile(), ITEM_SCHEMA, name="items")
    (tmp_path / "1.json").write_text("[1, 2]")
    with pytest.raises(SchemaError, match="JSON object") as ei:
        store.read_rows()
    assert ei.value.key == {"item_id": 1}
    (tmp_path / "1.json").write_text('{"price": "cheap"}')
    with pytest.raises(SchemaError) as ei:
        store.read_rows()
    assert ei.value.column == "price" and ei.value.key == {"item_id": 1}


def test_filedir_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="names no key column"):
        TableStoreFiledir(tmp_path / "x.json", JSONFile(), ITEM_SCHEMA)
    assert TableStoreFiledir(tmp_path / "{id}.json", JSONFile()).schemaless  # no schema: schemaless
    with pytest.raises(ConfigurationError, match="not in the path pattern"):
        TableStoreFiledir(tmp_path / "{id}.json", JSONFile(), ITEM_SCHEMA)
    with pytest.raises(ConfigurationError, match="exactly one data column"):
        TableStoreFiledir(
            tmp_path / "{id}.txt", TextFile(), [sa.Column("a", sa.Text), sa.Column("b", sa.Text)]
        )
    with pytest.raises(ConfigurationError, match="JSONFile cannot hold bytes"):
        TableStoreFiledir(tmp_path / "{id}.json", JSONFile(), [sa.Column("blob", sa.LargeBinary)])


# ---------------------------------------------------------------- whole-file tables


@pytest.mark.parametrize("kind", ["jsonl", "csv", "xlsx"])
def test_file_table_is_rewritten_atomically_and_readable_by_others(
    tmp_path: Path, dbconn: DBConn, kind: str
) -> None:
    cls = {"jsonl": TableStoreJsonLine, "csv": TableStoreCSV, "xlsx": TableStoreExcel}[kind]
    path = tmp_path / f"out.{kind}"
    dt = _dt(cls(path, [sa.Column("item_id", sa.Integer)], ITEM_SCHEMA), dbconn)
    dt.store_chunk(pd.DataFrame({"item_id": [1, 2, 3], "name": ["a", None, "c"], "price": [1.5, 2.0, None]}))
    dt.store_chunk(pd.DataFrame({"item_id": [2], "name": ["b"], "price": [2.0]}))
    dt.delete_by_idx(pd.DataFrame({"item_id": [3]}))
    assert _files(tmp_path) == [f"out.{kind}"]
    if kind == "csv":
        assert path.read_text().splitlines() == ["item_id,name,price", "1,a,1.5", "2,b,2.0"]
    elif kind == "jsonl":
        assert [json.loads(line) for line in path.read_text().splitlines()] == [
            {"item_id": 1, "name": "a", "price": 1.5},
            {"item_id": 2, "name": "b", "price": 2.0},
        ]
    else:
        assert pd.read_excel(path, sheet_name="data").to_dict("records") == [
            {"item_id": 1, "name": "a", "price": 1.5},
            {"item_id": 2, "name": "b", "price": 2.0},
        ]


def test_csv_foreign_column_and_bad_value(tmp_path: Path) -> None:
    store = TableStoreCSV(tmp_path / "t.csv", [sa.Column("item_id", sa.Integer)], ITEM_SCHEMA, name="prices")
    (tmp_path / "t.csv").write_text("item_id,name,colour\n1,a,red\n")
    with pytest.raises(SchemaError, match="'prices'") as ei:
        store.read_rows()
    assert ei.value.column == "colour"
    (tmp_path / "t.csv").write_text("item_id,name,price\n1,a,cheap\n")
    with pytest.raises(SchemaError) as ei:
        store.read_rows()
    assert ei.value.column == "price" and ei.value.key == {"item_id": 1}


def test_file_table_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no key column"):
        TableStoreCSV(tmp_path / "t.csv", data_sql_schema=[sa.Column("a", sa.String)])
    with pytest.raises(ConfigurationError, match="not in primary_schema"):
        TableStoreCSV(tmp_path / "t.csv", [sa.Column("other", sa.Integer)], ITEM_SCHEMA)
    with pytest.raises(ConfigurationError, match="binary"):
        TableStoreCSV(tmp_path / "t.csv", [sa.Column("id", sa.Integer)], [sa.Column("blob", sa.LargeBinary)])


def test_excel_without_openpyxl_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        sys.modules, "openpyxl", None
    )  # makes ``import openpyxl`` fail, as when not installed
    with pytest.raises(ConfigurationError, match="pip install openpyxl"):
        TableStoreExcel(tmp_path / "t.xlsx", [sa.Column("id", sa.Integer)])


def test_hand_edited_csv_is_picked_up_by_a_full_scan(tmp_path: Path, dbconn: DBConn) -> None:
    path = tmp_path / "prices.csv"
    path.write_text("item_id,name,price\n1,a,1.5\n2,b,2\n")
    catalog = Catalog({"prices": Table(TableStoreCSV(path, [sa.Column("item_id", sa.Integer)], ITEM_SCHEMA))})
    ds = DataStore(dbconn)
    steps = build_compute(ds, catalog, Pipeline([UpdateExternalTable("prices")]))
    assert run_steps(ds, steps)["update_prices"].outputs["prices"].inserted == 2
    path.write_text("item_id,name,price\n2,b,2.0\n3,c,3\n")  # someone edits the file: 1 deleted, 3 added
    o = run_steps(ds, steps)["update_prices"].outputs["prices"]
    assert (o.inserted, o.updated, o.deleted) == (1, 0, 1)
    assert sorted(catalog.get_datatable(ds, "prices").get_data()["item_id"]) == [2, 3]
