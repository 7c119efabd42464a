"""The SQL that finds a transform's stale keys, and its key sets.

A key is stale when an input row under it was written or deleted after the key was last processed
(``seq > processed_seq``), when it was never processed, or when its last attempt failed. Each input
contributes by how much of the transform key it carries:

- *full* inputs hold every key column: rows above the watermark, left-joined to the transform metadata;
- *partial* inputs hold some key columns: their changed rows make every processed key sharing them stale;
- *keyless* inputs (a small config table) hold none: any change makes every processed key stale;
- *factor* inputs: when no input holds every key column, the keys are the join of the inputs' key
  values (a cross product where they share no column, datapipe's cross join). A changed row makes stale
  the processed keys sharing its values and the new keys it forms with the other factors' live rows.

An input may carry a key column under another name (``Input(table, keys={"user_id": "author_id"})``):
its role maps the transform's names to its own.

Only rows above the per-input watermark are scanned (an index range on ``seq``), so the cost follows
what changed, not the table's size; a table whose watermark has reached the current sequence value (nothing
written anywhere since) is not queried at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.compute.datatable import DataTable
from datapipe_dagster.meta.tables import TransformMetaTable
from datapipe_dagster.store import paged
from datapipe_dagster.store.paged import FoundKeys, iter_row_pages

Watermark = int | sa.BindParameter[int]
"""A watermark's value, or the parameter a cached query takes it from."""


@dataclass
class InputRole:
    dt: DataTable
    shared: list[str]  # transform-key columns this input carries in its primary key (transform's names)
    kind: str  # "full" | "partial" | "factor" | "keyless" | "output"
    aliases: dict[str, str] = field(default_factory=dict)  # transform key -> the table's column

    @property
    def mark(self) -> str:
        """The name this role's watermark is kept under."""
        if self.kind == "output":
            return f"out:{self.dt.name}"
        if self.aliases:
            return self.dt.name + "[" + ",".join(f"{k}={c}" for k, c in sorted(self.aliases.items())) + "]"
        return self.dt.name

    def col(self, key: str) -> str:
        """The table's column for transform key ``key``."""
        return self.aliases.get(key, key)

    def key_columns(self, table: sa.FromClause) -> list[sa.ColumnElement]:
        """``table``'s (the row metadata's) columns for the shared keys, labelled with the transform's names."""
        return [table.c[self.col(k)].label(k) for k in self.shared]

    def to_table_names(self, df: pd.DataFrame) -> pd.DataFrame:
        return df.rename(columns=self.aliases) if self.aliases else df

    def to_key_names(self, df: pd.DataFrame) -> pd.DataFrame:
        return df.rename(columns={c: k for k, c in self.aliases.items()}) if self.aliases else df


def output_roles(output_dts: list[DataTable], keys: list[str]) -> list[InputRole]:
    """Outputs swept for rows under keys the transform never processed (written before its first run,
    or by a step it replaced): such keys are stale, so processing them deletes what no key produces."""
    return [InputRole(dt, list(keys), "output") for dt in output_dts]


def classify_inputs(
    input_dts: list[DataTable], keys: list[str], aliases: list[dict[str, str]] | None = None
) -> list[InputRole]:
    """The role of each input (``aliases``: per input, transform key -> the table's column)."""
    from datapipe_dagster.compute.spec import effective_keys

    roles = []
    for i, dt in enumerate(input_dts):
        al = dict(aliases[i]) if aliases else {}
        pks = effective_keys(dt, al)
        shared = [k for k in keys if k in pks]
        kind = "full" if len(shared) == len(keys) and keys else ("partial" if shared else "keyless")
        roles.append(InputRole(dt, shared, kind, {k: c for k, c in al.items() if k in shared}))
    if keys and not any(r.kind == "full" for r in roles):
        for r in roles:
            if r.kind == "partial":
                r.kind = "factor"
    return roles


