"""Per (transform, input table) watermarks: how far in the write sequence a transform has seen a table."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from datapipe_dagster.meta.tables import WATERMARK_TABLE, SequenceTable, own_table
from datapipe_dagster.store.dbconn import DBConn


class WatermarkTable:
    """Per (transform, input table): every input row with ``seq`` at or below the watermark has been seen
    by the transform, so the stale-key query scans only rows above it (an index range, not the table)."""

    def __init__(self, dbconn: DBConn, seq: SequenceTable | None = None):
        self.dbconn = dbconn
        self.seq = seq if seq is not None else SequenceTable(dbconn)
        self.table = own_table(
            dbconn,
            WATERMARK_TABLE,
            sa.Column("transform", sa.String(255), primary_key=True),
            sa.Column("input_table", sa.String(255), primary_key=True),
            sa.Column("seq", sa.BigInteger, nullable=False),
        )
        c = self.table.c
        self._name = sa.bindparam("transform", type_=c.transform.type)
        self._get = sa.select(c.input_table, c.seq).where(c.transform == self._name)
        s = self.seq.table
        # The sequence's row joined to the transform's watermarks (none yet: one row, its watermark columns NULL).
        self._with_current = (
            sa.select(s.c.value, c.input_table, c.seq)
            .select_from(s.outerjoin(self.table, c.transform == self._name))
            .where(s.c.id == 1)
        )
        self._advance: Any = None
        self._probes: dict[tuple[tuple[str, sa.Table], ...], sa.Select] = {}

    def create(self) -> None:
        self.dbconn.ensure_table(self.table)

    def get(self, conn: sa.Connection, transform: str) -> dict[str, int]:
        rows = conn.execute(self._get, {"transform": transform}).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def get_with_current(self, conn: sa.Connection, transform: str) -> tuple[int, dict[str, int]]:
        """The write sequence's value and ``transform``'s watermarks, in one statement (one snapshot)."""
        rows = conn.execute(self._with_current, {"transform": transform}).fetchall()
        return int(rows[0][0]), {r[1]: int(r[2]) for r in rows if r[1] is not None}

    def probe_above(
        self, conn: sa.Connection, transform: str, tables: dict[str, sa.Table]
    ) -> tuple[int, set[str]]:
        """The write sequence's value ``seen`` and the names (of ``tables``: watermark name -> row
        metadata) with a row numbered above their watermark and at most ``seen``, in one statement."""
        names = tuple(tables)
        sig = tuple(tables.items())
        stmt = self._probes.get(sig)
        if stmt is None:  # built once per set of tables
            s, c = self.seq.table, self.table.c
            probes = []
            for i, (name, m) in enumerate(tables.items()):
                mark = sa.select(c.seq).where(c.transform == self._name, c.input_table == name).scalar_subquery()
                low = sa.func.coalesce(mark, sa.literal(0, sa.BigInteger))
                probes.append(sa.exists().where(m.c.seq > low, m.c.seq <= s.c.value).label(f"p{i}"))
            stmt = self._probes[sig] = sa.select(s.c.value, *probes).where(s.c.id == 1)
        row = conn.execute(stmt, {"transform": transform}).one()
        return int(row[0]), {n for n, hit in zip(names, row[1:], strict=True) if hit}

    def advance(self, conn: sa.Connection, transform: str, marks: dict[str, int]) -> None:
        """Raise watermarks to ``marks`` (never lowers one, even against a concurrent advance: the larger
        value is kept by the upsert itself, not by a read before it)."""
        recs: list[dict[str, Any]] = [{"transform": transform, "input_table": t, "seq": int(s)} for t, s in marks.items()]
        if not recs:
            return
        if self.dbconn.backend not in ("postgresql", "sqlite"):
            current = self.get(conn, transform)
            recs = [r for r in recs if r["seq"] > current.get(r["input_table"], -1)]
            self.dbconn.upsert(conn, self.table, recs, ["transform", "input_table"])
            return
        if self._advance is None:  # built once: a run advances its watermarks once per chunk
            from sqlalchemy.dialects import postgresql, sqlite

            t = self.table
            stmt = (postgresql.insert if self.dbconn.backend == "postgresql" else sqlite.insert)(t)
            higher = sa.case((stmt.excluded.seq > t.c.seq, stmt.excluded.seq), else_=t.c.seq)
            self._advance = stmt.on_conflict_do_update(index_elements=["transform", "input_table"], set_={"seq": higher})
        conn.execute(self._advance, recs)

    def reset(self, conn: sa.Connection, transform: str) -> None:
        conn.execute(sa.delete(self.table).where(self.table.c.transform == transform))
