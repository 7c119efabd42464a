"""Declarative automation: an ``AutomationCondition`` true for exactly the partitions holding stale keys.

With ``build_definitions(..., automation="conditions")`` each keyed step's assets carry
``StalePartitionsCondition(step) & ~in_progress() & ~any_deps_in_progress()`` instead of a stale sensor.
Dagster's automation sensor evaluates it in the code location (the condition asks the engine, it is not
serializable); the runs it launches carry ``dagster/from_automation_condition`` and therefore process
stale keys only (see ``assets.run_mode``).
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from datapipe_dagster.compute.partition_runner import stale_by_partition
from datapipe_dagster.compute.steps import KeyedStep
from datapipe_dagster.dagster.partitions import BucketPartitions
from datapipe_dagster.dagster.translator import StepProps


class StalePartitionsCondition(dg.AutomationCondition):
    """True for the partitions of a step's asset that hold stale keys (all of an unpartitioned one when
    any key is stale). Failed keys count only when one of their input rows changed since they failed.

    Args:
        step: the keyed compute step (``get_stale_keys``).
        props: its frozen record (transform keys, name).
        parts: the step's hash-bucket partitions, or None for an unpartitioned step.
    """

    def __init__(self, step: KeyedStep, props: StepProps, parts: BucketPartitions | None):
        self.step = step
        self.props = props
        self.parts = parts if props.partitioned else None

    @property
    def requires_cursor(self) -> bool:
        return False

    @property
    def name(self) -> str:
        return "datapipe_stale_partitions"

    @property
    def description(self) -> str:
        return f"partitions holding stale keys of transform `{self.props.name}`"

    def get_label(self) -> str | None:
        return "stale keys"

    def stale_partitions(self) -> list[str] | None:
        """The partitions holding stale keys; for an unpartitioned step ``[]`` or None (all)."""
        stale = stale_by_partition(self.step, self.parts, advance_watermark=False)
        if not stale.partitioned:
            return None if stale.total else []
        return stale.partitions

    def evaluate(self, context: Any) -> dg.AutomationResult:
        parts = self.stale_partitions()
        if parts is None:
            true = context.candidate_subset
        elif not parts:
            true = context.get_empty_subset()
        else:
            stale = context.asset_graph_view.get_subset_from_partition_keys(
                context.key, context.partitions_def, set(parts)
            )
            true = context.candidate_subset.compute_intersection(stale)
        return dg.AutomationResult(context, true_subset=true)


def stale_condition(step: KeyedStep, props: StepProps, parts: BucketPartitions | None) -> dg.AutomationCondition:
    """Request the partitions holding stale keys, unless a run of them or of an upstream asset is in
    progress (the next evaluation after it finishes requests what is still stale)."""
    return (
        StalePartitionsCondition(step, props, parts)
        & ~dg.AutomationCondition.in_progress()
        & ~dg.AutomationCondition.any_deps_in_progress()
    ).with_label(f"stale keys of {props.name}")
