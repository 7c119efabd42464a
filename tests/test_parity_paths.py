"""Parity with datapipe's file folders: globs and alternatives in path patterns, fsspec URLs, Parquet and
image stores (the conformance suite covers each store; these pin the behaviour specific to each)."""

from __future__ import annotations

import io
import json
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from datapipe_dagster import (
    BatchTransform,
    Catalog,
    ConfigurationError,
    DataStore,
    DBConn,
    JSONFile,
    Pipeline,
    SchemaError,
    Table,
    TableStoreDB,
    TableStoreFiledir,
    UpdateExternalTable,
    build_compute,
    run_steps,
)
from datapipe_dagster.store.image import ImageFile
from datapipe_dagster.store.parquet import TableStoreParquet

ID = sa.Column("id", sa.Integer, primary_key=True)
NAME = sa.Column("name", sa.String)


def names(store: TableStoreFiledir) -> dict[int, str]:
    df = store.read_rows()
    return dict(zip(df["id"].tolist(), df["name"].tolist(), strict=True))


def test_star_pattern_reads_any_folder_and_needs_write_pattern_for_new_rows(tmp_path: Path) -> None:
    for sub, i in (("a", 1), ("b", 2)):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / f"{i}.json").write_text(json.dumps({"name": sub}))
    (tmp_path / "a" / "deeper").mkdir()
    (tmp_path / "a" / "deeper" / "3.json").write_text('{"name": "too deep"}')
    store = TableStoreFiledir(tmp_path / "*" / "{id}.json", JSONFile(), [ID, NAME], name="star")
    assert names(store) == {1: "a", 2: "b"}  # "*" is one folder level
    assert store.read_rows(pd.DataFrame({"id": [2]}))["name"].tolist() == ["b"]
    store.write_rows(store.validate(pd.DataFrame({"id": [2], "name": ["B"]})))  # an existing file is updated in place
    assert json.loads((tmp_path / "b" / "2.json").read_text()) == {"name": "B"}
    with pytest.raises(SchemaError, match="has wildcards, so a new row has no file path; give write_pattern") as ei:
        store.write_rows(store.validate(pd.DataFrame({"id": [2, 9], "name": ["x", "new"]})))
    assert ei.value.key == {"id": 9}
    assert json.loads((tmp_path / "b" / "2.json").read_text()) == {"name": "B"}  # a bad key writes nothing
    store.delete_rows(pd.DataFrame({"id": [1]}))
    assert not (tmp_path / "a" / "1.json").exists()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "2.json").write_text('{"name": "dup"}')
    with pytest.raises(SchemaError, match="two files hold the same key") as ei:
        store.read_rows()
    assert "b/2.json" in str(ei.value) and "c/2.json" in str(ei.value)


def test_deep_pattern_matches_any_depth(tmp_path: Path) -> None:
    (tmp_path / "x" / "y").mkdir(parents=True)
    (tmp_path / "0.json").write_text('{"name": "top"}')
    (tmp_path / "x" / "y" / "5.json").write_text('{"name": "deep"}')
    store = TableStoreFiledir(
        tmp_path / "**/{id}.json", JSONFile(), [ID, NAME], write_pattern=tmp_path / "new" / "{id}.json"
    )
    assert names(store) == {0: "top", 5: "deep"}
    store.write_rows(store.validate(pd.DataFrame({"id": [7], "name": ["seven"]})))
    assert json.loads((tmp_path / "new" / "7.json").read_text()) == {"name": "seven"}
    with pytest.raises(ConfigurationError, match="write_pattern"):
        TableStoreFiledir(tmp_path / "**/{id}.json", JSONFile(), [ID, NAME], write_pattern=tmp_path / "*/{id}.json")


