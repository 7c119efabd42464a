"""Sample data for the conformance suites: rows generated from a store's own schema, rows made comparable,
and one store of each built-in kind (``builtin_store_factories``)."""


from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.store.base import TableStore
from datapipe_dagster.store.database import TableStoreDB
from datapipe_dagster.store.dbconn import DBConn
from datapipe_dagster.store.file_adapters import BytesFile, JSONFile, TextFile
from datapipe_dagster.store.filedir import TableStoreFiledir
from datapipe_dagster.store.filetable import TableStoreCSV, TableStoreExcel, TableStoreJsonLine
from datapipe_dagster.store.records import to_records

StoreFactory = Callable[[Path, DBConn], TableStore]


def _value(col: sa.Column, i: int, variant: int) -> Any:
    t = col.type
    if col.info.get("datapipe/kind") == "image":
        from PIL import Image

        return Image.new("RGB", (2 + i % 3, 2), (i % 256, (variant * 50) % 256, 9))
    if isinstance(t, sa.Boolean):
        return (i + variant) % 2 == 0
    if isinstance(t, sa.Integer):
        return i if col.primary_key else i * 10 + variant
    if isinstance(t, (sa.Float, sa.Numeric)):
        return i + 0.5 + variant
    if isinstance(t, sa.JSON):
        return {"n": i, "variant": variant, "tags": ["a", str(i)]}
    if isinstance(t, sa.LargeBinary):
        return f"bytes-{i}-{variant}".encode() + b"\x00\xff"
    if isinstance(t, sa.DateTime):
        return dt.datetime(2024, 1, 1) + dt.timedelta(days=i, hours=variant)
    if isinstance(t, sa.Date):
        return dt.date(2024, 1, 1) + dt.timedelta(days=i + variant)
    return f"k{i}" if col.primary_key else f"value {i} / {variant}"


def sample_frame(store: TableStore, ids: range | list[int], variant: int = 0) -> pd.DataFrame:
    """Rows for ``store``'s schema: row ``i`` has key values derived from ``i``, data from ``variant``.

    A schemaless store gets its key columns plus a fixed set of free fields (text, number, nested JSON,
    and a field only some rows hold)."""
    if store.schemaless:
        keys = store.get_primary_schema()
        df = pd.DataFrame({c.name: [_value(c, i, variant) for i in ids] for c in keys})
        df["title"] = [f"value {i} / {variant}" for i in ids]
        df["n"] = [i * 10 + variant for i in ids]
        df["doc"] = pd.Series([{"n": i, "tags": ["a", str(i)], "v": variant} for i in ids], dtype=object)
        df["odd"] = pd.Series([i if i % 2 else None for i in ids], dtype=object)
        return df
    cols = store.get_schema()
    return pd.DataFrame({c.name: [_value(c, i, variant) for i in ids] for c in cols})


def canonical(store: TableStore, df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain dicts sorted by key: compare store contents independent of order and dtypes."""
    recs = to_records(store.validate(df)) if len(df) else []
    for r in recs:
        for k, v in r.items():
            if hasattr(v, "tobytes") and hasattr(v, "mode") and hasattr(v, "size"):
                r[k] = ("image", v.mode, tuple(v.size), v.tobytes())  # images compare by their pixels
    pks = store.primary_keys
    return sorted(recs, key=lambda r: tuple(str(r[k]) for k in pks))


def first_data_column(store: TableStore, kinds: tuple[type, ...]) -> sa.Column | None:
    return next((c for c in store.get_schema() if not c.primary_key and isinstance(c.type, kinds)), None)


def _skip(reason: str) -> None:
    import pytest  # only when a suite runs under pytest

    pytest.skip(reason)


def builtin_store_factories() -> dict[str, StoreFactory]:
    """One factory per built-in store kind: ``factory(tmp_path, dbconn) -> TableStore``."""
    typed: list[sa.Column] = [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String),
        sa.Column("score", sa.Float),
        sa.Column("count", sa.Integer),
        sa.Column("flag", sa.Boolean),
        sa.Column("doc", sa.JSON),
        sa.Column("at", sa.DateTime),
    ]

    def db(tmp: Path, conn: DBConn) -> TableStore:
        return TableStoreDB(f"data_{uuid.uuid4().hex[:8]}", conn, typed + [sa.Column("blob", sa.LargeBinary)])

    def memory_dir(tmp: Path, conn: DBConn) -> TableStore:
        return TableStoreFiledir(f"memory://dp-{uuid.uuid4().hex[:8]}/json/{{id}}.json", JSONFile(), typed, name="mem_dir")

    return {
        "db": db,
        "filedir-memory-url": memory_dir,
        "filedir-file-url": lambda tmp, conn: TableStoreFiledir(
            f"file://{tmp}/url/{{id}}.json", JSONFile(), typed, name="url_dir"
        ),
        "filedir-star": lambda tmp, conn: TableStoreFiledir(
            tmp / "star" / "*" / "{id}.json", JSONFile(), typed, name="star_dir", write_pattern=tmp / "star" / "new" / "{id}.json"
        ),
        "filedir-deep": lambda tmp, conn: TableStoreFiledir(
            tmp / "deep" / "**/{id}.json", JSONFile(), typed, name="deep_dir", write_pattern=tmp / "deep" / "a" / "b" / "{id}.json"
        ),
        "filedir-alternatives": lambda tmp, conn: TableStoreFiledir(
            tmp / "alt" / "{id}.(json|js)", JSONFile(), typed, name="alt_dir"
        ),
        "filedir-image": lambda tmp, conn: TableStoreFiledir(
            tmp / "img" / "{id}.(png|jpg)", _image_adapter(), [sa.Column("id", sa.Integer, primary_key=True)], name="img_dir"
        ),
        "parquet": lambda tmp, conn: _parquet(tmp / "t.parquet", typed + [sa.Column("blob", sa.LargeBinary)]),
        "filedir-json": lambda tmp, conn: TableStoreFiledir(
            tmp / "json" / "{id}.json", JSONFile(), typed, name="json_dir"
        ),
        "filedir-text": lambda tmp, conn: TableStoreFiledir(
            tmp / "text" / "{day}" / "{id}.txt", TextFile(), name="text_dir"
        ),
        "filedir-bytes": lambda tmp, conn: TableStoreFiledir(
            tmp / "bin" / "{id}.bin",
            BytesFile(),
            [sa.Column("id", sa.Integer, primary_key=True)],
            name="bytes_dir",
        ),
        "filedir-json-schemaless": lambda tmp, conn: TableStoreFiledir(
            tmp / "free" / "{id}.json", JSONFile(), name="free_dir"
        ),
        "jsonline-schemaless": lambda tmp, conn: TableStoreJsonLine(tmp / "free.jsonl", name="free_jsonl"),
        "jsonline": lambda tmp, conn: TableStoreJsonLine(
            tmp / "t.jsonl", data_sql_schema=typed + [sa.Column("blob", sa.LargeBinary)], name="jsonl"
        ),
        "csv": lambda tmp, conn: TableStoreCSV(
            tmp / "t.csv", [sa.Column("id", sa.Integer)], typed, name="csv"
        ),
        "excel": lambda tmp, conn: TableStoreExcel(
            tmp / "t.xlsx", [sa.Column("id", sa.Integer)], typed, name="xlsx"
        ),
    }


def _image_adapter() -> Any:
    from datapipe_dagster.store.image import ImageFile

    return ImageFile()


def _parquet(path: Path, schema: list[sa.Column]) -> TableStore:
    from datapipe_dagster.store.parquet import TableStoreParquet

    return TableStoreParquet(path, data_sql_schema=schema, name="parquet")
