"""Schemaless tables: the data columns are whatever the rows hold (epoch8 datapipe's file stores).

A schemaless store declares its key columns only. Every other column is kept as the rows hold it (a JSON
value: text, number, bool, list, object or null), and the store learns the column names from the data
it reads and writes. A null value and a missing field are the same thing, which keeps the content hash
stable when a column first appears in some other row: the hash covers the row's non-null fields only.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.errors import SchemaError
from datapipe_dagster.frames import plain
from datapipe_dagster.store.records import to_records
from datapipe_dagster.store.rowhash import _json_default
from datapipe_dagster.store.schema import coerce_frame


class SchemalessColumns:
    """The key columns of a schemaless table and the data columns seen so far (in first-seen order)."""

    def __init__(self, table: str, key_columns: list[sa.Column]):
        self.table = table
        self.keys = key_columns
        self.key_names = [c.name for c in key_columns]
        self.data_names: list[str] = []

    def observe(self, names: list[str]) -> None:
        for n in names:
            if n not in self.key_names and n not in self.data_names:
                self.data_names.append(n)

    def schema(self) -> list[sa.Column]:
        return [c._copy() for c in self.keys] + [sa.Column(n, sa.JSON, nullable=True) for n in self.data_names]

    def frame(self, recs: list[dict[str, Any]], keys: pd.DataFrame | None = None) -> pd.DataFrame:
        """A frame of ``recs`` with every known column (object dtype, values as they are)."""
        self.observe([k for r in recs for k in r])
        cols: dict[str, Any] = {}
        for n in self.key_names:
            cols[n] = keys[n].to_numpy() if keys is not None else [r.get(n) for r in recs]
        for n in self.data_names:
            cols[n] = pd.Series([plain(r.get(n)) for r in recs], dtype=object)
        df = pd.DataFrame(cols)
        return df if len(recs) else df.iloc[0:0]

    def validate(self, df: pd.DataFrame) -> pd.DataFrame:
        """Keys checked and typed as declared; other columns kept as they are (NaN and NA become None).

        Raises:
            SchemaError: a missing, null or duplicate key (names table, column and key).
        """
        for k in self.key_names:
            if k not in df.columns:
                raise SchemaError(self.table, "primary-key column missing from the data", k)
        df = df.reset_index(drop=True)
        keys = coerce_frame(self.table, self.keys, df[self.key_names])
        data = df[[c for c in df.columns if c not in self.key_names]]
        return self.frame(to_records(data) if len(data.columns) else [{} for _ in range(len(df))], keys)

    def from_records(self, recs: list[dict[str, Any]]) -> pd.DataFrame:
        """Rows read from storage as a validated frame, values exactly as read (no type inference)."""
        return self.validate(self.frame(recs))

    def empty(self) -> pd.DataFrame:
        return self.frame([], pd.DataFrame({k: [] for k in self.key_names}))

    def hash_rows(self, df: pd.DataFrame) -> np.ndarray:
        """A 63-bit hash per row of its keys and non-null fields (canonical JSON), as int64.

        Raises:
            SchemaError: a value that is not JSON (names the column and key).
        """
        if len(df) == 0:
            return np.zeros(0, dtype=np.int64)
        texts = []
        for rec in to_records(df):
            row = {k: v for k, v in rec.items() if v is not None}
            try:
                texts.append(json.dumps(row, sort_keys=True, default=_json_default))
            except (TypeError, ValueError) as e:
                col = _bad_column(row)
                key = {k: rec[k] for k in self.key_names}
                raise SchemaError(self.table, f"value is not JSON-serialisable: {e}", col, key) from None
        h = pd.util.hash_pandas_object(pd.Series(texts, dtype=object), index=False).to_numpy()
        return (h >> np.uint64(1)).astype(np.int64)

    def data_of(self, rec: dict[str, Any]) -> dict[str, Any]:
        """A row's non-key, non-null fields (what a file holds)."""
        return {k: v for k, v in rec.items() if k not in self.key_names and v is not None}


def _bad_column(row: dict[str, Any]) -> str | None:
    for k, v in row.items():
        try:
            json.dumps(v, default=_json_default)
        except (TypeError, ValueError):
            return k
    return None