def test_alternatives_read_either_and_write_new_rows_with_the_first(tmp_path: Path) -> None:
    (tmp_path / "1.js").write_text('{"name": "old"}')
    (tmp_path / "1.txt").write_text("not part of the table")
    store = TableStoreFiledir(tmp_path / "{id}.(json|js)", JSONFile(), [ID, NAME])
    assert names(store) == {1: "old"}
    store.write_rows(store.validate(pd.DataFrame({"id": [1, 2], "name": ["one", "two"]})))
    assert json.loads((tmp_path / "1.js").read_text()) == {"name": "one"}  # kept its extension
    assert json.loads((tmp_path / "2.json").read_text()) == {"name": "two"}
    assert store.read_rows(pd.DataFrame({"id": [1, 2]})).sort_values("id")["name"].tolist() == ["one", "two"]
    store.delete_rows(pd.DataFrame({"id": [1]}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.txt", "2.json"]


def test_memory_url_folder_in_a_pipeline(dbconn: DBConn) -> None:
    import fsspec

    root = f"dp-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    fs.pipe_file(f"/{root}/in/1.json", b'{"name": "a"}')
    fs.pipe_file(f"/{root}/in/2.json", b'{"name": "b"}')

    def upper(df: pd.DataFrame) -> pd.DataFrame:
        return df.assign(name=df["name"].str.upper())

    cat = Catalog(
        {
            "src": Table(TableStoreFiledir(f"memory://{root}/in/{{id}}.json", JSONFile(), [ID, NAME])),
            "dst": Table(TableStoreFiledir(f"memory://{root}/out/{{id}}.json", JSONFile(), [ID, NAME])),
        }
    )
    ds = DataStore(dbconn)
    steps = build_compute(ds, cat, Pipeline([UpdateExternalTable("src"), BatchTransform(upper, ["src"], ["dst"])]))
    run_steps(ds, steps, raise_on_error=True)
    assert json.loads(fs.cat_file(f"/{root}/out/2.json")) == {"name": "B"}
    fs.pipe_file(f"/{root}/in/2.json", b'{"name": "bee"}')
    fs.rm_file(f"/{root}/in/1.json")
    res = run_steps(ds, steps, raise_on_error=True)
    assert res["upper"].keys_processed == 2
    assert sorted(fs.ls(f"/{root}/out", detail=False)) == [f"/{root}/out/2.json"]
    assert json.loads(fs.cat_file(f"/{root}/out/2.json")) == {"name": "BEE"}
    fs.rm(f"/{root}", recursive=True)


def test_file_url_and_unknown_protocol(tmp_path: Path) -> None:
    store = TableStoreFiledir(f"file://{tmp_path}/{{id}}.json", JSONFile(), [ID, NAME])
    store.write_rows(store.validate(pd.DataFrame({"id": [3], "name": ["c"]})))
    assert json.loads((tmp_path / "3.json").read_text()) == {"name": "c"}
    with pytest.raises(ConfigurationError, match="no fsspec filesystem for 'nosuchproto'"):
        TableStoreFiledir("nosuchproto://x/{id}.json", JSONFile(), [ID, NAME], name="remote")


def test_image_folder_through_the_row_metadata(tmp_path: Path, dbconn: DBConn) -> None:
    from PIL import Image

    Image.new("RGB", (3, 2), (255, 0, 0)).save(tmp_path / "1.png")
    Image.new("L", (2, 2), 128).save(tmp_path / "2.jpg")
    cat = Catalog({"imgs": Table(TableStoreFiledir(tmp_path / "{id}.(png|jpg)", ImageFile(), [ID]))})
    dt = cat.get_datatable(DataStore(dbconn), "imgs")
    df = dt.store.read_rows().sort_values("id").reset_index(drop=True)
    assert [(im.mode, im.size) for im in df["image"]] == [("RGB", (3, 2)), ("L", (2, 2))]
    assert len(dt.store_chunk(df)) == 2
    assert len(dt.store_chunk(dt.get_data())) == 0  # same pixels, same hash
    rotated = df.assign(image=[im.rotate(90, expand=True) for im in df["image"]]).iloc[:1]
    assert dt.store_chunk(rotated)["id"].tolist() == [1]
    assert Image.open(io.BytesIO((tmp_path / "1.png").read_bytes())).size == (2, 3)
    with pytest.raises(SchemaError) as ei:
        dt.store_chunk(pd.DataFrame({"id": [3], "image": ["not an image"]}))
    assert ei.value.column == "image" and "PIL.Image" in str(ei.value)
    assert not (tmp_path / "3.png").exists()


def test_parquet_table_round_trip_and_foreign_column(tmp_path: Path, dbconn: DBConn) -> None:
    path = tmp_path / "t.parquet"
    schema = [ID, NAME, sa.Column("score", sa.Float), sa.Column("at", sa.DateTime)]
    cat = Catalog(
        {
            "src": Table(TableStoreDB("src", dbconn, schema)),
            "pq": Table(TableStoreParquet(path, data_sql_schema=schema, name="pq")),
        }
    )
    ds = DataStore(dbconn)
    steps = build_compute(ds, cat, Pipeline([BatchTransform(lambda df: df, ["src"], ["pq"], name="copy")]))
    rows = pd.DataFrame({"id": [1, 2], "name": ["a", None], "score": [1.5, None], "at": pd.to_datetime(["2024-01-01 00:00", "2024-02-03 04:05"])})
    cat.get_datatable(ds, "src").store_chunk(rows)
    run_steps(ds, steps, raise_on_error=True)
    back = pd.read_parquet(path).sort_values("id").reset_index(drop=True)
    assert back["id"].tolist() == [1, 2] and back["at"].tolist() == rows["at"].tolist()
    pq = cat.get_datatable(ds, "pq")
    assert len(pq.store_chunk(pq.get_data())) == 0
    back.assign(colour="red").to_parquet(path)
    with pytest.raises(SchemaError, match="'pq'") as ei:
        pq.store.read_rows()
    assert ei.value.column == "colour"


@pytest.mark.parametrize("module", ["PIL", "pyarrow"])
def test_missing_optional_packages_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail, as when not installed
    if module == "PIL":
        with pytest.raises(ConfigurationError, match=r"datapipe-dagster\[image\]"):
            ImageFile()
    else:
        with pytest.raises(ConfigurationError, match=r"datapipe-dagster\[parquet\]"):
            TableStoreParquet(tmp_path / "t.parquet", [ID])
