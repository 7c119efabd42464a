"""SQL helpers shared by the stores and the metadata: key filters in bounded batches, fast fetches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.store.schema import to_records

MAX_PARAMS = 20000


def key_batches(idx: pd.DataFrame, columns: list[str], max_params: int = MAX_PARAMS) -> Iterator[list[Any]]:
    """Yield lists of key values (scalars for one column, tuples for several), each within ``max_params``."""
    keys = idx[columns].drop_duplicates()
    recs = to_records(keys)
    if len(columns) == 1:
        values: list[Any] = [r[columns[0]] for r in recs]
    else:
        values = [tuple(r[c] for c in columns) for r in recs]
    step = max(1, max_params // max(1, len(columns)))
    for i in range(0, len(values), step):
        yield values[i : i + step]


def key_clause(table: sa.Table, columns: list[str], values: list[Any]) -> sa.ColumnElement[bool]:
    """``(cols) IN (values)`` for one batch from ``key_batches``."""
    if len(columns) == 1:
        return table.c[columns[0]].in_(values)
    return sa.tuple_(*[table.c[c] for c in columns]).in_(values)


def fetch_frame(conn: sa.Connection, stmt: sa.Executable, columns: list[str]) -> pd.DataFrame:
    """Execute ``stmt`` and return its rows as a frame with ``columns``."""
    rows = conn.execute(stmt).fetchall()
    if not rows:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    return pd.DataFrame.from_records(rows, columns=columns)
