"""Running a keyed step partition by partition, and the one answer to "what is stale, by partition".

``stale_by_partition`` is what the sensors, the automation condition, the CLI and the runner ask; the
``PartitionRunner`` processes a run's keys (stale ones, or every key of a reparse) one partition after the
other, so each partition gets its own outcome. Nothing here knows Dagster: partitions are the names
``compute.partitioning.Buckets`` gives its buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from datapipe_dagster.compute.partitioning import Buckets
from datapipe_dagster.compute.result import StepResult
from datapipe_dagster.compute.steps import KeyedStep, PartitionKeyedStep

STALE = "stale"
"""Run mode: process only the stale keys of the selected partitions."""
REPARSE = "reparse"
"""Run mode: recompute every key of the selected partitions and clean their old outputs."""
WHOLE = "*"
"""The one "partition" of an unpartitioned step."""


@dataclass(frozen=True)
class StalePartitions:
    """The stale keys of a step and how many fall in each partition."""

    keys: pd.DataFrame
    """The stale keys (the step's ``key_cols``)."""
    counts: dict[str, int]
    """Partition key -> number of stale keys in it, partitions without any left out (``WHOLE`` for an
    unpartitioned step)."""
    partitioned: bool

    @property
    def total(self) -> int:
        return len(self.keys)

    @property
    def partitions(self) -> list[str]:
        """The partitions holding stale keys, sorted (``[WHOLE]`` or ``[]`` for an unpartitioned step)."""
        return sorted(self.counts)


def partitioned_by(step: KeyedStep, buckets: Buckets | None) -> Buckets | None:
    """``buckets`` when ``step`` is partitioned by them (it has transform keys), else None."""
    return buckets if buckets is not None and step.transform_keys else None


def stale_by_partition(
    step: KeyedStep,
    buckets: Buckets | None,
    *,
    include_failed: bool = False,
    advance_watermark: bool = True,
) -> StalePartitions:
    """Which partitions of ``step`` hold stale keys, and how many.

    Args:
        buckets: the pipeline's hash buckets (None, or a step without transform keys: one ``WHOLE``).
        include_failed: count failed keys whose inputs did not change since they failed (a changed
            function retries them); otherwise a failed key counts only when an input row of it changed.
        advance_watermark: let the stale-key query move its watermarks past rows no key needs any more
            (cheaper next time); False for a read that must not write (a check from another process).
    """
    keys = step.get_stale_keys(advance_watermark=advance_watermark, include_failed=include_failed)
    parts = partitioned_by(step, buckets)
    if parts is None:
        return StalePartitions(keys, {WHOLE: len(keys)} if len(keys) else {}, partitioned=False)
    return StalePartitions(keys, parts.counts(keys, list(step.transform_keys)), partitioned=True)


@dataclass
class PartitionOutcome:
    """What a run did in one partition (``partition`` None: the whole unpartitioned step)."""

    partition: str | None
    result: StepResult
    stale_remaining: int


class PartitionRunner:
    """Runs a keyed step (``get_stale_keys`` / ``get_all_keys`` / ``process_keys``) over partitions.

    Args:
        buckets: the pipeline's hash buckets; None (or a step without transform keys) runs it whole.
    """

    def __init__(self, step: KeyedStep, buckets: Buckets | None):
        self.step = step
        self.parts = partitioned_by(step, buckets)

    @property
    def key_cols(self) -> list[str]:
        return list(self.step.key_cols)

    @property
    def transform_keys(self) -> list[str]:
        return list(self.step.transform_keys or ())

    def keys_for(self, mode: str, partitions: list[str] | None, retry_failed: bool = False) -> pd.DataFrame:
        """The keys a run processes: stale keys (``STALE``), or every key (``REPARSE``), of ``partitions``.

        In stale mode a failed key is included only when an input row of it changed since its failed
        attempt, or when ``retry_failed`` (the step's code changed).
        """
        if mode == STALE:
            keys = self.step.get_stale_keys(include_failed=retry_failed)
        elif self.parts is not None and partitions is not None and isinstance(self.step, PartitionKeyedStep):
            # A reparse reads only its partitions' hash ranges from the state's index (no key-space scan).
            return self.step.get_partition_keys(self.parts.n, [self.parts.bucket_of(p) for p in partitions])
        else:
            keys = self.step.get_all_keys()
        if self.parts is None or partitions is None:
            return keys
        return self.parts.select(keys, self.transform_keys, partitions)

    def run(self, mode: str, partitions: list[str] | None, retry_failed: bool = False) -> list[PartitionOutcome]:
        """Process the run's keys, one partition after the other, and report each partition's outcome."""
        keys = self.keys_for(mode, partitions, retry_failed)
        if self.parts is None or partitions is None:
            result = self.step.process_keys(keys)
            left = stale_by_partition(self.step, None)
            return [PartitionOutcome(None, result, left.total)]
        of_key = self.parts.buckets(keys, self.transform_keys)
        results = {p: self.step.process_keys(keys.loc[of_key == p].reset_index(drop=True)) for p in partitions}
        # Advancing the watermarks here (only past rows no key needs any more) spares the next sensor
        # tick from rescanning what this run just processed.
        left = stale_by_partition(self.step, self.parts)
        return [PartitionOutcome(p, results[p], left.counts.get(p, 0)) for p in partitions]
