"""``build_definitions``: a catalog and a pipeline as a Dagster code location.

Thin wiring over the pure spec builder (``translator.build_specs``): nothing here opens a connection,
so a module calling ``build_definitions`` at import time is safe to load in the webserver, the daemon
and every run worker.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import dagster as dg

from datapipe_dagster.compute.catalog import Catalog, Pipeline
from datapipe_dagster.compute.datatable import DataStore
from datapipe_dagster.compute.run import build_compute
from datapipe_dagster.compute.steps import KeyedStep, Step, is_keyed
from datapipe_dagster.dagster import constants as c
from datapipe_dagster.dagster.assets import build_step_asset
from datapipe_dagster.dagster.automation import stale_condition
from datapipe_dagster.dagster.fanout import build_fanout_step_asset
from datapipe_dagster.dagster.inflight import Upstream
from datapipe_dagster.dagster.io_manager import Binding, DatapipeIOManager
from datapipe_dagster.dagster.partitions import BucketPartitions
from datapipe_dagster.dagster.sensors import build_step_sensor
from datapipe_dagster.dagster.translator import DatapipeSpecs, DatapipeTranslator, StepProps, build_specs
from datapipe_dagster.dagster.versions import observable_table
from datapipe_dagster.errors import ConfigurationError

DEFAULT_IO_MANAGER_KEY = "datapipe_io_manager"
AUTOMATION_SENSOR = "datapipe_automation_sensor"
"""With ``automation="conditions"``: the sensor evaluating the steps' automation conditions."""


def _keys_of(assets: Iterable[Any]) -> set[dg.AssetKey]:
    keys: set[dg.AssetKey] = set()
    for a in assets:
        if isinstance(a, dg.AssetsDefinition):
            keys |= set(a.keys)
        elif isinstance(a, dg.AssetSpec):
            keys.add(a.key)
        elif isinstance(a, dg.SourceAsset):
            keys.add(a.key)
    return keys


