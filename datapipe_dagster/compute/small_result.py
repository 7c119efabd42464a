"""The result of a small write (``compute.small_write``): a ``WriteResult`` whose key frames are built
from the written frame's columns only when asked for. A run counts them and concatenates them; a pandas
frame costs about as much to build as the whole comparison of one row, and most parts are empty."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from datapipe_dagster.compute.table_write import WriteResult


def _keys_frame(df: pd.DataFrame, pks: list[str], rows: list[int], dtypes: list[Any] | None = None) -> pd.DataFrame:
    """The key columns of ``rows`` of ``df``, index reset, dtypes kept (the frame path's
    ``df.loc[mask, pks].reset_index(drop=True)``) or cast to ``dtypes``, built from the columns' arrays:
    the frame path's label indexing costs several times more for one row. No rows, dtypes kept: a copy
    of a template built once."""
    if not rows and dtypes is None:
        return _no_rows(df, pks).copy()
    at = None if len(rows) == len(df) and rows == list(range(len(df))) else np.asarray(rows, dtype=np.intp)
    cols: dict[str, Any] = {k: df[k].array if at is None else df[k].array.take(at) for k in pks}
    for k, d in zip(pks, dtypes, strict=True) if dtypes is not None else ():
        arr = cols[k]
        if type(arr.dtype) is not type(d) or arr.dtype != d:  # (``str == object`` holds)
            # An object column as a Series: the constructor would infer ``str`` again from an object array
            # of strings. (``DataFrame.astype`` costs five times the whole frame.)
            is_object = isinstance(d, np.dtype) and d.kind == "O"
            cols[k] = pd.Series(np.asarray(arr, dtype=object), dtype=object, copy=False) if is_object else arr.astype(d)
    return pd.DataFrame(cols)


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
        sig = None
        if not len(self._deleted):
            # No deletes: the written rows' keys, inserted then updated, in the dtypes ``pd.concat`` gave
            # the first time these parts' dtypes met (pandas' rules for mixed and empty parts are its own;
            # one concatenation per signature learns them). Concat costs more than the rest of a one-row
            # result.
            sig = (
                *self._pks, bool(self._new), bool(self._changed),
                *(self._df[k].dtype for k in self._pks), *self._deleted.columns, *self._deleted.dtypes,
            )
            dtypes = _CONCAT_DTYPES.get(sig)
            if dtypes is not None:
                return _keys_frame(self._df, self._pks, self._new + self._changed, dtypes)
        # An empty part enters the concatenation as the shared template: concat copies, never mutates.
        ins = self._part("inserted", self._new) if self._new else _no_rows(self._df, self._pks)
        upd = self._part("updated", self._changed) if self._changed else _no_rows(self._df, self._pks)
        out = pd.concat([ins, upd, self._deleted], ignore_index=True)
        if sig is not None and list(out.columns) == self._pks:
            _CONCAT_DTYPES[sig] = [out[k].dtype for k in self._pks]
        return out


_CONCAT_DTYPES: dict[tuple[Any, ...], list[Any]] = {}
"""The key dtypes of ``changed_idx``'s concatenation, by the dtypes and emptiness of its parts."""
