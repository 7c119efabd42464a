"""Materialization and check metadata built from the engine's results, in Dagster's metadata types."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import dagster as dg
import pandas as pd

from datapipe_dagster.compute.partitioning import Buckets
from datapipe_dagster.compute.result import OutputStats, StepResult
from datapipe_dagster.dagster import constants as c
from datapipe_dagster.frames import plain


def _cell(v: Any) -> str | int | float | bool | None:
    v = plain(v)
    if v is None:
        return None
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (_dt.datetime, _dt.date, pd.Timestamp)):
        return str(v)
    text = str(v)
    return text if len(text) <= 200 else text[:197] + "..."


def table_value(df: pd.DataFrame, limit: int = c.PREVIEW_ROWS) -> dg.TableMetadataValue:
    """The first ``limit`` rows of ``df`` as a Dagster table (every cell a str/int/float/bool/None)."""
    head = df.head(limit)
    records = [dg.TableRecord({str(k): _cell(v) for k, v in row.items()}) for row in head.to_dict("records")]
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name=str(col), type=str(head[col].dtype)) for col in head.columns]
    )
    return dg.MetadataValue.table(records=records, schema=schema)


def errors_markdown(
    failed: pd.DataFrame, key_cols: list[str], total: int | None = None, limit: int = c.FIRST_ERRORS
) -> str:
    """A markdown list of failing keys and their first error line."""
    if failed is None or len(failed) == 0:
        return "No failing keys."
    lines = []
    for row in failed.head(limit).to_dict("records"):
        key = ", ".join(f"{k}={row.get(k)!r}" for k in key_cols if k in row)
        where = f" (partition {row['partition']})" if row.get("partition") is not None else ""
        err = str(row.get("error") or "").splitlines()[0] if row.get("error") else "(no message)"
        lines.append(f"- `{key}`{where}: {err}")
    n = total if total is not None else len(failed)
    if n > limit:
        lines.append(f"- … and {n - limit} more")
    return "\n".join(lines)


def failed_with_partitions(
    failed: pd.DataFrame, parts: Buckets | None, transform_keys: list[str]
) -> pd.DataFrame:
    """``failed`` with a ``partition`` column (the partition of each key) when the step is partitioned."""
    if parts is None or not transform_keys or len(failed) == 0:
        return failed
    return failed.assign(partition=parts.buckets(failed, transform_keys).to_numpy())


def run_summary(partitions: list[str] | None, results: list[StepResult]) -> str:
    """One line for the runs list: ``partitions 03..07, 40 keys, +12 ~40 -0`` (and failed keys)."""
    ins = sum(o.inserted for r in results for o in r.outputs.values())
    upd = sum(o.updated for r in results for o in r.outputs.values())
    dele = sum(o.deleted for r in results for o in r.outputs.values())
    keys = sum(r.keys_processed for r in results)
    failed = sum(r.keys_failed for r in results)
    if not partitions:
        where = "all keys"
    elif len(partitions) == 1:
        where = f"partition {partitions[0]}"
    else:
        where = f"partitions {partitions[0]}..{partitions[-1]}"
    text = f"{where}, {keys} keys, +{ins} ~{upd} -{dele}"
    return text + (f", {failed} keys failed" if failed else "")


def output_metadata(
    *,
    result: StepResult,
    stats: OutputStats,
    mode: str,
    partition: str | None,
    key_cols: list[str],
    stale_remaining: int,
    preview: pd.DataFrame | None,
    parts: Buckets | None = None,
) -> dict[str, Any]:
    """Metadata of one output's materialization in one partition (or of an unpartitioned step): its
    counts, failures, what is still stale, a preview."""
    md: dict[str, Any] = {
        c.META_MODE: mode,
        c.META_KEYS_PROCESSED: dg.MetadataValue.int(int(result.keys_processed)),
        c.META_ROWS_READ: dg.MetadataValue.int(int(result.rows_read)),
        c.META_INSERTED: dg.MetadataValue.int(int(stats.inserted)),
        c.META_UPDATED: dg.MetadataValue.int(int(stats.updated)),
        c.META_DELETED: dg.MetadataValue.int(int(stats.deleted)),
        c.META_KEYS_FAILED: dg.MetadataValue.int(int(result.keys_failed)),
        c.META_STALE_REMAINING: dg.MetadataValue.int(int(stale_remaining)),
        c.META_ELAPSED: dg.MetadataValue.float(round(float(result.elapsed), 4)),
    }
    if partition is not None:
        md[c.META_PARTITIONS] = partition
    if result.keys_failed:
        tk = [k for k in key_cols if k in result.failed.columns]
        failed = failed_with_partitions(result.failed, parts, tk)
        md[c.META_FIRST_ERRORS] = dg.MetadataValue.md(errors_markdown(failed, key_cols))
    if preview is not None and len(preview):
        md[c.META_PREVIEW] = table_value(preview)
    return md


def check_metadata(failed: pd.DataFrame, total: int, key_cols: list[str]) -> dict[str, Any]:
    """Metadata of the failed-keys check: how many keys fail, and the first ones with their errors."""
    md: dict[str, Any] = {c.META_KEYS_FAILED: dg.MetadataValue.int(int(total))}
    if total:
        md[c.META_FIRST_ERRORS] = dg.MetadataValue.md(errors_markdown(failed, key_cols, total))
        cols = [k for k in key_cols if k in failed.columns]
        cols += ["partition", "error"] if "partition" in failed.columns else ["error"]
        md[c.META_FAILED_KEYS] = table_value(failed[cols], limit=c.FIRST_ERRORS)
    return md
