"""Small value types shared by every layer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeAlias

import pandas as pd

IndexDF: TypeAlias = pd.DataFrame
"""A DataFrame holding only key columns: the keys of rows, no data."""


def index_union(a: IndexDF | None, b: IndexDF) -> IndexDF:
    """Union of two key frames with the same columns, without duplicates."""
    if a is None or a.empty:
        return b.drop_duplicates().reset_index(drop=True)
    if b.empty:
        return a
    return pd.concat([a, b[list(a.columns)]], ignore_index=True).drop_duplicates().reset_index(drop=True)


class ChangeList:
    """Keys of rows changed per table, fed to ``run_steps_changelist``.

    Example:
        cl = ChangeList()
        cl.append("events", events.store_chunk(df))
    """

    def __init__(self) -> None:
        self.changes: dict[str, IndexDF] = {}

    @classmethod
    def create(cls, name: str, idx: IndexDF) -> ChangeList:
        cl = cls()
        cl.append(name, idx)
        return cl

    def append(self, table_name: str, idx: IndexDF) -> None:
        """Record that rows with keys ``idx`` of ``table_name`` changed."""
        if idx is None or len(idx) == 0:
            self.changes.setdefault(table_name, pd.DataFrame(columns=list(getattr(idx, "columns", []))))
            return
        self.changes[table_name] = index_union(self.changes.get(table_name), idx)

    def extend(self, other: ChangeList) -> None:
        for name, idx in other.changes.items():
            self.append(name, idx)

    def get(self, table_name: str) -> IndexDF | None:
        return self.changes.get(table_name)

    def empty(self) -> bool:
        return all(len(v) == 0 for v in self.changes.values())

    def __iter__(self) -> Iterator[tuple[str, IndexDF]]:
        return iter(self.changes.items())

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {len(v)} keys" for k, v in self.changes.items())
        return f"ChangeList({inner})"
