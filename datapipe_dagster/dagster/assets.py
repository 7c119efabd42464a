"""One ``multi_asset`` per pipeline step; its body runs the engine itself.

The step's outputs are written by the engine (``process_keys``), never through an IO manager, so a
chunk's output rows and the transform's metadata commit in one transaction. The body only yields
``MaterializeResult``s (and the failed-keys check results) describing what the engine did. A range run
processes its partitions one after the other, so each partition's materialization carries that
partition's own counts, failed keys and preview.
"""


from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from datapipe_dagster.compute.datatable import DataStore, DataTable
from datapipe_dagster.compute.partition_runner import PartitionOutcome, PartitionRunner
from datapipe_dagster.compute.partitioning import Buckets
from datapipe_dagster.compute.result import OutputStats
from datapipe_dagster.compute.steps import KeyedStep, Step
from datapipe_dagster.dagster import constants as c
from datapipe_dagster.dagster._provenance import (
    input_pointer_tags,
    output_reported_by_body,
    partition_materialization,
)
from datapipe_dagster.dagster.metadata import (
    check_metadata,
    failed_with_partitions,
    output_metadata,
    run_summary,
)
from datapipe_dagster.dagster.partitions import BucketPartitions
from datapipe_dagster.dagster.translator import DatapipeSpecs, StepProps
from datapipe_dagster.dagster.versions import (
    latest_observation_ids,
    never_observed,
    output_version,
    source_observations,
)
from datapipe_dagster.errors import DatapipeError


def run_mode(tags: Mapping[str, str]) -> str:
    """``stale`` (only stale keys) or ``reparse`` (every key of the selected partitions).

    An explicit ``datapipe/mode`` tag wins. A run launched by a sensor, a schedule or an automation
    condition without that tag processes stale keys only. What is left is a person's request (a
    materialization from the UI or the CLI, a backfill): recompute what it selects, a reparse.
    """
    mode = tags.get(c.TAG_MODE)
    if mode in (c.MODE_STALE, c.MODE_REPARSE):
        return mode
    if any(t in tags for t in c.AUTOMATION_TAGS):
        return c.MODE_STALE
    return c.MODE_REPARSE


def preview(dt: DataTable, changed: pd.DataFrame | None) -> pd.DataFrame | None:
    """The first changed rows of an output as they are now (None when nothing changed or they cannot be
    read: a preview must never fail a run that already committed)."""
    if changed is None or len(changed) == 0:
        return None
    try:
        return dt.get_data(changed.head(c.PREVIEW_ROWS))
    except Exception:  # noqa: BLE001 - see the docstring
        return None


def failure_message(name: str, failed: pd.DataFrame, key_cols: list[str], total: int) -> str:
    """The run failure of a step whose keys failed: which keys, in which partitions, and what to do."""
    lines = [
        f"transform {name!r}: {total} key(s) failed in this run; the outputs of every other key are "
        "committed. Failed keys are retried when one of their input rows changes, when the code changes, "
        "or on a manual run / backfill of their partition:"
    ]
    for row in failed.head(c.FIRST_ERRORS).to_dict("records"):
        key = ", ".join(f"{k}={row.get(k)!r}" for k in key_cols if k in row)
        where = f" (partition {row['partition']})" if row.get("partition") is not None else ""
        err = str(row.get("error") or "").splitlines()[0] if row.get("error") else "(no message)"
        lines.append(f"  {key}{where}: {err}")
    if total > c.FIRST_ERRORS:
        lines.append(f"  … and {total - c.FIRST_ERRORS} more")
    return "\n".join(lines)


def describe_step(props: StepProps) -> str:
    """The multi-asset's description: kind, name, inputs -> outputs and how it is keyed."""
    kind = "keyed by " + ", ".join(props.transform_keys) if props.transform_keys else "unpartitioned"
    inputs = ", ".join(props.inputs) or "(no inputs)"
    return f"{props.kind} `{props.name}`: {inputs} -> {', '.join(props.outputs)} ({kind})."


def run_step(
    step: Step,
    runner: PartitionRunner | None,
    props: StepProps,
    mode: str,
    partitions: list[str] | None,
    tags: Mapping[str, str],
) -> list[PartitionOutcome]:
    """Run the engine for one run; a DatapipeError (it names table, column and key) becomes the run's
    ``dg.Failure``."""
    try:
        if runner is None:
            return [PartitionOutcome(None, step.run_full(), 0)]
        return runner.run(mode, partitions, retry_failed=tags.get(c.TAG_RETRY_FAILED) == "true")
    except DatapipeError as e:
        raise dg.Failure(description=str(e), metadata={c.META_TRANSFORM: props.name, c.META_MODE: mode}) from e


