"""Names shared by the Dagster layer: metadata keys, run tags, and naming of checks and sensors.

Every key we attach lives under the ``datapipe/`` namespace, so it never collides with Dagster's own
(``dagster/...``) or a user's keys.
"""

from __future__ import annotations

from datapipe_dagster.compute.partition_runner import REPARSE, STALE

# ---------------------------------------------------------------- definition metadata
META_TABLE = "datapipe/table"
"""On every table asset: the catalog table name."""
META_TRANSFORM = "datapipe/transform"
"""On every transform output: the step that writes it."""
META_TRANSFORM_KEYS = "datapipe/transform_keys"
"""On every transform output: the key columns hashed into partitions."""
META_PRIMARY_KEYS = "datapipe/primary_keys"
META_PARTITION_COLUMN = "datapipe/partition_column"
"""On a user asset written through the IO manager: the primary-key column that equals the partition key
(rows of the partition that the returned frame lacks are deleted)."""
META_REPLACE = "datapipe/replace"
"""On a user asset (definition or output metadata): the returned frame replaces the whole table."""

# ---------------------------------------------------------------- materialization metadata
META_MODE = "datapipe/mode"
META_KEYS_PROCESSED = "datapipe/keys_processed"
META_ROWS_READ = "datapipe/rows_read"
META_INSERTED = "datapipe/rows_inserted"
META_UPDATED = "datapipe/rows_updated"
META_DELETED = "datapipe/rows_deleted"
META_KEYS_FAILED = "datapipe/keys_failed"
META_FIRST_ERRORS = "datapipe/first_errors"
META_STALE_REMAINING = "datapipe/stale_keys_remaining"
META_ELAPSED = "datapipe/elapsed_s"
META_PREVIEW = "datapipe/preview"
META_PARTITIONS = "datapipe/partitions"
"""The partition a materialization describes (its counts are that partition's own)."""
META_RUN_PARTITIONS = "datapipe/run_partitions"
"""Range runs: the whole range the run covered."""
META_FAILED_KEYS = "datapipe/failed_keys"
META_LAST_SEQ = "datapipe/last_seq"
"""On a source table's observation: the highest write sequence of its rows (also its data version)."""

# ---------------------------------------------------------------- run tags
TAG_MODE = "datapipe/mode"
"""Run tag: ``stale`` (sensor run: only stale keys) or ``reparse`` (every key of the partitions)."""
MODE_STALE = STALE
MODE_REPARSE = REPARSE
TAG_STEP = "datapipe/step"
"""Run tag set by the sensor: the step; limit concurrent runs per step with ``tag_concurrency_limits``."""
TAG_REASON = "datapipe/reason"
"""Run tag set by the sensor: ``changes`` or ``code_version``."""
TAG_RETRY_FAILED = "datapipe/retry_failed"
"""Run tag (``"true"``): a stale-mode run also retries failed keys without new input (set by the sensor
when the step's code version changed). Otherwise a failed key waits for a change to one of its rows."""
TAG_SUMMARY = "datapipe/summary"
"""Run tag written by the step at the end of a run: partitions covered and rows changed
(``partitions 03..07, +12 ~40 -0``), so the runs list shows what a run did."""
AUTOMATION_TAGS = (
    "dagster/sensor_name",
    "dagster/schedule_name",
    "dagster/from_automation_condition",
    "dagster/auto_materialize",
    "dagster/asset_evaluation_id",
)
"""Run tags Dagster puts on runs launched by sensors, schedules and automation: such a run without our
mode tag processes stale keys only (it must never reparse by accident)."""
BACKFILL_TAG = "dagster/backfill"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
DATA_VERSION_TAG = "dagster/data_version"
"""Event tag holding an observation's data version (``AssetObservation`` takes it as a tag)."""

# ---------------------------------------------------------------- limits
PREVIEW_ROWS = 5
"""Rows per output in the materialization preview."""
FIRST_ERRORS = 5
"""Failed keys listed (with their error) in metadata."""


def check_name(step_name: str) -> str:
    """The asset check of a transform: red while any of its keys is failing."""
    return f"{safe_name(step_name)}_no_failed_keys"


def sensor_name(step_name: str) -> str:
    """The sensor that requests runs for a transform's stale partitions."""
    return f"{safe_name(step_name)}_stale_sensor"


def scan_sensor_name(step_name: str) -> str:
    """The sensor that scans an external table (``UpdateExternalTable``)."""
    return f"{safe_name(step_name)}_scan_sensor"


def job_name(step_name: str) -> str:
    """The job a transform's sensor launches (the step's outputs and checks on the chosen executor)."""
    return f"{safe_name(step_name)}_job"


def op_name(step_name: str) -> str:
    """The multi-asset (op) that runs a transform."""
    return safe_name(step_name)


def safe_name(name: str) -> str:
    """``name`` with every character Dagster rejects in names replaced by ``_``."""
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return out if out and not out[0].isdigit() else f"_{out}"
