"""Reading a large result page by page, so a process's peak memory follows the page, not the result.

``fetch_frame`` (``store.sql``) takes every row of a result as Python objects at once: a first run's
stale keys (every key) or a reparse's key list of a million keys cost hundreds of megabytes of row
objects before they become a compact frame. Here the rows come in pages of ``PAGE_ROWS`` (a server-side
cursor on PostgreSQL, SQLite's own cursor stepping), each page turned into a small frame at once; the
pages' frames hold typed columns (``int64`` keys take 8 bytes each), far less than their rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd
import sqlalchemy as sa

PAGE_ROWS = 50_000
"""Rows per page (read at call time, so a test or a caller short of memory can lower it)."""


def page_frame(rows: Sequence[Any], columns: list[str]) -> pd.DataFrame:
    """One page of rows as a frame with ``columns`` (the same dtypes ``store.sql.fetch_frame`` gives)."""
    if not rows:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    cols = list(zip(*rows, strict=True))
    return pd.DataFrame({c: list(v) for c, v in zip(columns, cols, strict=True)})


def iter_pages(
    conn: sa.Connection, stmt: sa.Executable, columns: list[str], page_rows: int | None = None
) -> Iterator[pd.DataFrame]:
    """The rows of ``stmt`` as frames of at most ``page_rows`` rows (default ``PAGE_ROWS``), in order.

    PostgreSQL streams them through a server-side cursor (``stream_results``), so neither the driver nor
    libpq holds the whole result; the caller's connection must stay open while the pages are consumed.
    """
    for rows in iter_row_pages(conn, stmt, {}, page_rows):
        yield page_frame(rows, columns)


def iter_row_pages(
    conn: sa.Connection, stmt: sa.Executable, params: dict[str, Any], page_rows: int | None = None, stream: bool = True
) -> Iterator[Sequence[Any]]:
    """The rows of ``stmt`` (with ``params``) in lists of at most ``page_rows`` (default ``PAGE_ROWS``),
    streamed as ``iter_pages`` streams them; a result of no row gives no page.

    ``stream=False``, for a result known to be small: no server-side cursor (on PostgreSQL its DECLARE,
    FETCH and CLOSE are round trips of their own); the driver holds the result's rows, Python still only
    a page of them."""
    size = page_rows or PAGE_ROWS
    # Options of this statement only (``Connection.execution_options`` would change the connection).
    options = {"stream_results": True, "yield_per": size} if stream else {}
    result = conn.execute(stmt, params, execution_options=options)
    try:
        yield from result.partitions(size)
    finally:
        result.close()


def fetch_frame_paged(
    conn: sa.Connection, stmt: sa.Executable, columns: list[str], page_rows: int | None = None
) -> pd.DataFrame:
    """``fetch_frame`` read page by page: the same frame, without the whole result as row objects."""
    pages = list(iter_pages(conn, stmt, columns, page_rows))
    if not pages:
        return page_frame([], columns)
    return pages[0] if len(pages) == 1 else pd.concat(pages, ignore_index=True)


FEW_KEYS = 1_000
"""Up to this many stale keys are gathered as tuples; past it, as page frames."""


class FoundKeys:
    """Keys gathered from the pages of several queries (``iter_row_pages``), de-duplicated in first-seen
    order: as tuples while they are few (a one-key run builds no frame per query), as one frame per page
    once they are many (a first run's every key: memory follows the page)."""

    def __init__(self, keys: list[str]):
        self.keys = keys
        self.few: dict[tuple[object, ...], None] = {}
        self.pages: list[pd.DataFrame] = []

    def add(self, rows: Sequence[Any]) -> None:
        """Add the keys of ``rows`` (the key columns first; any further columns are left out)."""
        n = len(self.keys)
        if not self.pages and len(self.few) + len(rows) <= FEW_KEYS:
            self.few.update((tuple(r[:n]), None) for r in rows)
            return
        if self.few:
            self.pages.append(page_frame(list(self.few), self.keys))
            self.few = {}
        self.pages.append(page_frame([tuple(r[:n]) for r in rows], self.keys))

    def frame(self) -> pd.DataFrame:
        if not self.pages:
            return pd.DataFrame({k: [f[i] for f in self.few] for i, k in enumerate(self.keys)})
        both = self.pages[0] if len(self.pages) == 1 else pd.concat(self.pages, ignore_index=True)
        return both.drop_duplicates().reset_index(drop=True)
