"""A step as a fanned-out graph: one Dagster step per partition of a run, then one fan-in step.

A multi-asset is one op, so a run over partitions ``00…15`` is one step that no executor can spread.
With ``build_definitions(fan_out_partitions=True)`` a partitioned step is a graph-backed multi-asset
instead: ``<op>_partitions`` emits one dynamic output per partition of the run (only the partition key),
``<op>_partition`` processes one partition with the engine (mapped: one step each, so the multiprocess,
Celery or Kubernetes executor runs them in parallel), and ``<op>_collect`` collects their small summaries (counts,
the first failed keys, a few changed keys for the preview) and reports the materializations and checks
once. The engine commits each partition's outputs itself; nothing but those summaries moves between
steps, so the steps only need the same code, environment and database.
"""

from typing import Any

import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext, OpExecutionContext

from datapipe_dagster.compute.partition_runner import PartitionRunner, stale_by_partition
from datapipe_dagster.compute.result import OutputStats, StepResult
from datapipe_dagster.compute.run_plan import RunPlan
from datapipe_dagster.compute.steps import KeyedStep
from datapipe_dagster.dagster import constants as c
from datapipe_dagster.dagster._provenance import output_reported_by_body, partition_materialization
from datapipe_dagster.dagster.assets import failed_keys_check, failure_message, preview, run_mode, tag_run
from datapipe_dagster.dagster.metadata import failed_with_partitions, output_metadata, run_summary
from datapipe_dagster.dagster.partitions import BucketPartitions
from datapipe_dagster.dagster.translator import DatapipeSpecs, StepProps
from datapipe_dagster.dagster.versions import never_observed, output_version, source_observations
from datapipe_dagster.errors import DatapipeError

PARTITION_OP_SUFFIX = "_partition"
PLAN_OP_SUFFIX = "_partitions"
COLLECT_OP_SUFFIX = "_collect"


class _Summary(StepResult):
    """A StepResult rebuilt from a partition step's summary: ``failed`` holds only the first failed
    keys, ``keys_failed`` the true count."""

    total_failed: int = 0

    @property
    def keys_failed(self) -> int:
        return self.total_failed


def summarize(partition: str, result: StepResult, key_cols: list[str]) -> dict[str, Any]:
    """What crosses from a partition step to the fan-in: plain, small values only."""
    failed = result.failed.head(c.FIRST_ERRORS)
    cols = [k for k in key_cols if k in failed.columns] + [x for x in ("error",) if x in failed.columns]
    return {
        "partition": partition,
        "keys_processed": int(result.keys_processed),
        "keys_superseded": int(result.keys_superseded),
        "rows_read": int(result.rows_read),
        "elapsed": float(result.elapsed),
        "outputs": {t: [int(o.inserted), int(o.updated), int(o.deleted)] for t, o in result.outputs.items()},
        "keys_failed": int(result.keys_failed),
        "failed": failed[cols].astype(object).to_dict("records") if len(failed) else [],
        "changed": {
            t: _first_changed(result, t).astype(object).to_dict("records")
            for t in result.outputs
        },
    }


def _first_changed(result: StepResult, table: str) -> pd.DataFrame:
    """The preview's keys: the first changed keys of ``table``, without merging the run's whole key set."""
    idx = result.changed.head(table, c.PREVIEW_ROWS)
    return pd.DataFrame() if idx is None else idx


def restore(s: dict[str, Any]) -> _Summary:
    r = _Summary(name="", keys_processed=s["keys_processed"], keys_superseded=s["keys_superseded"],
                 rows_read=s["rows_read"], elapsed=s["elapsed"])
    r.outputs = {t: OutputStats(*v) for t, v in s["outputs"].items()}
    r.failed = pd.DataFrame(s["failed"])
    r.total_failed = s["keys_failed"]
    return r


