"""The stable hash of a transform key, stored with the transform state (``key_hash`` column).

``compute.partitioning`` maps hash ranges to buckets; this module only hashes, so the metadata tables can
stamp every key's hash as they record its state.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from datapipe_dagster.store.rowhash import combine_hashes

HASH_SPACE = 2**31
"""Key hashes lie in ``[0, HASH_SPACE)``: they fit a signed 32-bit column on every backend."""


def key_hash(keys_df: pd.DataFrame, key_cols: list[str]) -> np.ndarray:
    """The stable hash (``0 <= h < HASH_SPACE``, ``int64``) of each row's key columns.

    Depends only on the text of the values, so it is the same in every process, on every backend, and
    whatever dtype (``int64``, ``Int64``, ``object``, integral floats) a key column was read with.
    """
    if len(keys_df) == 0:
        return np.zeros(0, dtype=np.int64)
    texts = [_plain_texts(keys_df[c]) for c in key_cols]
    if all(t is not None for t in texts):
        # The texts hashed column by column and combined as ``hash_pandas_object`` combines a frame's
        # columns (the same values; ``tests/test_rowhash.py`` pins it): no frame for a few keys.
        h = combine_hashes([pd.util.hash_array(_objects(t)) for t in texts])  # type: ignore[arg-type]
        return (h >> np.uint64(33)).astype(np.int64)
    as_text = pd.DataFrame({c: _as_text(keys_df[c]) for c in key_cols})
    # hash_pandas_object uses a fixed hash key by default, so the result is stable across processes.
    h = pd.util.hash_pandas_object(as_text, index=False).to_numpy(dtype=np.uint64)
    return (h >> np.uint64(33)).astype(np.int64)


def _objects(values: list[str]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _plain_texts(col: pd.Series) -> list[str] | None:
    """``_as_text(col)``'s values when they are plain: the strings of a text column without missing
    values, or the decimal digits of a plain integer column; None otherwise (``_as_text`` then)."""
    if col.dtype == np.int64:
        return [str(v) for v in col.tolist()]
    if isinstance(col.dtype, pd.StringDtype) or col.dtype == object:
        values = col.tolist()
        if all(type(v) is str for v in values):
            return values
    return None


def _as_text(col: pd.Series) -> pd.Series:
    # Integers stored as floats (e.g. after a NaN-producing merge) must hash like the integers they are.
    if pd.api.types.is_float_dtype(col.dtype):
        vals = col.to_numpy(dtype="float64", na_value=np.nan)
        if np.all(np.isnan(vals) | (vals == np.floor(vals))):
            col = pd.Series(vals, index=col.index).astype("Int64")
    return col.astype("string").fillna("\x00null").astype(object)
