"""One ``multi_asset`` per pipeline step; its body runs the engine itself.

The step's outputs are written by the engine (``process_keys``), never through an IO manager, so a
chunk's output rows and the transform's metadata commit in one transaction. The body only yields
``MaterializeResult``s (and the failed-keys check result) describing what the engine did.
"""

from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from datapipe_dagster.compute.catalog import ComputeStep
from datapipe_dagster.compute.datatable import DataStore
from datapipe_dagster.compute.result import OutputStats, StepResult
from datapipe_dagster.dagster import constants as c
from datapipe_dagster.dagster.metadata import check_metadata, output_metadata
from datapipe_dagster.dagster.partitions import BucketPartitions
from datapipe_dagster.dagster.translator import DatapipeSpecs, StepProps
from datapipe_dagster.errors import DatapipeError


def run_mode(tags: Mapping[str, str]) -> str:
    """``stale`` for sensor runs (only stale keys), ``reparse`` for manual runs and backfills.

    An explicit ``datapipe/mode`` tag wins; otherwise a run is a person's (or a backfill's) request to
    recompute what it selects, which is a reparse.
    """
    mode = tags.get(c.TAG_MODE)
    if mode in (c.MODE_STALE, c.MODE_REPARSE):
        return mode
    return c.MODE_REPARSE


class StepRunner:
    """Runs a keyed step (``get_stale_keys`` / ``get_all_keys`` / ``process_keys``) over partitions."""

    def __init__(self, step: Any, props: StepProps, parts: BucketPartitions | None):
        self.step = step
        self.props = props
        self.parts = parts if props.partitioned else None

    @property
    def key_cols(self) -> list[str]:
        return (
            list(self.step.key_cols)
            if hasattr(self.step, "key_cols")
            else list(self.props.transform_keys or ())
        )

    def _in(self, keys: pd.DataFrame, partitions: list[str] | None) -> pd.DataFrame:
        if self.parts is None or partitions is None:
            return keys
        return self.parts.select(keys, list(self.props.transform_keys or ()), partitions)

    def keys_for(self, mode: str, partitions: list[str] | None) -> pd.DataFrame:
        """The keys a run processes: stale keys, or every key (reparse), of ``partitions``."""
        keys = self.step.get_stale_keys() if mode == c.MODE_STALE else self.step.get_all_keys()
        return self._in(keys, partitions)

    def run(self, mode: str, partitions: list[str] | None) -> tuple[StepResult, int, dict[str, int] | None]:
        """Process the run's keys.

        Returns:
            The engine's result, the number of stale keys left in ``partitions``, and for a range run the
            number of keys processed per partition (its materializations carry run totals).
        """
        keys = self.keys_for(mode, partitions)
        by_partition = None
        if self.parts is not None and partitions is not None and len(partitions) > 1:
            counts = self.parts.buckets(keys, list(self.props.transform_keys or ())).value_counts()
            by_partition = {p: int(counts.get(p, 0)) for p in partitions}
        result = self.step.process_keys(keys)
        # Advancing the watermarks here (only past rows no key needs any more) spares the next sensor
        # tick from rescanning what this run just processed.
        remaining = len(self._in(self.step.get_stale_keys(advance_watermark=True), partitions))
        return result, remaining, by_partition


def _preview(result: StepResult, dt: Any) -> pd.DataFrame | None:
    changed = result.changed.get(dt.name)
    if changed is None or len(changed) == 0:
        return None
    try:
        return dt.get_data(changed.head(c.PREVIEW_ROWS))
    except Exception:  # noqa: BLE001 - a preview must never fail a run that already committed
        return None


def build_step_asset(
    step: ComputeStep, props: StepProps, specs: DatapipeSpecs, parts: BucketPartitions | None, ds: DataStore
) -> dg.AssetsDefinition:
    """The multi-asset of one step: all its output tables, materialized together by the engine."""
    out_specs = specs.step_specs[props.name]
    check_specs = specs.check_specs.get(props.name, [])
    keyed = props.transform_keys is not None
    runner = StepRunner(step, props, parts) if keyed else None
    partitioned = runner is not None and runner.parts is not None
    kind = "keyed by " + ", ".join(props.transform_keys) if props.transform_keys else "unpartitioned"
    description = f"{props.kind} `{props.name}`: {', '.join(props.inputs) or '(no inputs)'} -> {', '.join(props.outputs)} ({kind})."

    @dg.multi_asset(
        name=c.op_name(props.name),
        specs=out_specs,
        check_specs=check_specs or None,
        backfill_policy=dg.BackfillPolicy.single_run() if partitioned else None,
        can_subset=False,  # the engine writes all outputs of a key in one transaction
        description=description,
        op_tags={"datapipe/step": props.name},
    )
    def _step_asset(context: AssetExecutionContext) -> Iterator[Any]:
        mode = run_mode(context.run.tags)
        partitions = list(context.partition_keys) if partitioned else None
        try:
            if runner is None:
                result, remaining, by_partition = step.run_full(ds), 0, None
            else:
                result, remaining, by_partition = runner.run(mode, partitions)
        except DatapipeError as e:
            # Configuration and schema errors name the table, column and key: show them as the failure.
            raise dg.Failure(
                description=str(e), metadata={c.META_TRANSFORM: props.name, c.META_MODE: mode}
            ) from e
        where = (
            ""
            if not partitions
            else f", partition {partitions[0]}"
            if len(partitions) == 1
            else f", partitions {partitions[0]}…{partitions[-1]}"
        )
        context.log.info("%s (%s%s)", result, mode, where)
        if result.keys_failed:
            context.log.warning(
                "%s: %d key(s) failed; see the %s check",
                props.name,
                result.keys_failed,
                c.check_name(props.name),
            )
        key_cols = runner.key_cols if runner is not None else []
        for spec, dt in zip(out_specs, step.output_dts, strict=True):
            md = output_metadata(
                result=result,
                stats=result.outputs.get(dt.name, OutputStats()),
                mode=mode,
                partitions=partitions,
                key_cols=key_cols,
                stale_remaining=remaining,
                preview=_preview(result, dt),
            )
            if by_partition is not None:
                md[c.META_KEYS_BY_PARTITION] = dg.MetadataValue.json(by_partition)
            yield dg.MaterializeResult(asset_key=spec.key, metadata=md)
        for cs in check_specs:
            yield failed_keys_check(step, cs, key_cols)

    return _step_asset


def failed_keys_check(step: Any, spec: dg.AssetCheckSpec, key_cols: list[str]) -> dg.AssetCheckResult:
    """Red while any key of ``step`` is failing (whichever partition it is in), with keys and errors."""
    total = int(step.count_failed())
    failed = step.failed_keys(limit=c.FIRST_ERRORS) if total else pd.DataFrame()
    return dg.AssetCheckResult(
        asset_key=spec.asset_key,
        check_name=spec.name,
        passed=total == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=check_metadata(failed, total, key_cols),
    )
