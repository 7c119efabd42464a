"""Issue 4 in Dagster: an external table (a watched folder, a SQL table someone else writes) is scanned
by its sensor, and the transforms reading it run for exactly the partitions the changed rows fall in."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster import (
    BatchTransform,
    Catalog,
    DataStore,
    DBConn,
    JSONFile,
    Pipeline,
    Table,
    TableStoreDB,
    TableStoreFiledir,
    UpdateExternalTable,
)
from datapipe_dagster.compute.partitioning import key_buckets
from datapipe_dagster.dagster import BucketPartitions, build_definitions
from tests.test_dagster_support import execute, tick

PARTS = 8


def sizes(docs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"doc_id": docs["doc_id"], "words": docs["text"].str.split().str.len()})


def setup(dbconn: DBConn, folder: Path):  # noqa: ANN201
    catalog = Catalog(
        {
            "docs": Table(
                TableStoreFiledir(
                    str(folder / "{doc_id}.json"),
                    JSONFile(),
                    data_sql_schema=[sa.Column("doc_id", sa.String, primary_key=True), sa.Column("text", sa.String)],
                )
            ),
            "doc_words": Table(
                TableStoreDB("doc_words", dbconn, [sa.Column("doc_id", sa.String, primary_key=True), sa.Column("words", sa.Integer)])
            ),
        }
    )
    ds = DataStore(dbconn)
    pipeline = Pipeline([UpdateExternalTable("docs"), BatchTransform(sizes, ["docs"], ["doc_words"], name="sizes")])
    return ds, catalog, build_definitions(catalog, pipeline, ds, partitions=PARTS)


def drop(folder: Path, doc_id: str, text: str) -> None:
    (folder / f"{doc_id}.json").write_text(json.dumps({"text": text}))


def partition_of(doc_id: str) -> str:
    return BucketPartitions(PARTS).key_of(int(key_buckets(pd.DataFrame({"doc_id": [doc_id]}), ["doc_id"], PARTS)[0]))


def sensor_names(defs: dg.Definitions) -> list[str]:
    return sorted(s.name for s in defs.sensors)


def test_dropped_files_run_exactly_their_partitions(dbconn, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    ds, catalog, defs = setup(dbconn, folder)
    assert sensor_names(defs) == ["sizes_stale_sensor", "update_docs_scan_sensor"]
    scan_sensor, stale_sensor = "update_docs_scan_sensor", "sizes_stale_sensor"
    instance = dg.DagsterInstance.ephemeral()
    for i in range(20):
        drop(folder, f"d{i}", "word " * (i + 1))

    res = tick(defs, instance, scan_sensor, None)
    assert [ev.asset_key for ev in res.asset_events] == [dg.AssetKey("docs")]
    assert res.asset_events[0].metadata["datapipe/rows_inserted"].value == 20
    res = tick(defs, instance, stale_sensor, None)
    for req in res.run_requests:
        execute(defs, instance, req)
    words = catalog.get_datatable(ds, "doc_words").get_data()
    assert dict(zip(words["doc_id"], words["words"], strict=True)) == {f"d{i}": i + 1 for i in range(20)}
    cursor = res.cursor

    # nothing changed: the scan reports nothing and no run is requested
    assert tick(defs, instance, scan_sensor, None).asset_events == []
    res = tick(defs, instance, stale_sensor, cursor)
    assert res.run_requests == []
    cursor = res.cursor

    # two files change, one is deleted, one is added: runs for exactly their partitions
    drop(folder, "d3", "now just two")
    drop(folder, "d11", "x")
    (folder / "d5.json").unlink()
    drop(folder, "new", "a b c d")
    res = tick(defs, instance, scan_sensor, None)
    md = res.asset_events[0].metadata
    assert (md["datapipe/rows_inserted"].value, md["datapipe/rows_updated"].value, md["datapipe/rows_deleted"].value) == (1, 2, 1)
    res = tick(defs, instance, stale_sensor, cursor)
    requested = set()
    for req in res.run_requests:
        if req.partition_key:
            requested.add(req.partition_key)
        else:
            lo, hi = int(req.tags["dagster/asset_partition_range_start"]), int(req.tags["dagster/asset_partition_range_end"])
            requested |= {BucketPartitions(PARTS).key_of(b) for b in range(lo, hi + 1)}
        execute(defs, instance, req)
    assert requested == {partition_of(d) for d in ("d3", "d11", "d5", "new")}
    words = catalog.get_datatable(ds, "doc_words").get_data()
    got = dict(zip(words["doc_id"], words["words"], strict=True))
    assert got["d3"] == 3 and got["d11"] == 1 and got["new"] == 4 and "d5" not in got
    assert len(got) == 20