def factor_indexes(roles: list[InputRole], keys: list[str]) -> list[list[str]]:
    """Transform-state indexes for inputs holding part of the key (factors of a cross join, partial
    inputs): one per such key-column set that is not a prefix of the state's primary key, so a changed
    row finds the processed keys holding its values by index. Created with the state table."""
    out: list[list[str]] = []
    for r in roles:
        if r.kind in ("factor", "partial") and r.shared != keys[: len(r.shared)] and r.shared not in out:
            out.append(list(r.shared))
    return out


def join_factors(
    roles: list[InputRole],
    start: sa.FromClause,
    provided: dict[str, sa.ColumnElement],
    skip: InputRole | None,
) -> tuple[sa.FromClause, dict[str, sa.ColumnElement]]:
    """``start`` joined to the live row metadata of every factor but ``skip``, on the key columns they
    share (a cross join where none); returns the join and the column that provides each key."""
    src = start
    provided = dict(provided)
    for n, r in enumerate(x for x in roles if x.kind == "factor" and x is not skip):
        mo = r.dt.meta.table.alias(f"factor_{n}")
        on = [mo.c[r.col(k)] == provided[k] for k in r.shared if k in provided]
        src = src.join(mo, sa.and_(mo.c.delete_ts.is_(None), *on))
        for k in r.shared:
            provided.setdefault(k, mo.c[r.col(k)])
    return src, provided