def build_definitions(
    catalog: Catalog,
    pipeline: Pipeline,
    datastore: DataStore,
    *,
    partitions: int | None = 16,
    key_prefix: str | Sequence[str] | None = None,
    group_name: str | None = "datapipe",
    sensor_interval_seconds: int = 30,
    reparse_on_code_change: bool = False,
    sensors_running: bool = False,
    translator: DatapipeTranslator | None = None,
    assets: Sequence[dg.AssetsDefinition | dg.AssetSpec] = (),
    io_manager_key: str = DEFAULT_IO_MANAGER_KEY,
    replace_outputs: bool = False,
    fail_run_on_failed_keys: bool = True,
    executor: dg.ExecutorDefinition | None = dg.in_process_executor,
    max_upstream_wait_seconds: float = 120.0,
    automation: str = "sensors",
    external_scans: str = "auto",
    fan_out_partitions: bool = False,
    max_partitions_per_run: int | None = None,
) -> dg.Definitions:
    """Dagster definitions for a pipeline: table assets, step multi-assets, sensors, checks, IO manager.

    Args:
        catalog: the tables.
        pipeline: the steps.
        datastore: where row and transform metadata live.
        partitions: hash buckets of each keyed transform's key (None: keyed transforms unpartitioned).
        key_prefix: prepended to every table's asset key.
        group_name: the asset group.
        sensor_interval_seconds: minimum interval between sensor ticks (Dagster's floor is 5 s).
        reparse_on_code_change: when a step's code version changes, its sensor requests a reparse of all
            partitions (otherwise the assets only show as changed in the UI).
        sensors_running: start the sensors as running (default: stopped until turned on in the UI).
        translator: naming override point (``key_prefix`` and ``group_name`` are ignored when given).
        assets: the user's own assets to include; a catalog table one of them produces (e.g. an ingestion
            asset returning events through the IO manager) is not declared as a source asset.
        io_manager_key: the resource key of the :class:`DatapipeIOManager`.
        replace_outputs: the IO manager's ``replace`` setting (a returned frame replaces the table).
        fail_run_on_failed_keys: a run in which some keys failed ends as a failure whose message lists
            the keys and their partitions (the outputs of the keys that succeeded stay committed, and
            the materializations and checks are reported first). False: such runs end as a success and
            only the failed-keys checks turn red.
        executor: the executor of the runs the sensors launch (one job per step, ``<step>_job``). The
            default, in-process, runs the one step of such a run in the run's own process instead of
            starting a subprocess for it (seconds saved per run). None: sensors target the assets
            directly and runs use the code location's default executor. Any other executor (e.g.
            ``dagster_celery.celery_executor.configured({...})``) is also the code location's default,
            so UI runs, backfills and ``dagster asset materialize`` use it too.
        max_upstream_wait_seconds: a step's sensor does not request runs while a step upstream of it
            has a queued or running run, or stale keys its own sensor is about to request (the
            downstream run would read inputs about to change, then run again). It waits at most this
            long, counted from the first tick that waited, so a steady stream of upstream work never
            starves it.
        automation: ``"sensors"`` (one stale sensor per step) or ``"conditions"``: each keyed step's
            assets carry an ``AutomationCondition`` true for exactly the partitions holding stale keys
            (not while a run of them or of an upstream asset is in progress), evaluated by the sensor
            ``datapipe_automation_sensor`` in the code location; its runs process stale keys only.
        external_scans: where an external table (``UpdateExternalTable``) is scanned: ``"tick"`` (in its
            sensor's tick: 60 s limit, no run logs), ``"run"`` (the sensor requests a run of the table's
            asset, one at a time, which scans it), or ``"auto"`` (default): full scans, whose cost grows
            with the table, in runs; folder listings and updated-at scans, which read only what changed,
            in the tick.

        fan_out_partitions: a partitioned step becomes a graph: a run over N partitions executes as N
            Dagster steps (one per partition) plus a fan-in that reports the materializations and checks,
            so the run's executor (multiprocess, Celery, Kubernetes) spreads the partitions. Only
            partition keys and small summaries pass between the steps.
        max_partitions_per_run: backfills (``BackfillPolicy.multi_run``) and sensor requests are split
            into runs of at most this many partitions, for run launchers that spread runs.

    Returns:
        Definitions that can be merged with the user's own (``dg.Definitions.merge``).
    """
    if external_scans not in ("auto", "tick", "run"):
        raise ConfigurationError(f"external_scans must be 'auto', 'tick' or 'run', got {external_scans!r}")
    if automation not in ("sensors", "conditions"):
        raise ConfigurationError(f"automation must be 'sensors' or 'conditions', got {automation!r}")
    steps = build_compute(datastore, catalog, pipeline)  # binds declarations; opens no connection
    parts = BucketPartitions(partitions, max_per_run=max_partitions_per_run) if partitions else None
    translator = translator or DatapipeTranslator(key_prefix=key_prefix, group_name=group_name)
    specs = build_specs(catalog, steps, translator, parts)
    user_keys = _keys_of(assets)
    status = dg.DefaultSensorStatus.RUNNING if sensors_running else dg.DefaultSensorStatus.STOPPED

    input_dts = {dt.name: dt for step in steps for dt in step.input_dts}
    all_assets: list[Any] = [
        specs.table_specs[t]
        if t in specs.partitioned_sources or t not in input_dts
        else observable_table(specs.table_specs[t], input_dts[t])
        for t in specs.source_tables
        if specs.key(t) not in user_keys
    ]
    sensors: list[dg.SensorDefinition] = []
    jobs: list[dg.UnresolvedAssetJobDefinition] = []
    automated: list[dg.AssetKey] = []
    # Each declared source table is observed by the sensor of the first step reading it.
    unobserved = {t for t in specs.source_tables if specs.key(t) not in user_keys}
    writer = {out: i for i, p in enumerate(specs.steps) for out in p.outputs}
    for i, (step, props) in enumerate(zip(steps, specs.steps, strict=True)):
        if not props.outputs:
            continue  # a step without output tables has no asset to materialize
        sources = {
            dt.name: (specs.key(dt.name), dt)
            for dt in step.input_dts
            if dt.name in unobserved
        }
        conditioned = automation == "conditions" and is_keyed(step)
        if conditioned and isinstance(step, KeyedStep):
            cond = stale_condition(step, props, parts)
            specs.step_specs[props.name] = [
                spec.replace_attributes(automation_condition=cond) for spec in specs.step_specs[props.name]
            ]
            automated.extend(spec.key for spec in specs.step_specs[props.name])
        if fan_out_partitions and parts is not None and props.partitioned and isinstance(step, KeyedStep):
            asset = build_fanout_step_asset(step, props, specs, parts, fail_run_on_failed_keys=fail_run_on_failed_keys)
        else:
            asset = build_step_asset(step, props, specs, parts, fail_run_on_failed_keys=fail_run_on_failed_keys)
        all_assets.append(asset)
        if conditioned:
            continue
        job = _step_job(props, specs, parts, executor) if executor is not None else None
        sensor = build_step_sensor(
            step,
            props,
            specs,
            parts,
            datastore,
            interval=sensor_interval_seconds,
            reparse_on_code_change=reparse_on_code_change,
            default_status=status,
            sources=sources,
            upstream=_upstream(i, steps, specs, writer),
            max_upstream_wait=max_upstream_wait_seconds,
            job=job,
            external_scans=external_scans,
        )
        if sensor is not None:
            sensors.append(sensor)
            if job is not None and sensor.name == c.sensor_name(props.name):  # a scan sensor runs nothing
                jobs.append(job)
            unobserved -= set(sources)
    if automated:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.BetaWarning)  # use_user_code_server is beta in 1.13
            sensors.append(
                dg.AutomationConditionSensorDefinition(
                    name=AUTOMATION_SENSOR,
                    target=dg.AssetSelection.assets(*automated),
                    use_user_code_server=True,  # our condition asks the engine: evaluated in the code location
                    minimum_interval_seconds=sensor_interval_seconds,
                    default_status=status,
                    description="Requests the partitions holding stale keys of every datapipe transform.",
                )
            )
    all_assets.extend(assets)
    io_manager = DatapipeIOManager.bound(Binding(datastore, catalog, specs, parts), replace=replace_outputs)
    return dg.Definitions(
        assets=all_assets,
        sensors=sensors,
        jobs=jobs,
        resources={io_manager_key: io_manager},
        # Any executor but the default also runs the code location's other asset jobs (UI runs,
        # backfills, `dagster asset materialize`): that is how a fanned-out range run reaches workers.
        executor=None if executor is None or executor is dg.in_process_executor else executor,
    )


