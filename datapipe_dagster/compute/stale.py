"""The SQL that finds a transform's stale keys, and its key sets.

A key is stale when an input row under it was written or deleted after the key was last processed
(``seq > processed_seq``), when it was never processed, or when its last attempt failed. Each input
contributes by how much of the transform key it carries:

- *full* inputs hold every key column: rows above the watermark, left-joined to the transform metadata;
- *partial* inputs hold some key columns: their changed rows make every processed key sharing them stale;
- *keyless* inputs (a small config table) hold none: any change makes every processed key stale.

Only rows above the per-input watermark are scanned (an index range on ``seq``), so the cost follows
what changed, not the table's size; a table whose watermark has reached the current sequence value (nothing
written anywhere since) is not queried at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.compute.datatable import DataTable
from datapipe_dagster.meta.tables import TransformMetaTable
from datapipe_dagster.store.sql import fetch_frame


@dataclass
class InputRole:
    dt: DataTable
    shared: list[str]  # transform-key columns this input carries in its primary key
    kind: str  # "full" | "partial" | "keyless" | "output"

    @property
    def mark(self) -> str:
        """The name this role's watermark is kept under."""
        return f"out:{self.dt.name}" if self.kind == "output" else self.dt.name


def output_roles(output_dts: list[DataTable], keys: list[str]) -> list[InputRole]:
    """Outputs swept for rows under keys the transform never processed (written before its first run,
    or by a step it replaced): such keys are stale, so processing them deletes what no key produces."""
    return [InputRole(dt, list(keys), "output") for dt in output_dts]


def classify_inputs(input_dts: list[DataTable], keys: list[str]) -> list[InputRole]:
    roles = []
    for dt in input_dts:
        shared = [k for k in keys if k in dt.primary_keys]
        kind = "full" if len(shared) == len(keys) and keys else ("partial" if shared else "keyless")
        roles.append(InputRole(dt, shared, kind))
    return roles


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
    """
    t = tmeta.table
    frames: list[pd.DataFrame] = []
    new_marks: dict[str, int] = {}
    for role in roles:
        m = role.dt.meta.table
        wm = watermarks.get(role.mark, 0)
        if wm >= current:
            # Every sequence number up to ``current`` (read before this query) is at or below the
            # watermark: no row of this table can be above it, so an idle run asks nothing here.
            new_marks[role.mark] = current
            continue
        if role.kind == "output":
            fresh = (
                sa.select(*[m.c[k] for k in keys], m.c.seq)
                .where(m.c.seq > wm, m.c.delete_ts.is_(None))
                .cte(f"out_{role.dt.name}")
                .prefix_with("MATERIALIZED")
            )
            on = sa.and_(*[fresh.c[k] == t.c[k] for k in keys])
            stmt = (
                sa.select(*[fresh.c[k] for k in keys], sa.func.min(fresh.c.seq))
                .select_from(fresh.outerjoin(t, on))
                .where(t.c[keys[0]].is_(None))
                .group_by(*[fresh.c[k] for k in keys])
            )
        elif role.kind in ("full", "partial"):
            # The rows above the watermark come first, from the seq index, materialised: left to itself,
            # SQLite would walk the whole table in key order to serve the GROUP BY.
            changed = (
                sa.select(*[m.c[k] for k in role.shared], m.c.seq, m.c.delete_ts)
                .where(m.c.seq > wm)
                .cte(f"changed_{role.dt.name}")
                .prefix_with("MATERIALIZED")
            )
            on = sa.and_(*[changed.c[k] == t.c[k] for k in role.shared])
            if role.kind == "full":
                stmt = (
                    sa.select(*[changed.c[k] for k in keys], sa.func.min(changed.c.seq))
                    .select_from(changed.outerjoin(t, on))
                    .where(
                        sa.or_(
                            sa.and_(t.c[keys[0]].is_(None), changed.c.delete_ts.is_(None)),
                            changed.c.seq > t.c.processed_seq,
                        )
                    )
                    .group_by(*[changed.c[k] for k in keys])
                )
            else:
                stmt = (
                    sa.select(*[t.c[k] for k in keys], sa.func.min(changed.c.seq))
                    .select_from(changed.join(t, on))
                    .where(changed.c.seq > t.c.processed_seq)
                    .group_by(*[t.c[k] for k in keys])
                )
        else:
            top = conn.execute(sa.select(sa.func.max(m.c.seq)).where(m.c.seq > wm)).scalar()
            if top is None:
                new_marks[role.mark] = current
                continue
            stmt = sa.select(*[t.c[k] for k in keys], sa.literal(wm + 1, sa.BigInteger)).where(t.c.processed_seq < top)
        df = fetch_frame(conn, stmt, keys + ["min_seq"])
        new_marks[role.mark] = int(df["min_seq"].min()) - 1 if len(df) else current
        frames.append(df[keys])
    if include_failed:
        failed = fetch_frame(conn, sa.select(*[t.c[k] for k in keys]).where(t.c.is_success.is_(False)), keys)
        frames.append(failed)
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({k: [] for k in keys}), new_marks
    out = pd.concat(frames, ignore_index=True).drop_duplicates().reset_index(drop=True)
    return out, new_marks


def all_keys_query(conn: sa.Connection, roles: list[InputRole], tmeta: TransformMetaTable, keys: list[str]) -> pd.DataFrame:
    """Every key the transform knows: live keys of its full inputs and swept outputs, and keys it
    processed before."""
    t = tmeta.table
    selects = [sa.select(*[t.c[k] for k in keys])]
    for role in roles:
        if role.kind in ("full", "output"):
            m = role.dt.meta.table
            selects.append(sa.select(*[m.c[k] for k in keys]).where(m.c.delete_ts.is_(None)))
    return fetch_frame(conn, sa.union(*selects), keys)


def keys_matching(conn: sa.Connection, roles: list[InputRole], tmeta: TransformMetaTable, keys: list[str], idx: pd.DataFrame) -> pd.DataFrame:
    """Transform keys that share values with ``idx`` (a partial-key change): from the full inputs and the
    transform metadata."""
    from datapipe_dagster.store.sql import fetch_by_keys

    sub = [c for c in idx.columns if c in keys]
    t = tmeta.table
    frames = [fetch_by_keys(conn, sa.select(*[t.c[k] for k in keys]), t, sub, idx, keys)]
    for role in roles:
        if role.kind == "full":
            m = role.dt.meta.table
            base = sa.select(*[m.c[k] for k in keys]).where(m.c.delete_ts.is_(None)).distinct()
            frames.append(fetch_by_keys(conn, base, m, sub, idx, keys))
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({k: [] for k in keys})
    return pd.concat(frames, ignore_index=True).drop_duplicates().reset_index(drop=True)
