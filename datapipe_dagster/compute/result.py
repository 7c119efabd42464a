"""What a step run did: counts, failed keys with their errors, and the keys it changed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from datapipe_dagster.errors import _plain
from datapipe_dagster.types import ChangeList


@dataclass
class OutputStats:
    inserted: int = 0
    updated: int = 0
    deleted: int = 0


@dataclass
class StepResult:
    """The outcome of one step run.

    Attributes:
        failed: one row per failed key: the key columns, ``error`` and ``traceback``.
        changed: keys of rows changed per output table (what a changelist run passes downstream).
    """

    name: str
    keys_processed: int = 0
    keys_superseded: int = 0
    rows_read: int = 0
    outputs: dict[str, OutputStats] = field(default_factory=dict)
    failed: pd.DataFrame = field(default_factory=pd.DataFrame)
    changed: ChangeList = field(default_factory=ChangeList)
    elapsed: float = 0.0

    @property
    def keys_failed(self) -> int:
        return len(self.failed)

    def add_write(self, table: str, primary_keys: list[str], write: Any) -> None:
        """Count a ``DataTable.write`` result for output ``table`` and record its changed keys."""
        o = self.outputs.setdefault(table, OutputStats())
        o.inserted += len(write.inserted)
        o.updated += len(write.updated)
        o.deleted += len(write.deleted)
        self.changed.append(table, write.changed_idx()[primary_keys])

    def add_failed(self, df: pd.DataFrame) -> None:
        self.failed = df if self.failed.empty else pd.concat([self.failed, df], ignore_index=True)

    def merge(self, other: StepResult) -> None:
        self.keys_processed += other.keys_processed
        self.keys_superseded += other.keys_superseded
        self.rows_read += other.rows_read
        for k, v in other.outputs.items():
            s = self.outputs.setdefault(k, OutputStats())
            s.inserted += v.inserted
            s.updated += v.updated
            s.deleted += v.deleted
        if not other.failed.empty:
            self.add_failed(other.failed)
        self.changed.extend(other.changed)
        self.elapsed += other.elapsed

    def __str__(self) -> str:
        outs = ", ".join(f"{k}: +{v.inserted} ~{v.updated} -{v.deleted}" for k, v in self.outputs.items())
        s = f"{self.name}: {self.keys_processed} keys, {self.rows_read} rows read, [{outs}], {self.elapsed:.3f}s"
        if self.keys_superseded:
            s += f"; {self.keys_superseded} keys left to a newer concurrent result"
        if self.keys_failed:
            keys = [c for c in self.failed.columns if c not in ("error", "traceback")]
            first = self.failed.iloc[0]
            s += (
                f"; {self.keys_failed} keys FAILED, first: "
                + ", ".join(f"{k}={_plain(first[k])!r}" for k in keys)
                + f": {first['error']}"
            )
        return s


@dataclass
class RunSummary:
    """The outcome of ``run_steps`` / ``run_steps_changelist``: one StepResult per step."""

    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.keys_failed == 0 for s in self.steps)

    @property
    def failed(self) -> dict[str, pd.DataFrame]:
        """Failed keys (with ``error`` and ``traceback``) per step that had failures."""
        return {s.name: s.failed for s in self.steps if s.keys_failed}

    def __getitem__(self, name: str) -> StepResult:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def __str__(self) -> str:
        return "\n".join(str(s) for s in self.steps) or "(no steps)"
