"""The keys of a run spread over partition steps, found once (``meta.plan``) and read bucket by bucket.

A fanned-out run (one step per partition, ``datapipe_dagster.dagster.fanout``) plans first: one stale-key
query for the whole run, its keys stored under the run's plan id. Each partition step then reads its
bucket's keys from the plan (an index range), processes them and forgets them; the run's last step drops
what is left. In reparse mode a partition's keys are the keys the transform state records in its hash
range (an index range too) plus the planned stale keys of its bucket (new keys the state has not seen).

What the plan does not hold is not lost: the planning query moves the watermarks only past rows no key
needs any more, so a key that turns stale after planning (or whose plan rows are gone) is found by the
next stale-key query, the next sensor tick's.
"""

from __future__ import annotations

import time

import pandas as pd

from datapipe_dagster.compute.batch_keys import KeyedBatchStep
from datapipe_dagster.compute.partition_runner import REPARSE, STALE, partitioned_by
from datapipe_dagster.compute.partitioning import Buckets, bucket_ranges
from datapipe_dagster.compute.steps import KeyedStep
from datapipe_dagster.meta.plan import STALE_AFTER, PlanTable
from datapipe_dagster.store.paged import PAGE_ROWS


class RunPlan:
    """Plans of one partitioned batch step: ``make`` once per run, ``keys``/``done`` per partition, ``drop``."""

    def __init__(self, step: KeyedBatchStep, buckets: Buckets):
        self.step = step
        self.buckets = buckets
        self._table: PlanTable | None = None

    @staticmethod
    def of(step: KeyedStep, buckets: Buckets | None) -> RunPlan | None:
        """The plans of ``step`` when it can have them (a batch step partitioned by ``buckets``), else None."""
        parts = partitioned_by(step, buckets)
        if parts is None or not isinstance(step, KeyedBatchStep):
            return None
        return RunPlan(step, parts)

    @property
    def table(self) -> PlanTable:
        if self._table is None:
            table = PlanTable(self.step.ds.meta_dbconn, self.step.name, self.step.key_schema())
            table.create()
            self._table = table
        return self._table

    def _ranges(self, partitions: list[str]) -> list[tuple[int, int]]:
        return bucket_ranges([self.buckets.bucket_of(p) for p in partitions], self.buckets.n)

    def make(self, plan_id: str, mode: str, partitions: list[str], retry_failed: bool = False) -> dict[str, int]:
        """Find the run's stale keys once and store those of ``partitions`` under ``plan_id``.

        ``STALE``: the stale keys (failed ones only when an input changed, or ``retry_failed``), the
        watermarks advanced as a partition step's query would. ``REPARSE``: the stale keys, watermarks
        untouched (a partition adds the keys its state records). Returns the number planned per partition.
        A planning step run again (a retry) replaces its plan; plans older than ``STALE_AFTER`` are swept.
        """
        if mode not in (STALE, REPARSE):
            raise ValueError(f"unknown run mode {mode!r}")
        if mode == STALE:
            stale = self.step.get_stale_keys(include_failed=retry_failed)
        else:
            stale = self.step.get_stale_keys(advance_watermark=False)
        tk = list(self.step.transform_keys)
        keys = self.buckets.select(stale[tk].drop_duplicates(), tk, partitions)
        table = self.table
        with self.step.ds.meta_dbconn.begin_write() as conn:
            table.sweep(conn, time.time() - STALE_AFTER)
            table.delete(conn, plan_id)
        # A page per transaction: a first run's million keys do not hold SQLite's write lock for long.
        for start in range(0, len(keys), PAGE_ROWS):
            with self.step.ds.meta_dbconn.begin_write() as conn:
                table.write(conn, plan_id, keys.iloc[start : start + PAGE_ROWS])
        return self.buckets.counts(keys, tk)

    def keys(self, plan_id: str, mode: str, partition: str) -> pd.DataFrame:
        """The keys partition ``partition`` of the run processes: its planned keys, and in ``REPARSE`` mode
        every key its hash range holds in the transform state."""
        ranges = self._ranges([partition])
        frames: list[pd.DataFrame] = []
        with self.step.ds.meta_dbconn.connect() as conn:
            frames.extend(self.table.pages(conn, plan_id, ranges))
            if mode == REPARSE:
                frames.append(self.step.meta.keys_in_hash_ranges(conn, ranges))
        frames = [f for f in frames if len(f)]
        both = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({k: [] for k in self.step.key_cols})
        return self.step._typed(both.drop_duplicates())

    def done(self, plan_id: str, partition: str) -> None:
        """Forget the planned keys of ``partition`` (it processed them)."""
        with self.step.ds.meta_dbconn.begin_write() as conn:
            self.table.delete(conn, plan_id, self._ranges([partition]))

    def drop(self, plan_id: str) -> None:
        """Forget the whole plan (the run's last step)."""
        with self.step.ds.meta_dbconn.begin_write() as conn:
            self.table.delete(conn, plan_id)
