"""What a step run did: counts, failed keys with their errors, and the keys it changed."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from datapipe_dagster.compute.small_result import SmallResult
from datapipe_dagster.frames import columns_of
from datapipe_dagster.frames import plain as _plain
from datapipe_dagster.types import ChangeList, LazyKeys


def error_text(e: BaseException) -> tuple[str, str]:
    """What a failed key records of its exception: ``"Type: message"`` and the formatted traceback."""
    return f"{type(e).__name__}: {e}", "".join(traceback.format_exception(type(e), e, e.__traceback__))


def failed_frame(keys: pd.DataFrame, e: BaseException) -> pd.DataFrame:
    """``keys`` with the ``error`` and ``traceback`` columns of ``e`` (the shape of ``StepResult.failed``)."""
    error, trace = error_text(e)
    return keys.assign(error=error, traceback=trace)


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
        changed: keys of rows changed per output table (what a changelist run passes downstream);
            read one table's keys with ``changed_keys(table)``.

    ``str(result)`` is ``summary_line()``.
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
        inserted, updated, deleted = write.counts()
        o.inserted += inserted
        o.updated += updated
        o.deleted += deleted
        if isinstance(write, SmallResult):
            # A few rows: the key frame is built if someone reads the changes (a run only counts them).
            # Built later from the same unchanging parts, it is the frame building it now would give.
            n = inserted + updated + deleted
            self.changed.append(
                table, LazyKeys(n, primary_keys, lambda: columns_of(write.changed_idx(), primary_keys))
            )
        else:
            self.changed.append(table, columns_of(write.changed_idx(), primary_keys))

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

    def changed_keys(self, table: str) -> pd.DataFrame:
        """The keys of ``table``'s rows this step inserted, updated or deleted (one row per key).

        Only the table's primary-key columns; an empty frame when the step changed nothing in it.
        """
        idx = self.changed.get(table)
        return pd.DataFrame() if idx is None else idx.reset_index(drop=True)

    def summary_line(self) -> str:
        """One line: ``count_clicks: 1 keys, 2 rows read, [clicks: +0 ~1 -0]``.

        Keys processed, input rows read, and per output table the rows inserted (+), updated (~) and
        deleted (-). When keys failed: ``; 1 of 3 keys FAILED, first: user_id='x': ValueError: ...``.
        Elapsed time is left out so the line is the same on every run of the same change.
        """
        outs = ", ".join(f"{k}: +{v.inserted} ~{v.updated} -{v.deleted}" for k, v in self.outputs.items())
        s = f"{self.name}: {self.keys_processed} keys, {self.rows_read} rows read, [{outs}]"
        if self.keys_superseded:
            s += f"; {self.keys_superseded} keys left to a newer concurrent result"
        if self.keys_failed:
            keys = [c for c in self.failed.columns if c not in ("error", "traceback", "process_ts")]
            first = self.failed.iloc[0]
            attempted = self.keys_processed + self.keys_failed
            s += (
                f"; {self.keys_failed} of {attempted} keys FAILED, first: "
                + ", ".join(f"{k}={_plain(first[k])!r}" for k in keys)
                + f": {_first_line(first['error'])}"
            )
        return s

    def __str__(self) -> str:
        return self.summary_line()


def _first_line(error: Any) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


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

    def changed_keys(self, table: str) -> pd.DataFrame:
        """The keys of ``table``'s rows changed by any step of the run (primary-key columns, no duplicates).

        Example:
            summary = run_steps(ds, steps)
            summary.changed_keys("clicks")  # the user_ids whose click count was inserted, updated or deleted
        """
        frames = [f for f in (s.changed_keys(table) for s in self.steps) if len(f.columns)]
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True).drop_duplicates().reset_index(drop=True)

    def __str__(self) -> str:
        """One ``StepResult.summary_line()`` per step."""
        return "\n".join(s.summary_line() for s in self.steps) or "(no steps)"
