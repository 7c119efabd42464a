"""A transform's key sets beyond the stale ones: every key it knows (a reparse), and the keys sharing
values with a changed row of an input holding part of the key (a changelist)."""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.compute.stale import InputRole, join_factors
from datapipe_dagster.meta.tables import TransformMetaTable
from datapipe_dagster.store.paged import fetch_frame_paged
from datapipe_dagster.store.sql import fetch_by_keys, fetch_frame


def all_keys_query(
    conn: sa.Connection, roles: list[InputRole], tmeta: TransformMetaTable, keys: list[str]
) -> pd.DataFrame:
    """Every key the transform knows: live keys of its full inputs and swept outputs, and keys it
    processed before."""
    t = tmeta.table
    selects = [sa.select(*[t.c[k] for k in keys])]
    for role in roles:
        if role.kind in ("full", "output"):
            m = role.dt.meta.table
            selects.append(
                sa.select(*[m.c[role.col(k)].label(k) for k in keys]).where(m.c.delete_ts.is_(None))
            )
    factors = [r for r in roles if r.kind == "factor"]
    if factors:
        first = factors[0]
        m0 = first.dt.meta.table.alias("factor_first")
        src, provided = join_factors(roles, m0, {k: m0.c[first.col(k)] for k in first.shared}, first)
        selects.append(
            sa.select(*[provided[k].label(k) for k in keys]).select_from(src).where(m0.c.delete_ts.is_(None))
        )
    return fetch_frame_paged(conn, sa.union(*selects), keys)


def keys_matching(
    conn: sa.Connection,
    roles: list[InputRole],
    tmeta: TransformMetaTable,
    keys: list[str],
    idx: pd.DataFrame,
    changed: InputRole | None = None,
) -> pd.DataFrame:
    """Transform keys that share values with ``idx`` (a partial-key change, transform's names): from the
    full inputs and the transform metadata; for a change of factor ``changed``, also the keys the values
    form with the other factors' live rows."""

    sub = [c for c in idx.columns if c in keys]
    t = tmeta.table
    frames = [fetch_by_keys(conn, sa.select(*[t.c[k] for k in keys]), t, sub, idx, keys)]
    for role in roles:
        if role.kind == "full":
            m = role.dt.meta.table
            base = sa.select(*[m.c[role.col(k)] for k in keys]).where(m.c.delete_ts.is_(None)).distinct()
            found = fetch_by_keys(
                conn,
                base,
                m,
                [role.col(k) for k in sub],
                role.to_table_names(idx),
                [role.col(k) for k in keys],
            )
            frames.append(role.to_key_names(found))
    if changed is not None and changed.kind == "factor":
        frames.append(factor_keys(conn, roles, changed, idx[sub]))
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({k: [] for k in keys})
    return pd.concat(frames, ignore_index=True).drop_duplicates().reset_index(drop=True)


def factor_keys(
    conn: sa.Connection, roles: list[InputRole], changed: InputRole, idx: pd.DataFrame
) -> pd.DataFrame:
    """The keys that ``idx`` (values of factor ``changed``'s key columns) forms with the other factors'
    live rows: each factor is read by the values it shares with what is known so far (all its live key
    values when it shares none)."""
    acc = idx[changed.shared].drop_duplicates()
    for r in roles:
        if r.kind != "factor" or r is changed or len(acc) == 0:
            continue
        m = r.dt.meta.table
        base = sa.select(*r.key_columns(m)).where(m.c.delete_ts.is_(None)).distinct()
        common = [k for k in r.shared if k in acc.columns]
        if common:
            rows = r.to_key_names(
                fetch_by_keys(
                    conn, base, m, [r.col(k) for k in common], r.to_table_names(acc[common]), r.shared
                )
            )
            acc = acc.merge(rows.drop_duplicates(), on=common, how="inner")
        else:
            acc = acc.merge(fetch_frame(conn, base, r.shared), how="cross")
    return acc
