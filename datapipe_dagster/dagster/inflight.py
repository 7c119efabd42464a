"""What Dagster is doing around a step: queued and running runs of its assets (whoever launched them),
the upstream steps a downstream sensor waits for, and the newest event that moved an asset's data version.

The sensors read these before requesting anything, so a partition that a run will process is not
requested twice and a downstream step does not run while its inputs are still being produced.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from datapipe_dagster.compute.partition_runner import stale_by_partition
from datapipe_dagster.compute.steps import KeyedStep
from datapipe_dagster.dagster import constants as c

PENDING_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def in_flight(
    instance: dg.DagsterInstance, step_names: set[str], asset_keys: set[dg.AssetKey], limit: int
) -> list[dg.DagsterRun]:
    """Queued or running runs that materialize any of ``asset_keys`` (whoever launched them: a sensor,
    a person, a backfill, automation) or carry the step tag of one of ``step_names``."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=PENDING_STATUSES), limit=limit)
    return [
        r
        for r in runs
        if r.tags.get(c.TAG_STEP) in step_names
        or (r.asset_selection is not None and not asset_keys.isdisjoint(r.asset_selection))
    ]


def pending_runs(
    instance: dg.DagsterInstance,
    step_name: str,
    asset_keys: list[dg.AssetKey] | None = None,
    limit: int = 500,
) -> list[tuple[str, str] | None]:
    """Partition ranges (first, last) of the queued or running runs materializing this step's assets
    (any launcher); None for a run without partitions (or whose partitions are not known)."""
    out: list[tuple[str, str] | None] = []
    for run in in_flight(instance, {step_name}, set(asset_keys or ()), limit):
        tags = run.tags
        if "dagster/partition" in tags:
            out.append((tags["dagster/partition"], tags["dagster/partition"]))
        elif c.RANGE_START_TAG in tags and c.RANGE_END_TAG in tags:
            out.append((tags[c.RANGE_START_TAG], tags[c.RANGE_END_TAG]))
        else:
            out.append(None)
    return out


@dataclass
class Upstream:
    """The steps that write a step's inputs, directly or through other steps."""

    steps: list[tuple[str, KeyedStep]]  # (name, step) of keyed upstream steps
    asset_keys: set[dg.AssetKey]

    def blocking(self, instance: dg.DagsterInstance, limit: int = 500) -> str | None:
        """Why the downstream step should wait, or None."""
        names = {n for n, _ in self.steps}
        runs = in_flight(instance, names, self.asset_keys, limit)
        if runs:
            return f"run {runs[0].run_id[:8]} of an upstream step is {runs[0].status.value.lower()}"
        for name, step in self.steps:
            if stale_by_partition(step, None, advance_watermark=False).total:
                return f"upstream step {name!r} has stale keys"
        return None


def latest_event_id(instance: dg.DagsterInstance, keys: list[dg.AssetKey], observable: set[dg.AssetKey]) -> int:
    """The storage id of the newest event of any of ``keys`` that changes its data version for Dagster: a
    materialization, or an observation of an ``observable`` (source) asset. 0: none."""
    best = 0
    for key in keys:
        fetches = [instance.fetch_materializations]
        if key in observable:
            fetches.append(instance.fetch_observations)
        for fetch in fetches:
            records = fetch(key, limit=1).records
            if records:
                best = max(best, records[0].storage_id)
    return best
