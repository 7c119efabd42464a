"""PostgreSQL ``COPY … FROM STDIN`` for bulk inserts of new rows (about 3x a batched INSERT here).

Values are rendered in COPY's text format: ``\\N`` for NULL, backslash escapes for the separators. JSON
columns get their values JSON-encoded, exactly as SQLAlchemy's JSON type does on INSERT (a Python string
becomes a JSON string).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

COPY_MIN_ROWS = 500
"""Below this, a batched INSERT is as fast and simpler."""


def _escape(text: str) -> str:
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


def _converter(col: sa.Column) -> Callable[[Any], str]:
    t = col.type
    if isinstance(t, sa.JSON):
        return lambda v: _escape(json.dumps(v))
    if isinstance(t, sa.Boolean):
        return lambda v: "t" if v else "f"
    if isinstance(t, sa.LargeBinary):
        return lambda v: "\\\\x" + bytes(v).hex()
    if isinstance(t, (sa.Float, sa.Numeric)):
        return lambda v: "NaN" if isinstance(v, float) and math.isnan(v) else repr(v)

    def text(v: Any) -> str:
        if isinstance(v, (dt.datetime, dt.date, dt.time)):
            return v.isoformat()
        return _escape(v if isinstance(v, str) else str(v))

    return text


def copy_rows(conn: sa.Connection, table: sa.Table, records: list[dict[str, Any]]) -> bool:
    """Insert ``records`` with COPY on the connection's transaction; False when the driver cannot."""
    dbapi = conn.connection.driver_connection
    cursor = dbapi.cursor()
    if not hasattr(cursor, "copy_expert"):  # psycopg2 only; other drivers take the INSERT path
        cursor.close()
        return False
    cols = [c for c in table.columns if c.name in records[0]]
    convs = [_converter(c) for c in cols]
    buf = io.StringIO()
    for r in records:
        buf.write(
            "\t".join("\\N" if (v := r[c.name]) is None else f(v) for c, f in zip(cols, convs, strict=True))
        )
        buf.write("\n")
    buf.seek(0)
    prep = conn.dialect.identifier_preparer
    names = ", ".join(prep.quote(c.name) for c in cols)
    try:
        cursor.copy_expert(f"COPY {prep.format_table(table)} ({names}) FROM STDIN", buf)
    finally:
        cursor.close()
    return True
