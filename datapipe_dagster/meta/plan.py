"""A run's plan: the keys a fanned-out run found once, kept in the database for its partition steps.

A run over 16 partitions used to ask the whole transform for its stale keys in every partition step and
keep only its bucket's share: 16 times the stale-key query, each proportional to every stale key. The
plan table (``<transform>__plan``) holds the keys the run's first step found, under the run's plan id,
with each key's ``key_hash``; a partition step reads its bucket as an index range on
``(plan_id, key_hash)``, in time proportional to its own keys.

A plan is only a list of keys to process, never the truth about what is stale: that stays in the
transform state and the watermarks (which the planning query moves only past rows no key needs any
more). So a key that turns stale after planning is found by the next stale-key query, and a plan that is
lost, or swept before a late retry, costs a rerun, never a key. Rows of runs that crashed are harmless
(every read names its plan id) and are swept once older than ``STALE_AFTER`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.meta.keyhash import key_hash
from datapipe_dagster.meta.tables import key_columns_copy, own_table
from datapipe_dagster.store.dbconn import DBConn
from datapipe_dagster.store.paged import PAGE_ROWS, iter_pages
from datapipe_dagster.store.pgcopy import executemany_frame

PLAN_SUFFIX = "__plan"
"""Catalog table names ending in it are refused (``compute.catalog.check_internal_names``)."""

STALE_AFTER = 7 * 24 * 3600.0
"""Plan rows older than this (seconds) belong to runs that will not come back: swept by the next plan."""


def plan_table_name(step: str) -> str:
    """The plan table of transform ``step`` (before fitting to the backend's name limit)."""
    return f"{step}{PLAN_SUFFIX}"


class PlanTable:
    """Planned keys per plan id: key columns, ``key_hash`` and the time they were planned."""

    def __init__(self, dbconn: DBConn, name: str, key_schema: list[sa.Column]):
        self.dbconn = dbconn
        self.keys = [c.name for c in key_schema]
        table = plan_table_name(name)
        self.table = own_table(
            dbconn,
            dbconn.identifier(table),
            sa.Column("plan_id", sa.String(64), primary_key=True),
            *key_columns_copy(key_schema),
            sa.Column("key_hash", sa.BigInteger, nullable=False),
            sa.Column("planned_ts", sa.Float, nullable=False),
            sa.Index(dbconn.identifier(f"ix_{table}_hash"), "plan_id", "key_hash"),
            sa.Index(dbconn.identifier(f"ix_{table}_ts"), "planned_ts"),
        )

    def create(self) -> None:
        self.dbconn.ensure_table(self.table)

    def write(self, conn: sa.Connection, plan_id: str, keys: pd.DataFrame, now: float | None = None) -> None:
        """Add ``keys`` (distinct, the key columns) under ``plan_id``, a page of rows per statement."""
        ts = time.time() if now is None else now
        for start in range(0, len(keys), PAGE_ROWS):
            part = keys.iloc[start : start + PAGE_ROWS][self.keys]
            rows = part.assign(plan_id=plan_id, key_hash=key_hash(part, self.keys), planned_ts=ts)
            executemany_frame(conn, self.table, rows)

    def _where(self, plan_id: str, ranges: list[tuple[int, int]] | None) -> sa.ColumnElement[bool]:
        t = self.table
        cond: sa.ColumnElement[bool] = t.c.plan_id == plan_id
        if ranges is not None:
            h = t.c.key_hash
            cond = sa.and_(cond, sa.or_(*[sa.and_(h >= lo, h < hi) for lo, hi in ranges]))
        return cond

    def pages(self, conn: sa.Connection, plan_id: str, ranges: list[tuple[int, int]]) -> Iterator[pd.DataFrame]:
        """The planned keys of ``plan_id`` whose hash lies in one of the half-open ``ranges``, in pages."""
        if not ranges:
            return iter(())
        stmt = sa.select(*[self.table.c[k] for k in self.keys]).where(self._where(plan_id, ranges))
        return iter_pages(conn, stmt, self.keys)

    def delete(self, conn: sa.Connection, plan_id: str, ranges: list[tuple[int, int]] | None = None) -> None:
        """Forget ``plan_id``'s keys in ``ranges`` (None: all of them)."""
        conn.execute(sa.delete(self.table).where(self._where(plan_id, ranges)))

    def sweep(self, conn: sa.Connection, older_than: float) -> None:
        """Forget the keys planned before ``older_than`` (a timestamp): runs that crashed or were abandoned."""
        conn.execute(sa.delete(self.table).where(self.table.c.planned_ts < older_than))

    def plan_ids(self, conn: sa.Connection) -> list[str]:
        """The plan ids holding keys (for tests and inspection)."""
        return [r[0] for r in conn.execute(sa.select(self.table.c.plan_id).distinct())]
