"""A large run's input read in one scan ordered by key instead of chunk by chunk (issue 11: a first run
near a naive recompute).

Read by key, each chunk of a run costs an index probe and a page of the data table and one of its
metadata per input row: a first run over 1M events read about 2M scattered pages where a recompute
reads the table once, in order. So when a full run (``run_full``: its keys are every stale key) covers
many keys (``SCAN_MIN_KEYS``, and at least ``SCAN_SHARE`` of the keys the transform has processed
before) of a step with one keyed input, a SQL table of the metadata's database, that input is read
ordered by the transform keys and then by write order: one statement on PostgreSQL, statements of
``SEGMENT_ROWS`` rows on SQLite (``KeyScan._batches``). The rows are cut into chunks of whole keys as
they arrive, and each chunk is the frame a keyed read of the same keys returns (its rows in write
order, the same types). A run over given keys (a partition's, a reparse) reads by key: it would scan
the whole table for a part of it.

Why a chunk sees what a keyed read would: each statement is preceded by a read of the write sequence,
so every row numbered up to that value is in it, as a keyed read sees every row up to the value it
reads first; a chunk's commit records the oldest such value its rows were read at. A key is processed
once its last row has arrived (the next key's first row, or the end). Keys no row holds (inputs
deleted, outputs left over) and, should the database ever return a key's rows apart, a key met again
after its chunk are left in ``rest``, for the caller to process with keyed reads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.frames import KeyLookup
from datapipe_dagster.store.sql import rows_frame

if TYPE_CHECKING:
    from datapipe_dagster.compute.chunk_runner import ChunkRunner
    from datapipe_dagster.compute.stale import InputRole

SCAN_MIN_KEYS = 10_000
"""Fewer keys are read by key: their rows are a few pages, a scan reads the whole table."""

SCAN_SHARE = 0.5
"""The least share of the transform's processed keys a run must cover to scan (a scan reads every row;
keyed reads cost a random page or two per row)."""

SCAN_BATCH_ROWS = 20_000
"""Rows fetched from the scan's cursor at a time (PostgreSQL)."""

SEGMENT_ROWS = 20_000
"""Rows of one scanning statement on SQLite (``KeyScan._batches``): fetched whole, so this bounds the
memory a segment takes (100,000 rows added about 170 MB to a 10M-event full run's heap peak)."""


