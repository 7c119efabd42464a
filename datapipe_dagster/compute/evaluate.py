"""Evaluating a step on some keys without writing (the seed's ``Pipe.eval(item)``).

``step.eval(keys)`` runs the step's function on the current input rows of ``keys`` and compares what it
returns with what its outputs hold under those keys: the rows a run would insert, update and delete.
Nothing is written, and the step's state (processed and failed keys) is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.errors import ConfigurationError, SchemaError
from datapipe_dagster.frames import has_key, key_positions
from datapipe_dagster.store.records import to_records
from datapipe_dagster.store.schema import coerce_frame

if TYPE_CHECKING:
    from datapipe_dagster.compute.datatable import DataTable


@dataclass
class OutputDiff:
    """What a run would write to one output table.

    Attributes:
        inserted: rows it would add.
        updated: rows whose content would change (their new values).
        deleted: the current rows it would delete.
        unchanged: rows it would return with the content they already have.
    """

    inserted: pd.DataFrame
    updated: pd.DataFrame
    deleted: pd.DataFrame
    unchanged: int = 0


@dataclass
class EvalResult:
    """The result of ``step.eval(keys)``: an ``OutputDiff`` per output, and per-key errors (item-by-item
    steps record a failing row instead of raising)."""

    step: str
    keys: pd.DataFrame
    outputs: dict[str, OutputDiff] = field(default_factory=dict)
    failed: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __str__(self) -> str:
        lines = [f"{self.step}: eval of {len(self.keys)} key(s), nothing written"]
        for name, d in self.outputs.items():
            lines.append(f"  {name}: +{len(d.inserted)} ~{len(d.updated)} -{len(d.deleted)} ={d.unchanged}")
            for what, df in (("+", d.inserted), ("~", d.updated), ("-", d.deleted)):
                for rec in to_records(df):
                    lines.append(f"    {what} {_row_text(rec)}")
        for rec in to_records(self.failed):
            err = rec.pop("error", "")
            rec.pop("traceback", None)
            lines.append(f"  FAILED {_row_text(rec)}: {err}")
        return "\n".join(lines)


def _row_text(rec: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in rec.items())


def typed_keys(step_name: str, key_schema: list[sa.Column], keys: pd.DataFrame) -> pd.DataFrame:
    """``keys`` checked against the step's key columns and given their types.

    Raises:
        ConfigurationError: a key column missing from ``keys`` (names the step and the columns).
        SchemaError: a value that does not fit its column's type.
    """
    names = [c.name for c in key_schema]
    missing = [n for n in names if n not in keys.columns]
    if missing:
        raise ConfigurationError(
            f"step {step_name!r}: eval needs every transform key column {names}; missing {missing}"
        )
    return coerce_frame(f"{step_name} keys", key_schema, keys[names].drop_duplicates().reset_index(drop=True))


def diff_output(
    dt: DataTable, conn: sa.Connection, df: pd.DataFrame, scope: pd.DataFrame | None
) -> OutputDiff:
    """Compare a validated output frame with the table's rows, as ``DataTable.write`` with
    ``processed_idx=scope`` would, without writing (``scope=None``: nothing is deleted)."""
    pks = dt.primary_keys
    hashes = dt.store.hash_rows(df, dt.name)
    is_new = np.ones(len(df), dtype=bool)
    is_changed = np.zeros(len(df), dtype=bool)
    if len(df):
        existing = dt.meta.get_existing(conn, df[pks])
        if len(existing):
            pos = key_positions(existing, df, pks)
            known = pos >= 0
            at = np.where(known, pos, 0)
            alive = known & existing["delete_ts"].isna().to_numpy()[at]
            same = alive & (existing["hash"].to_numpy(dtype=np.int64)[at] == hashes)
            is_new = ~alive
            is_changed = alive & ~same
    deleted = dt.store.empty()
    if scope is not None and len(scope):
        alive_keys = dt.meta.get_alive_keys(conn, scope)
        if len(alive_keys):
            gone = ~has_key(alive_keys, df, pks)
            gone_keys = alive_keys.loc[gone, pks].reset_index(drop=True)
            if len(gone_keys):
                deleted = dt.read(conn, gone_keys)
    return OutputDiff(
        inserted=df.loc[is_new].reset_index(drop=True),
        updated=df.loc[is_changed].reset_index(drop=True),
        deleted=deleted.reset_index(drop=True),
        unchanged=int(len(df) - is_new.sum() - is_changed.sum()),
    )


def check_keys_frame(step_name: str, keys: Any) -> pd.DataFrame:
    if not isinstance(keys, pd.DataFrame):
        raise ConfigurationError(f"step {step_name!r}: eval takes a DataFrame of keys, got {type(keys).__name__}")
    if len(keys) == 0:
        raise SchemaError(f"{step_name} keys", "eval needs at least one key")
    return keys
