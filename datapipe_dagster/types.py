"""Small value types shared by every layer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeAlias

import pandas as pd

IndexDF: TypeAlias = pd.DataFrame
"""A DataFrame holding only key columns: the keys of rows, no data."""


class LazyKeys:
    """Keys whose number and columns are known and whose frame is built on first use.

    A run of one changed key appends a few rows of keys per output and then only asks whether anything
    changed (``ChangeList.empty``); building each one-row frame costs more than comparing the row.
    """

    def __init__(self, n: int, columns: list[str], build: Callable[[], IndexDF]):
        self.n, self.columns, self._build = n, columns, build
        self._frame: IndexDF | None = None

    def __len__(self) -> int:
        return self.n

    def frame(self) -> IndexDF:
        if self._frame is None:
            self._frame = self._build()
        return self._frame


def _part(idx: IndexDF | LazyKeys) -> IndexDF:
    return idx.frame() if isinstance(idx, LazyKeys) else idx


class ChangeList:
    """Keys of rows changed per table, fed to ``run_steps_changelist``.

    Example:
        cl = ChangeList()
        cl.append("events", events.store_chunk(df))
    """

    def __init__(self) -> None:
        # Appended frames wait here and are concatenated and de-duplicated once, when read: appending
        # one chunk's keys must not re-process everything appended before (that made a full run
        # quadratic in its number of chunks).
        self._parts: dict[str, list[IndexDF | LazyKeys]] = {}
        self._merged: dict[str, IndexDF | LazyKeys] = {}

    @classmethod
    def create(cls, name: str, idx: IndexDF) -> ChangeList:
        cl = cls()
        cl.append(name, idx)
        return cl

    @property
    def changes(self) -> dict[str, IndexDF]:
        """The changed keys per table, without duplicates (a fresh dict; its frames must not be mutated)."""
        return {name: self._get(name) for name in self._parts}

    def append(self, table_name: str, idx: IndexDF | LazyKeys) -> None:
        """Record that rows with keys ``idx`` of ``table_name`` changed (O(len(idx)))."""
        parts = self._parts.setdefault(table_name, [])
        if idx is None or len(idx) == 0:
            if not parts and table_name not in self._merged:
                cols = list(getattr(idx, "columns", []))
                self._merged[table_name] = LazyKeys(0, cols, lambda: pd.DataFrame(columns=cols))
            return
        parts.append(idx)

    def extend(self, other: ChangeList) -> None:
        for name, parts in other._parts.items():
            merged = other._merged.get(name)
            if merged is not None:
                self.append(name, merged)
            self._parts.setdefault(name, [])
            for part in parts:
                self.append(name, part)

    def _merged_frame(self, table_name: str) -> IndexDF | None:
        m = self._merged.get(table_name)
        return None if m is None else _part(m)

    def _get(self, table_name: str) -> IndexDF:
        parts = [_part(p) for p in self._parts.get(table_name, [])]
        merged = self._merged_frame(table_name)
        if parts:
            frames = [merged] if merged is not None and len(merged) else []
            cols = list(parts[0].columns) if not frames else list(frames[0].columns)
            frames += [p[cols] for p in parts]
            merged = pd.concat(frames, ignore_index=True).drop_duplicates().reset_index(drop=True)
            self._merged[table_name] = merged
            self._parts[table_name] = []
        return merged if merged is not None else pd.DataFrame()

    def get(self, table_name: str) -> IndexDF | None:
        if table_name not in self._parts:
            return None
        return self._get(table_name)

    def head(self, table_name: str, n: int) -> IndexDF | None:
        """The first ``n`` distinct changed keys of ``table_name`` (None when it is not in the list), read
        from as few appended parts as hold them: a preview of a run's first keys must not merge (and keep)
        the whole key set of a full run."""
        if table_name not in self._parts:
            return None
        merged = self._merged_frame(table_name)
        frames = [merged] if merged is not None and len(merged) else []
        seen = pd.DataFrame()
        for part in map(_part, self._parts[table_name]):
            frames.append(part if not frames else part[list(frames[0].columns)])
            seen = pd.concat(frames, ignore_index=True).drop_duplicates()
            frames = [seen]
            if len(seen) >= n:
                break
        if not frames:
            return merged if merged is not None else pd.DataFrame()
        return frames[0].head(n).reset_index(drop=True)

    def empty(self) -> bool:
        return all(
            not any(len(p) for p in self._parts[n]) and len(self._merged.get(n, ())) == 0 for n in self._parts
        )

    def __iter__(self) -> Iterator[tuple[str, IndexDF]]:
        return iter(self.changes.items())

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {len(v)} keys" for k, v in self.changes.items())
        return f"ChangeList({inner})"
