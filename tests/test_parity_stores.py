"""Parity with datapipe's stores: schemaless file tables, undeclared fields, delete_by_idx, get_metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from datapipe_dagster import (
    BatchTransform,
    Catalog,
    DataStore,
    DataTable,
    DBConn,
    JSONFile,
    Pipeline,
    SchemaError,
    Table,
    TableStoreCSV,
    TableStoreDB,
    TableStoreExcel,
    TableStoreFiledir,
    TableStoreJsonLine,
    UpdateExternalTable,
    build_compute,
    run_steps,
)

ID = sa.Column("id", sa.Integer, primary_key=True)


def dt_of(store, dbconn: DBConn, name: str = "t") -> DataTable:  # noqa: ANN001
    return Catalog({name: Table(store)}).get_datatable(DataStore(dbconn), name)


# ---------------------------------------------------------------- item 5: delete_by_idx


def test_delete_by_idx_accepts_a_frame_with_data_columns(dbconn) -> None:
    dt = dt_of(TableStoreDB("items", dbconn, [ID, sa.Column("name", sa.String)]), dbconn)
    dt.store_chunk(pd.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "c"]}))
    rows = dt.get_data()
    deleted = dt.delete_by_idx(rows[rows["name"] != "b"])  # the frame still has "name"
    assert sorted(deleted["id"].tolist()) == [1, 3]
    assert dt.get_data()["id"].tolist() == [2]


def test_delete_by_idx_without_key_columns_names_table_and_keys(dbconn) -> None:
    dt = dt_of(TableStoreDB("items", dbconn, [ID, sa.Column("name", sa.String)]), dbconn, "items")
    dt.store_chunk(pd.DataFrame({"id": [1], "name": ["a"]}))
    with pytest.raises(SchemaError, match=r"table 'items'; column 'id': delete_by_idx needs key columns \['id'\]"):
        dt.delete_by_idx(pd.DataFrame({"name": ["a"]}))
    assert len(dt.get_data()) == 1


# ---------------------------------------------------------------- item 5: undeclared fields agree


@pytest.mark.parametrize("kind", ["jsonl", "csv", "xlsx"])
def test_a_field_the_declared_schema_lacks_is_an_error_in_every_file_table(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"t.{kind}"
    schema = [ID, sa.Column("name", sa.String)]
    if kind == "jsonl":
        path.write_text('{"id": 1, "name": "a", "colour": "red"}\n')
        store = TableStoreJsonLine(path, data_sql_schema=schema, name="things")
    else:
        frame = pd.DataFrame({"id": [1], "name": ["a"], "colour": ["red"]})
        frame.to_csv(path, index=False) if kind == "csv" else frame.to_excel(path, index=False, sheet_name="data")
        cls = TableStoreCSV if kind == "csv" else TableStoreExcel
        store = cls(path, data_sql_schema=schema, name="things")
    with pytest.raises(SchemaError, match="'things'") as ei:
        store.read_rows()
    assert ei.value.column == "colour"


def test_schemaless_json_lines_keep_every_field(tmp_path: Path, dbconn: DBConn) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a", "n": 1, "tags": ["x"]}\n{"id": "b", "colour": "red", "n": 2.5}\n')
    dt = dt_of(TableStoreJsonLine(path), dbconn)
    df = dt.store.read_rows().sort_values("id").reset_index(drop=True)
    assert list(df.columns) == ["id", "n", "tags", "colour"]
    assert df.to_dict("records") == [
        {"id": "a", "n": 1, "tags": ["x"], "colour": None},
        {"id": "b", "n": 2.5, "tags": None, "colour": "red"},
    ]
    assert len(dt.store_chunk(df)) == 2
    assert len(dt.store_chunk(dt.get_data())) == 0  # read back, hashed the same
    # values kept as they are, null fields left out of the file
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert sorted(lines, key=lambda r: r["id"]) == [
        {"id": "a", "n": 1, "tags": ["x"]},
        {"id": "b", "colour": "red", "n": 2.5},
    ]


# ---------------------------------------------------------------- item 7: schemaless file folders


def test_schemaless_json_folder_in_a_pipeline(tmp_path: Path, dbconn: DBConn) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "1.json").write_text('{"title": "one", "meta": {"lang": "en", "pages": [1, 2]}}')
    (folder / "2.json").write_text('{"title": "two", "score": 7}')

    def summarise(df: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "id": df["id"].astype(int),
                "summary": [f"{t}:{(m or {}).get('lang', '-')}" for t, m in zip(df["title"], df["meta"], strict=True)],
            }
        )

    cat = Catalog(
        {
            "docs": Table(TableStoreFiledir(str(folder / "{id}.json"), JSONFile())),
            "summary": Table(TableStoreDB("summary", dbconn, [sa.Column("id", sa.String, primary_key=True), sa.Column("summary", sa.String)])),
        }
    )
    ds = DataStore(dbconn)
    steps = build_compute(
        ds, cat, Pipeline([UpdateExternalTable("docs"), BatchTransform(summarise, ["docs"], ["summary"], transform_keys=["id"])])
    )
    run_steps(ds, steps, raise_on_error=True)
    out = cat.get_datatable(ds, "summary").get_data().sort_values("id")
    assert out["summary"].tolist() == ["one:en", "two:-"]
    docs = cat.get_datatable(ds, "docs")
    assert docs.store.schemaless and docs.store.data_columns == ["title", "meta", "score"]
    # a new file with a new field changes nothing for the other rows (stable hashing)
    before = docs.get_metadata().set_index("id")["hash"]
    (folder / "3.json").write_text('{"title": "three", "extra": true}')
    res = run_steps(ds, steps, raise_on_error=True)
    assert res["summarise"].keys_processed == 1
    after = docs.get_metadata().set_index("id")["hash"]
    assert after.loc[["1", "2"]].tolist() == before.loc[["1", "2"]].tolist()
    assert docs.get_data(pd.DataFrame({"id": ["3"]})).to_dict("records") == [
        {"id": "3", "title": "three", "meta": None, "score": None, "extra": True}
    ]


def test_schemaless_folder_writes_fields_as_given(tmp_path: Path, dbconn: DBConn) -> None:
    dt = dt_of(TableStoreFiledir(str(tmp_path / "{id}.json"), JSONFile()), dbconn)
    dt.store_chunk(pd.DataFrame({"id": ["a", "b"], "n": [1, None], "doc": [{"k": [1, 2]}, None]}))
    assert json.loads((tmp_path / "a.json").read_text()) == {"n": 1, "doc": {"k": [1, 2]}}
    assert json.loads((tmp_path / "b.json").read_text()) == {}
    with pytest.raises(SchemaError) as ei:
        dt.store_chunk(pd.DataFrame({"id": ["c"], "bad": [object()]}))
    assert ei.value.column == "bad" and ei.value.key == {"id": "c"}
    assert not (tmp_path / "c.json").exists()


# ---------------------------------------------------------------- item 9: get_metadata


def test_get_metadata_exposes_keys_hash_times_and_process_time(dbconn) -> None:
    dt = dt_of(TableStoreDB("items", dbconn, [ID, sa.Column("name", sa.String)]), dbconn)
    dt.store_chunk(pd.DataFrame({"id": [1, 2], "name": ["a", "b"]}), now=100.0)
    dt.store_chunk(pd.DataFrame({"id": [1, 2], "name": ["a", "B"]}), now=200.0)
    dt.delete_by_idx(pd.DataFrame({"id": [1]}), now=300.0)
    meta = dt.get_metadata(include_deleted=True).set_index("id")
    assert list(meta.columns) == ["hash", "create_ts", "update_ts", "delete_ts", "process_ts", "seq"]
    assert meta.loc[2, ["create_ts", "update_ts", "process_ts"]].tolist() == [100.0, 200.0, 200.0]
    assert pd.isna(meta.loc[2, "delete_ts"])
    assert meta.loc[1, ["create_ts", "delete_ts", "process_ts"]].tolist() == [100.0, 300.0, 300.0]
    assert dt.get_metadata()["id"].tolist() == [2]  # deleted rows only on request
    assert meta["hash"].dtype.kind == "i"
