"""The chunk runner of a BatchTransform: keys cut into chunks, each chunk's inputs read, the function
called and its output checked, and a failing chunk split until the failing keys are isolated."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.compute.chunk_commit import CommittingStep
from datapipe_dagster.compute.datatable import DataTable
from datapipe_dagster.compute.key_scan import KeyScan
from datapipe_dagster.compute.result import OutputStats, StepResult
from datapipe_dagster.errors import ConfigurationError, DatabaseError, SchemaError
from datapipe_dagster.frames import all_called, anti_join, columns_of, has_key, plain, unique_keys
from datapipe_dagster.store.records import to_records
from datapipe_dagster.types import ChangeList

log = logging.getLogger("datapipe_dagster")

SMALL_SCOPE = 64
"""Outputs of at most this many rows are checked against the called keys in plain Python first."""


@dataclass
class WholeInputs:
    """Inputs passed whole (keyless), read once per ``process_keys`` call, and the write sequence value
    read before that read (what the keys processed with them have seen)."""

    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    seq: int | None = None


class ChunkFailed(Exception):  # noqa: N818 - internal signal, never reaches a user
    """A chunk's call or commit failed; carries the cause and the sequence its inputs were read at."""

    def __init__(self, error: BaseException, read_seq: int):
        super().__init__(str(error))
        self.error = error
        self.read_seq = read_seq


class ChunkRunner(CommittingStep):
    """A keyed BatchTransform step that runs: full runs, changelists and ``process_keys``, chunk by chunk."""

    _run_advance: tuple[int, dict[str, int]] | None = None
    """A full run of one chunk: its key count and the watermarks its commit raises (``run_full``)."""
    _held_read: tuple[sa.Connection, int] | None = None
    """A full run of one chunk: the stale query's read connection, where ``_read_chunk`` reads its inputs,
    and the write sequence value read before that query: every row at or below it was committed before,
    so the chunk's inputs read later hold them all, and it serves as their ``read_seq`` (a statement
    fewer; on SQLite the read is the same snapshot, so the very value a new read would give)."""
    _full_run: bool = False
    """Within ``run_full``: the keys processed are every stale key (what ``KeyScan.open`` weighs)."""
    _scanned: tuple[int, pd.DataFrame] | None = None
    """The next chunk's keyed input, read by a ``KeyScan``, and the write sequence it is current to."""

    def run_full(self) -> StepResult:
        if self.keyless:
            return self.process_keys(self._keyless_stale())
        read = self.ds.meta_dbconn.engine.connect()
        try:
            stale, marks, _, current = self._stale(read=read)
            new_marks = {r.mark: current for r in self._scan_roles()}
        except BaseException:
            read.close()
            raise
        # One chunk reads its inputs in the stale query's read transaction: a connection and a transaction
        # fewer, and its ``read_seq`` is the stale query's ``current``. Only this class's ``_try_chunk``
        # reads with ``_read_chunk``.
        one_chunk = 0 < len(stale) <= self.chunk_size
        # Every key stale at ``current`` is now processed (or recorded as failed, which the failed-key
        # query finds by itself), so the next stale query can start above ``current``. After a stop
        # (a RowTransform's PipeBreak/PipeError) keys not reached are neither: the watermarks stay.
        # A run of one chunk raises them in that chunk's commit, the transaction that processes every
        # stale key (``_try_chunk``); a split chunk's parts do not, nor does a RowTransform.
        one = one_chunk and any(v > marks.get(t, -1) for t, v in new_marks.items())
        self._run_advance = (len(stale), new_marks) if one else None
        if one_chunk and type(self)._try_chunk is ChunkRunner._try_chunk:
            self._held_read = (read, current)
        else:
            read.close()
        self._full_run = True
        try:
            result = self.process_keys(stale)
        finally:
            self._full_run = False
            raised, self._run_advance = one and self._run_advance is None, None
            held, self._held_read = self._held_read, None
            if held is not None:
                held[0].close()
        if not self._stopped and not raised:
            self._advance(marks, new_marks)
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
        keys = unique_keys(columns_of(keys, self.key_cols))
        if self.cross:
            # Neighbouring keys share factor values: a chunk then reads few rows of each factor.
            keys = keys.sort_values(self.key_cols, kind="stable").reset_index(drop=True)
        self._process_chunks(keys, size, result, WholeInputs())
        result.elapsed = time.perf_counter() - started
        if result.keys_failed:
            log.warning("%s", result)
        return result

    def _process_chunks(self, keys: pd.DataFrame, size: int, result: StepResult, whole: WholeInputs) -> None:
        scan = KeyScan.open(self, keys) if self._full_run and self._held_read is None else None
        if scan is not None:  # many keys: their input read in one ordered scan (``compute.key_scan``)
            with scan:
                for chunk, read_seq, rows in scan.chunks(size):
                    self._scanned = (read_seq, rows)
                    try:
                        self._process_chunk(chunk, result, whole)
                    finally:
                        self._scanned = None
            keys = scan.rest
        for start in range(0, len(keys), size):
            self._process_chunk(keys.iloc[start : start + size].reset_index(drop=True), result, whole)

    def _read_inputs(
        self, conn: sa.Connection, keys: pd.DataFrame, whole: WholeInputs, seq: int, scanned: pd.DataFrame | None = None
    ) -> list[pd.DataFrame]:
        """Each input's rows for the chunk ``keys``; ``scanned``: the one keyed input's, read already."""
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
                    else columns_of(keys, role.shared)
                )
                dfs.append(scanned if scanned is not None else role.dt.read(conn, role.to_table_names(part)))
        return dfs

    def context_args(self, names: set[str], keys: pd.DataFrame, context: Any = None) -> dict[str, Any]:
        """The context parameters ``names`` for a call on the chunk ``keys`` (``compute.context``)."""
        if not names:  # most functions take none: no frame built for them
            return {}
        ctx = {"ds": self.ds, "idx": columns_of(keys, self.key_cols), "run_config": self.run_config}
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
        if len(df) <= SMALL_SCOPE and all_called(df, keys, tk):
            return df
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
        held, self._held_read = self._held_read, None
        scanned, self._scanned = self._scanned, None  # a split or retried chunk reads by key
        with held[0] if held is not None else self.ds.meta_dbconn.connect() as rconn:
            if scanned is not None:
                read_seq = scanned[0]
            else:
                read_seq = held[1] if held is not None else self.ds.seq.current(rconn)
            dfs = self._read_inputs(rconn, keys, whole, read_seq, None if scanned is None else scanned[1])
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
        run = self._run_advance
        advance = run[1] if run is not None and len(keys) == run[0] else None
        try:
            commit = self._commit(keys, outs, read_seq, advance=advance)
            if advance is not None:
                self._run_advance = None  # raised with the chunk: run_full has nothing left to raise
        except (sa.exc.OperationalError, sa.exc.InterfaceError, DatabaseError):
            raise  # the database, not the keys: the run stops and a rerun redoes the chunk
        except Exception as e:  # noqa: BLE001 - e.g. an output value the database refuses
            raise ChunkFailed(e, read_seq) from e
        result.rows_read += sum(len(d) for d in keyed) if keyed else sum(len(d) for d in dfs)
        self._count(result, commit)
