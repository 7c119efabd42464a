"""Per-partition data versions for the materializations of a range run (the one module using Dagster
private names).

Dagster gives every partition of a range run the same data version: a ``MaterializeResult`` becomes one
materialization per partition, all with the same tags. A step's partitions change independently, and
Dagster's staleness (``CachingStaleStatusResolver``) compares a downstream partition's input with the
data version of *that* upstream partition, so a shared version would show unchanged partitions
downstream as "Unsynced". For range runs the step therefore reports the partitions itself: the output
carries Dagster's own "events are reported by the body" marker (what Dagster's observable source assets
use), and the body yields one ``AssetMaterialization`` per partition whose tags are the ones Dagster would
write (code version, input data versions and event pointers read at step start) with that partition's
data version.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster._core.definitions.data_version import get_input_event_pointer_tag
from dagster._core.definitions.source_asset import SYSTEM_METADATA_KEY_SOURCE_ASSET_OBSERVATION
from dagster._core.execution.plan.execute_step import _build_data_version_tags, _get_input_provenance_data

from datapipe_dagster.dagster import constants as c

EVENTS_BY_BODY = SYSTEM_METADATA_KEY_SOURCE_ASSET_OBSERVATION
"""Output metadata key: Dagster logs no materialization for the output, the body yields them."""


def output_reported_by_body(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata for an output whose per-partition materializations the body yields itself."""
    return {**metadata, EVENTS_BY_BODY: True}


def partition_materialization(
    context: dg.AssetExecutionContext,
    asset_key: dg.AssetKey,
    partition: str,
    metadata: Mapping[str, Any],
    data_version: dg.DataVersion,
    pointers: Mapping[dg.AssetKey, int] | None = None,
) -> dg.AssetMaterialization:
    """The materialization of one partition with its own data version and Dagster's provenance tags
    (``pointers``: inputs read as of another event than the one Dagster found at step start)."""
    step = context.get_step_execution_context()
    code_version = step.job_def.asset_layer.get(asset_key).code_version or step.dagster_run.run_id
    tags = _build_data_version_tags(data_version, code_version, _get_input_provenance_data(asset_key, step), True)
    tags.update(input_pointer_tags(pointers or {}))
    if backfill := context.run.tags.get(c.BACKFILL_TAG):
        tags[c.BACKFILL_TAG] = backfill
    return dg.AssetMaterialization(asset_key=asset_key, partition=partition, metadata=dict(metadata), tags=tags)


def input_pointer_tags(pointers: Mapping[dg.AssetKey, int]) -> dict[str, str]:
    """Provenance tags saying a materialization read ``key`` as of the event with that storage id."""
    return {get_input_event_pointer_tag(key): str(storage_id) for key, storage_id in pointers.items()}

