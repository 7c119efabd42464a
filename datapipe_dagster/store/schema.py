"""Validation and type coercion of incoming frames against a table's SQLAlchemy columns.

Row hashes are in ``store.rowhash``; frames to and from database rows in ``store.records``.

Every check names the table, the column and the key of the first offending row, and runs before anything
is written, so a bad chunk writes nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.errors import SchemaError, _plain
from datapipe_dagster.frames import first_duplicate, isna_mask

_JSON_TYPES = (dict, list, str, int, float, bool, np.integer, np.floating, np.bool_)
_JSON_EXACT = {dict, list, str, int, float, bool, type(None)}

_INF_FIX = "replace it with None (NULL) or declare the column Float"
_FRAC_FIX = "round it (e.g. Series.round()) or declare the column Float"

_INT_BITS: list[tuple[type, int, str]] = [(sa.SmallInteger, 16, "SmallInteger"), (sa.BigInteger, 64, "BigInteger")]


def _key_of(df: pd.DataFrame, pos: int, primary_keys: list[str]) -> dict[str, Any]:
    # Column by column: ``df.iloc[pos]`` would upcast an int key to float in a frame with float columns.
    return {k: (df[k].iloc[pos] if k in df.columns else None) for k in primary_keys}


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


class _Column:
    """One column being coerced: raises SchemaError naming the table, the column and a row's key."""

    def __init__(self, table: str, col: sa.Column, s: pd.Series, df: pd.DataFrame, pks: list[str]):
        self.table, self.col, self.s, self.df, self.pks = table, col, s, df, pks

    @functools.cached_property
    def notna(self) -> np.ndarray:
        """Which values are present (computed on first use: a JSON column never asks)."""
        return ~isna_mask(self.s)

    def fail_at(self, pos: int, what: str, fix: str = "", show: bool = True) -> None:
        """Raise for the row at ``pos``: what is wrong, the value (when ``show``), then how to fix it."""
        v = self.s.iloc[pos]
        got = f", got {_plain(v)!r} ({type(v).__name__})" if show else ""
        raise SchemaError(self.table, f"{what}{got}{'; ' + fix if fix else ''}", self.col.name, _key_of(self.df, pos, self.pks))

    def fail(self, mask: np.ndarray, what: str, fix: str = "") -> None:
        self.fail_at(_first_bad(mask), what, fix)


def int_range(t: sa.types.TypeEngine) -> tuple[int, int, str]:
    """The values an integer SQL type holds on every backend: (lowest, highest, description).

    ``Integer`` is 32-bit (PostgreSQL's ``integer``), even on SQLite, whose integers are all 64-bit, so
    data that fits one backend fits the other.
    """
    bits, name = 32, "Integer"
    for cls, b, n in _INT_BITS:
        if isinstance(t, cls):
            bits, name = b, n
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, f"{name} ({bits}-bit)"


def _int_out_of_range(c: _Column, lo: int, hi: int, name: str, pos: int) -> None:
    bigger = " or declare the column BigInteger" if "BigInteger" not in name else ""
    c.fail_at(pos, f"integer out of range for {name}, which holds {lo}..{hi}", f"fix the value{bigger}")


def _check_int_range(c: _Column, s: pd.Series, lo: int, hi: int, name: str) -> None:
    if not len(s) or not c.notna.any():
        return
    unsigned = pd.api.types.is_unsigned_integer_dtype(s.dtype)
    if not unsigned and 8 * s.dtype.itemsize <= (hi + 1).bit_length():
        return  # the dtype cannot hold a value out of range (int64 in BigInteger, int32 in Integer)
    arr = s.to_numpy() if c.notna.all() and not isinstance(s.dtype, pd.api.extensions.ExtensionDtype) else s
    if int(arr.max()) <= hi and (unsigned or int(arr.min()) >= lo):
        return
    bad = (s > hi) if unsigned else ((s < lo) | (s > hi))
    pos = _first_bad(bad.fillna(False).to_numpy(dtype=bool))
    _int_out_of_range(c, lo, hi, name, pos)


def _exact_int(v: Any) -> int | None | str:
    """``v`` as a Python int exactly (never through float), None for a missing value, or a reason (str)."""
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, (bool, np.bool_)):
        return "expected an integer, not a boolean"
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        if v != v:
            return None
        if not np.isfinite(v):
            return "expected an integer, an integer column cannot hold infinity"
        return int(v) if float(v).is_integer() else "expected an integer, the value has a fractional part"
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass
    if isinstance(v, (str, Decimal)):
        try:
            d = Decimal(v.strip()) if isinstance(v, str) else v
        except InvalidOperation:
            return "expected an integer"
        if not d.is_finite():
            return "expected an integer"
        return int(d) if d == d.to_integral_value() else "expected an integer, the value has a fractional part"
    return "expected an integer"


