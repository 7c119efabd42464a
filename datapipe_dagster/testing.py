"""The store conformance suite: every TableStore, built-in or yours, must pass the same tests.

Use it from pytest by subclassing ``StoreConformance`` and providing two fixtures::

    from datapipe_dagster.testing import StoreConformance

    class TestMyStore(StoreConformance):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(tmp_path / "t", ...)

        @pytest.fixture
        def meta_dbconn(self, tmp_path):
            return DBConn(f"sqlite:///{tmp_path / 'meta.sqlite'}")

``store`` must return a new, empty store for each test. Rows are generated from the store's own schema
(``sample_frame``), so the suite fits any set of columns. ``builtin_store_factories`` builds one store
of each built-in kind for the library's own tests.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from datapipe_dagster.compute.datatable import DataStore, DataTable
from datapipe_dagster.errors import SchemaError
from datapipe_dagster.store.base import TableStore
from datapipe_dagster.store.database import DBConn, TableStoreDB
from datapipe_dagster.store.filedir import BytesFile, JSONFile, TableStoreFiledir, TextFile
from datapipe_dagster.store.filetable import TableStoreCSV, TableStoreExcel, TableStoreJsonLine
from datapipe_dagster.store.schema import to_records

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


class StoreConformance:
    """Tests every store must pass. Subclasses provide the fixtures ``store`` and ``meta_dbconn``."""

    @pytest.fixture
    def datatable(self, store: TableStore, meta_dbconn: DBConn) -> DataTable:
        return DataTable(DataStore(meta_dbconn), f"t_{uuid.uuid4().hex[:8]}", store)

    # ------------------------------------------------------------ the store alone

    def test_write_read(self, store: TableStore) -> None:
        df = store.validate(sample_frame(store, range(5)))
        store.write_rows(df)
        assert canonical(store, store.read_rows()) == canonical(store, df)

    def test_read_by_keys_and_unknown_keys(self, store: TableStore) -> None:
        df = store.validate(sample_frame(store, range(5)))
        store.write_rows(df)
        some = store.validate(sample_frame(store, [1, 3]))
        assert canonical(store, store.read_rows(some[store.primary_keys])) == canonical(store, some)
        unknown = store.validate(sample_frame(store, [97, 98]))[store.primary_keys]
        assert len(store.read_rows(unknown)) == 0
        store.delete_rows(unknown)  # unknown keys are ignored
        assert len(store.read_rows()) == 5

    def test_read_by_some_key_columns(self, store: TableStore) -> None:
        store.write_rows(store.validate(sample_frame(store, range(4))))
        first = store.primary_keys[:1]
        idx = store.validate(sample_frame(store, [2]))[first]
        assert canonical(store, store.read_rows(idx)) == canonical(store, sample_frame(store, [2]))

    def test_partial_update(self, store: TableStore) -> None:
        store.write_rows(store.validate(sample_frame(store, range(5))))
        changed = store.validate(sample_frame(store, [1, 2], variant=1))
        store.write_rows(changed)
        expected = pd.concat(
            [sample_frame(store, [0, 3, 4]), sample_frame(store, [1, 2], variant=1)], ignore_index=True
        )
        assert canonical(store, store.read_rows()) == canonical(store, expected)

    def test_delete(self, store: TableStore) -> None:
        store.write_rows(store.validate(sample_frame(store, range(5))))
        store.delete_rows(store.validate(sample_frame(store, [0, 4]))[store.primary_keys])
        assert canonical(store, store.read_rows()) == canonical(store, sample_frame(store, [1, 2, 3]))

    def test_empty_frames(self, store: TableStore) -> None:
        assert len(store.read_rows()) == 0
        assert set(store.read_rows().columns) == {c.name for c in store.get_schema()}
        store.write_rows(store.empty())
        store.delete_rows(store.empty()[store.primary_keys])
        assert len(store.read_rows()) == 0
        assert len(store.read_rows(store.empty()[store.primary_keys])) == 0

    # ------------------------------------------------------------ through the row metadata

    def test_store_chunk_roundtrip(self, datatable: DataTable) -> None:
        store = datatable.store
        df = sample_frame(store, range(6))
        assert len(datatable.store_chunk(df)) == 6
        assert canonical(store, datatable.get_data()) == canonical(store, df)
        assert len(datatable.store_chunk(df)) == 0, "identical rows re-stored must change nothing"
        assert len(datatable.store_chunk(datatable.get_data())) == 0, (
            "rows read back must hash like rows written"
        )

    def test_store_chunk_partial_update_and_delete(self, datatable: DataTable) -> None:
        store = datatable.store
        datatable.store_chunk(sample_frame(store, range(4)))
        before = datatable.get_metadata()
        changed = datatable.store_chunk(sample_frame(store, [2], variant=1))
        assert len(changed) == 1
        assert to_records(changed) == to_records(store.validate(sample_frame(store, [2]))[store.primary_keys])
        after = datatable.get_metadata()
        unchanged_key = before.iloc[0][store.primary_keys].to_dict()
        row = after.loc[(after[store.primary_keys] == pd.Series(unchanged_key)).all(axis=1)]
        assert float(row["update_ts"].iloc[0]) == float(before.iloc[0]["update_ts"]), (
            "unchanged rows keep their update time"
        )
        # the last written row comes last
        assert canonical(store, datatable.get_data().tail(1)) == canonical(
            store, sample_frame(store, [2], variant=1)
        )
        deleted = datatable.delete_by_idx(store.validate(sample_frame(store, [0, 99]))[store.primary_keys])
        assert len(deleted) == 1
        assert canonical(store, datatable.get_data()) == canonical(
            store,
            pd.concat([sample_frame(store, [1, 3]), sample_frame(store, [2], variant=1)], ignore_index=True),
        )
        assert len(datatable.store_chunk(store.empty())) == 0

    def test_schema_errors_write_nothing(self, datatable: DataTable) -> None:
        store = datatable.store
        good = sample_frame(store, range(3))
        datatable.store_chunk(good)
        pk = store.primary_keys[0]
        bad_frames: list[tuple[pd.DataFrame, str | None]] = [
            # a schemaless store keeps unknown columns, but a value must be JSON
            (sample_frame(store, [5]).assign(free=[object()]), "free")
            if store.schemaless
            else (sample_frame(store, [5]).assign(not_a_column=1), "not_a_column"),
            (sample_frame(store, [5]).drop(columns=[pk]), pk),
            (sample_frame(store, [5, 6]).astype({pk: object}).assign(**{pk: [None, good[pk].iloc[0]]}), pk),
            (
                pd.concat([sample_frame(store, [7]), sample_frame(store, [7], variant=1)], ignore_index=True),
                None,
            ),
        ]
        typed = first_data_column(store, (sa.Integer, sa.Float, sa.LargeBinary, sa.DateTime))
        if typed is not None:
            bad_frames.append(
                (
                    sample_frame(store, [8]).astype({typed.name: object}).assign(**{typed.name: [object()]}),
                    typed.name,
                )
            )
        for bad, column in bad_frames:
            with pytest.raises(SchemaError) as ei:
                datatable.store_chunk(
                    pd.concat([sample_frame(store, [10]), bad], ignore_index=True) if column != pk else bad
                )
            assert repr(datatable.store.name) in str(ei.value) or datatable.name in str(ei.value)
            if column is not None:
                assert ei.value.column == column and repr(column) in str(ei.value)
            assert canonical(store, datatable.get_data()) == canonical(store, good)
            assert canonical(store, store.read_rows()) == canonical(store, good)


def builtin_store_factories() -> dict[str, StoreFactory]:
    """One factory per built-in store kind: ``factory(tmp_path, dbconn) -> TableStore``."""
    typed = [
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