def stale_keys_query(
    conn: sa.Connection,
    roles: list[InputRole],
    tmeta: TransformMetaTable,
    keys: list[str],
    watermarks: dict[str, int],
    current: int,
    include_failed: bool = True,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Stale keys (``keys`` columns) and the new watermark per input table.

    ``include_failed=False`` leaves out keys whose last attempt failed unless an input row of theirs
    changed since (a sensor must not retry a failing key on every unrelated write).

    Every input asked, and the failed keys, come in one statement (a ``UNION ALL`` whose rows carry the
    role they come from): a one-key run waited on a round trip per input before.
    """
    n = len(keys)
    found = FoundKeys(keys)
    new_marks: dict[str, int] = {}
    asked: list[int] = []
    params: dict[str, int] = {}
    for i, role in enumerate(roles):
        wm = watermarks.get(role.mark, 0)
        # At or past ``current`` (read before this query) no row of the table can be above the
        # watermark: an idle run asks nothing here.
        if wm >= current:
            new_marks[role.mark] = current
        elif role.kind == "keyless":  # asks a query of its own first: not part of the cached statement
            stmt = role_stale_query(conn, role, roles, tmeta.table, keys, wm)
            low = None if stmt is None else _scan(conn, stmt, found, n)
            new_marks[role.mark] = current if low is None else low - 1
        else:
            asked.append(i)
            params[f"{WM_PARAM}_{i}"] = wm
    if not asked and not include_failed:
        return found.frame(), new_marks
    lows: dict[int, int] = {}
    # In pages: a first run's stale keys are every key (see store.paged). Streamed unless the rows are
    # known to be few: a full input or swept output gives at most a row per sequence number above its
    # watermark (a concurrent write adds its own few); an input holding part of the key may fan out.
    span = sum(current - wm for wm in params.values())
    stream = span > paged.PAGE_ROWS or any(roles[i].kind not in ("full", "output") for i in asked)
    stmt = _cached_union(conn, roles, tmeta, keys, asked, include_failed)
    for rows in iter_row_pages(conn, stmt, params, stream=stream):
        for r in rows:
            i, seq = r[n + 1], r[n]
            if i >= 0 and (i not in lows or seq < lows[i]):
                lows[i] = seq
        found.add(rows)
    for i in asked:
        new_marks[roles[i].mark] = int(lows[i]) - 1 if i in lows else current
    return found.frame(), new_marks


def _scan(conn: sa.Connection, stmt: sa.Executable, found: FoundKeys, n: int) -> int | None:
    """Add the keys of ``stmt`` (key columns, then ``min_seq``) to ``found``; returns its oldest
    ``min_seq`` (None: no row)."""
    low = None
    for rows in iter_row_pages(conn, stmt, {}):
        page_low = min(r[n] for r in rows)
        low = page_low if low is None else min(low, page_low)
        found.add(rows)
    return None if low is None else int(low)


WM_PARAM = "dp_watermark"
"""The bound parameters a cached stale-key query takes its watermarks from (one per role: ``_<i>``)."""


def _role_signature(role: InputRole) -> tuple[object, ...]:
    return (role.kind, role.dt.meta.table, tuple(role.shared), tuple(sorted(role.aliases.items())))


def _cached_union(
    conn: sa.Connection,
    roles: list[InputRole],
    tmeta: TransformMetaTable,
    keys: list[str],
    asked: list[int],
    include_failed: bool,
) -> sa.Select | sa.CompoundSelect:
    """The stale keys of the roles ``asked`` (their indexes) and, with ``include_failed``, the failed
    keys, as one statement of rows (key columns, ``min_seq``, role index; -1 for a failed key), each
    watermark a parameter. Built once per transform and set of roles: a one-key run spent more on
    building its queries than on running them."""
    sig = ("stale", tuple(_role_signature(r) for r in roles), tuple(keys), tuple(asked), include_failed)
    stmt = tmeta.statements.get(sig)
    if stmt is not None:
        return stmt
    t = tmeta.table
    parts: list[sa.Select] = []
    for i in asked:
        wm = sa.bindparam(f"{WM_PARAM}_{i}", type_=sa.BigInteger)
        q = role_stale_query(conn, roles[i], roles, t, keys, wm, tag=str(i))
        assert q is not None  # only a keyless input's query can be None, and it is asked apart
        tagged = sa.literal_column(str(i), sa.Integer).label("dp_role")
        branches = q.selects if isinstance(q, sa.CompoundSelect) else [q]
        parts += [b.add_columns(tagged) for b in branches if isinstance(b, sa.Select)]
    if include_failed:
        none = sa.cast(sa.null(), sa.BigInteger).label("min_seq")
        parts.append(
            sa.select(
                *[t.c[k] for k in keys], none, sa.literal_column("-1", sa.Integer).label("dp_role")
            ).where(t.c.is_success.is_(False))
        )
    stmt = parts[0] if len(parts) == 1 else sa.union_all(*parts)
    tmeta.statements[sig] = stmt
    return stmt


def role_stale_query(
    conn: sa.Connection,
    role: InputRole,
    roles: list[InputRole],
    t: sa.Table,
    keys: list[str],
    wm: Watermark,
    tag: str = "",
) -> sa.Select | sa.CompoundSelect | None:
    """The keys one input (or swept output) makes stale above its watermark ``wm``, with ``min_seq``, the
    oldest row that makes each stale; None when nothing of it changed (a keyless input asked directly)."""
    if role.kind == "output":
        return _orphan_outputs(role, t, keys, wm, tag)
    if role.kind == "keyless":
        return _keyless_changed(conn, role, t, keys, wm)
    changed = _changed_rows(role, wm, tag)
    on = sa.and_(*[changed.c[k] == t.c[k] for k in role.shared])
    if role.kind == "factor":
        return sa.union_all(
            _factor_processed(changed, t, on, keys), _factor_new(roles, role, changed, t, keys)
        )
    if role.kind == "full":
        return _full_changed(changed, t, on, keys)
    return _factor_processed(changed, t, on, keys)  # partial: the processed keys sharing its values


def _changed_rows(role: InputRole, wm: Watermark, tag: str) -> sa.CTE:
    """An input's rows above the watermark, taken from the seq index and materialised: left to itself,
    SQLite would walk the whole table in key order to serve the GROUP BY. ``tag`` tells apart the CTEs
    of two roles of one table in one statement."""
    m = role.dt.meta.table
    return (
        sa.select(*role.key_columns(m), m.c.seq, m.c.delete_ts)
        .where(m.c.seq > wm)
        .cte(f"changed{tag}_{role.dt.name}")
        .prefix_with("MATERIALIZED")
    )


def _full_changed(changed: sa.CTE, t: sa.Table, on: sa.ColumnElement[bool], keys: list[str]) -> sa.Select:
    """Keys of a full input's changed rows that were never processed or processed before the change."""
    return (
        sa.select(*[changed.c[k] for k in keys], sa.func.min(changed.c.seq))
        .select_from(changed.outerjoin(t, on))
        # A deleted row of a key never processed counts too: a processor may be computing that key from
        # the row right now, and its commit (marked below the delete) must be overtaken, or the key's
        # outputs would outlive its inputs.
        .where(sa.or_(t.c[keys[0]].is_(None), changed.c.seq > t.c.processed_seq))
        .group_by(*[changed.c[k] for k in keys])
    )


def _orphan_outputs(role: InputRole, t: sa.Table, keys: list[str], wm: Watermark, tag: str) -> sa.Select:
    """Keys of live output rows above the watermark that the transform never processed."""
    m = role.dt.meta.table
    fresh = (
        sa.select(*[m.c[k] for k in keys], m.c.seq)
        .where(m.c.seq > wm, m.c.delete_ts.is_(None))
        .cte(f"out{tag}_{role.dt.name}")
        .prefix_with("MATERIALIZED")
    )
    on = sa.and_(*[fresh.c[k] == t.c[k] for k in keys])
    return (
        sa.select(*[fresh.c[k] for k in keys], sa.func.min(fresh.c.seq))
        .select_from(fresh.outerjoin(t, on))
        .where(t.c[keys[0]].is_(None))
        .group_by(*[fresh.c[k] for k in keys])
    )


def _keyless_changed(
    conn: sa.Connection, role: InputRole, t: sa.Table, keys: list[str], wm: Watermark
) -> sa.Select | None:
    """Every key processed before a keyless input's newest change (None: it did not change)."""
    assert isinstance(wm, int)  # a keyless input's query runs a query of its own: never cached
    m = role.dt.meta.table
    top = conn.execute(sa.select(sa.func.max(m.c.seq)).where(m.c.seq > wm)).scalar()
    if top is None:
        return None
    return sa.select(*[t.c[k] for k in keys], sa.literal(wm + 1, sa.BigInteger)).where(
        t.c.processed_seq < top
    )


def _factor_processed(changed: sa.CTE, t: sa.Table, on: sa.ColumnElement[bool], keys: list[str]) -> sa.Select:
    """Processed keys sharing a changed row's key values (the row changed after they were processed)."""
    return (
        sa.select(*[t.c[k] for k in keys], sa.func.min(changed.c.seq).label("min_seq"))
        .select_from(changed.join(t, on))
        .where(changed.c.seq > t.c.processed_seq)
        .group_by(*[t.c[k] for k in keys])
    )


def _factor_new(
    roles: list[InputRole], role: InputRole, changed: sa.CTE, t: sa.Table, keys: list[str]
) -> sa.Select:
    """Keys never processed that a changed row of factor ``role`` forms with the other factors' live
    rows: the changed rows (few, from the seq index) joined to the others, not the whole product. A
    deleted row counts too (as for full inputs): a processor may be computing its keys right now."""
    src, provided = join_factors(roles, changed, {k: changed.c[k] for k in role.shared}, role)
    cols = [provided[k] for k in keys]
    on = sa.and_(*[t.c[k] == provided[k] for k in keys])
    return (
        sa.select(
            *[c.label(k) for c, k in zip(cols, keys, strict=True)],
            sa.func.min(changed.c.seq).label("min_seq"),
        )
        .select_from(src.outerjoin(t, on))
        .where(t.c[keys[0]].is_(None))
        .group_by(*cols)
    )