def _fast_exact_ints(c: _Column, kind: str) -> pd.Series | None:
    """Python ints, or digit strings, converted at C speed (pandas parses digit strings as int64 or
    uint64 when every value fits, else as float64, which is refused here); None when this cannot work."""
    try:
        if kind == "integer":
            return c.s.astype("int64" if c.notna.all() else "Int64")
        if kind == "string":
            num = pd.to_numeric(c.s, errors="raise")
            return num if pd.api.types.is_integer_dtype(num.dtype) else None
    except (ValueError, TypeError, OverflowError):
        pass
    return None


def _coerce_int(c: _Column) -> pd.Series:
    s = c.s
    lo, hi, name = int_range(c.col.type)
    if pd.api.types.is_bool_dtype(s.dtype):
        c.fail(c.notna, "expected an integer, not a boolean")
    if pd.api.types.is_integer_dtype(s.dtype):
        _check_int_range(c, s, lo, hi, name)
        if pd.api.types.is_unsigned_integer_dtype(s.dtype):
            return s.astype("int64" if c.notna.all() else "Int64")
        return s
    if pd.api.types.is_float_dtype(s.dtype):
        v = s.to_numpy(dtype="float64", na_value=np.nan)
        inf = np.isinf(v)
        if inf.any():
            c.fail(inf, "expected an integer, an integer column cannot hold infinity", _INF_FIX)
        frac = c.notna & (np.mod(np.nan_to_num(v), 1) != 0)
        if frac.any():
            c.fail(frac, "expected an integer, the value has a fractional part", _FRAC_FIX)
        # lo and hi + 1 are powers of two, exact in float64, so these comparisons are exact.
        out = c.notna & ((v < lo) | (v >= float(hi) + 1))
        if out.any():
            pos = _first_bad(out)
            _int_out_of_range(c, lo, hi, name, pos)
        return pd.Series(v, index=s.index).astype("int64" if c.notna.all() else "Int64")
    kind = pd.api.types.infer_dtype(s, skipna=True)
    if kind == "empty":
        return pd.Series(pd.array([None] * len(s), dtype="Int64"), index=s.index)
    num = _fast_exact_ints(c, kind)
    if num is not None:
        _check_int_range(c, num, lo, hi, name)
        return num.astype("int64" if c.notna.all() else "Int64") if pd.api.types.is_unsigned_integer_dtype(num.dtype) else num
    # Anything else, value by value and exactly (Python ints are unbounded, so nothing is rounded).
    vals = [_exact_int(v) for v in s.tolist()]
    for pos, v in enumerate(vals):
        if isinstance(v, str):
            c.fail_at(pos, v, _INF_FIX if "infinity" in v else (_FRAC_FIX if "fractional" in v else ""))
        if v is not None and not lo <= v <= hi:  # type: ignore[operator]
            _int_out_of_range(c, lo, hi, name, pos)
    return pd.Series(pd.array(vals, dtype="Int64"), index=s.index).astype("int64" if c.notna.all() else "Int64")


def _coerce_float(c: _Column) -> pd.Series:
    s = c.s
    if pd.api.types.is_float_dtype(s.dtype):
        return s
    if pd.api.types.is_bool_dtype(s.dtype):
        c.fail(c.notna, "expected a number, not a boolean")
    if s.dtype == object and pd.api.types.infer_dtype(s, skipna=True) not in ("integer", "floating", "mixed-integer-float", "decimal", "string"):
        ok = np.fromiter((v is None or (isinstance(v, (int, float, np.integer, np.floating, str, Decimal)) and not isinstance(v, bool)) for v in s), bool, len(s))
        if not ok.all():
            c.fail(c.notna & ~ok, "expected a number")
    num = pd.to_numeric(s, errors="coerce")
    bad = c.notna & pd.isna(num).to_numpy()
    if bad.any():
        c.fail(bad, "expected a number")
    return num.astype("float64")


def _coerce_bool(c: _Column) -> pd.Series:
    s = c.s
    if s.dtype == bool:
        return s
    ok = s.map(lambda v: v is None or isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1)) or v != v)
    if not ok.all():
        c.fail(~ok.to_numpy(), "expected a boolean")
    return s.map(lambda v: None if v is None or v != v else bool(v)).astype("boolean")


