"""Hash buckets of transform keys: a bounded, stable partitioning of a key space (no Dagster here).

A key's hash (``key_hash``) depends only on the *text* of its values, so it is the same in every
process, on every backend, and whatever dtype (``int64``, ``Int64``, ``object``) the key column was read
with. Buckets are contiguous *ranges* of that hash (``bucket_range``), not residues: the transform state
stores each key's hash in an indexed column, so the keys of one bucket are an index range scan whose
cost follows the bucket, not the key space. ``key_buckets`` is the one function that decides a key's
bucket. ``Buckets`` names N buckets as partition keys (``00``…) and groups them into runs; the Dagster
adapter only turns those names into a partitions definition.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from datapipe_dagster.errors import ConfigurationError
from datapipe_dagster.meta.keyhash import HASH_SPACE, key_hash

__all__ = [
    "HASH_SPACE",
    "Buckets",
    "bucket_range",
    "bucket_ranges",
    "filter_buckets",
    "hash_buckets",
    "key_buckets",
    "key_hash",
]


def bucket_range(bucket: int, n: int) -> tuple[int, int]:
    """The half-open hash range ``[lo, hi)`` of ``bucket`` among ``n``: ``key_buckets`` puts a key in
    ``bucket`` exactly when its ``key_hash`` lies in this range."""
    if not 0 <= bucket < n:
        raise ValueError(f"bucket must be in 0..{n - 1}, got {bucket}")
    return -(-bucket * HASH_SPACE // n), -(-(bucket + 1) * HASH_SPACE // n)


def bucket_ranges(buckets: Iterable[int], n: int) -> list[tuple[int, int]]:
    """Hash ranges covering ``buckets``, adjacent buckets merged into one range (sorted, disjoint)."""
    out: list[tuple[int, int]] = []
    for b in sorted(set(buckets)):
        lo, hi = bucket_range(b, n)
        if out and out[-1][1] == lo:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def key_buckets(keys_df: pd.DataFrame, key_cols: list[str], n: int) -> np.ndarray:
    """The bucket (``0 <= b < n``) of each row of ``keys_df``, by a stable hash of its key columns.

    Args:
        keys_df: rows holding at least ``key_cols``.
        key_cols: the key columns to hash (order matters).
        n: number of buckets (>= 1).

    Returns:
        An ``int64`` array aligned with the rows of ``keys_df``.
    """
    if n < 1:
        raise ValueError(f"number of buckets must be >= 1, got {n}")
    if len(keys_df) == 0:
        return np.zeros(0, dtype=np.int64)
    return hash_buckets(key_hash(keys_df, key_cols), n)


def hash_buckets(hashes: np.ndarray, n: int) -> np.ndarray:
    """The bucket of each key hash: ``floor(h * n / HASH_SPACE)`` (a range of hashes per bucket)."""
    return ((np.asarray(hashes, dtype=np.int64) * np.int64(n)) >> np.int64(31)).astype(np.int64)


def filter_buckets(
    keys_df: pd.DataFrame, key_cols: list[str], n: int, buckets: Iterable[int]
) -> pd.DataFrame:
    """The rows of ``keys_df`` whose key falls into one of ``buckets``."""
    wanted = np.fromiter(set(buckets), dtype=np.int64)
    if len(keys_df) == 0:
        return keys_df
    mask = np.isin(key_buckets(keys_df, key_cols, n), wanted)
    return keys_df.loc[mask].reset_index(drop=True)


class Buckets:
    """N hash buckets of transform keys, named as partition keys.

    Naming rule: partition keys are the bucket numbers ``0 … N-1``, zero-padded to at least two digits
    (more only when N-1 has more): ``00``…``03`` for N=4, ``00``…``15`` for N=16, ``000``…``127`` for
    N=128. Partition ``"07"`` holds every transform key whose ``key_hash`` lies in ``bucket_range(7, N)``.
    Every key of one set has the same width, so the order given is also the text order, which keeps
    partition ranges (``"00"…"15"``) meaningful.

    Args:
        n: number of buckets (1 … 10,000: an orchestrator slows down past tens of thousands of
            partitions, and every partition in a run costs tens of milliseconds of bookkeeping).
        max_per_run: runs cover at most this many partitions (None: one run per contiguous range).
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

    def counts(self, keys_df: pd.DataFrame, key_cols: list[str]) -> dict[str, int]:
        """How many rows of ``keys_df`` fall in each partition (partitions holding none are left out)."""
        if len(keys_df) == 0:
            return {}
        found, n = np.unique(key_buckets(keys_df, key_cols, self.n), return_counts=True)
        return {self.keys[int(b)]: int(c) for b, c in zip(found, n, strict=True)}

    def contiguous_ranges(self, partition_keys: Sequence[str], max_len: int | None = None) -> list[tuple[str, str]]:
        """``partition_keys`` grouped into maximal runs of consecutive buckets, as (first, last) pairs.

        A run can cover several partitions only when they form a contiguous range, so a tick requests
        one run per range: exactly the partitions holding stale keys, in as few runs as possible.
        ``max_len`` (default: ``max_per_run``): no range holds more than this many partitions, so a run
        launcher can spread the runs.
        """
        max_len = max_len if max_len is not None else self.max_per_run
        buckets = sorted({self.bucket_of(p) for p in partition_keys})
        ranges: list[tuple[int, int]] = []
        for b in buckets:
            if ranges and ranges[-1][1] == b - 1 and (max_len is None or b - ranges[-1][0] < max_len):
                ranges[-1] = (ranges[-1][0], b)
            else:
                ranges.append((b, b))
        return [(self.key_of(a), self.key_of(z)) for a, z in ranges]

    def expand(self, first: str, last: str) -> list[str]:
        """Every partition key from ``first`` to ``last`` (a run's range)."""
        return [self.key_of(i) for i in range(self.bucket_of(first), self.bucket_of(last) + 1)]
