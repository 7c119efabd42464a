"""BatchTransform: a pandas function from N input tables to M output tables, run per transform key."""

from __future__ import annotations

import hashlib
import inspect
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.compute.catalog import Catalog, ComputeStep, PipelineStep
from datapipe_dagster.compute.context import check_kwargs_clash, context_params
from datapipe_dagster.compute.datatable import DataStore, DataTable, WriteResult
from datapipe_dagster.compute.partitioning import bucket_ranges, key_buckets
from datapipe_dagster.compute.result import OutputStats, StepResult, failed_frame
from datapipe_dagster.compute.spec import (
    Input,
    Output,
    as_input,
    as_output,
    check_aliases,
    effective_keys,
    spec_version,
)
from datapipe_dagster.compute.stale import (
    InputRole,
    all_keys_query,
    classify_inputs,
    factor_indexes,
    keys_matching,
    output_roles,
    stale_keys_query,
)
from datapipe_dagster.errors import ConfigurationError, DatabaseError, SchemaError
from datapipe_dagster.frames import anti_join, has_key, plain
from datapipe_dagster.meta.tables import TransformMetaTable
from datapipe_dagster.store.schema import to_records
from datapipe_dagster.store.sql import AnalyzeOnGrowth
from datapipe_dagster.types import ChangeList

log = logging.getLogger("datapipe_dagster")

ALL_KEY = "_datapipe_all"
"""The synthetic key column of a transform without key columns (one key: the whole input)."""


def code_version_of(func: Callable[..., Any], *extra: Any) -> str:
    """A short digest of a function's source (or its qualified name if source is unavailable) and ``extra``."""
    try:
        src = inspect.getsource(func)
    except (OSError, TypeError):
        src = getattr(func, "__qualname__", repr(func))
    h = hashlib.sha256(src.encode())
    for e in extra:
        h.update(repr(e).encode())
    return h.hexdigest()[:16]


def default_transform_keys(inputs: list[list[str]], outputs: list[list[str]]) -> list[str]:
    """Primary-key columns common to all outputs and to every input that carries any of them (given the
    primary-key columns of each input and output, inputs' under the transform's names).

    Inputs that share none of the outputs' key columns (e.g. a config table) are passed whole.
    """
    tables = outputs or inputs[:1]
    common = list(tables[0])
    for t in tables[1:]:
        common = [k for k in common if k in t]
    for t in inputs:
        narrowed = [k for k in common if k in t]
        if narrowed:
            common = narrowed
    return common


@dataclass
class WholeInputs:
    """Inputs passed whole (keyless), read once per ``process_keys`` call, and the write sequence value
    read before that read (what the keys processed with them have seen)."""

    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    seq: int | None = None