def _upstream(i: int, steps: Sequence[Step], specs: DatapipeSpecs, writer: dict[str, int]) -> Upstream:
    """The steps writing step ``i``'s inputs, directly or through other steps (and their assets)."""
    seen: set[int] = set()
    todo = list(specs.steps[i].inputs)
    while todo:
        j = writer.get(todo.pop())
        if j is not None and j not in seen and j != i:
            seen.add(j)
            todo.extend(specs.steps[j].inputs)
    keyed = [(specs.steps[j].name, s) for j in sorted(seen) if isinstance(s := steps[j], KeyedStep)]
    keys = {specs.key(t) for j in seen for t in specs.steps[j].outputs}
    return Upstream(steps=keyed, asset_keys=keys)


def _step_job(
    props: StepProps, specs: DatapipeSpecs, parts: BucketPartitions | None, executor: dg.ExecutorDefinition
) -> dg.UnresolvedAssetJobDefinition:
    """The job a step's sensor launches: the step's outputs and checks, on ``executor``."""
    keys = [s.key for s in specs.step_specs[props.name]]
    return dg.define_asset_job(
        name=c.job_name(props.name),
        selection=dg.AssetSelection.assets(*keys),
        partitions_def=parts.definition if parts is not None and props.partitioned else None,
        executor_def=executor,
        description=f"Runs of `{props.name}` launched by its sensor.",
    )


def datapipe_specs(
    catalog: Catalog,
    pipeline: Pipeline,
    datastore: DataStore,
    *,
    partitions: int | None = 16,
    translator: DatapipeTranslator | None = None,
) -> DatapipeSpecs:
    """The asset and check specs ``build_definitions`` would wire up, for inspection and tests."""
    steps = build_compute(datastore, catalog, pipeline)
    return build_specs(
        catalog,
        steps,
        translator or DatapipeTranslator(),
        BucketPartitions(partitions) if partitions else None,
    )
