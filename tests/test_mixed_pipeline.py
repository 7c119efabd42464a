"""One pipeline over every kind of table: a folder of JSON files dropped by someone else and a SQL table
another service writes (PostgreSQL in the postgres run) feed a transform that writes a CSV file and a
SQL table, and a row-by-row transform that writes a JSON-lines file. Files are changed, deleted and renamed, SQL rows updated and deleted; after each scan only
what changed is recomputed, on SQLite and on PostgreSQL metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster import (
    BatchTransform,
    Catalog,
    DataStore,
    DBConn,
    JSONFile,
    Pipeline,
    RowTransform,
    Table,
    TableStoreCSV,
    TableStoreDB,
    TableStoreFiledir,
    TableStoreJsonLine,
    UpdateExternalTable,
    build_compute,
    run_steps,
    run_steps_changelist,
)

ITEM_ID = sa.Column("item_id", sa.Integer, primary_key=True)


def export(items: pd.DataFrame, prices: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Items with their price (items without a price are left out) and the expensive ones."""
    joined = items.merge(prices, on="item_id", how="inner")
    listing = pd.DataFrame(
        {"item_id": joined["item_id"], "title": joined["name"].str.upper(), "price": joined["price"]}
    )
    return listing, listing.loc[listing["price"] >= 10, ["item_id", "price"]]


def slug(row: dict[str, Any]) -> dict[str, Any]:
    return {"slug": row["name"].replace(" ", "-")}


def _setup(tmp_path: Path, dbconn: DBConn) -> tuple[DataStore, Catalog, list[Any], Path, sa.Table, Path]:
    folder = tmp_path / "items"
    folder.mkdir()
    prices = TableStoreDB("prices", dbconn, [ITEM_ID, sa.Column("price", sa.Float)])
    dbconn.ensure_table(prices.data_table)
    csv_path = tmp_path / "export" / "listing.csv"
    catalog = Catalog(
        {
            "items": Table(
                TableStoreFiledir(
                    folder / "{item_id}.json", JSONFile(), [ITEM_ID, sa.Column("name", sa.String)]
                )
            ),
            "prices": Table(prices),
            "listing": Table(
                TableStoreCSV(
                    csv_path, [ITEM_ID], [sa.Column("title", sa.String), sa.Column("price", sa.Float)]
                )
            ),
            "expensive": Table(TableStoreDB("expensive", dbconn, [ITEM_ID, sa.Column("price", sa.Float)])),
            "slugs": Table(
                TableStoreJsonLine(
                    tmp_path / "export" / "slugs.jsonl", [ITEM_ID], [sa.Column("slug", sa.String)]
                )
            ),
        }
    )
    ds = DataStore(dbconn)
    pipeline = Pipeline(
        [
            UpdateExternalTable("items"),
            UpdateExternalTable("prices"),
            BatchTransform(
                export, inputs=["items", "prices"], outputs=["listing", "expensive"], chunk_size=3
            ),
            RowTransform(slug, inputs=["items"], outputs=["slugs"]),
        ]
    )
    return ds, catalog, build_compute(ds, catalog, pipeline), folder, prices.data_table, csv_path


def _csv(path: Path) -> list[dict[str, Any]]:
    return pd.read_csv(path).sort_values("item_id").to_dict("records")


def _expensive(ds: DataStore, catalog: Catalog) -> list[int]:
    return sorted(catalog.get_datatable(ds, "expensive").get_data()["item_id"].tolist())


def test_mixed_pipeline_changes_deletes_renames(tmp_path: Path, dbconn: DBConn) -> None:
    ds, catalog, steps, folder, prices, csv_path = _setup(tmp_path, dbconn)
    for i, name in enumerate(["apple", "pear", "plum", "fig"], start=1):
        (folder / f"{i}.json").write_text(json.dumps({"name": name}))
    with dbconn.engine.begin() as c:  # another service owns the prices table
        c.execute(
            sa.insert(prices),
            [{"item_id": 1, "price": 5.0}, {"item_id": 2, "price": 12.0}, {"item_id": 3, "price": 20.0}],
        )

    summary = run_steps(ds, steps, raise_on_error=True)
    assert summary["export"].keys_processed == 4
    assert _csv(csv_path) == [
        {"item_id": 1, "title": "APPLE", "price": 5.0},
        {"item_id": 2, "title": "PEAR", "price": 12.0},
        {"item_id": 3, "title": "PLUM", "price": 20.0},
    ]
    assert _expensive(ds, catalog) == [2, 3]
    assert run_steps(ds, steps)["export"].keys_processed == 0, "nothing changed, nothing recomputed"

    # files: one changed, one deleted, one renamed (item 3 becomes item 30); SQL: one price updated, one deleted
    (folder / "1.json").write_text(json.dumps({"name": "green apple"}))
    (folder / "2.json").unlink()
    (folder / "3.json").rename(folder / "30.json")
    with dbconn.engine.begin() as c:
        c.execute(sa.insert(prices).values(item_id=30, price=25.0))
        c.execute(sa.update(prices).where(prices.c.item_id == 1).values(price=15.0))
        c.execute(sa.delete(prices).where(prices.c.item_id == 3))
    summary = run_steps(ds, steps, raise_on_error=True)
    items_out = summary["update_items"].outputs["items"]
    assert (items_out.inserted, items_out.updated, items_out.deleted) == (1, 1, 2)
    prices_out = summary["update_prices"].outputs["prices"]
    assert (prices_out.inserted, prices_out.updated, prices_out.deleted) == (1, 1, 1)
    assert summary["export"].keys_processed == 4  # items 1, 2, 3 and 30; item 4 is untouched
    assert _csv(csv_path) == [
        {"item_id": 1, "title": "GREEN APPLE", "price": 15.0},
        {"item_id": 30, "title": "PLUM", "price": 25.0},
    ]
    assert _expensive(ds, catalog) == [1, 30]
    slugs = (csv_path.parent / "slugs.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["slug"] for line in slugs) == ["fig", "green-apple", "plum"]
    assert summary["slug"].keys_processed == 4 and summary["slug"].outputs["slugs"].deleted == 2

    # a price for the fig arrives; the changelist path propagates the scan's changes
    with dbconn.engine.begin() as c:
        c.execute(sa.insert(prices).values(item_id=4, price=9.5))
    scan = steps[1].run_full()
    res = run_steps_changelist(ds, steps[2:], scan.changed)
    assert res["export"].keys_processed == 1
    assert {"item_id": 4, "title": "FIG", "price": 9.5} in _csv(csv_path)
    assert _expensive(ds, catalog) == [1, 30]
    assert run_steps(ds, steps)["export"].keys_processed == 0