def materializations(
    context: AssetExecutionContext,
    step: Step,
    out_specs: list[dg.AssetSpec],
    outcomes: list[PartitionOutcome],
    mode: str,
    partitions: list[str] | None,
    runner: PartitionRunner | None,
    ds: DataStore,
    pointers: Mapping[dg.AssetKey, int] | None = None,
) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
    """One ``MaterializeResult`` per output, each partition with its own data version (``output_version``).

    A run over several partitions gives the result only the run's range and yields one materialization
    per partition itself, with that partition's metadata and data version (Dagster would give every
    partition of the run the same one). ``pointers``: source observations the run read, when Dagster
    found none at step start.
    """
    key_cols = runner.key_cols if runner is not None else []
    seq = ds.current_seq()  # the data version of every output partition this run changed
    for spec, dt in zip(out_specs, step.output_dts, strict=True):
        per_partition = {
            o.partition: output_metadata(
                result=o.result,
                stats=o.result.outputs.get(dt.name, OutputStats()),
                mode=mode,
                partition=o.partition,
                key_cols=key_cols,
                stale_remaining=o.stale_remaining,
                preview=preview(dt, o.result.changed.head(dt.name, c.PREVIEW_ROWS)),
                parts=runner.parts if runner is not None else None,
            )
            for o in outcomes
        }
        versions = {
            o.partition: output_version(
                context.instance, spec.key, o.partition, o.result.outputs.get(dt.name, OutputStats()), seq
            )
            for o in outcomes
        }
        if len(outcomes) == 1 or not partitions:
            p0 = outcomes[0].partition
            yield dg.MaterializeResult(
                asset_key=spec.key,
                metadata=per_partition[p0],
                data_version=versions[p0],
                tags=input_pointer_tags(pointers or {}) or None,
            )
            continue
        run_md = {c.META_MODE: mode, c.META_RUN_PARTITIONS: f"{partitions[0]}..{partitions[-1]}"}
        yield dg.MaterializeResult(asset_key=spec.key, metadata=output_reported_by_body(run_md))
        for p, md in per_partition.items():
            assert p is not None
            yield partition_materialization(context, spec.key, p, md, versions[p], pointers)


def fail_on_failed_keys(props: StepProps, outcomes: list[PartitionOutcome], runner: PartitionRunner | None) -> None:
    """Raise the run's ``dg.Failure`` naming the failed keys and their partitions, if any failed."""
    run_failed = [o.result.failed for o in outcomes if o.result.keys_failed]
    if not run_failed:
        return
    key_cols = runner.key_cols if runner is not None else []
    failed = failed_with_partitions(
        pd.concat(run_failed, ignore_index=True),
        runner.parts if runner is not None else None,
        list(props.transform_keys or ()),
    )
    raise dg.Failure(
        description=failure_message(props.name, failed, key_cols, len(failed)),
        metadata={c.META_TRANSFORM: props.name, c.META_KEYS_FAILED: len(failed)},
    )


def build_step_asset(
    step: Step,
    props: StepProps,
    specs: DatapipeSpecs,
    parts: BucketPartitions | None,
    *,
    fail_run_on_failed_keys: bool = True,
) -> dg.AssetsDefinition:
    """The multi-asset of one step: all its output tables, materialized together by the engine.

    Args:
        fail_run_on_failed_keys: a run in which keys failed ends as a failure (after committing the
            outputs of the keys that succeeded and reporting the materializations and checks).
    """
    out_specs = specs.step_specs[props.name]
    check_specs = specs.check_specs.get(props.name, [])
    runner = PartitionRunner(step, parts) if isinstance(step, KeyedStep) else None
    partitioned = runner is not None and runner.parts is not None
    source_keys = [specs.key(t) for t in props.inputs if t in specs.partitioned_sources]
    ds = step.output_dts[0].ds  # its write sequence versions the outputs (a step asset has outputs)

    @dg.multi_asset(
        name=c.op_name(props.name),
        specs=out_specs,
        check_specs=check_specs or None,
        backfill_policy=parts.backfill_policy() if partitioned and parts is not None else None,
        can_subset=False,  # the engine writes all outputs of a key in one transaction
        description=describe_step(props),
        op_tags={"datapipe/step": props.name},
    )
    def _step_asset(context: AssetExecutionContext) -> Iterator[Any]:
        mode = run_mode(context.run.tags)
        partitions = list(context.partition_keys) if partitioned else None
        # A source table never observed gives the run no event to point to, and Dagster could then never
        # tell that the table changed after it: observe it first (in the run's partitions) and record
        # that observation as what the run read.
        baseline = never_observed(context.instance, source_keys) if partitions else []
        if baseline and partitions:
            yield from source_observations(baseline, partitions, ds.current_seq())
        pointers = latest_observation_ids(context.instance, baseline)
        outcomes = run_step(step, runner, props, mode, partitions, context.run.tags)
        summary = run_summary(partitions, [o.result for o in outcomes])
        context.log.info("%s: %s (%s)", props.name, summary, mode)
        tag_run(context, summary)
        yield from materializations(context, step, out_specs, outcomes, mode, partitions, runner, ds, pointers)
        if runner is not None:  # checks are declared for keyed steps only
            for cs in check_specs:
                yield failed_keys_check(runner.step, cs, runner.key_cols, runner.parts)
        if fail_run_on_failed_keys:
            fail_on_failed_keys(props, outcomes, runner)

    return _step_asset


def tag_run(context: AssetExecutionContext | dg.OpExecutionContext, summary: str) -> None:
    """Show what the run did in the runs list (a tag; descriptions are not editable after launch)."""
    try:
        context.instance.add_run_tags(context.run.run_id, {c.TAG_SUMMARY: summary})
    except Exception as e:  # noqa: BLE001 - a cosmetic tag must never fail a run that committed
        context.log.debug("could not tag the run: %s", e)


def failed_keys_check(
    step: KeyedStep, spec: dg.AssetCheckSpec, key_cols: list[str], parts: Buckets | None = None
) -> dg.AssetCheckResult:
    """Red while any key of ``step`` is failing (whichever partition it is in), with keys, their
    partitions and errors."""
    total = int(step.count_failed())
    failed = step.failed_keys(limit=c.FIRST_ERRORS) if total else pd.DataFrame()
    if total:
        failed = failed_with_partitions(failed, parts, list(step.transform_keys or ()))
    return dg.AssetCheckResult(
        asset_key=spec.asset_key,
        check_name=spec.name,
        passed=total == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=check_metadata(failed, total, key_cols),
    )
