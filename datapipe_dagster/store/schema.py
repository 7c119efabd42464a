"""Validation and type coercion of incoming frames against a table's SQLAlchemy columns.

Every check names the table, the column and the key of the first offending row, and runs before anything
is written, so a bad chunk writes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.errors import SchemaError


def _key_of(df: pd.DataFrame, pos: int, primary_keys: list[str]) -> dict[str, Any]:
    row = df.iloc[pos]
    return {k: (row[k] if k in df.columns else None) for k in primary_keys}


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _coerce_column(table: str, col: sa.Column, s: pd.Series, df: pd.DataFrame, pks: list[str]) -> pd.Series:
    """Return ``s`` converted to the pandas type that matches ``col``; raise SchemaError naming the row."""
    t = col.type
    notna = s.notna().to_numpy()

    def fail(mask: np.ndarray, what: str) -> None:
        pos = _first_bad(mask)
        raise SchemaError(table, f"{what}, got {s.iloc[pos]!r} ({type(s.iloc[pos]).__name__})", col.name, _key_of(df, pos, pks))

    if isinstance(t, sa.Boolean):
        if s.dtype == bool:
            return s
        ok = s.map(lambda v: v is None or isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1)) or v != v)
        if not ok.all():
            fail(~ok.to_numpy(), "expected a boolean")
        return s.map(lambda v: None if v is None or v != v else bool(v)).astype("boolean")
    if isinstance(t, sa.Integer):
        if pd.api.types.is_integer_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
            return s
        if pd.api.types.is_bool_dtype(s.dtype):
            fail(np.ones(len(s), bool), "expected an integer")
        num = pd.to_numeric(s, errors="coerce") if s.dtype == object or pd.api.types.is_string_dtype(s.dtype) else s
        bad = notna & (pd.isna(num).to_numpy())
        if bad.any():
            fail(bad, "expected an integer")
        numf = num.astype("float64")
        frac = notna & (np.mod(numf.fillna(0).to_numpy(), 1) != 0)
        if frac.any():
            fail(frac, "expected an integer, the value has a fractional part")
        return numf.round().astype("Int64") if not notna.all() else numf.astype("int64")
    if isinstance(t, (sa.Float, sa.Numeric)):
        if pd.api.types.is_float_dtype(s.dtype):
            return s
        if pd.api.types.is_bool_dtype(s.dtype):
            fail(np.ones(len(s), bool), "expected a number")
        num = pd.to_numeric(s, errors="coerce")
        bad = notna & pd.isna(num).to_numpy()
        if bad.any():
            fail(bad, "expected a number")
        return num.astype("float64")
    if isinstance(t, sa.JSON):
        def check(v: Any) -> bool:
            if v is None:
                return True
            try:
                json.dumps(v)
                return True
            except (TypeError, ValueError):
                return False

        ok = s.map(check)
        if not ok.all():
            fail(~ok.to_numpy(), "expected a JSON-serialisable value")
        return s.astype(object)
    if isinstance(t, sa.DateTime) or isinstance(t, sa.Date):
        try:
            out = pd.to_datetime(s, errors="raise")
        except (ValueError, TypeError):
            parsed = pd.to_datetime(s, errors="coerce")
            fail(notna & parsed.isna().to_numpy(), "expected a date/time")
        if isinstance(t, sa.Date) and not isinstance(t, sa.DateTime):
            return out.dt.date.astype(object).where(out.notna(), None)
        return out
    if isinstance(t, sa.LargeBinary):
        ok = s.map(lambda v: v is None or v != v or isinstance(v, (bytes, bytearray, memoryview)))
        if not ok.all():
            fail(~ok.to_numpy(), "expected bytes")
        return s.astype(object)
    if isinstance(t, sa.String):
        if pd.api.types.is_string_dtype(s.dtype) and s.dtype != object:
            return s
        if pd.api.types.is_integer_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
            return s.astype(str)
        ok = s.map(lambda v: v is None or isinstance(v, (str, int, np.integer, dt.date)) and not isinstance(v, bool) or (isinstance(v, float) and v != v))
        if not ok.all():
            fail(~ok.to_numpy(), "expected a string")
        return s.map(lambda v: v if v is None or isinstance(v, str) else (None if isinstance(v, float) else str(v)))
    return s


def coerce_frame(table: str, columns: list[sa.Column], df: pd.DataFrame) -> pd.DataFrame:
    """Validate ``df`` against ``columns`` and return a copy with schema types and schema column order.

    Raises:
        SchemaError: a column not in the schema, a missing key column, a null or duplicate key,
            a missing non-nullable column, or a value of the wrong type.
    """
    names = [c.name for c in columns]
    pks = [c.name for c in columns if c.primary_key]
    unknown = [c for c in df.columns if c not in names]
    if unknown:
        raise SchemaError(table, f"column not in the schema (known columns: {', '.join(names)})", str(unknown[0]))
    for k in pks:
        if k not in df.columns:
            raise SchemaError(table, "primary-key column missing from the data", k)
    df = df.reset_index(drop=True)
    for k in pks:
        nulls = df[k].isna().to_numpy()
        if nulls.any():
            raise SchemaError(table, "null value in a primary-key column", k, _key_of(df, _first_bad(nulls), pks))
    out = {}
    for col in columns:
        if col.name not in df.columns:
            if not col.nullable and not col.primary_key:
                raise SchemaError(table, "column missing from the data and not nullable", col.name)
            out[col.name] = pd.Series([None] * len(df), dtype=object)
            continue
        out[col.name] = _coerce_column(table, col, df[col.name], df, pks)
        if not col.nullable and not col.primary_key:
            nulls = out[col.name].isna().to_numpy()
            if nulls.any():
                raise SchemaError(table, "null value in a non-nullable column", col.name, _key_of(df, _first_bad(nulls), pks))
    res = pd.DataFrame(out, index=df.index)
    if pks:
        dup = res.duplicated(subset=pks).to_numpy()
        if dup.any():
            raise SchemaError(table, "duplicate key in one chunk", None, _key_of(res, _first_bad(dup), pks))
    return res


def empty_frame(columns: list[sa.Column]) -> pd.DataFrame:
    """An empty frame with the columns of ``columns``."""
    return pd.DataFrame({c.name: pd.Series([], dtype=object) for c in columns})


def hash_rows(df: pd.DataFrame, columns: list[sa.Column]) -> np.ndarray:
    """A 63-bit content hash per row, from every column (JSON values canonicalised), as int64."""
    if len(df) == 0:
        return np.zeros(0, dtype=np.int64)
    parts = {}
    for col in columns:
        s = df[col.name]
        if isinstance(col.type, sa.JSON) or s.dtype == object:
            s = s.map(lambda v: json.dumps(v, sort_keys=True, default=str) if v is not None and not (isinstance(v, float) and v != v) else "\x00null")
        parts[col.name] = s
    h = pd.util.hash_pandas_object(pd.DataFrame(parts), index=False).to_numpy()
    return (h >> np.uint64(1)).astype(np.int64)


def to_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts of plain Python values (numpy scalars and NaN/NaT become Python values/None)."""
    if len(df) == 0:
        return []
    obj = df.astype(object)
    obj = obj.where(df.notna(), None)
    recs = obj.to_dict("records")
    for r in recs:
        for k, v in r.items():
            if isinstance(v, np.generic):
                r[k] = v.item()
            elif isinstance(v, pd.Timestamp):
                r[k] = v.to_pydatetime()
    return recs


def conform_types(df: pd.DataFrame, columns: list[sa.Column]) -> pd.DataFrame:
    """Give a frame read back from storage the pandas types its columns declare (nullable ints stay ints)."""
    for col in columns:
        if col.name not in df.columns:
            continue
        s = df[col.name]
        if isinstance(col.type, sa.Boolean):
            if s.isna().any():
                df[col.name] = s.astype("boolean")
            elif len(s):
                df[col.name] = s.astype(bool)
        elif isinstance(col.type, sa.Integer):
            if s.isna().any():
                df[col.name] = s.astype("Int64")
            elif len(s):
                df[col.name] = s.astype("int64")
        elif isinstance(col.type, (sa.Float, sa.Numeric)) and len(s):
            df[col.name] = s.astype("float64")
    return df