def _coerce_json(c: _Column) -> pd.Series:
    # A shallow type check here; hash_rows serialises every value (once) and reports deeper problems.
    s = c.s
    vals = s.tolist()
    if set(map(type, vals)) <= _JSON_EXACT:  # the common case, checked at C speed
        return s.astype(object)
    for pos in [pos for pos, v in enumerate(vals) if type(v) not in _JSON_EXACT]:
        v = vals[pos]
        if isinstance(v, np.generic):
            vals[pos] = v.item()  # the database's JSON encoder does not know numpy scalars
        elif not isinstance(v, _JSON_TYPES):
            c.fail_at(pos, "expected a JSON-serialisable value")
    return pd.Series(vals, index=s.index, dtype=object)


def _parse_datetimes_one_by_one(c: _Column) -> pd.Series:
    """The slow path, after pandas refused the column: find the bad value, or the naive/aware mix."""
    aware_at: int | None = None
    naive_at: int | None = None
    for pos, v in enumerate(c.s.tolist()):
        if not c.notna[pos]:
            continue
        try:
            ts = pd.Timestamp(v)
        except (ValueError, TypeError, OverflowError):
            c.fail_at(pos, "expected a date/time")
        if ts is pd.NaT:
            c.fail_at(pos, "expected a date/time")
        if ts.tzinfo is None:
            naive_at = pos if naive_at is None else naive_at
        else:
            aware_at = pos if aware_at is None else aware_at
        if naive_at is not None and aware_at is not None:
            other = max(naive_at, aware_at)
            kinds = ("time-zone-naive", "time-zone-aware") if naive_at < aware_at else ("time-zone-aware", "time-zone-naive")
            c.fail_at(
                other,
                f"mixes {kinds[0]} and {kinds[1]} date/times in one column",
                "give every value a time zone (e.g. Series.dt.tz_localize('UTC')) or none",
            )
    return pd.to_datetime(c.s, format="mixed", utc=aware_at is not None)


def _coerce_datetime(c: _Column) -> pd.Series:
    """Date/times: tz-aware values become UTC; a ``DateTime(timezone=True)`` column keeps them aware (UTC),
    any other DateTime column stores the UTC wall time, naive. Naive values in a ``timezone=True``
    column are taken as UTC. The same instant is stored whatever the backend and the write path."""
    s, t = c.s, c.col.type
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        out = s
    else:
        try:
            out = pd.to_datetime(s, errors="raise")
        except (ValueError, TypeError, OverflowError):
            out = _parse_datetimes_one_by_one(c)
        if out.dtype == object:  # values of several time zones that pandas left as objects
            out = _parse_datetimes_one_by_one(c)
    if isinstance(t, sa.Date) and not isinstance(t, sa.DateTime):
        return out.dt.date.astype(object).where(out.notna(), None)
    aware = isinstance(out.dtype, pd.DatetimeTZDtype)
    keep_tz = isinstance(t, sa.DateTime) and bool(t.timezone)
    if aware:
        out = out.dt.tz_convert("UTC")
        return out if keep_tz else out.dt.tz_localize(None)
    return out.dt.tz_localize("UTC") if keep_tz else out


def _coerce_bytes(c: _Column) -> pd.Series:
    s = c.s
    ok = s.map(lambda v: v is None or v != v or isinstance(v, (bytes, bytearray, memoryview)))
    if not ok.all():
        c.fail(~ok.to_numpy(), "expected bytes")
    return s.astype(object)


def _may_hold_nul(out: pd.Series, notna: np.ndarray) -> bool:
    # One search over the joined strings (memchr speed) instead of a search per value.
    vals = out.to_numpy(dtype=object)
    try:
        return "\x00" in "".join(vals if notna.all() else vals[notna])
    except TypeError:  # not all strings: let the per-value search below decide
        return True


