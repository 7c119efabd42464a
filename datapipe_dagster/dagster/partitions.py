"""Hash-bucket partitions: a bounded number of Dagster partitions over a transform's key space.

Naming rule: partition keys are the bucket numbers ``0 … N-1``, zero-padded to at least two digits (more
only when N-1 has more): ``00``…``03`` for N=4, ``00``…``15`` for N=16, ``000``…``127`` for N=128.
Partition ``"07"`` holds every transform key whose stable hash (``compute.partitioning.key_buckets``) is
7 modulo N. Every key of one definition has the same width, so Dagster's order (the order given) is also
the text order, which keeps partition ranges (``"00"…"15"``) meaningful.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import dagster as dg
import pandas as pd

from datapipe_dagster.compute.partitioning import filter_buckets, key_buckets
from datapipe_dagster.errors import ConfigurationError


class BucketPartitions:
    """N hash buckets of transform keys and the Dagster partitions definition naming them.

    Args:
        max_per_run: runs cover at most this many partitions (backfills: ``BackfillPolicy.multi_run``;
            sensor requests: ranges cut to this length). None: one run per contiguous range.
        n: number of buckets (1 … 10,000; Dagster slows down past tens of thousands of partitions, and
            every partition in a run costs tens of milliseconds of event-log writes). Keys are named
            ``00``…, as the module docstring says.
    """

    MAX = 10_000
    MIN_WIDTH = 2
    """Partition keys have at least this many digits, whatever N (``00``, not ``0``)."""

    def __init__(self, n: int, max_per_run: int | None = None):
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= self.MAX:
            raise ConfigurationError(f"partitions must be an int between 1 and {self.MAX}, got {n!r}")
        if max_per_run is not None and (
            not isinstance(max_per_run, int) or isinstance(max_per_run, bool) or max_per_run < 1
        ):
            raise ConfigurationError(f"max_partitions_per_run must be an int >= 1 or None, got {max_per_run!r}")
        self.n = n
        self.max_per_run = max_per_run
        self.width = max(self.MIN_WIDTH, len(str(n - 1)))
        self.keys = [self.key_of(b) for b in range(n)]
        self.definition = dg.StaticPartitionsDefinition(self.keys)

    def backfill_policy(self) -> dg.BackfillPolicy:
        """One run per backfill, or runs of at most ``max_per_run`` partitions."""
        if self.max_per_run is None:
            return dg.BackfillPolicy.single_run()
        return dg.BackfillPolicy.multi_run(self.max_per_run)

    def key_of(self, bucket: int) -> str:
        """The partition key of a bucket number."""
        return f"{bucket:0{self.width}d}"

    def bucket_of(self, partition_key: str) -> int:
        """The bucket number of a partition key; raises ConfigurationError for an unknown key."""
        try:
            b = int(partition_key)
        except ValueError:
            b = -1
        if not 0 <= b < self.n or self.key_of(b) != partition_key:
            raise ConfigurationError(
                f"unknown partition {partition_key!r}; partitions are {self.keys[0]}…{self.keys[-1]}"
            )
        return b

    def buckets(self, keys_df: pd.DataFrame, key_cols: list[str]) -> pd.Series:
        """The partition key of every row of ``keys_df``."""
        return pd.Series(
            [self.keys[b] for b in key_buckets(keys_df, key_cols, self.n)], index=keys_df.index, dtype=object
        )

    def select(
        self, keys_df: pd.DataFrame, key_cols: list[str], partition_keys: Iterable[str]
    ) -> pd.DataFrame:
        """The rows of ``keys_df`` whose key falls in one of ``partition_keys``."""
        wanted = [self.bucket_of(p) for p in partition_keys]
        if len(wanted) == self.n:
            return keys_df.reset_index(drop=True)
        return filter_buckets(keys_df, key_cols, self.n, wanted)

    def stale_partitions(self, keys_df: pd.DataFrame, key_cols: list[str]) -> list[str]:
        """Sorted partition keys holding at least one row of ``keys_df``."""
        if len(keys_df) == 0:
            return []
        return [self.keys[b] for b in sorted(set(key_buckets(keys_df, key_cols, self.n).tolist()))]

    def contiguous_ranges(self, partition_keys: Sequence[str], max_len: int | None = None) -> list[tuple[str, str]]:
        """``partition_keys`` grouped into maximal runs of consecutive buckets, as (first, last) pairs.

        A Dagster run can cover several partitions only when they form a contiguous range, so a tick
        requests one run per range: exactly the partitions holding stale keys, in as few runs as possible.
        ``max_len`` (default: ``max_per_run``): no range holds more than this many partitions, so a run
        launcher can spread the runs.
        """
        max_len = max_len if max_len is not None else self.max_per_run
        buckets = sorted({self.bucket_of(p) for p in partition_keys})
        ranges: list[tuple[str, str]] = []
        for b in buckets:
            first = self.bucket_of(ranges[-1][0]) if ranges else 0
            full = max_len is not None and ranges and b - first >= max_len
            if ranges and self.bucket_of(ranges[-1][1]) == b - 1 and not full:
                ranges[-1] = (ranges[-1][0], self.key_of(b))
            else:
                ranges.append((self.key_of(b), self.key_of(b)))
        return ranges
