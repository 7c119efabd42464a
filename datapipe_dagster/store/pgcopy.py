"""Bulk inserts of new rows: PostgreSQL ``COPY … FROM STDIN`` (about 3x a batched INSERT here), and on
other drivers a plain ``executemany`` of tuples with the columns' own bind processors (about 2x
SQLAlchemy's per-row dictionaries on SQLite).

Values are rendered in COPY's text format: ``\\N`` for NULL, backslash escapes for the separators. JSON
columns get their values JSON-encoded in the canonical form every write path uses (keys sorted, as the
engine's ``json_serializer``; a Python string becomes a JSON string); values the row hash already encoded
are passed in and stored as they are.

COPY streams its text in batches of ``COPY_BATCH_ROWS`` rows, rendered as the driver reads them: the server
parses and indexes one batch while the client renders the next, so on two cores the client's Python work
overlaps the server's (a frame rendered whole first, then sent, adds the two).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.frames import key_order
from datapipe_dagster.store.rowhash import json_encoder

COPY_MIN_ROWS = 500
"""Below this, a batched INSERT is as fast and simpler."""

COPY_BATCH_ROWS = 5000
"""Rows rendered per read of the COPY stream (about 300 KB of the benchmark's events)."""


Encode = Callable[[pd.DataFrame], "dict[str, list[str | None]] | None"]
"""Rows -> the texts of their JSON columns (``TableStore.json_texts``)."""

_SPECIAL = ("\\", "\t", "\n", "\r")
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _escape(vals: list[str]) -> list[str]:
    """COPY text escapes (backslash, tab, newline, carriage return); one scan when none is needed."""
    joined = "".join(vals)
    if not any(ch in joined for ch in _SPECIAL):
        return vals
    return [v.translate(_ESCAPES) for v in vals]


def _nulls(s: pd.Series) -> np.ndarray:
    if s.dtype != object:
        return s.isna().to_numpy()
    return np.fromiter((v is None or v is pd.NA or (isinstance(v, float) and v != v) for v in s.tolist()), bool, len(s))


def _column_text(col: sa.Column, s: pd.Series, encoded: list[str | None] | None = None) -> list[str]:
    """One column rendered in COPY's text format, ``\\N`` for NULL. ``encoded``: a JSON column's values
    already serialised (None for NULL)."""
    t = col.type
    if encoded is not None:
        if None not in encoded:
            return _escape(encoded)  # type: ignore[arg-type]
        txt = _escape(["" if v is None else v for v in encoded])
        return [r"\N" if e is None else v for v, e in zip(txt, encoded, strict=True)]
    same = _constant_text(t, s)
    if same is not None:
        return [same] * len(s)
    na = _nulls(s)
    if na.all():
        return [r"\N"] * len(s)
    vals = s.tolist()
    if isinstance(t, sa.JSON):
        encode = json_encoder(strict=False)
        txt = _escape(["" if m else encode(v) for v, m in zip(vals, na, strict=True)])
    elif isinstance(t, sa.Boolean):
        txt = ["t" if not m and v else "f" for v, m in zip(vals, na, strict=True)]
    elif isinstance(t, sa.LargeBinary):
        txt = ["" if m else "\\\\x" + bytes(v).hex() for v, m in zip(vals, na, strict=True)]
    elif isinstance(t, (sa.Integer, sa.Float, sa.Numeric)) and s.dtype != object:
        txt = list(map(str, vals))
    elif isinstance(t, (sa.DateTime, sa.Date, sa.Time)):
        txt = ["" if m else (v.isoformat() if hasattr(v, "isoformat") else str(v)) for v, m in zip(vals, na, strict=True)]
    else:
        txt = _escape(["" if m else str(v) for v, m in zip(vals, na, strict=True)])
    if na.any():
        txt = [r"\N" if m else v for v, m in zip(txt, na, strict=True)]
    return txt


def _constant_text(t: sa.types.TypeEngine, s: pd.Series) -> str | None:
    """The text of a numeric column whose values are all the same (bit for bit: ``-0.0`` is not ``0.0``,
    no NaN), such as a write's timestamps; None otherwise. Rendered once instead of once per row."""
    if not len(s) or not isinstance(t, (sa.Integer, sa.Float, sa.Numeric)) or s.dtype.kind not in "if":
        return None
    if isinstance(s.dtype, pd.api.extensions.ExtensionDtype):
        return None
    v = s.to_numpy()
    bits = v.view(np.int64) if v.dtype == np.float64 else v
    if v.dtype.itemsize != 8 or not (bits == bits[0]).all() or (v.dtype.kind == "f" and np.isnan(v[0])):
        return None
    return str(v[:1].tolist()[0])


def in_key_order(table: sa.Table, df: pd.DataFrame, encoded: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The rows of ``df`` (and their ``encoded`` texts, aligned by position) in the order of ``table``'s
    primary key, for a bulk insert: an index then takes its new entries page by page instead of one
    random page per row where several of them share a page (ingest of 1M events, 100,000 rows a write:
    1.05x on PostgreSQL, 1.13x on SQLite; at 10M each key still lands on a page of its own), and a
    write's rows lie together by key. Unchanged when some key column is not in ``df``."""
    pks = [c.name for c in table.primary_key.columns]
    if not pks or any(k not in df.columns for k in pks):
        return df, encoded
    order = key_order(df, pks)
    if order is None:
        return df, encoded
    return df.iloc[order], None if encoded is None else encoded.iloc[order]


def _pg_quote(name: str) -> str:
    """A PostgreSQL identifier, always quoted. Not SQLAlchemy's preparer: for the psycopg2 dialect it
    doubles ``%`` (its paramstyle is ``pyformat``), but ``copy_expert`` substitutes no parameters, so a
    table ``a%b`` would become ``a%%b``. Quoting the exact name matches what SQLAlchemy created (it
    quotes any name that is not all lower case, and an all-lower-case name reads the same quoted)."""
    return '"' + name.replace('"', '""') + '"'


def copy_frame(
    conn: sa.Connection, table: sa.Table, df: pd.DataFrame, encoded: pd.DataFrame | None = None, encode: Encode | None = None
) -> bool:
    """Insert the rows of ``df`` with COPY on the connection's transaction; False when the driver cannot
    (nothing is then done: ``encode`` not called).

    ``encoded``: JSON columns already serialised (by the row hash), aligned with ``df``, copied as they are.
    ``encode``: called with each batch of rows as it is sent, returns the texts of its JSON columns (the
    caller keeps them to hash the rows); its errors are raised as they are.
    """
    dbapi = conn.connection.driver_connection
    if dbapi is None:
        return False
    cursor = dbapi.cursor()
    if not hasattr(cursor, "copy_expert"):  # psycopg2 only; other drivers take the INSERT path
        cursor.close()
        return False
    cols = [c for c in table.columns if c.name in df.columns]
    stream = _CopyStream(cols, df, encoded, encode)
    names = ", ".join(_pg_quote(c.name) for c in cols)
    target = _pg_quote(table.name) if table.schema is None else f"{_pg_quote(table.schema)}.{_pg_quote(table.name)}"
    try:
        cursor.copy_expert(f"COPY {target} ({names}) FROM STDIN", stream)
    except Exception:
        if stream.error is not None:  # the driver reports a failed read() as its own error: raise ours
            raise stream.error from None
        raise
    finally:
        cursor.close()
    return True


class _CopyStream:
    """COPY text of ``df``'s rows, ``COPY_BATCH_ROWS`` at a time, rendered on each ``read`` (the driver's
    file interface). An error rendering a batch is kept in ``error`` (the driver replaces it)."""

    def __init__(self, cols: list[sa.Column], df: pd.DataFrame, encoded: pd.DataFrame | None, encode: Encode | None):
        self.cols = cols
        self.df = df
        self.encoded = [_encoded(encoded, c) for c in cols]
        self.encode = encode
        self.pos = 0
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> str:
        start, n = self.pos, len(self.df)
        if start >= n or not self.cols:
            return ""
        stop = min(n, start + COPY_BATCH_ROWS)
        self.pos = stop
        try:
            part = self.df.iloc[start:stop]
            fresh = (self.encode(part) or {}) if self.encode is not None else {}
            texts = [
                _column_text(c, part[c.name], fresh[c.name] if c.name in fresh else (None if e is None else e[start:stop]))
                for c, e in zip(self.cols, self.encoded, strict=True)
            ]
            return "\n".join(map("\t".join, zip(*texts, strict=True))) + "\n"
        except BaseException as e:
            self.error = e
            raise


def _encoded(encoded: pd.DataFrame | None, col: sa.Column) -> list[str | None] | None:
    if encoded is None or col.name not in encoded.columns or not isinstance(col.type, sa.JSON):
        return None
    return encoded[col.name].tolist()


def executemany_frame(conn: sa.Connection, table: sa.Table, df: pd.DataFrame, encoded: pd.DataFrame | None = None) -> None:
    """``INSERT`` the rows of ``df`` through the driver's ``executemany`` with tuples, converting each column
    once with its type's bind processor (what SQLAlchemy would do per row), in the caller's transaction.
    JSON columns in ``encoded`` are already serialised and bound as they are."""
    from datapipe_dagster.store.records import plain_list

    cols = [c for c in table.columns if c.name in df.columns]
    lists = []
    for c in cols:
        done = _encoded(encoded, c)
        if done is not None:
            lists.append(done)
            continue
        vals = plain_list(df[c.name])
        proc = c.type.bind_processor(conn.dialect)
        if proc is not None:
            vals = [None if v is None else proc(v) for v in vals]
        lists.append(vals)
    prep = conn.dialect.identifier_preparer
    names = ", ".join(prep.quote(c.name) for c in cols)
    marks = ", ".join(["?"] * len(cols)) if conn.dialect.paramstyle == "qmark" else ", ".join(["%s"] * len(cols))
    conn.exec_driver_sql(
        f"INSERT INTO {prep.format_table(table)} ({names}) VALUES ({marks})", list(zip(*lists, strict=True))
    )
