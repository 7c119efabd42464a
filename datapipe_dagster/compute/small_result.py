"""The result of a small write (``compute.small_write``): a ``WriteResult`` whose key frames are built
from the written frame's columns only when asked for. A run counts them and concatenates them; a pandas
frame costs about as much to build as the whole comparison of one row, and most parts are empty."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from datapipe_dagster.compute.table_write import WriteResult


def _keys_frame(df: pd.DataFrame, pks: list[str], rows: list[int]) -> pd.DataFrame:
    """The key columns of ``rows`` of ``df``, index reset, dtypes kept (the frame path's
    ``df.loc[mask, pks].reset_index(drop=True)``), built from the columns' arrays: the frame path's
    label indexing costs several times more for one row. No rows: a copy of a template built once."""
    if not rows:
        return _no_rows(df, pks).copy()
    if len(rows) == len(df):
        return pd.DataFrame({k: df[k].array for k in pks})
    at = np.asarray(rows, dtype=np.intp)
    return pd.DataFrame({k: df[k].array.take(at) for k in pks})


_NO_ROWS: dict[tuple[Any, ...], pd.DataFrame] = {}


def _no_rows(df: pd.DataFrame, pks: list[str]) -> pd.DataFrame:
    """No rows of ``df``'s key columns (a shared template: never hand it out without copying)."""
    sig = (*pks, *(df[k].dtype for k in pks))
    empty = _NO_ROWS.get(sig)
    if empty is None:
        empty = _NO_ROWS[sig] = pd.DataFrame({k: df[k].array[:0] for k in pks})
    return empty


class SmallResult(WriteResult):
    """A ``WriteResult`` whose key frames are built when first asked for: a run only counts them and
    concatenates them (``changed_idx``), which needs no frame for an empty part."""

    def __init__(self, df: pd.DataFrame, pks: list[str], new: list[int], changed: list[int], deleted: pd.DataFrame):
        self._df, self._pks, self._new, self._changed, self._deleted = df, pks, new, changed, deleted
        self._built: dict[str, pd.DataFrame] = {}
        self.unchanged = len(df) - len(new) - len(changed)

    def _part(self, name: str, rows: list[int]) -> pd.DataFrame:
        if name not in self._built:
            self._built[name] = _keys_frame(self._df, self._pks, rows)
        return self._built[name]

    @property
    def inserted(self) -> pd.DataFrame:
        return self._part("inserted", self._new)

    @property
    def updated(self) -> pd.DataFrame:
        return self._part("updated", self._changed)

    @property
    def deleted(self) -> pd.DataFrame:
        return self._deleted

    def counts(self) -> tuple[int, int, int]:
        return len(self._new), len(self._changed), len(self._deleted)

    def changed_idx(self) -> pd.DataFrame:
        # An empty part enters the concatenation as the shared template: concat copies, never mutates.
        ins = self._part("inserted", self._new) if self._new else _no_rows(self._df, self._pks)
        upd = self._part("updated", self._changed) if self._changed else _no_rows(self._df, self._pks)
        return pd.concat([ins, upd, self._deleted], ignore_index=True)
