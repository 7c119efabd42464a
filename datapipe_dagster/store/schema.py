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

_JSON_TYPES = (dict, list, str, int, float, bool, np.integer, np.floating, np.bool_)


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
        # A shallow type check here; hash_rows serialises every value (once) and reports deeper problems.
        ok = s.map(lambda v: v is None or isinstance(v, _JSON_TYPES) or (isinstance(v, float) and v != v))
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


def hash_rows(df: pd.DataFrame, columns: list[sa.Column], table: str = "?") -> np.ndarray:
    """A 63-bit content hash per row, from every column (JSON values canonicalised), as int64.

    Raises:
        SchemaError: a JSON value that cannot be serialised (names the column and key).
    """
    if len(df) == 0:
        return np.zeros(0, dtype=np.int64)
    pks = [c.name for c in columns if c.primary_key]
    parts = {}
    for col in columns:
        s = df[col.name]
        if isinstance(col.type, sa.JSON) or s.dtype == object:
            vals = s.tolist()
            out = []
            for pos, v in enumerate(vals):
                if v is None or (isinstance(v, float) and v != v):
                    out.append("\x00null")
                    continue
                try:
                    out.append(json.dumps(v, sort_keys=True, default=_json_default))
                except (TypeError, ValueError) as e:
                    raise SchemaError(table, f"value is not JSON-serialisable: {e}", col.name, _key_of(df, pos, pks)) from None
            s = pd.Series(out, index=df.index, dtype=object)
        parts[col.name] = s
    h = pd.util.hash_pandas_object(pd.DataFrame(parts), index=False).to_numpy()
    return (h >> np.uint64(1)).astype(np.int64)


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (dt.date, dt.datetime, pd.Timestamp)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def _plain_list(s: pd.Series) -> list[Any]:
    """A column as a list of plain Python values (None for missing)."""
    kind = s.dtype.kind
    if kind in "iub" and not isinstance(s.dtype, pd.api.extensions.ExtensionDtype):
        return s.to_numpy().tolist()
    if kind == "f" and not isinstance(s.dtype, pd.api.extensions.ExtensionDtype):
        vals = s.to_numpy().tolist()
        return [None if v != v else v for v in vals] if s.isna().any() else vals
    if kind == "M":
        return [None if v is pd.NaT or v is None else v.to_pydatetime() for v in s.tolist()]
    vals = s.tolist()
    if s.isna().any():
        mask = s.isna().to_numpy()
        vals = [None if m else v for v, m in zip(vals, mask, strict=True)]
    if vals and any(isinstance(v, (np.generic, pd.Timestamp)) for v in vals[:1000]):
        vals = [v.item() if isinstance(v, np.generic) else (v.to_pydatetime() if isinstance(v, pd.Timestamp) else v) for v in vals]
    return vals


def to_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts of plain Python values (numpy scalars and NaN/NaT become Python values/None)."""
    if len(df) == 0:
        return []
    cols = [str(c) for c in df.columns]
    lists = [_plain_list(df.iloc[:, i]) for i in range(len(cols))]
    return [dict(zip(cols, row, strict=True)) for row in zip(*lists, strict=True)]


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