def _check_strings(c: _Column, out: pd.Series) -> pd.Series:
    n = getattr(c.col.type, "length", None)
    if len(out) <= 64 and not any("\x00" in v or (n and len(v) > n) for v in out.tolist() if isinstance(v, str)):
        return out  # a few strings checked in Python; a failing one is reported by the checks below
    if not c.notna.any():
        return out
    nul = out.str.contains("\x00", regex=False, na=False).to_numpy(dtype=bool) if _may_hold_nul(out, c.notna) else None
    if nul is not None and nul.any():
        c.fail(
            nul,
            "a string holds a NUL character (\\x00), which PostgreSQL cannot store",
            "remove it (e.g. Series.str.replace('\\x00', '')) or use a LargeBinary column",
        )
    if n:
        long = (out.str.len() > n).fillna(False).to_numpy(dtype=bool)
        if long.any():
            pos = _first_bad(long)
            c.fail_at(pos, f"string of {len(out.iloc[pos])} characters, longer than the column's {n}", "shorten it or widen the column", show=False)
    return out


def _coerce_string(c: _Column) -> pd.Series:
    s = c.s
    if pd.api.types.is_integer_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        out = s.astype(str)
        return _check_strings(c, out) if getattr(c.col.type, "length", None) else out  # digits hold no NUL
    if pd.api.types.is_string_dtype(s.dtype) and s.dtype != object:
        return _check_strings(c, s)
    if pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty"):
        out = s.where(pd.Series(c.notna, index=s.index), None) if not c.notna.all() else s
        return _check_strings(c, out)
    ok = s.map(lambda v: v is None or isinstance(v, (str, int, np.integer, dt.date)) and not isinstance(v, (bool, np.bool_)) or (isinstance(v, float) and v != v))
    if not ok.all():
        c.fail(~ok.to_numpy(), "expected a string")
    return _check_strings(c, s.map(lambda v: v if v is None or isinstance(v, str) else (None if isinstance(v, float) else str(v))))


def _coerce_column(table: str, col: sa.Column, s: pd.Series, df: pd.DataFrame, pks: list[str]) -> pd.Series:
    """Return ``s`` converted to the pandas type that matches ``col``; raise SchemaError naming the row."""
    c = _Column(table, col, s, df, pks)
    t = col.type
    if isinstance(t, sa.Boolean):
        return _coerce_bool(c)
    if isinstance(t, sa.Integer):
        return _coerce_int(c)
    if isinstance(t, (sa.Float, sa.Numeric)):
        return _coerce_float(c)
    if isinstance(t, sa.JSON):
        return _coerce_json(c)
    if isinstance(t, (sa.DateTime, sa.Date)):
        return _coerce_datetime(c)
    if isinstance(t, sa.LargeBinary):
        return _coerce_bytes(c)
    if isinstance(t, sa.String):
        return _coerce_string(c)
    return s


def coerce_frame(table: str, columns: list[sa.Column], df: pd.DataFrame) -> pd.DataFrame:
    """Validate ``df`` against ``columns`` and return a copy with schema types and schema column order.

    Raises:
        SchemaError: a column not in the schema, a missing key column, a null or duplicate key,
            a missing non-nullable column, or a value of the wrong type.
    """
    if not isinstance(df, pd.DataFrame):
        raise SchemaError(table, f"expected a pandas DataFrame, got {type(df).__name__}; build one with pd.DataFrame(...)")
    names = [c.name for c in columns]
    pks = [c.name for c in columns if c.primary_key]
    dup = df.columns.duplicated()
    if dup.any():
        raise SchemaError(table, "the frame has this column more than once; drop or rename the duplicates", str(df.columns[dup][0]))
    unknown = [c for c in df.columns if c not in names]
    if unknown:
        raise SchemaError(table, f"column not in the schema (known columns: {', '.join(names)})", str(unknown[0]))
    for k in pks:
        if k not in df.columns:
            raise SchemaError(table, "primary-key column missing from the data", k)
    df = df.reset_index(drop=True)
    for k in pks:
        nulls = isna_mask(df[k])
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
            nulls = isna_mask(out[col.name])
            if nulls.any():
                raise SchemaError(table, "null value in a non-nullable column", col.name, _key_of(df, _first_bad(nulls), pks))
    # A few rows: ``copy=False``, the columns are new Series or the caller's, which copy-on-write keeps
    # apart already; the default copy (and consolidation) costs a third of validating a one-row frame.
    # Larger frames keep the copy and its consolidated blocks.
    res = pd.DataFrame(out, index=df.index, copy=len(df) > 64)
    if pks:
        pos = first_duplicate(res, pks)
        if pos is not None:
            raise SchemaError(table, "duplicate key in one chunk", None, _key_of(res, pos, pks))
    return res


def empty_frame(columns: list[sa.Column]) -> pd.DataFrame:
    """An empty frame with the columns of ``columns``."""
    return pd.DataFrame({c.name: pd.Series([], dtype=object) for c in columns})
