"""Small pandas helpers every layer shares: rows matched by key, and cells as plain Python values."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def _index(df: pd.DataFrame, keys: list[str]) -> pd.Index:
    return pd.Index(df[keys[0]]) if len(keys) == 1 else pd.MultiIndex.from_frame(df[keys])


def key_positions(table: pd.DataFrame, probe: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """For each row of ``probe``, the position of the row of ``table`` with the same ``keys`` (or -1).
    ``table``'s keys must be unique."""
    return _index(table, keys).get_indexer(_index(probe, keys))


def has_key(probe: pd.DataFrame, table: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """For each row of ``probe``, whether a row of ``table`` has the same ``keys`` (duplicates allowed)."""
    if len(table) == 0 or len(probe) == 0:
        return np.zeros(len(probe), dtype=bool)
    index = _index(table, keys)
    if not index.is_unique:
        index = index.unique()
    return index.get_indexer(_index(probe, keys)) >= 0


def anti_join(left: pd.DataFrame, right: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The rows of ``left`` (all its columns, index reset) whose ``keys`` do not occur in ``right``."""
    return left.loc[~has_key(left, right, keys)].reset_index(drop=True)


def plain(v: Any) -> Any:
    """A cell as a user wrote it: numpy scalars as Python values, NaN / NA / NaT as None."""
    if isinstance(v, np.generic) or (hasattr(v, "item") and callable(v.item)):
        try:
            v = v.item()
        except (ValueError, TypeError):
            pass
    try:
        if v != v:  # NaN, NaT
            return None
    except (TypeError, ValueError):
        pass
    return None if v is not None and type(v).__name__ in ("NAType", "NaTType") else v