class KeyScan:
    """One keyed input's rows, ordered by the transform keys, cut into chunks of whole keys."""

    def __init__(self, step: ChunkRunner, role: InputRole, keys: pd.DataFrame):
        self.step = step
        self.role = role
        self.keys = keys.reset_index(drop=True)
        self.rest = self.keys.iloc[0:0]
        self._conn: sa.Connection | None = None

    @classmethod
    def open(cls, step: ChunkRunner, keys: pd.DataFrame) -> KeyScan | None:
        """A scan of ``keys``' input for ``step``, or None when keyed reads serve better or must be used."""
        if len(keys) < SCAN_MIN_KEYS or step.keyless or step.cross:
            return None
        keyed = [r for r in step.roles if r.kind != "keyless"]
        if len(keyed) != 1 or keyed[0].kind != "full" or keyed[0].dt._sql is None or set(keyed[0].shared) != set(keys.columns):
            return None
        if step.ds.meta_dbconn.backend == "sqlite" and step.ds.meta_dbconn.database in (None, "", ":memory:"):
            return None  # no pages to save in memory (and one connection shared by every caller)
        with step.ds.meta_dbconn.connect() as conn:
            t = step.meta.table
            known = int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
        if len(keys) < SCAN_SHARE * known:
            return None
        return cls(step, keyed[0], keys)

    def __enter__(self) -> KeyScan:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def chunks(self, size: int) -> Iterator[tuple[pd.DataFrame, int, pd.DataFrame]]:
        """(keys, the write sequence their rows are current to, the input's rows for them) per chunk of up
        to ``size`` keys, in the database's key order; afterwards ``rest`` holds the keys not yet processed."""
        role, pks = self.role, list(self.keys.columns)
        table_keys = [role.col(k) for k in pks]
        wanted = KeyLookup(self.keys, pks)
        opened = np.zeros(len(self.keys), dtype=bool)  # keys whose first row has arrived
        done = np.zeros(len(self.keys), dtype=bool)  # keys handed out
        again: set[int] = set()  # keys whose rows did not arrive together: processed again by key
        pending: list[pd.DataFrame] = []
        open_keys: list[int] = []  # positions in ``keys`` of the pending rows' keys, in arrival order
        last = -1
        for batch, read_seq in self._batches(table_keys):
            pos = wanted.positions(role.to_key_names(batch[table_keys]).astype(object))
            keep = pos >= 0  # rows of keys the run does not cover are skipped
            batch, pos = (batch, pos) if keep.all() else (batch.loc[keep], pos[keep])
            if not len(pos):
                continue
            starts = pos[np.flatnonzero(np.r_[pos[0] != last, pos[1:] != pos[:-1]])]
            last = int(pos[-1])
            apart = opened[starts] | pd.Series(starts).duplicated().to_numpy()
            if apart.any():
                again.update(starts[apart].tolist())
                starts = starts[~apart]
            opened[starts] = True
            pending.append(batch.assign(_key=pos, _read=read_seq))
            open_keys.extend(starts.tolist())
            while len(open_keys) > size:  # the first ``size`` keys are complete: a later key has begun
                yield self._chunk(pending, open_keys[:size], done)
                open_keys = open_keys[size:]
        if open_keys:
            yield self._chunk(pending, open_keys, done)
        if again:
            done[sorted(again)] = False
        self.rest = self.keys.loc[~done].reset_index(drop=True)

    def _batches(self, table_keys: list[str]) -> Iterator[tuple[pd.DataFrame, int]]:
        """The input's rows in key order, a frame at a time, with the write sequence read before them.

        PostgreSQL: one statement (a hash join and one sort), streamed from a server-side cursor. SQLite:
        statements of ``SEGMENT_ROWS`` rows, each in its own read transaction, the next starting at the
        last key of the one before (whose rows it reads again, whole): one statement would hold its read
        snapshot for the whole run, and the WAL could not be checkpointed past it (it grew by 111 MB in
        a 1M-event first run, against 5 MB read by key).
        """
        dt = self.role.dt
        cols = [*[c.name for c in dt.table_store.get_schema()], "seq"]
        dbconn = self.step.ds.meta_dbconn
        if dbconn.backend != "sqlite":
            self._conn = conn = dbconn.engine.connect()
            read_seq = self.step.ds.seq.current(conn)
            result = conn.execution_options(stream_results=True, yield_per=SCAN_BATCH_ROWS).execute(dt.scan_statement(table_keys))
            for part in result.partitions():
                frame = rows_frame(part, cols)
                del part
                yield frame, read_seq
            result.close()
            return

        def segment(stmt: sa.Select) -> tuple[Sequence[Any], int]:
            """``stmt``'s rows and the write sequence read before them, in one read transaction."""
            with dbconn.connect() as conn:
                read_seq = self.step.ds.seq.current(conn)
                return conn.execute(stmt).fetchall(), read_seq

        start: tuple[Any, ...] | None = None
        past = False  # start after ``start``'s rows, or at them
        while True:
            rows, read_seq = segment(dt.scan_statement(table_keys, start, past, limit=SEGMENT_ROWS))
            complete = len(rows) < SEGMENT_ROWS
            frame = rows_frame(rows, cols) if rows else None
            last = tuple(rows[-1][cols.index(k)] for k in table_keys) if rows else ()
            del rows  # the frame holds the values: the driver's rows are not kept beside it
            if complete:
                if frame is not None:
                    yield frame, read_seq
                return
            assert frame is not None
            tail = np.ones(len(frame), dtype=bool)  # the last key's rows: maybe not all of them
            for k, v in zip(table_keys, last, strict=True):
                tail &= (frame[k] == v).to_numpy()
            if tail.all():  # one key fills the segment: all its rows, then on past it
                key_rows, read_seq = segment(dt.scan_statement(table_keys, last, only=True))
                whole = rows_frame(key_rows, cols)
                del key_rows
                yield whole, read_seq
                del whole
                start, past = last, True
                continue
            frame = frame.loc[~tail]
            yield frame, read_seq
            start, past = last, False

    def _chunk(self, pending: list[pd.DataFrame], chunk: list[int], done: np.ndarray) -> tuple[pd.DataFrame, int, pd.DataFrame]:
        """The rows of the keys ``chunk`` taken out of ``pending`` (what is left stays), shaped as a read,
        and the oldest write sequence they were read at (rows of several segments: current to the oldest)."""
        rows = pd.concat(pending, ignore_index=True) if len(pending) > 1 else pending[0]
        mine = np.isin(rows["_key"].to_numpy(), chunk)
        pending[:] = [rows.loc[~mine]] if not mine.all() else []
        done[chunk] = True
        read_seq = int(rows["_read"].to_numpy()[mine].min())
        data = rows.loc[mine].drop(columns=["_key", "_read"])
        return self.keys.iloc[chunk].reset_index(drop=True), read_seq, self.role.dt.shape_read(data)
