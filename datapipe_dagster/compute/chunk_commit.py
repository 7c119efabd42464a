"""The commit of a BatchTransform chunk: its outputs written and its keys marked, in one transaction,
without regressing a key a concurrent processor committed from newer inputs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.compute.batch_keys import KeyedBatchStep
from datapipe_dagster.compute.bulk_write import COMMIT_MIN_ROWS, commit_all_new
from datapipe_dagster.compute.datatable import DataTable
from datapipe_dagster.compute.result import StepResult, failed_frame
from datapipe_dagster.compute.small_write import SmallWrite
from datapipe_dagster.compute.stale import InputRole, output_roles
from datapipe_dagster.compute.table_write import PreparedWrite, WriteResult
from datapipe_dagster.errors import SchemaError
from datapipe_dagster.frames import anti_join, columns_of
from datapipe_dagster.store.records import to_records

log = logging.getLogger("datapipe_dagster")


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


class CommittingStep(KeyedBatchStep):
    """A keyed BatchTransform step that commits chunks (see ``_commit``)."""

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
        advance: dict[str, int] | None = None,
    ) -> Commit:
        """Write a chunk's outputs and mark its keys as of ``read_seq``, in one transaction.

        ``keys`` are the chunk's keys; those in ``failed`` (key columns, ``error``, ``traceback``) are
        marked failed and keep their outputs, the others get ``outs`` and are marked processed.
        ``advance``: watermarks to raise in the same transaction (a full run of one chunk, whose keys
        are all this commit's: ``ChunkRunner.run_full``).

        The rule that keeps concurrent processors of this transform from losing an update: under the
        transform's commit lock, keys whose recorded state is newer than ``read_seq`` are left alone
        (outputs and state), so a commit never regresses a key's state nor overwrites outputs computed
        from newer inputs. A key whose inputs moved after ``read_seq`` is marked with ``read_seq``, so the
        newer rows keep it stale.
        """
        now = time.time()
        kc = self.key_cols
        failed = failed if failed is not None else self._no_failed()
        marks = dict(advance or {})
        with self.ds.meta_dbconn.begin_write() as conn:
            self.meta.lock(conn)
            newer = self.meta.newer_than(conn, columns_of(keys, kc), read_seq)
            if len(newer):
                keys = anti_join(keys, newer, kc)
                failed = anti_join(failed, newer, kc)
                outs = [self._drop_newer(dt, o, newer, len(keys)) for dt, o in zip(self.output_dts, outs, strict=True)]
            ok = anti_join(keys[kc], failed, kc) if len(failed) else columns_of(keys, kc).reset_index(drop=True)
            if len(ok):
                # Every read first and the state marked (under the transform's lock already), so the
                # write-sequence lock (taken by ``_clean_swept``, or else by the first output write) is
                # held only while writing.
                # Large outputs are first tried as all new, without reading their metadata (bulk_write).
                scopes = [self._cleanup_scope(conn, dt, ok) for dt in self.output_dts]
                bulk = self._all_new_skip <= 0 and any(len(df) >= COMMIT_MIN_ROWS for df in outs)
                prepared = [
                    None if bulk and len(df) >= COMMIT_MIN_ROWS else dt.prepare_write(conn, df, processed_idx=sc, now=now, validated=True)
                    for dt, df, sc in zip(self.output_dts, outs, scopes, strict=True)
                ]
                self.meta.mark(conn, ok, read_seq, now)
                # Every output's sequence numbers in one reservation, in output order (the numbers one
                # reservation per output would give); a bulk output reserves its own.
                counts = None if any(p is None for p in prepared) else [p.numbers for p in prepared]  # type: ignore[union-attr]
                total = sum(counts) if counts is not None else 0
                clean, first = self._clean_swept(conn, total)
                if counts is not None and first is None and total:
                    first = self.ds.seq.allocate(conn, total)
                firsts: list[int | None] = [None] * len(prepared)
                if counts is not None and first is not None:
                    firsts = [first + sum(counts[:i]) for i in range(len(counts))]
                stats = [
                    self._apply(conn, dt, df, sc, p, now, f)
                    for dt, df, sc, p, f in zip(self.output_dts, outs, scopes, prepared, firsts, strict=True)
                ]
                if clean:
                    # With one reservation the sequence's value is known: its last number.
                    top = first + total - 1 if counts is not None and first is not None else self.ds.seq.current(conn)
                    for m in clean:
                        marks[m] = max(marks.get(m, top), top)
            else:
                stats = [WriteResult.empty(dt.primary_keys) for dt in self.output_dts]
            for rec in to_records(failed):
                one = pd.DataFrame([{k: rec[k] for k in kc}])
                self.meta.mark(conn, one, read_seq, now, error=rec["error"], traceback=rec["traceback"])
            if marks:
                self.ds.watermarks.advance(conn, self.name, marks)
        for dt in self.output_dts:
            dt.maybe_analyze()
        self._statistics.grew(self.ds.meta_dbconn, len(keys), [self.meta.table])
        return Commit(processed=len(ok), superseded=len(newer), writes=stats, failed=failed)

    def _clean_swept(self, conn: sa.Connection, reserve: int = 0) -> tuple[list[str], int | None]:
        """The watermarks of swept outputs that this commit's writes may move past (see below), and the
        first of ``reserve`` sequence numbers reserved (None: nothing reserved, no swept output); takes
        the write-sequence lock (held to commit) when there are any.

        Every live row a commit writes to a swept output is under a key it marks processed in the same
        transaction, so it is no orphan, and the stale query need not scan it. A row between an output's
        watermark and this commit's first sequence number may be one (written by hand or by another
        writer): then that watermark stays for the stale query to look. The rows up to the sequence value
        read first are probed before the lock (with that value and the watermarks, one statement); those
        numbered between that read and the lock (another writer's, rare) under it, so the common commit
        reads nothing more while holding the lock.
        """
        if self.keyless or not self._swept_outputs():
            return [], None
        roles = output_roles(self._swept_outputs(), self.transform_keys)
        seen, dirty = self.ds.watermarks.probe_above(conn, self.name, {r.mark: r.dt.meta.table for r in roles})
        roles = [r for r in roles if r.mark not in dirty]
        # Every number at or below ``below`` was committed before the lock was granted; the numbers above it
        # are this commit's alone until it ends.
        first = self.ds.seq.allocate(conn, reserve)  # the first number it reserves, even of none
        below = first - 1
        if below > seen:
            roles = self._without_rows_between(conn, roles, dict.fromkeys([r.mark for r in roles], seen), below)
        return [r.mark for r in roles], first

    @staticmethod
    def _without_rows_between(
        conn: sa.Connection, roles: list[InputRole], low: dict[str, int], high: int
    ) -> list[InputRole]:
        """``roles`` whose table has no row numbered above its ``low`` and at most ``high`` (one statement)."""
        asked = [r for r in roles if low[r.mark] < high]
        if not asked:
            return roles
        probes = [
            sa.exists().where(r.dt.meta.table.c.seq > low[r.mark], r.dt.meta.table.c.seq <= high).label(f"p{i}")
            for i, r in enumerate(asked)
        ]
        found = conn.execute(sa.select(*probes)).one()
        dirty = {r.mark for r, hit in zip(asked, found, strict=True) if hit}
        return [r for r in roles if r.mark not in dirty]

    _no_failed_frame: pd.DataFrame | None = None

    def _no_failed(self) -> pd.DataFrame:
        """No failed keys: a copy of an empty frame built once (building one cost a tenth of a
        millisecond, on every commit)."""
        if self._no_failed_frame is None:
            self._no_failed_frame = pd.DataFrame(columns=self.key_cols + ["error", "traceback"])
        return self._no_failed_frame.copy(deep=False)

    _all_new_skip = 0
    """Chunks left before the all-new insert is tried again, after one failed (a re-run of known keys)."""

    def _apply(
        self,
        conn: sa.Connection,
        dt: DataTable,
        df: pd.DataFrame,
        scope: pd.DataFrame | None,
        prepared: PreparedWrite | SmallWrite | None,
        now: float,
        first: int | None = None,
    ) -> WriteResult:
        """Write one output: ``prepared`` (numbered from ``first`` when reserved), or (None) all new,
        falling back to reading its metadata."""
        if prepared is None:
            res = commit_all_new(dt, conn, df, scope, now)
            if res is not None:
                return res
            self._all_new_skip = 100
            prepared = dt.prepare_write(conn, df, processed_idx=scope, now=now, validated=True)
        self._all_new_skip -= 1
        return dt.apply_write(conn, prepared, first=first)

    def _cleanup_scope(self, conn: sa.Connection, dt: DataTable, ok: pd.DataFrame) -> pd.DataFrame | None:
        """The keys under which ``dt``'s rows not returned are deleted (None: ``cleanup=False``, none)."""
        if dt.name in self.no_cleanup:
            return None
        return columns_of(ok, self.transform_keys) if not self.keyless else dt.meta.get_metadata(conn)[dt.primary_keys]

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
