"""Hash-bucket partitions as Dagster sees them: a ``StaticPartitionsDefinition`` and a backfill policy.

The buckets themselves (naming, which key falls where, ranges) are the engine's
``compute.partitioning.Buckets``; this module only adds the Dagster objects.
"""

from __future__ import annotations

import dagster as dg

from datapipe_dagster.compute.partitioning import Buckets


class BucketPartitions(Buckets):
    """``Buckets`` plus the Dagster partitions definition naming them and the backfill policy.

    Args:
        n: number of buckets (see ``Buckets``).
        max_per_run: runs cover at most this many partitions (backfills: ``BackfillPolicy.multi_run``;
            sensor requests: ranges cut to this length). None: one run per contiguous range.
    """

    def __init__(self, n: int, max_per_run: int | None = None):
        super().__init__(n, max_per_run)
        self.definition = dg.StaticPartitionsDefinition(self.keys)

    def backfill_policy(self) -> dg.BackfillPolicy:
        """One run per backfill, or runs of at most ``max_per_run`` partitions."""
        if self.max_per_run is None:
            return dg.BackfillPolicy.single_run()
        return dg.BackfillPolicy.multi_run(self.max_per_run)
