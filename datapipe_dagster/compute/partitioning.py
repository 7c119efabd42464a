"""Hash buckets of transform keys: a bounded, stable partitioning of a key space (no Dagster here).

A key's bucket depends only on the *text* of its values, so it is the same in every process, on every
backend, and whatever dtype (``int64``, ``Int64``, ``object``) the key column was read with.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd


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
    if n == 1:
        return np.zeros(len(keys_df), dtype=np.int64)
    as_text = pd.DataFrame({c: _as_text(keys_df[c]) for c in key_cols})
    # hash_pandas_object uses a fixed hash key by default, so the result is stable across processes.
    h = pd.util.hash_pandas_object(as_text, index=False).to_numpy(dtype=np.uint64)
    return (h % np.uint64(n)).astype(np.int64)


def _as_text(col: pd.Series) -> pd.Series:
    # Integers stored as floats (e.g. after a NaN-producing merge) must hash like the integers they are.
    if pd.api.types.is_float_dtype(col.dtype):
        vals = col.to_numpy(dtype="float64", na_value=np.nan)
        if np.all(np.isnan(vals) | (vals == np.floor(vals))):
            col = pd.Series(vals, index=col.index).astype("Int64")
    return col.astype("string").fillna("\x00null").astype(object)


def filter_buckets(
    keys_df: pd.DataFrame, key_cols: list[str], n: int, buckets: Iterable[int]
) -> pd.DataFrame:
    """The rows of ``keys_df`` whose key falls into one of ``buckets``."""
    wanted = np.fromiter(set(buckets), dtype=np.int64)
    if len(keys_df) == 0:
        return keys_df
    mask = np.isin(key_buckets(keys_df, key_cols, n), wanted)
    return keys_df.loc[mask].reset_index(drop=True)