def build_fanout_step_asset(
    step: KeyedStep,
    props: StepProps,
    specs: DatapipeSpecs,
    parts: BucketPartitions,
    *,
    fail_run_on_failed_keys: bool = True,
) -> dg.AssetsDefinition:
    """The graph-backed multi-asset of a partitioned step: a step per partition, then a fan-in."""
    out_specs = specs.step_specs[props.name]
    check_specs = specs.check_specs.get(props.name, [])
    runner = PartitionRunner(step, parts)
    run_plan = RunPlan.of(step, parts)  # None: each partition step asks for its keys itself
    key_cols = runner.key_cols
    tk = list(props.transform_keys or ())
    base = c.op_name(props.name)
    outs = {f"out_{i}": dg.AssetOut.from_spec(spec.replace_attributes(deps=[]), dagster_type=dg.Nothing) for i, spec in enumerate(out_specs)}
    # A graph-backed asset takes its upstream assets as inputs: Nothing-typed ones load no data.
    deps = {d.asset_key: d for spec in out_specs for d in spec.deps}
    ins = {
        f"in_{i}": dg.AssetIn(key=key, dagster_type=dg.Nothing, partition_mapping=d.partition_mapping)
        for i, (key, d) in enumerate(deps.items())
    }
    check_outs = [cs.get_python_identifier() for cs in check_specs]
    source_keys = [specs.key(t) for t in props.inputs if t in specs.partitioned_sources]
    ds = step.output_dts[0].ds  # its write sequence versions the outputs (a step asset has outputs)
    tags = {"datapipe/step": props.name}

    @dg.op(
        name=base + PLAN_OP_SUFFIX,
        ins={name: dg.In(dg.Nothing) for name in ins},
        out=dg.DynamicOut(dict),
        tags=tags,
    )
    def plan(context: OpExecutionContext):  # noqa: ANN202 - a generator of DynamicOutputs
        for p in context.partition_keys:
            parts.bucket_of(p)  # an unknown key fails here, naming the valid ones
        # The run's keys are found once, here, and each partition step reads its own share (see
        # compute.run_plan). The plan id travels with the partition: a re-execution of a failed
        # partition step (a new run) reads the plan of the run that made it.
        plan_id = None
        if run_plan is not None:
            run_tags = context.run.tags
            try:
                run_plan.make(
                    context.run_id,
                    run_mode(run_tags),
                    list(context.partition_keys),
                    retry_failed=run_tags.get(c.TAG_RETRY_FAILED) == "true",
                )
            except DatapipeError as e:
                raise dg.Failure(description=str(e), metadata={c.META_TRANSFORM: props.name}) from e
            plan_id = context.run_id
        # A source never observed is observed here, before the fan-in step reads its provenance (see
        # assets.build_step_asset).
        baseline = never_observed(context.instance, source_keys)
        if baseline:
            yield from source_observations(baseline, list(context.partition_keys), ds.current_seq())
        for p in context.partition_keys:
            yield dg.DynamicOutput({"partition": p, "plan": plan_id}, mapping_key=p)

    @dg.op(name=base + PARTITION_OP_SUFFIX, tags=tags)
    def run_partition(context: OpExecutionContext, task: dict) -> dict:
        run_tags = context.run.tags
        mode = run_mode(run_tags)
        partition, plan_id = task["partition"], task.get("plan")
        try:
            if run_plan is not None and plan_id is not None:
                keys = run_plan.keys(plan_id, mode, partition)
            else:
                keys = runner.keys_for(mode, [partition], retry_failed=run_tags.get(c.TAG_RETRY_FAILED) == "true")
            result = step.process_keys(keys)
            if run_plan is not None and plan_id is not None:
                run_plan.done(plan_id, partition)  # kept after a failure: a re-execution reads them again
        except DatapipeError as e:
            raise dg.Failure(description=str(e), metadata={c.META_TRANSFORM: props.name, c.META_MODE: mode}) from e
        context.log.info("%s partition %s: %s (%s)", props.name, partition, result, mode)
        return {**summarize(partition, result, key_cols), "plan": plan_id}

    @dg.op(
        name=base + COLLECT_OP_SUFFIX,
        out={name: dg.Out(dg.Nothing, is_required=False) for name in [*outs, *check_outs]},
        tags=tags,
    )
    def collect(context: AssetExecutionContext, summaries: list[dict]):  # noqa: ANN202
        mode = run_mode(context.run.tags)
        summaries = sorted(summaries, key=lambda s: s["partition"])
        if run_plan is not None:
            for plan_id in {s["plan"] for s in summaries if s.get("plan")}:
                run_plan.drop(plan_id)
        results = {s["partition"]: restore(s) for s in summaries}
        partitions = list(results)
        summary = run_summary(partitions, list(results.values()))
        context.log.info("%s: %s (%s)", props.name, summary, mode)
        tag_run(context, summary)
        counts = stale_by_partition(step, parts).counts
        by_table = {s["partition"]: s["changed"] for s in summaries}
        seq = ds.current_seq()
        for (name, _), spec, dt in zip(outs.items(), out_specs, step.output_dts, strict=True):
            mats = []
            for p, r in results.items():
                changed = pd.DataFrame(by_table[p].get(dt.name, []))
                md = output_metadata(
                    result=r,
                    stats=r.outputs.get(dt.name, OutputStats()),
                    mode=mode,
                    partition=p,
                    key_cols=key_cols,
                    stale_remaining=counts.get(p, 0),
                    preview=preview(dt, changed),
                    parts=parts,
                )
                stats = r.outputs.get(dt.name, OutputStats())
                mats.append(
                    partition_materialization(
                        context, spec.key, p, md, output_version(context.instance, spec.key, p, stats, seq)
                    )
                )
            run_md: dict[str, Any] = {c.META_MODE: mode}
            if partitions:
                run_md[c.META_RUN_PARTITIONS] = f"{partitions[0]}..{partitions[-1]}"
            # Each partition gets its own data version: the fan-in reports the materializations itself.
            yield dg.Output(None, output_name=name, metadata=output_reported_by_body(run_md))
            yield from mats
        for cs in check_specs:
            yield failed_keys_check(step, cs, key_cols, parts)
        failed_total = sum(r.keys_failed for r in results.values())
        if failed_total and fail_run_on_failed_keys:
            first = [r.failed for r in results.values() if len(r.failed)]
            failed = failed_with_partitions(pd.concat(first, ignore_index=True), parts, tk)
            raise dg.Failure(
                description=failure_message(props.name, failed, key_cols, failed_total),
                metadata={c.META_TRANSFORM: props.name, c.META_KEYS_FAILED: failed_total},
            )

    @dg.graph_multi_asset(
        name=base,
        outs=outs,
        ins=ins,
        partitions_def=parts.definition,
        backfill_policy=parts.backfill_policy(),
        can_subset=False,
        check_specs=check_specs or None,
    )
    def _graph(**upstream):  # noqa: ANN003, ANN202 - one Nothing input per upstream asset
        handles = collect(plan(**upstream).map(run_partition).collect())
        names = [*outs, *check_outs]
        if len(names) == 1:
            return {names[0]: handles}
        return {n: getattr(handles, n) for n in names}

    return _graph

