"""Row content hashes and the canonical JSON text they are computed from (a store's ``hash_rows``).

The hash of a row is what the row metadata keeps to tell a changed row from an unchanged one, so the
JSON text must never change: it is ``json.dumps(v, sort_keys=True)`` exactly. It sits in ``store/``,
not ``meta/``, because hashing is a store capability (a schemaless or file store hashes its own way, and a
SQL store keeps the JSON text it hashed to write it) and the store layer may not import ``meta/``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.errors import SchemaError
from datapipe_dagster.frames import isna_mask
from datapipe_dagster.store.schema import _key_of

_NULL = "\x00null"  # how a missing value enters the row hash


def json_encoder(strict: bool) -> Callable[[Any], str]:
    """The canonical JSON text of a value: ``json.dumps(v, sort_keys=True)`` exactly (so stored hashes
    never change), from one C encoder built once instead of one per call (about 2x faster per value).

    ``strict`` refuses what a SQL JSON column cannot hold (NaN, infinity, numpy scalars, bytes,
    date/times); otherwise those become JSON through ``_json_default``.
    """
    return _STRICT_ENCODE if strict else _LOOSE_ENCODE


def _make_encoder(strict: bool) -> Callable[[Any], str]:
    default = None if strict else _json_default
    if c_make_encoder is None:  # pragma: no cover - CPython always has the C accelerator
        return json.JSONEncoder(sort_keys=True, allow_nan=not strict, default=default).encode

    def _raise(v: Any) -> Any:
        raise TypeError(f"Object of type {type(v).__name__} is not JSON serializable")

    # Arguments: markers (None: no cycle check; a cycle ends in RecursionError), default, string encoder,
    # indent, key separator, item separator, sort_keys, skipkeys, allow_nan.
    chunks = c_make_encoder(None, default or _raise, encode_basestring_ascii, None, ": ", ", ", True, False, not strict)
    join = "".join
    return lambda v: join(chunks(v, 0))


def _is_null(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def encode_json_column(values: list[Any], strict: bool, table: str, column: str, df: pd.DataFrame, pks: list[str]) -> list[str | None]:
    """Every value's canonical JSON text (None for a missing value).

    Raises:
        SchemaError: a value that cannot be serialised (names the column and the row's key).
    """
    encode = json_encoder(strict)
    try:
        return [None if v is None or (isinstance(v, float) and v != v) else encode(v) for v in values]
    except (TypeError, ValueError, RecursionError):
        for pos, v in enumerate(values):
            try:
                None if _is_null(v) else encode(v)
            except (TypeError, ValueError, RecursionError) as e:
                raise SchemaError(table, f"value is not JSON-serialisable: {e}", column, _key_of(df, pos, pks)) from None
        raise


def hash_rows(
    df: pd.DataFrame,
    columns: list[sa.Column],
    table: str = "?",
    strict_json: bool = False,
    json_texts: dict[str, list[str | None]] | None = None,
) -> np.ndarray:
    """A 63-bit content hash per row, from every column (JSON values canonicalised), as int64.

    With ``strict_json`` (values bound for a SQL JSON column), JSON values must be what the database's
    JSON encoder writes: no NaN/infinity, no bytes, date/times or numpy scalars inside. With
    ``json_texts``, the canonical JSON text of every JSON column is left there (column -> texts, None
    for a missing value), so a writer can store the text it hashed instead of serialising again; texts
    already there (``json_column_texts`` of the same rows, by a writer that stored them first) are
    hashed as they are, not encoded again.

    Raises:
        SchemaError: a JSON value that cannot be serialised (names the column and key).
    """
    if len(df) == 0:
        return np.zeros(0, dtype=np.int64)
    pks = [c.name for c in columns if c.primary_key]
    hashes = []
    for col in columns:
        s = df[col.name]
        is_json = isinstance(col.type, sa.JSON)
        values: Any
        given = json_texts.get(col.name) if is_json and json_texts is not None else None
        if is_json or s.dtype == object:
            if given is not None and len(given) == len(df):
                texts = given
            else:
                texts = encode_json_column(s.tolist(), strict_json and is_json, table, col.name, df, pks)
            if is_json and json_texts is not None:
                json_texts[col.name] = texts
            values = np.empty(len(texts), dtype=object)
            values[:] = [_NULL if t is None else t for t in texts]
            # pandas factorises object values before hashing (``categorize``), which costs more than it
            # saves on mostly distinct values and hashes them the same; missing values, which factorised
            # take a fixed marker, are ``_NULL`` texts here.
            categorize = False
        else:
            values = s.array
            if isinstance(values, pd.arrays.NumpyExtensionArray):
                values = values.to_numpy()
            # A string extension column keeps the factorising when it holds a missing value (its marker).
            categorize = values.dtype != object and bool(isna_mask(s).any())
        hashes.append(pd.util.hash_array(values, categorize=categorize))
    return (combine_hashes(hashes) >> np.uint64(1)).astype(np.int64)


def json_column_texts(df: pd.DataFrame, columns: list[sa.Column], table: str, strict_json: bool) -> dict[str, list[str | None]]:
    """The canonical JSON text of each JSON column of ``df``, exactly as ``hash_rows`` leaves them in
    ``json_texts`` (its checks and errors too, JSON columns only)."""
    pks = [c.name for c in columns if c.primary_key]
    return {
        c.name: encode_json_column(df[c.name].tolist(), strict_json, table, c.name, df, pks)
        for c in columns
        if isinstance(c.type, sa.JSON)
    }


def combine_hashes(arrays: list[np.ndarray]) -> np.ndarray:
    """One hash per row from one ``hash_array`` per column, combined exactly as pandas'
    ``hash_pandas_object(frame, index=False)`` combines its columns (CPython's tuple hash), without
    building a frame: for a one-row write the frame and its per-column Series cost more than the hashing.
    ``tests/test_rowhash.py`` pins the equality over many dtypes."""
    mult = np.uint64(1000003)
    out = np.zeros_like(arrays[0]) + np.uint64(0x345678)
    n = len(arrays)
    for i, a in enumerate(arrays):
        inverse_i = n - i
        out ^= a
        out *= mult
        mult += np.uint64(82520 + inverse_i + inverse_i)
    out += np.uint64(97531)
    return out


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (dt.date, dt.datetime, pd.Timestamp)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


_STRICT_ENCODE = _make_encoder(strict=True)
_LOOSE_ENCODE = _make_encoder(strict=False)