class BatchTransform(PipelineStep):
    """A pandas function from ``inputs`` to ``outputs``, recomputed only for stale transform keys.

    Args:
        func: ``func(df_in_1, ..., df_in_N, **kwargs)`` returning one DataFrame or a tuple, one per output.
            It receives *all* input rows of a batch of keys, in the order they were last written, and
            ``ds``, ``idx`` (the batch's keys), ``run_config`` and ``context`` when it declares parameters
            of those names after its inputs (``compute.context``).
        inputs: input table names, or ``Input(name, keys={transform_key: column})`` for an input whose
            key column is named otherwise.
        outputs: output table names, or ``Output(name, cleanup=False)`` for an output whose rows are only
            upserted (it need not hold the transform keys).
        transform_keys: key columns; default: the primary-key columns common to all inputs and outputs.
            When no input holds them all, the keys are the join of the key values the inputs hold (a
            cross product where they share no column).
        chunk_size: keys per call (bounds memory).
        name: step name (default: the function's name).
        kwargs: extra keyword arguments for ``func``.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        inputs: list[str | Input],
        outputs: list[str | Output],
        transform_keys: list[str] | None = None,
        chunk_size: int = 1000,
        name: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ):
        if not inputs:
            raise ConfigurationError(f"BatchTransform {name or func.__name__!r}: needs at least one input")
        if chunk_size < 1:
            raise ConfigurationError(f"BatchTransform {name or func.__name__!r}: chunk_size must be >= 1")
        self.func = func
        self.input_specs = [as_input(i) for i in inputs]
        self.output_specs = [as_output(o) for o in outputs]
        self.inputs = [i.table for i in self.input_specs]
        self.outputs = [o.table for o in self.output_specs]
        self.transform_keys = transform_keys
        self.chunk_size = chunk_size
        self.name: str = name or str(getattr(func, "__name__", "transform"))
        self.kwargs = kwargs or {}
        check_kwargs_clash("BatchTransform", self.name, func, self.kwargs, len(self.inputs))

    @property
    def code_version(self) -> str:
        specs = spec_version(self.input_specs, self.output_specs)
        return code_version_of(
            self.func, sorted(self.kwargs.items()), self.inputs, self.outputs, self.transform_keys, *specs
        )

    def build_compute(self, ds: DataStore, catalog: Catalog) -> list[ComputeStep]:
        return [
            BatchTransformStep(
                ds,
                name=self.name,
                func=self.func,
                input_dts=[catalog.get_datatable(ds, n) for n in self.inputs],
                output_dts=[catalog.get_datatable(ds, n) for n in self.outputs],
                transform_keys=self.transform_keys,
                chunk_size=self.chunk_size,
                kwargs=self.kwargs,
                code_version=self.code_version,
                input_aliases=[dict(i.keys) for i in self.input_specs],
                no_cleanup={o.table for o in self.output_specs if not o.cleanup},
            )
        ]


class BatchTransformStep(ComputeStep):
    """A BatchTransform bound to a DataStore: finds stale keys and processes them in chunks."""

    def __init__(
        self,
        ds: DataStore,
        name: str,
        func: Callable[..., Any],
        input_dts: list[DataTable],
        output_dts: list[DataTable],
        transform_keys: list[str] | None = None,
        chunk_size: int = 1000,
        kwargs: dict[str, Any] | None = None,
        code_version: str | None = None,
        input_aliases: list[dict[str, str]] | None = None,
        no_cleanup: Iterable[str] = (),
    ):
        self.ds = ds
        self.name = name
        self.func = func
        self.input_dts = input_dts
        self.output_dts = output_dts
        self.chunk_size = chunk_size
        self.kwargs = kwargs or {}
        self.code_version = code_version or code_version_of(func)
        self.input_aliases = [dict(a) for a in input_aliases] if input_aliases else [{} for _ in input_dts]
        self.no_cleanup = frozenset(no_cleanup)
        """Outputs whose rows are only upserted (``Output(name, cleanup=False)``), never deleted by key."""
        for dt, al in zip(input_dts, self.input_aliases, strict=True):
            check_aliases(name, dt, al)
        if transform_keys is not None:
            keys = list(transform_keys)
        else:
            keys = default_transform_keys(
                [effective_keys(dt, al) for dt, al in zip(input_dts, self.input_aliases, strict=True)],
                [dt.primary_keys for dt in output_dts if dt.name not in self.no_cleanup],
            )
        self.roles = classify_inputs(input_dts, keys, self.input_aliases)
        self._check_keys(keys)
        self.transform_keys = keys
        self.keyless = not keys
        self.key_cols = keys or [ALL_KEY]
        self.cross = any(r.kind == "factor" for r in self.roles)
        """No input holds every key column: the keys are the join of the inputs' key values."""
        self.run_config: dict[str, Any] = {}
        self._ctx_names = context_params(func, len(input_dts))
        self._tmeta: TransformMetaTable | None = None
        self._stopped = False  # the last process_keys stopped before its last chunk
        self._statistics = AnalyzeOnGrowth()  # of the state table: a key per key processed

    def _check_keys(self, keys: list[str]) -> None:
        where = f"transform {self.name!r}"
        for key, al in ((k, a) for a in self.input_aliases for k in a):
            if key not in keys:
                raise ConfigurationError(
                    f"{where}: an input maps {key!r} to {al[key]!r}, but {key!r} is not a transform key {keys}; "
                    "set transform_keys or drop the alias"
                )
        if keys:
            carried = {k for r in self.roles for k in r.shared}
            missing_in = [k for k in keys if k not in carried]
            if missing_in:
                raise ConfigurationError(
                    f"{where}: no input has transform key column {missing_in[0]!r} in its primary key "
                    f"(inputs: {', '.join(f'{d.name}{d.primary_keys}' for d in self.input_dts)}); "
                    "add it to an input's key, map it with Input(table, keys={...}), or set transform_keys"
                )
            for dt in self.output_dts:
                missing = [k for k in keys if k not in dt.primary_keys]
                if missing and dt.name not in self.no_cleanup:
                    raise ConfigurationError(
                        f"{where}: output table {dt.name!r} lacks transform key column {missing[0]!r} in its "
                        f"primary key {dt.primary_keys}; add it, set transform_keys, or declare the output "
                        f"Output({dt.name!r}, cleanup=False) to upsert its rows by their own key and never "
                        "delete them by transform key"
                    )

    def key_schema(self) -> list[sa.Column]:
        if self.keyless:
            return [sa.Column(ALL_KEY, sa.Integer, primary_key=True)]
        cols = []
        for k in self.transform_keys:
            for role in self.roles:
                col = next(
                    (c for c in role.dt.primary_schema if k in role.shared and c.name == role.col(k)), None
                )
                if col is not None:
                    cols.append(sa.Column(k, col.type, primary_key=True))
                    break
        return cols

    @property
    def meta(self) -> TransformMetaTable:
        if self._tmeta is None:
            for dt in self.input_dts + self.output_dts:
                dt.ensure_ready()
            self._tmeta = self.ds.transform_meta(
                self.name, self.key_schema(), factor_indexes(self.roles, self.transform_keys)
            )
            with self.ds.meta_dbconn.begin_write() as conn:
                # Watermarks without processed keys mean the transform state was reset: start over.
                if conn.execute(sa.select(self._tmeta.table).limit(1)).first() is None:
                    self.ds.watermarks.reset(conn, self.name)
        return self._tmeta

    def __repr__(self) -> str:
        return f"BatchTransformStep({self.name!r}, keys={self.transform_keys})"

    # ------------------------------------------------------------------ key sets

    def get_stale_keys(self, advance_watermark: bool = True, include_failed: bool = True) -> pd.DataFrame:
        """Keys needing processing (found by indexed SQL); advances the input watermarks past what is
        known to be processed. ``include_failed=False``: a failed key counts only when an input row of
        it changed after its failed attempt."""
        if self.keyless:
            return self._keyless_stale(include_failed)
        stale, marks, new_marks, _ = self._stale(include_failed)
        if advance_watermark:
            self._advance(marks, new_marks)
        return stale

    def _scan_roles(self) -> list[InputRole]:
        """The inputs, and the outputs this step alone writes (swept for keys it never processed)."""
        return self.roles + output_roles(self._swept_outputs(), self.transform_keys)

    def _swept_outputs(self) -> list[DataTable]:
        """Outputs whose rows under keys never processed are deleted: those this step alone writes, with
        cleanup (an ``Output(cleanup=False)`` keeps every row)."""
        return [dt for dt in self.output_dts if dt.name not in self.shared_outputs and dt.name not in self.no_cleanup]

    def _stale(self, include_failed: bool = True) -> tuple[pd.DataFrame, dict[str, int], dict[str, int], int]:
        """Stale keys, the watermarks read, the watermarks they may advance to, and the sequence value
        read before the query."""
        tmeta = self.meta
        with self.ds.meta_dbconn.connect() as conn:
            current = self.ds.seq.current(conn)
            marks = self.ds.watermarks.get(conn, self.name)
            stale, new_marks = stale_keys_query(
                conn, self._scan_roles(), tmeta, self.transform_keys, marks, current, include_failed
            )
        return self._typed(stale), marks, new_marks, current

    def _advance(self, marks: dict[str, int], new_marks: dict[str, int]) -> None:
        # Skip the write transaction when no watermark would move (the common idle case).
        if any(v > marks.get(t, -1) for t, v in new_marks.items()):
            with self.ds.meta_dbconn.begin_write() as conn:
                self.ds.watermarks.advance(conn, self.name, new_marks)

    def _keyless_stale(self, include_failed: bool = True) -> pd.DataFrame:
        t = self.meta.table
        with self.ds.meta_dbconn.connect() as conn:
            row = conn.execute(sa.select(t.c.processed_seq, t.c.is_success)).first()
            top = max((dt.meta.max_seq(conn) for dt in self.input_dts), default=0)
            # Never run, no input, but outputs left by someone else: one run deletes them.
            orphans = row is None and top == 0 and any(dt.meta.max_seq(conn) > 0 for dt in self._swept_outputs())
        failed = row is not None and not row[1] and include_failed
        stale = row is None and (top > 0 or orphans) or row is not None and (failed or top > row[0])
        return pd.DataFrame({ALL_KEY: [0] if stale else []}, dtype="int64")

    def get_all_keys(self) -> pd.DataFrame:
        """Every key the transform knows (for a reparse)."""
        tmeta = self.meta
        if self.keyless:
            return pd.DataFrame({ALL_KEY: [0]}, dtype="int64")
        with self.ds.meta_dbconn.connect() as conn:
            return self._typed(all_keys_query(conn, self._scan_roles(), tmeta, self.transform_keys))

    def get_partition_keys(self, n: int, buckets: Iterable[int]) -> pd.DataFrame:
        """Every key of hash ``buckets`` out of ``n`` (``compute.partitioning``), for a reparse of those
        partitions: the keys in the transform state whose hash lies in the buckets' ranges (an index range
        scan, proportional to the partitions) and the stale keys of those buckets (new keys included).

        Equal to ``get_all_keys()`` restricted to ``buckets``, without listing the whole key space.
        """
        if self.keyless:
            return self.get_all_keys()
        wanted = sorted(set(buckets))
        tmeta = self.meta
        with self.ds.meta_dbconn.connect() as conn:
            recorded = tmeta.keys_in_hash_ranges(conn, bucket_ranges(wanted, n))
        stale = self.get_stale_keys(advance_watermark=False)
        stale = stale.loc[np.isin(key_buckets(stale, self.transform_keys, n), wanted)]
        both = pd.concat([self._typed(recorded), stale], ignore_index=True).drop_duplicates()
        return self._typed(both)

    def failed_keys(self, limit: int | None = None) -> pd.DataFrame:
        """Keys whose last attempt failed, with ``error``, ``traceback`` and ``process_ts``."""
        tmeta = self.meta
        with self.ds.meta_dbconn.connect() as conn:
            return tmeta.failed(conn, limit)

    def count_failed(self) -> int:
        tmeta = self.meta
        with self.ds.meta_dbconn.connect() as conn:
            return tmeta.count_failed(conn)

    def _typed(self, keys: pd.DataFrame) -> pd.DataFrame:
        from datapipe_dagster.store.schema import conform_types

        return conform_types(keys.reset_index(drop=True), self.key_schema())

    def keys_for_changes(self, changelist: ChangeList) -> pd.DataFrame | None:
        """Transform keys affected by ``changelist`` (None when it touches no input)."""
        frames: list[pd.DataFrame] = []
        for role in self.roles:
            idx = changelist.get(role.dt.name)
            if idx is None or len(idx) == 0:
                continue
            if self.keyless or role.kind == "keyless":
                return self.get_stale_keys(advance_watermark=False) if not self.keyless else pd.DataFrame({ALL_KEY: [0]})
            idx = role.to_key_names(idx)
            if role.kind == "full":
                frames.append(idx[self.transform_keys])
            else:
                with self.ds.meta_dbconn.connect() as conn:
                    frames.append(
                        keys_matching(
                            conn, self.roles, self.meta, self.transform_keys, idx[role.shared], role
                        )
                    )
        if not frames:
            return None
        return self._typed(pd.concat(frames, ignore_index=True).drop_duplicates())

    # ------------------------------------------------------------------ running

    def run_full(self) -> StepResult:
        if self.keyless:
            return self.process_keys(self._keyless_stale())
        stale, marks, _, current = self._stale()
        result = self.process_keys(stale)
        # Every key stale at ``current`` is now processed (or recorded as failed, which the failed-key
        # query finds by itself), so the next stale query can start above ``current``. After a stop
        # (a RowTransform's PipeBreak/PipeError) keys not reached are neither: the watermarks stay.
        if not self._stopped:
            self._advance(marks, {r.mark: current for r in self._scan_roles()})
        return result

    def run_changelist(self, changelist: ChangeList) -> StepResult:
        keys = self.keys_for_changes(changelist)
        if keys is None or len(keys) == 0:
            return StepResult(self.name)
        return self.process_keys(keys)

    def process_keys(
        self, keys: pd.DataFrame, chunk_size: int | None = None, run_config: dict[str, Any] | None = None
    ) -> StepResult:
        """Recompute ``keys`` (every one, stale or not: this is also the reparse) in chunks.

        ``run_config`` reaches functions that declare a ``run_config`` parameter (``compute.context``).
        """
        started = time.perf_counter()
        self.run_config = dict(run_config or {})
        self._stopped = False
        _ = self.meta  # create every table before opening write transactions
        result = StepResult(self.name, outputs={dt.name: OutputStats() for dt in self.output_dts})
        if len(keys) == 0:
            return result
        size = chunk_size or self.chunk_size
        keys = keys[self.key_cols].drop_duplicates().reset_index(drop=True)
        if self.cross:
            # Neighbouring keys share factor values: a chunk then reads few rows of each factor.
            keys = keys.sort_values(self.key_cols, kind="stable").reset_index(drop=True)
        self._process_chunks(keys, size, result, WholeInputs())
        result.elapsed = time.perf_counter() - started
        if result.keys_failed:
            log.warning("%s", result)
        return result

    def _process_chunks(self, keys: pd.DataFrame, size: int, result: StepResult, whole: WholeInputs) -> None:
        for start in range(0, len(keys), size):
            self._process_chunk(keys.iloc[start : start + size].reset_index(drop=True), result, whole)

    def _read_inputs(self, conn: sa.Connection, keys: pd.DataFrame, whole: WholeInputs, seq: int) -> list[pd.DataFrame]:
        dfs = []
        for role in self.roles:
            if self.keyless or role.kind == "keyless":
                if role.dt.name not in whole.frames:
                    whole.frames[role.dt.name] = role.dt.read(conn)
                    whole.seq = seq if whole.seq is None else min(whole.seq, seq)
                dfs.append(whole.frames[role.dt.name])
            else:
                part = (
                    keys[role.shared].drop_duplicates()
                    if role.kind in ("partial", "factor")
                    else keys[role.shared]
                )
                dfs.append(role.dt.read(conn, role.to_table_names(part)))
        return dfs

    def context_args(self, names: set[str], keys: pd.DataFrame, context: Any = None) -> dict[str, Any]:
        """The context parameters ``names`` for a call on the chunk ``keys`` (``compute.context``)."""
        ctx = {"ds": self.ds, "idx": keys[self.key_cols], "run_config": self.run_config}
        ctx["context"] = context if context is not None else SimpleNamespace()
        return {p: ctx[p] for p in names}

    def _call(self, dfs: list[pd.DataFrame], keys: pd.DataFrame) -> list[pd.DataFrame]:
        res = self.func(*dfs, **self.kwargs, **self.context_args(self._ctx_names, keys))
        names = [d.name for d in self.output_dts]
        if isinstance(res, pd.DataFrame):
            res = (res,)
        if res is None:
            raise ConfigurationError(
                f"transform {self.name!r} returned None; return {len(names)} DataFrame(s), one per output "
                f"{names} (an empty DataFrame when a key produces nothing)"
            )
        if not isinstance(res, (tuple, list)) or len(res) != len(self.output_dts):
            raise ConfigurationError(
                f"transform {self.name!r} returned {type(res).__name__} of {len(res) if isinstance(res, (tuple, list)) else 1} "
                f"item(s); expected {len(self.output_dts)} DataFrame(s), one per output {names}"
            )
        out = []
        for dt, df in zip(self.output_dts, res, strict=True):
            if df is None:
                df = dt.store.empty()
            if not isinstance(df, pd.DataFrame):
                raise ConfigurationError(f"transform {self.name!r}: output for {dt.name!r} is {type(df).__name__}, not a DataFrame")
            df = dt.store.validate(df)
            if dt.name not in self.no_cleanup or all(k in df.columns for k in self.transform_keys):
                df = self._check_in_scope(dt, df, keys)
            out.append(df)
        return out

    def _check_in_scope(self, dt: DataTable, df: pd.DataFrame, keys: pd.DataFrame) -> pd.DataFrame:
        """Refuse output rows under keys the call was not asked about: they would overwrite what another
        key produced, and no later run would ever clean them.

        A cross-join transform's call sees every row of each factor value in its chunk, so a function
        forming the product returns keys of the whole rectangle; rows under rectangle keys outside the
        chunk are dropped (their own chunk writes them), rows under other keys are refused."""
        if self.keyless or len(df) == 0:
            return df
        tk = self.transform_keys
        if self.cross:
            outside = ~has_key(df, keys, tk)
            if outside.any():
                inside = np.ones(len(df), dtype=bool)
                for role in (r for r in self.roles if r.kind == "factor"):
                    inside &= has_key(df, keys[role.shared], role.shared)
                df = df.loc[~(outside & inside)]
        foreign = anti_join(df[tk], keys, tk).drop_duplicates()
        if len(foreign):
            shown = ", ".join(
                "(" + ", ".join(f"{k}={plain(v)!r}" for k, v in r.items()) + ")" for r in to_records(foreign.head(3))
            )
            raise SchemaError(
                dt.name,
                f"transform {self.name!r} returned {len(foreign)} key(s) it was not called for ({shown}); "
                "a call may only write rows under the keys of its input batch",
                column=tk[0],
                key=to_records(foreign.head(1))[0],
            )
        return df

    def _process_chunk(self, keys: pd.DataFrame, result: StepResult, whole: WholeInputs) -> None:
        try:
            try:
                self._try_chunk(keys, result, whole)
            except (sa.exc.OperationalError, sa.exc.InterfaceError) as e:
                if not getattr(e, "connection_invalidated", False):
                    raise
                # The connection dropped (server restart, killed backend): nothing of the chunk was
                # committed; redo it once on a fresh connection, and let a second failure stop the run.
                log.warning("transform %s: connection lost (%s); retrying the chunk once", self.name, e.orig)
                self._try_chunk(keys, result, whole)
        except ChunkFailed as f:
            self._chunk_failed(keys, f, result, whole)

    def _chunk_failed(self, keys: pd.DataFrame, failure: ChunkFailed, result: StepResult, whole: WholeInputs) -> None:
        """Split a failed chunk in halves until single failing keys remain; record those as failed."""
        if len(keys) > 1:
            half = len(keys) // 2
            self._process_chunk(keys.iloc[:half].reset_index(drop=True), result, whole)
            self._process_chunk(keys.iloc[half:].reset_index(drop=True), result, whole)
            return
        self._mark_failed(keys, failure.error, failure.read_seq, result)

    def _read_chunk(self, keys: pd.DataFrame, whole: WholeInputs) -> tuple[int, list[pd.DataFrame]]:
        """The chunk's inputs and the write sequence they are current to (read before them, so every row
        at or below it is among them)."""
        with self.ds.meta_dbconn.connect() as rconn:
            read_seq = self.ds.seq.current(rconn)
            dfs = self._read_inputs(rconn, keys, whole, read_seq)
        if whole.seq is not None:
            # Inputs passed whole were read once for the run: the keys saw them as of that read.
            read_seq = min(read_seq, whole.seq)
        return read_seq, dfs

    def _try_chunk(self, keys: pd.DataFrame, result: StepResult, whole: WholeInputs) -> None:
        read_seq, dfs = self._read_chunk(keys, whole)
        keyed = [d for d, r in zip(dfs, self.roles, strict=True) if not (self.keyless or r.kind == "keyless")]
        if self.keyless:
            nothing = all(len(d) == 0 for d in dfs)
        else:
            nothing = bool(keyed) and all(len(d) == 0 for d in keyed)
        try:
            outs = [dt.store.empty() for dt in self.output_dts] if nothing else self._call(dfs, keys)
        except Exception as e:  # noqa: BLE001 - user code or its output: isolate the failing keys
            raise ChunkFailed(e, read_seq) from e
        try:
            commit = self._commit(keys, outs, read_seq)
        except (sa.exc.OperationalError, sa.exc.InterfaceError, DatabaseError):
            raise  # the database, not the keys: the run stops and a rerun redoes the chunk
        except Exception as e:  # noqa: BLE001 - e.g. an output value the database refuses
            raise ChunkFailed(e, read_seq) from e
        result.rows_read += sum(len(d) for d in keyed) if keyed else sum(len(d) for d in dfs)
        self._count(result, commit)

    def _count(self, result: StepResult, commit: Commit) -> None:
        result.keys_processed += commit.processed
        result.keys_superseded += commit.superseded
        if len(commit.failed):
            result.add_failed(commit.failed)
        for dt, st in zip(self.output_dts, commit.writes, strict=True):
            result.add_write(dt.name, dt.primary_keys, st)

    def _commit(
        self,
        keys: pd.DataFrame,
        outs: list[pd.DataFrame],
        read_seq: int,
        failed: pd.DataFrame | None = None,
    ) -> Commit:
        """Write a chunk's outputs and mark its keys as of ``read_seq``, in one transaction.

        ``keys`` are the chunk's keys; those in ``failed`` (key columns, ``error``, ``traceback``) are
        marked failed and keep their outputs, the others get ``outs`` and are marked processed.

        The rule that keeps concurrent processors of this transform from losing an update: under the
        transform's commit lock, keys whose recorded state is newer than ``read_seq`` are left alone
        (outputs and state), so a commit never regresses a key's state nor overwrites outputs computed
        from newer inputs. A key whose inputs moved after ``read_seq`` is marked with ``read_seq``, so the
        newer rows keep it stale.
        """
        now = time.time()
        kc = self.key_cols
        failed = failed if failed is not None else pd.DataFrame(columns=kc + ["error", "traceback"])
        with self.ds.meta_dbconn.begin_write() as conn:
            self.meta.lock(conn)
            newer = self.meta.newer_than(conn, keys[kc], read_seq)
            if len(newer):
                keys = anti_join(keys, newer, kc)
                failed = anti_join(failed, newer, kc)
                outs = [self._drop_newer(dt, o, newer, len(keys)) for dt, o in zip(self.output_dts, outs, strict=True)]
            ok = anti_join(keys[kc], failed, kc)
            stats = [WriteResult.empty(dt.primary_keys) for dt in self.output_dts]
            if len(ok):
                # Every read first and the state marked (under the transform's lock already), so the
                # write-sequence lock, taken by the first output write, is held only while writing.
                prepared = [
                    dt.prepare_write(conn, df, processed_idx=self._cleanup_scope(conn, dt, ok), now=now, validated=True)
                    for dt, df in zip(self.output_dts, outs, strict=True)
                ]
                self.meta.mark(conn, ok, read_seq, now)
                stats = [dt.apply_write(conn, p) for dt, p in zip(self.output_dts, prepared, strict=True)]
            for rec in to_records(failed):
                one = pd.DataFrame([{k: rec[k] for k in kc}])
                self.meta.mark(conn, one, read_seq, now, error=rec["error"], traceback=rec["traceback"])
        for dt in self.output_dts:
            dt.maybe_analyze()
        self._statistics.grew(self.ds.meta_dbconn, len(keys), [self.meta.table])
        return Commit(processed=len(ok), superseded=len(newer), writes=stats, failed=failed)

    def _cleanup_scope(self, conn: sa.Connection, dt: DataTable, ok: pd.DataFrame) -> pd.DataFrame | None:
        """The keys under which ``dt``'s rows not returned are deleted (None: ``cleanup=False``, none)."""
        if dt.name in self.no_cleanup:
            return None
        return ok[self.transform_keys] if not self.keyless else dt.meta.get_metadata(conn)[dt.primary_keys]

    def _drop_newer(self, dt: DataTable, out: pd.DataFrame, newer: pd.DataFrame, left: int) -> pd.DataFrame:
        """``out`` without the rows of keys a newer commit already processed.

        An output without the transform-key columns (``cleanup=False``) cannot be split by key: when only
        some of the chunk's keys are newer the commit fails, and the chunk is split until each part is
        wholly newer (nothing written) or not at all.
        """
        kc = self.key_cols
        if self.keyless or left == 0:
            return out.iloc[0:0]
        if len(out) == 0:
            return out
        if all(k in out.columns for k in kc):
            return anti_join(out, newer, kc)
        raise SupersededPart(
            f"transform {self.name!r}: a concurrent run processed {len(newer)} of this chunk's keys with newer "
            f"inputs, and output {dt.name!r} (cleanup=False, without the transform-key columns) cannot be split by "
            "key; the chunk is retried in parts"
        )

    def _mark_failed(self, keys: pd.DataFrame, e: BaseException, read_seq: int, result: StepResult) -> None:
        """Record ``keys`` as failed with ``e``, as of the inputs read at ``read_seq`` (so a row written
        after that read makes them stale again)."""
        failed = failed_frame(keys[self.key_cols], e)
        self._count(result, self._commit(keys, [dt.store.empty() for dt in self.output_dts], read_seq, failed))
        if isinstance(e, SchemaError):
            log.debug("transform %s produced bad output: %s", self.name, e)

    # ------------------------------------------------------------------ eval (nothing written)

    def eval(self, keys: pd.DataFrame, run_config: dict[str, Any] | None = None):  # noqa: A003, ANN201 - the seed's name
        """Run the function on the current inputs of ``keys`` and return what a run would write to each
        output (rows inserted, updated and deleted), writing nothing and leaving the step's state alone.
        ``run_config`` reaches a function that declares it. Returns an ``EvalResult``.

        An exception in the function is raised as it is (eval is for looking at one key closely).

        Raises:
            ConfigurationError: ``keys`` lacks a transform key column, or the step has no keys.
        """
        from datapipe_dagster.compute.evaluate import EvalResult, check_keys_frame, diff_output, typed_keys

        keys = typed_keys(self.name, self.key_schema(), check_keys_frame(self.name, keys))
        _ = self.meta
        self.run_config = dict(run_config or {})
        with self.ds.meta_dbconn.connect() as conn:
            dfs = self._read_inputs(conn, keys, WholeInputs(), self.ds.seq.current(conn))
            keyed = [d for d, r in zip(dfs, self.roles, strict=True) if not (self.keyless or r.kind == "keyless")]
            nothing = all(len(d) == 0 for d in (dfs if self.keyless else keyed)) and bool(keyed or self.keyless)
            outs = [dt.store.empty() for dt in self.output_dts] if nothing else self._call(dfs, keys)
            result = EvalResult(self.name, keys)
            for dt, df in zip(self.output_dts, outs, strict=True):
                result.outputs[dt.name] = diff_output(dt, conn, df, self._cleanup_scope(conn, dt, keys))
        return result


@dataclass
class Commit:
    """What one chunk's commit did: keys processed, keys left to a newer state, writes per output, and
    the failed keys it recorded."""

    processed: int
    superseded: int
    writes: list[WriteResult]
    failed: pd.DataFrame


class SupersededPart(Exception):  # noqa: N818 - internal signal: a chunk's keys are partly newer elsewhere
    """Raised inside a commit whose output cannot drop the rows of the keys a newer commit owns."""


class ChunkFailed(Exception):  # noqa: N818 - internal signal, never reaches a user
    """A chunk's call or commit failed; carries the cause and the sequence its inputs were read at."""

    def __init__(self, error: BaseException, read_seq: int):
        super().__init__(str(error))
        self.error = error
        self.read_seq = read_seq
