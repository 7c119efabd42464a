"""Hash buckets of transform keys: a bounded, stable partitioning of a key space (no Dagster here).

A key's hash (``key_hash``) depends only on the *text* of its values, so it is the same in every
process, on every backend, and whatever dtype (``int64``, ``Int64``, ``object``) the key column was read
with. Buckets are contiguous *ranges* of that hash (``bucket_range``), not residues: the transform state
stores each key's hash in an indexed column, so the keys of one bucket are an index range scan whose
cost follows the bucket, not the key space. ``key_buckets`` is the one function that decides a key's
bucket; the Dagster adapter only names the buckets.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from datapipe_dagster.meta.keyhash import HASH_SPACE, key_hash

__all__ = ["HASH_SPACE", "bucket_range", "bucket_ranges", "filter_buckets", "hash_buckets", "key_buckets", "key_hash"]


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
