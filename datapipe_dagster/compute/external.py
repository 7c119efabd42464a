"""UpdateExternalTable: bring the row metadata of a table that someone else writes up to date.

Another service inserts into a PostgreSQL table, or drops files into a folder; a scan compares what is
there with the row metadata and records inserts, changes and deletes, so transforms downstream see
exactly what changed. The data itself is never rewritten. Three modes:

- **Folder of files** (a store that lists its files, ``FileListing``: ``TableStoreFiledir``): the folder is listed with each file's size and mtime
  (no file opened); only files whose size or mtime differ from the last scan are read and hashed. New,
  changed, renamed (a delete plus an insert) and deleted files are all seen. A touched file whose
  content is the same changes nothing downstream. A rewrite that keeps both the size and the mtime
  (within the file system's timestamp resolution) goes unseen until the file changes again;
  ``scan(full=True)`` re-reads every file.
- **Full scan** (any other store): every row is read and hashed, and compared with the metadata.
  Deletes are seen. Cost: the whole table, every scan. A SQL table in the metadata's database is read
  in pages of ``SCAN_CHUNK`` rows in key order, each recorded in its own transaction, so memory stays
  bounded whatever the table's size.
- **Updated-at** (a store that is a SQL table, ``TableStore.sql_table``, with ``updated_at_column=``, a timestamp set on every insert/update
  or a monotonically increasing id): a scan reads only the rows whose column is at or past the highest
  value seen before (``>=``, so rows sharing the last value are not missed; re-reading them is harmless
  since unchanged rows hash the same). **Deletes are not seen in this mode**, nor are rows committed
  late with a value below one already seen (a long transaction). Set ``full_scan_interval`` (seconds)
  to run a full scan, which catches both, when that much time has passed since the last one, or call
  ``scan(full=True)``. The column should be indexed.

A scan runs in full runs (``run_steps``, the Dagster sensor/materialization); a changelist run leaves it
alone, since an external table changes outside the pipeline.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.compute.catalog import Catalog, ComputeStep, PipelineStep
from datapipe_dagster.compute.datatable import DataStore, DataTable
from datapipe_dagster.compute.result import OutputStats, StepResult, failed_frame
from datapipe_dagster.errors import ConfigurationError, SchemaError
from datapipe_dagster.frames import anti_join, plain
from datapipe_dagster.meta.external import ExternalScanState, FileFingerprints, live_hashes
from datapipe_dagster.store.base import FileListing, SQLTable, TableStore
from datapipe_dagster.store.records import conform_types, decode_json_texts, json_text_columns, to_records
from datapipe_dagster.store.sql import fetch_frame
from datapipe_dagster.types import ChangeList


class UpdateExternalTable(PipelineStep):
    """A scan of a table written outside the pipeline (see the module docs for the modes).

    Args:
        output: the catalog table to scan.
        updated_at_column: for a SQL table, a column that grows on every insert/update (timestamp or
            increasing id); scans then read only new rows and do not see deletes.
        full_scan_interval: with ``updated_at_column``, run a full scan (which sees deletes) when this
            many seconds passed since the last one.
        name: step name (default: ``update_<output>``).
    """

    def __init__(
        self,
        output: str,
        updated_at_column: str | None = None,
        full_scan_interval: float | None = None,
        name: str | None = None,
    ):
        self.output = output
        self.updated_at_column = updated_at_column
        self.full_scan_interval = full_scan_interval
        self.name = name or f"update_{output}"

    def build_compute(self, ds: DataStore, catalog: Catalog) -> list[ComputeStep]:
        return [
            UpdateExternalTableStep(
                ds,
                self.name,
                catalog.get_datatable(ds, self.output),
                self.updated_at_column,
                self.full_scan_interval,
            )
        ]


class UpdateExternalTableStep(ComputeStep):
    """An UpdateExternalTable bound to a DataStore."""

    def __init__(
        self,
        ds: DataStore,
        name: str,
        dt: DataTable,
        updated_at_column: str | None = None,
        full_scan_interval: float | None = None,
    ):
        self.ds = ds
        self.name = name
        self.dt = dt
        self.input_dts: list[DataTable] = []
        self.output_dts = [dt]
        self.updated_at_column = updated_at_column
        self.full_scan_interval = full_scan_interval
        store = dt.store
        self._sql: SQLTable | None = None
        if updated_at_column is not None:
            self._sql = store.sql_table()
            if self._sql is None:
                raise ConfigurationError(
                    f"step {name!r}: updated_at_column needs a SQL table (TableStoreDB); {dt.name!r} is {store!r}"
                )
            if updated_at_column not in self._sql.table.c:
                raise ConfigurationError(
                    f"step {name!r}: table {dt.name!r} has no column {updated_at_column!r} "
                    f"(columns: {', '.join(self._sql.table.c.keys())})"
                )
        self._state = ExternalScanState(ds.meta_dbconn)
        self._files = FileFingerprints(ds.meta_dbconn, dt.name, dt.primary_schema)
        self.files_read = 0
        """Files the last folder scan opened (only new or changed ones)."""
        self._ready = False

    def __repr__(self) -> str:
        return f"UpdateExternalTableStep({self.name!r}, {self.dt.name!r})"

    def _ensure(self) -> None:
        if not self._ready:
            self.dt.ensure_ready()
            self._state.create()
            if isinstance(self.dt.store, FileListing):
                self._files.create()
            self._ready = True

    @property
    def incremental_scan(self) -> bool:
        """A folder listing (size + mtime) and an updated-at scan read only what changed; a full scan of a
        table without an updated-at column reads and hashes every row."""
        return self.updated_at_column is not None or isinstance(self.dt.store, FileListing)

    def run_full(self) -> StepResult:
        return self.scan()

    def run_changelist(self, changelist: ChangeList) -> StepResult:
        """Nothing: an external table's changes are found by scanning, not by the pipeline's changelist."""
        return StepResult(self.name)

    def scan(self, full: bool | None = None) -> StepResult:
        """Scan the table and record what changed since the last scan.

        Args:
            full: in updated-at mode, force (True) or forbid (False) a full scan; default: full on the
                first scan and when ``full_scan_interval`` has passed. For a folder, True reads and
                hashes every file, ignoring the size/mtime fingerprints.
        """
        started = time.perf_counter()
        self._ensure()
        result = StepResult(self.name, outputs={self.dt.name: OutputStats()})
        if isinstance(self.dt.store, FileListing):
            self._scan_folder(self.dt.store, result, reread_all=bool(full))
        elif self.updated_at_column is None:
            self._scan_full(result)
        else:
            state = self._load_state()
            due = (
                state is None
                or state[0] is None
                or (
                    self.full_scan_interval is not None
                    and time.time() - (state[1] or 0) >= self.full_scan_interval
                )
            )
            if full if full is not None else due:
                self._scan_full(result)
            else:
                assert state is not None and state[0] is not None  # not due: an earlier scan left a value
                self._scan_since(result, self._decode(state[0]))
        result.elapsed = time.perf_counter() - started
        return result

    # ------------------------------------------------------------ folder mode

    def _scan_folder(self, store: FileListing, result: StepResult, reread_all: bool = False) -> None:
        if not store.root_exists():
            raise ConfigurationError(
                f"step {self.name!r}: folder {store.root!r} of table {self.dt.name!r} does not exist "
                "(create it: an empty folder is an empty table; a missing one is more likely a missing mount)"
            )
        pks = self.dt.primary_keys
        listing = store.list_files()
        with self.ds.meta_dbconn.connect() as conn:
            known = self._files.read(conn)
            unfingerprinted = self._files.missing(conn, self.dt.meta.table)
        known = conform_types(known, self.dt.primary_schema)
        # Nullable ints survive the merge: nanosecond mtimes do not fit a float64.
        known = known.astype({"size": "Int64", "mtime_ns": "Int64"})
        unfingerprinted = conform_types(unfingerprinted, self.dt.primary_schema)
        m = listing.merge(known, on=pks, how="left")
        same = (m["size"].fillna(-1).astype("int64").to_numpy() == m["_size"].astype("int64").to_numpy()) & (
            m["mtime_ns"].fillna(-1).astype("int64").to_numpy() == m["_mtime_ns"].astype("int64").to_numpy()
        )
        touched = listing if reread_all else listing.loc[~same].reset_index(drop=True)
        gone_files = anti_join(known[pks], listing[pks], pks)
        # Writing with these keys as the processed scope marks deleted only those still alive.
        gone = pd.concat([gone_files, anti_join(unfingerprinted, listing[pks], pks)], ignore_index=True)
        data = self._read_files(self.dt.store, touched[pks], result)
        # A file removed between listing and reading is seen as deleted on the next scan.
        fresh = touched.merge(data[pks], on=pks, how="inner")
        now = time.time()
        with self.ds.meta_dbconn.begin_write() as conn:
            self._record(conn, result, data, gone, now)
            fps = fresh[pks].assign(
                size=fresh["_size"].astype("int64"), mtime_ns=fresh["_mtime_ns"].astype("int64")
            )
            self._files.save(conn, fps, gone_files)
        self.files_read = len(data)

    def _read_files(self, store: TableStore, keys: pd.DataFrame, result: StepResult) -> pd.DataFrame:
        """Read the files of ``keys``; a file that cannot be read (half-written, not JSON, wrong types) is
        reported in ``result.failed`` and left unfingerprinted, so the next scan tries it again."""
        if len(keys) == 0:
            return store.empty()
        try:
            return store.read_rows(keys)
        except SchemaError:
            pass
        frames = []
        for i in range(len(keys)):
            one = keys.iloc[i : i + 1]
            try:
                frames.append(store.read_rows(one))
            except SchemaError as e:
                result.add_failed(failed_frame(one.reset_index(drop=True), e))
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else store.empty()

    # ------------------------------------------------------------ full and updated-at modes

    SCAN_CHUNK = 50_000
    """Rows per page of a chunked full scan (memory follows this, not the table)."""

    def _scan_full(self, result: StepResult) -> None:
        dt_ = self.dt
        if dt_.sql is not None:  # a SQL table in the metadata's database: read it in pages
            self._scan_full_chunked(result, dt_.sql.table)
            return
        pks = dt_.primary_keys
        data = dt_.store.validate(dt_.store.read_rows())
        with self.ds.meta_dbconn.connect() as conn:
            meta = live_hashes(conn, dt_.meta.table, pks)
        changed, gone = self._compare(data, conform_types(meta, dt_.primary_schema))
        now = time.time()
        with self.ds.meta_dbconn.begin_write() as conn:
            self._record(
                conn, result, data.loc[changed].reset_index(drop=True), gone, now, rows_read=len(data)
            )
            if self.updated_at_column is not None:
                col = data[self.updated_at_column]
                top = col.max() if col.notna().any() else None
                self._save_state(conn, self._encode(top) if top is not None else None, full_ts=now)

    def _compare(self, data: pd.DataFrame, meta: pd.DataFrame) -> tuple[Any, pd.DataFrame]:
        """Rows of ``data`` that are new or changed against the live metadata ``meta`` (keys, hash), and
        the keys of ``meta`` that ``data`` no longer holds."""
        pks = self.dt.primary_keys
        hashes = self.dt.store.hash_rows(data, self.dt.name)
        m = data[pks].assign(_hash=hashes).merge(meta, on=pks, how="left")
        changed = (m["hash"].isna() | (m["hash"].astype("Int64") != m["_hash"]).fillna(True)).to_numpy()
        return changed, anti_join(meta[pks], data[pks], pks)

    def _scan_full_chunked(self, result: StepResult, d: sa.Table) -> None:
        """A full scan of a SQL table in the metadata's database, in pages of ``SCAN_CHUNK`` rows in key
        order: each page is compared with the live metadata of the same key range (so deletes are seen)
        and recorded in its own transaction. Memory follows the page, not the table; a scan stopped
        halfway leaves the pages it recorded, and the next scan does the rest."""
        dt_, pks = self.dt, self.dt.primary_keys
        m = dt_.meta.table
        schema = dt_.store.get_schema()
        cols = [c.name for c in schema]
        now = time.time()
        after: dict[str, Any] | None = None
        top: Any = None
        while True:
            page = sa.select(*json_text_columns(d, cols)).order_by(*[d.c[k] for k in pks]).limit(self.SCAN_CHUNK)
            live = sa.select(*[m.c[k] for k in pks], m.c.hash).where(m.c.delete_ts.is_(None))
            with self.ds.meta_dbconn.connect() as conn:
                raw = fetch_frame(conn, page if after is None else page.where(_after(d, pks, after)), cols)
                upto = None if len(raw) < self.SCAN_CHUNK else to_records(raw[pks].iloc[[-1]])[0]
                if after is not None:
                    live = live.where(_after(m, pks, after))
                if upto is not None:
                    live = live.where(sa.not_(_after(m, pks, upto)))
                meta = conform_types(fetch_frame(conn, live, pks + ["hash"]), dt_.primary_schema)
            data = dt_.store.validate(conform_types(decode_json_texts(raw, schema), schema))
            changed, gone = self._compare(data, meta)
            with self.ds.meta_dbconn.begin_write() as conn:
                self._record(conn, result, data.loc[changed].reset_index(drop=True), gone, now, rows_read=len(data))
            if self.updated_at_column is not None and data[self.updated_at_column].notna().any():
                page_top = data[self.updated_at_column].max()
                top = page_top if top is None else max(top, page_top)
            if upto is None:
                break
            after = upto
        if self.updated_at_column is not None:
            with self.ds.meta_dbconn.begin_write() as conn:
                self._save_state(conn, self._encode(top) if top is not None else None, full_ts=now)

    def _scan_since(self, result: StepResult, last: Any) -> None:
        store = self.dt.store
        assert self._sql is not None and self.updated_at_column is not None  # checked in __init__
        d = self._sql.table
        cols = [c.name for c in store.get_schema()]
        with self._sql.dbconn.connect() as conn:
            df = fetch_frame(conn, sa.select(d).where(d.c[self.updated_at_column] >= last), cols)
        data = store.validate(conform_types(df, store.get_schema()))
        now = time.time()
        with self.ds.meta_dbconn.begin_write() as conn:
            self._record(conn, result, data, None, now)
            if len(data):
                self._save_state(conn, self._encode(data[self.updated_at_column].max()))

    def _record(
        self,
        conn: sa.Connection,
        result: StepResult,
        data: pd.DataFrame,
        gone: pd.DataFrame | None,
        now: float,
        rows_read: int | None = None,
    ) -> None:
        dt_ = self.dt
        stats = [dt_.write(conn, data, now=now, validated=True, write_data=False)] if len(data) else []
        if gone is not None and len(gone):
            stats.append(
                dt_.write(
                    conn, dt_.store.empty(), processed_idx=gone, now=now, validated=True, write_data=False
                )
            )
        for st in stats:
            result.add_write(dt_.name, dt_.primary_keys, st)
        result.keys_processed += len(data) + (len(gone) if gone is not None else 0)
        result.rows_read += len(data) if rows_read is None else rows_read

    # ------------------------------------------------------------ state

    def _load_state(self) -> tuple[str | None, float | None] | None:
        return self._state.load(self.name)

    def _save_state(self, conn: sa.Connection, value: str | None, full_ts: float | None = None) -> None:
        self._state.save(conn, self.name, value, full_ts)

    def _column_type(self) -> sa.types.TypeEngine[Any]:
        assert self._sql is not None and self.updated_at_column is not None  # checked in __init__
        return self._sql.table.c[self.updated_at_column].type

    def _encode(self, v: Any) -> str:
        v = plain(v)
        if isinstance(v, pd.Timestamp):
            v = v.to_pydatetime()
        return json.dumps(v.isoformat() if hasattr(v, "isoformat") else v)

    def _decode(self, text: str) -> Any:
        v = json.loads(text)
        t = self._column_type()
        if isinstance(t, sa.DateTime):
            return dt.datetime.fromisoformat(v)
        if isinstance(t, sa.Date):
            return dt.date.fromisoformat(v)
        return v




def _after(table: sa.Table, keys: list[str], key: dict[str, Any]) -> sa.ColumnElement[bool]:
    """Rows whose key sorts after ``key`` (a row value comparison; the primary-key index serves it)."""
    if len(keys) == 1:
        return table.c[keys[0]] > key[keys[0]]
    return sa.tuple_(*[table.c[k] for k in keys]) > sa.tuple_(*[sa.literal(key[k], table.c[k].type) for k in keys])
