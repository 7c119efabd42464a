"""Small pandas helpers every layer shares: rows matched by key, and cells as plain Python values."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def columns_of(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """``df[cols]``; when ``df`` has exactly those columns, a shallow copy instead (the same frame under
    copy-on-write, without the ~0.2 ms of a list lookup, which one-key runs pay a dozen times)."""
    return df.copy(deep=False) if list(df.columns) == cols else df[cols]


def isna_mask(s: pd.Series) -> np.ndarray:
    """``s.isna().to_numpy()``, asked of the column's array: the Series pandas wraps around the mask costs
    four times the test itself on a few rows, and the write path of one row asks it a dozen times."""
    return np.asarray(s.array.isna(), dtype=bool)


def _index(df: pd.DataFrame, keys: list[str]) -> pd.Index:
    return pd.Index(df[keys[0]]) if len(keys) == 1 else pd.MultiIndex.from_frame(df[keys])


class KeyLookup:
    """Positions of keys among the unique ``keys`` rows of ``table``, for many probes (``compute.key_scan``
    matches a whole table's rows against a run's keys, 20,000 rows at a time).

    The table's keys are held as one 64-bit hash each (of the values as Python objects, so a typed column
    and the driver's values hash alike), sorted, and found by binary search: 16 bytes a key, where an
    index of the values themselves took about 140 MB for 1M string keys. A hash match is confirmed against
    the key's values, and tables whose keys' hashes collide are looked up by value.
    """

    _STEP = 100_000

    def __init__(self, table: pd.DataFrame, keys: list[str]):
        self.keys = keys
        self.table = table[keys].reset_index(drop=True)
        parts = [_object_hashes(self.table.iloc[i : i + self._STEP], keys) for i in range(0, len(table), self._STEP)]
        hashes = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        self.order = np.argsort(hashes, kind="stable")
        self.sorted = hashes[self.order]
        collide = bool((self.sorted[1:] == self.sorted[:-1]).any())
        self.exact = _index(self.table.astype(object), keys) if collide else None

    def positions(self, probe: pd.DataFrame) -> np.ndarray:
        """For each row of ``probe``, the position of its key in ``table`` (or -1)."""
        if self.exact is not None:
            return self.exact.get_indexer(_index(probe[self.keys].astype(object), self.keys))
        if not len(self.sorted):
            return np.full(len(probe), -1, dtype=np.intp)
        wanted = _object_hashes(probe, self.keys)
        at = np.minimum(np.searchsorted(self.sorted, wanted), len(self.sorted) - 1)
        pos = np.where(self.sorted[at] == wanted, self.order[at], -1).astype(np.intp)
        found = np.flatnonzero(pos >= 0)
        for k in self.keys:  # a hash match is a key match only if the values are equal
            mine = self.table[k].iloc[pos[found]].astype(object).to_numpy()
            theirs = probe[k].iloc[found].astype(object).to_numpy()
            differ = mine != theirs
            if differ.any():
                pos[found[differ]] = -1
        return pos


def _object_hashes(df: pd.DataFrame, keys: list[str]) -> np.ndarray:
    return pd.util.hash_pandas_object(df[keys].astype(object), index=False, categorize=False).to_numpy()


def key_positions(table: pd.DataFrame, probe: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """For each row of ``probe``, the position of the row of ``table`` with the same ``keys`` (or -1).
    ``table``'s keys must be unique."""
    if len(keys) > 1 and not any(f[c].hasnans for f in (table, probe) for c in keys):
        # A dict of key tuples: building a MultiIndex costs ~7x more (a chunk of 1,000 two-column keys:
        # 4 ms vs 0.6 ms). Missing values keep pandas' matching (NaN equals NaN there, not in a dict).
        at = {k: i for i, k in enumerate(zip(*[table[c].tolist() for c in keys], strict=True))}
        probes = zip(*[probe[c].tolist() for c in keys], strict=True)
        return np.fromiter((at.get(k, -1) for k in probes), dtype=np.intp, count=len(probe))
    return _index(table, keys).get_indexer(_index(probe, keys))


def has_key(probe: pd.DataFrame, table: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """For each row of ``probe``, whether a row of ``table`` has the same ``keys`` (duplicates allowed)."""
    if len(table) == 0 or len(probe) == 0:
        return np.zeros(len(probe), dtype=bool)
    index = _index(table, keys)
    if not index.is_unique:
        index = index.unique()
    return index.get_indexer(_index(probe, keys)) >= 0


def all_called(df: pd.DataFrame, keys: pd.DataFrame, cols: list[str]) -> bool:
    """Whether every row of ``df`` has the ``cols`` of some row of ``keys``, by plain equality of the
    values (a quick yes for small frames; a no is only "not shown", so callers then take the pandas path)."""
    allowed = set(zip(*[keys[c].tolist() for c in cols], strict=True))
    return all(k in allowed for k in zip(*[df[c].tolist() for c in cols], strict=True))


def unique_keys(keys: pd.DataFrame) -> pd.DataFrame:
    """``keys.drop_duplicates().reset_index(drop=True)``; a few keys without duplicates (one changed key)
    are checked as tuples and only get their index reset."""
    if len(keys) <= 64 and not any(keys[c].hasnans for c in keys.columns):
        rows = list(zip(*[keys[c].tolist() for c in keys.columns], strict=True))
        if len(set(rows)) == len(rows):
            return keys.reset_index(drop=True)
    return keys.drop_duplicates().reset_index(drop=True)


def first_duplicate(df: pd.DataFrame, cols: list[str]) -> int | None:
    """The position of the first row whose ``cols`` an earlier row holds (no missing values in them), or
    None. A few rows are compared as tuples: pandas' ``duplicated`` costs more than the rest of a one-row
    validation."""
    if len(df) < 2:
        return None
    if len(df) <= 64:
        seen: set[tuple[Any, ...]] = set()
        for pos, k in enumerate(zip(*[df[c].tolist() for c in cols], strict=True)):
            if k in seen:
                return pos
            seen.add(k)
        return None
    dup = df.duplicated(subset=cols).to_numpy()
    return int(np.flatnonzero(dup)[0]) if dup.any() else None


def key_order(df: pd.DataFrame, cols: list[str]) -> np.ndarray | None:
    """The positions that put the rows of ``df`` in ascending order of ``cols`` (ties keep frame order),
    or None when the rows already are in that order. Arrow-backed columns are sorted by pyarrow (about 3x
    pandas' multi-column sort on strings); others by pandas."""
    if len(df) < 2:
        return None
    arrays = [df[c].array for c in cols]
    if all(isinstance(a.dtype, pd.ArrowDtype) or getattr(a.dtype, "storage", None) == "pyarrow" for a in arrays):
        import pyarrow as pa
        import pyarrow.compute as pc

        table = pa.table({str(i): pa.array(a) for i, a in enumerate(arrays)})
        order = pc.sort_indices(table, sort_keys=[(str(i), "ascending") for i in range(len(cols))]).to_numpy()
    else:
        order = df[cols].reset_index(drop=True).sort_values(cols, kind="stable").index.to_numpy()
    order = np.asarray(order, dtype=np.int64)
    return None if bool((order[1:] > order[:-1]).all()) else order


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
