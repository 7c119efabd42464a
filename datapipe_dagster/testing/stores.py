"""``StoreConformance``: the tests every TableStore, built-in or yours, must pass."""


from __future__ import annotations

import uuid

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.compute.datatable import DataStore, DataTable
from datapipe_dagster.errors import SchemaError
from datapipe_dagster.store.base import FileListing, TableStore
from datapipe_dagster.store.dbconn import DBConn
from datapipe_dagster.store.records import to_records
from datapipe_dagster.testing.samples import canonical, first_data_column, sample_frame


class StoreConformance:
    """Tests every store must pass. Subclasses provide the fixtures ``store`` and ``meta_dbconn``."""

    @staticmethod
    def _datatable(store: TableStore, meta_dbconn: DBConn) -> DataTable:
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

    def test_declared_capabilities(self, store: TableStore) -> None:
        """What a store declares (``kind``, ``sql_table``, ``FileListing``) is true of it."""
        assert isinstance(store.kind, str) and store.kind, "kind names where the rows live"
        store.prepare()
        store.prepare()  # idempotent
        sql = store.sql_table()
        if sql is not None:
            assert {c.name for c in sql.table.columns} == {c.name for c in store.get_schema()}
            df = store.validate(sample_frame(store, range(2)))

            class _Rollback(Exception):
                pass

            try:
                with sql.dbconn.begin_write() as conn:
                    store.write_rows(df, conn=conn)
                    assert len(store.read_rows(conn=conn)) == 2, "rows written on conn are read on conn"
                    raise _Rollback
            except _Rollback:
                pass
            assert len(store.read_rows()) == 0, "a write on the caller's connection rolls back with it"
        if isinstance(store, FileListing):
            assert store.root_exists() or len(store.list_files()) == 0
            store.write_rows(store.validate(sample_frame(store, range(3))))
            listing = store.list_files()
            assert {"_path", "_size", "_mtime_ns"} <= set(listing.columns)
            assert sorted(map(str, listing[store.primary_keys[0]])) == sorted(
                map(str, store.read_rows()[store.primary_keys[0]])
            )

    def test_insert_with_the_json_text_it_hashed(self, store: TableStore) -> None:
        """``hash_rows(json_texts=)``, ``json_texts`` and ``insert_rows(encoded=)`` (the new-row fast paths)
        agree with the plain calls: the same hashes, one text per row of each JSON column filled, rows
        stored as given."""
        df = store.validate(sample_frame(store, range(4)))
        texts: dict[str, list[str | None]] = {}
        hashes = store.hash_rows(df, store.name, json_texts=texts)
        assert list(hashes) == list(store.hash_rows(df, store.name)), "json_texts changes no hash"
        assert set(texts) <= {c.name for c in store.get_schema() if isinstance(c.type, sa.JSON)}
        assert all(len(t) == len(df) for t in texts.values()), "one JSON text per row"
        alone = store.json_texts(df, store.name)
        if alone is not None:  # texts encoded apart (a streamed insert) are those hashing leaves, and hash alike
            assert alone == texts, "json_texts gives what hash_rows leaves in json_texts"
            assert list(store.hash_rows(df, store.name, json_texts=dict(alone))) == list(hashes)
        store.insert_rows(df, encoded=pd.DataFrame(texts, index=df.index, dtype=object) if texts else None)
        assert canonical(store, store.read_rows()) == canonical(store, df)

    # ------------------------------------------------------------ through the row metadata

    def test_store_chunk_roundtrip(self, store: TableStore, meta_dbconn: DBConn) -> None:
        datatable = self._datatable(store, meta_dbconn)
        store = datatable.store
        df = sample_frame(store, range(6))
        assert len(datatable.store_chunk(df)) == 6
        assert canonical(store, datatable.get_data()) == canonical(store, df)
        assert len(datatable.store_chunk(df)) == 0, "identical rows re-stored must change nothing"
        assert len(datatable.store_chunk(datatable.get_data())) == 0, (
            "rows read back must hash like rows written"
        )

    def test_store_chunk_partial_update_and_delete(self, store: TableStore, meta_dbconn: DBConn) -> None:
        datatable = self._datatable(store, meta_dbconn)
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

    def test_schema_errors_write_nothing(self, store: TableStore, meta_dbconn: DBConn) -> None:
        datatable = self._datatable(store, meta_dbconn)
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
            try:
                datatable.store_chunk(
                    pd.concat([sample_frame(store, [10]), bad], ignore_index=True) if column != pk else bad
                )
            except SchemaError as e:
                err = e
            else:
                raise AssertionError(f"no SchemaError for a bad frame (column {column!r})")
            assert repr(datatable.store.name) in str(err) or datatable.name in str(err)
            if column is not None:
                assert err.column == column and repr(column) in str(err)
            assert canonical(store, datatable.get_data()) == canonical(store, good)
            assert canonical(store, store.read_rows()) == canonical(store, good)
