"""Key filters for one batch of keys from ``sql.key_batches``: ``(cols) IN (values)``, written so that
SQLite seeks the key index for a list of multi-column keys instead of scanning the table.

SQLite plans a plain row-value list, ``(a, b) IN (VALUES …)``, as a scan of the whole table. Two ways
let it seek (``EXPLAIN QUERY PLAN``, SQLite 3.40):

- the list as a subquery, ``(a, b) IN (SELECT * FROM (VALUES …))``: one seek of every key column per
  key, when the key columns have one affinity class (all text, or all numeric: integer, real, numeric,
  which dates and times are). With mixed classes SQLite seeks only a prefix of them.
- the leading column's list beside it, ``a IN (…) AND (a, b) IN (VALUES …)``: a seek of ``a`` per value,
  then every index entry of that ``a`` checked against the list.

So keys of one class take the subquery (1,000 changed events of a 1M-row table: the metadata of 1,000
keys sought, not the entries of every event of their 1,000 users), and mixed keys the leading column.
PostgreSQL plans a row-value list as index lookups already: it gets the plain list.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.sqltypes import TupleType

_SQLITE = sqlite.dialect()


class _RowsInValues(FunctionElement[bool]):
    """``(cols) IN (SELECT * FROM (VALUES (…), …))``."""

    inherit_cache = True
    type = sa.Boolean()
    name = "dp_rows_in_values"
    _is_implicitly_boolean = True  # a condition, not a value: no ``= 1`` appended where booleans are integers


@compiles(_RowsInValues)
def _render_rows_in_values(element: _RowsInValues, compiler: Any, **kw: Any) -> str:
    row, values = element.clauses.clauses
    return f"{compiler.process(row, **kw)} IN (SELECT * FROM {compiler.process(values, **kw)})"


@lru_cache(maxsize=1024)
def _affinity_class(t: sa.types.TypeEngine[Any]) -> str:
    """SQLite's column affinity of a declared type (its rules on the type's name), as ``text``,
    ``numeric`` (INTEGER, REAL and NUMERIC affinities) or ``blob``. Cached by type object (a table's
    columns keep theirs): compiling the type costs more than the lookup it decides."""
    name = t.compile(dialect=_SQLITE).upper()
    if "INT" in name:
        return "numeric"
    if any(s in name for s in ("CHAR", "CLOB", "TEXT")):
        return "text"
    if "BLOB" in name or not name:
        return "blob"
    return "numeric"


def seeks_by_subquery(table: sa.Table | sa.FromClause, columns: list[str]) -> bool:
    """Whether SQLite seeks every one of ``columns`` for a key of the subquery list (one affinity class)."""
    classes = {_affinity_class(table.c[c].type) for c in columns}
    return len(classes) == 1 and classes != {"blob"}


def _row(table: sa.Table | sa.FromClause, columns: list[str]) -> sa.Tuple:
    return sa.tuple_(*[table.c[c] for c in columns])


def _lead(values: list[Any]) -> list[Any]:
    """The distinct leading values of a batch of multi-column keys."""
    return list(dict.fromkeys(v[0] for v in values))


def _param(name: str, values: list[Any] | None, type_: Any = None) -> sa.BindParameter[Any]:
    """An expanding parameter: left to ``key_params`` (``values`` None), or holding ``values``."""
    if values is None:
        return sa.bindparam(name, expanding=True, type_=type_)
    return sa.bindparam(name, values, expanding=True, type_=type_, unique=True)


def _clause(table: sa.Table | sa.FromClause, columns: list[str], seek: bool, values: list[Any] | None) -> sa.ColumnElement[bool]:
    if len(columns) == 1:
        return table.c[columns[0]].in_(_param("dp_keys", values))
    row = _row(table, columns)
    if not seek:
        return row.in_(_param("dp_keys", values))
    if seeks_by_subquery(table, columns):
        return _RowsInValues(row, _param("dp_keys", values, TupleType(*[table.c[c].type for c in columns])))
    lead = _param("dp_lead", None if values is None else _lead(values))
    return sa.and_(table.c[columns[0]].in_(lead), row.in_(_param("dp_keys", values)))


def key_clause(table: sa.Table | sa.FromClause, columns: list[str], values: list[Any], seek: bool = False) -> sa.ColumnElement[bool]:
    """``(cols) IN (values)`` for one batch of ``values`` (scalars for one column, tuples for several).
    ``seek``: pass it on SQLite, for a plan that seeks the key index (the module's docstring)."""
    return _clause(table, columns, seek, values)


def key_clause_bound(table: sa.Table | sa.FromClause, columns: list[str], seek: bool = False) -> sa.ColumnElement[bool]:
    """``key_clause`` with its values left to expanding bind parameters (the same SQL): a statement built
    once and run with ``key_params``, when building it would cost more than running it."""
    return _clause(table, columns, seek, None)


def key_params(
    tables: Sequence[sa.Table | sa.FromClause], columns: list[str], values: list[Any], seek: bool = False
) -> dict[str, list[Any]]:
    """The parameters of ``key_clause_bound(t, columns, seek)`` for each of ``tables`` in one statement,
    for one batch of ``values``."""
    if len(columns) == 1 or not seek or all(seeks_by_subquery(t, columns) for t in tables):
        return {"dp_keys": values}
    return {"dp_keys": values, "dp_lead": _lead(values)}
