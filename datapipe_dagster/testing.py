"""Conformance suites: every TableStore and every step kind, built-in or yours, must pass the same tests.

The module does not import pytest (it is importable without it); the suites are classes whose
``test_*`` methods pytest collects in a subclass.

Use the store suite from pytest by subclassing ``StoreConformance`` and providing two fixtures::

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

The step suite, ``StepConformance``, takes one fixture, ``step_case``, returning a ``StepCase``: a step
(from ``build_compute``), its DataStore, and two callables that put data in place and change it::

    class TestMyStep(StepConformance):
        @pytest.fixture
        def step_case(self, tmp_path):
            ...
            return StepCase(ds, step, seed=write_inputs, change=change_one_input_row)
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.compute.datatable import DataStore, DataTable
from datapipe_dagster.compute.result import StepResult
from datapipe_dagster.compute.steps import GeneratingStep, KeyedStep, ScanningStep, Step, is_keyed
from datapipe_dagster.errors import SchemaError
from datapipe_dagster.store.base import FileListing, TableStore
from datapipe_dagster.store.database import DBConn, TableStoreDB
from datapipe_dagster.store.filedir import BytesFile, JSONFile, TableStoreFiledir, TextFile
from datapipe_dagster.store.filetable import TableStoreCSV, TableStoreExcel, TableStoreJsonLine
from datapipe_dagster.store.records import to_records
from datapipe_dagster.types import ChangeList

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


# ---------------------------------------------------------------------------------------------- steps


@dataclass
class StepCase:
    """A step under test and the data it works on.

    Attributes:
        ds: the DataStore the step is bound to.
        step: the step, as ``build_compute`` returned it.
        seed: puts the first data in place (input rows, the scanned table's rows, the generator's source);
            a full run afterwards must write at least one output row.
        change: changes some of that data after a full run, so the step has work again; returns the
            changelist of the input rows it wrote (an empty one for a step without inputs).
    """

    ds: DataStore
    step: Step
    seed: Callable[[], None]
    change: Callable[[], ChangeList]


def written(result: StepResult) -> int:
    """Output rows a step run inserted, updated or deleted."""
    return sum(o.inserted + o.updated + o.deleted for o in result.outputs.values())


def outputs_snapshot(step: Step) -> dict[str, list[dict[str, Any]]]:
    """Every output table's rows, comparable across runs (see ``canonical``)."""
    return {dt.name: canonical(dt.store, dt.get_data()) for dt in step.output_dts}


def key_set(keys: pd.DataFrame, cols: list[str]) -> set[tuple[str, ...]]:
    """Keys as a set of tuples of strings (independent of order and dtypes)."""
    return {tuple(str(v) for v in row) for row in keys[cols].itertuples(index=False)}


class StepConformance:
    """Tests every step kind must pass. Subclasses provide the fixture ``step_case`` (a ``StepCase``)."""

    def test_declares_a_step(self, step_case: StepCase) -> None:
        step = step_case.step
        assert isinstance(step, Step), f"{step!r} lacks a member of the Step protocol"
        assert isinstance(step.name, str) and step.name
        assert all(isinstance(d, DataTable) for d in [*step.input_dts, *step.output_dts])
        assert step.code_version is None or isinstance(step.code_version, str)
        if isinstance(step, KeyedStep):
            assert set(step.transform_keys) <= set(step.key_cols)
            for d in step.output_dts:
                assert set(step.transform_keys) <= set(d.primary_keys), (d.name, step.transform_keys)
        if isinstance(step, (ScanningStep, GeneratingStep)):
            assert not step.input_dts, "a scanning or generating step has no inputs"

    def test_full_run_writes_then_settles(self, step_case: StepCase) -> None:
        step = step_case.step
        step_case.seed()
        first = step.run_full()
        assert first.name == step.name and first.keys_failed == 0, first
        assert written(first) > 0, "the seeded data must produce output rows"
        for name, _stats in first.outputs.items():
            assert name in {d.name for d in step.output_dts}, f"result names {name!r}, not an output"
        assert sum(len(first.changed_keys(d.name)) for d in step.output_dts) > 0, "changed keys feed the next step"
        before = outputs_snapshot(step)
        second = step.run_full()
        assert written(second) == 0, f"a second full run must write nothing: {second}"
        assert outputs_snapshot(step) == before

    def test_empty_changelist_writes_nothing(self, step_case: StepCase) -> None:
        step = step_case.step
        step_case.seed()
        step.run_full()
        before = outputs_snapshot(step)
        res = step.run_changelist(ChangeList())
        assert res.name == step.name and written(res) == 0
        assert outputs_snapshot(step) == before

    def test_change_reaches_the_outputs(self, step_case: StepCase) -> None:
        step = step_case.step
        step_case.seed()
        step.run_full()
        before = outputs_snapshot(step)
        changes = step_case.change()
        res = step.run_changelist(changes) if step.input_dts else step.run_full()
        assert written(res) > 0 and res.keys_failed == 0, res
        assert outputs_snapshot(step) != before
        assert written(step.run_full()) == 0, "the change was fully processed"

    def test_keyed_stale_all_and_reparse(self, step_case: StepCase) -> None:
        step = step_case.step
        if not (isinstance(step, KeyedStep) and is_keyed(step)):
            _skip(f"{type(step).__name__} is not a keyed step")
            return
        step_case.seed()
        stale = step.get_stale_keys()
        assert len(stale) > 0 and set(step.key_cols) <= set(stale.columns)
        every = step.get_all_keys()
        assert key_set(stale, step.key_cols) <= key_set(every, step.key_cols)
        step.run_full()
        assert len(step.get_stale_keys()) == 0
        assert step.count_failed() == 0
        failed = step.failed_keys()
        assert len(failed) == 0 and {"error", "traceback"} <= set(failed.columns)
        before = outputs_snapshot(step)
        every = step.get_all_keys()
        reparse = step.process_keys(every)
        assert reparse.keys_processed == len(every) and written(reparse) == 0, reparse
        assert outputs_snapshot(step) == before and len(step.get_stale_keys()) == 0

    def test_keyed_eval_writes_nothing(self, step_case: StepCase) -> None:
        step = step_case.step
        if not (isinstance(step, KeyedStep) and is_keyed(step) and step.transform_keys):
            _skip(f"{type(step).__name__} is not a step with transform keys")
            return
        step_case.seed()
        step.run_full()
        step_case.change()
        stale = step.get_stale_keys(advance_watermark=False)
        assert len(stale) > 0
        before = outputs_snapshot(step)
        result = step.eval(stale[step.key_cols])
        assert set(result.outputs) == {d.name for d in step.output_dts}
        assert outputs_snapshot(step) == before
        assert key_set(step.get_stale_keys(advance_watermark=False), step.key_cols) == key_set(stale, step.key_cols)

    def test_scan_records_changes_once(self, step_case: StepCase) -> None:
        step = step_case.step
        if not isinstance(step, ScanningStep):
            _skip(f"{type(step).__name__} is not a scanning step")
            return
        assert isinstance(step.incremental_scan, bool)
        step_case.seed()
        assert written(step.scan()) > 0
        assert written(step.scan()) == 0
        step_case.change()
        assert written(step.scan()) > 0

    def test_generate_writes_only_changes(self, step_case: StepCase) -> None:
        step = step_case.step
        if not isinstance(step, GeneratingStep):
            _skip(f"{type(step).__name__} is not a generating step")
            return
        step_case.seed()
        assert written(step.generate()) > 0
        assert written(step.generate()) == 0
        step_case.change()
        assert written(step.generate()) > 0


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
