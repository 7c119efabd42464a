"""``build_definitions``: a catalog and a pipeline as a Dagster code location.

Thin wiring over the pure spec builder (``translator.build_specs``): nothing here opens a connection,
so a module calling ``build_definitions`` at import time is safe to load in the webserver, the daemon
and every run worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import dagster as dg

from datapipe_dagster.compute.catalog import Catalog, Pipeline
from datapipe_dagster.compute.datatable import DataStore
from datapipe_dagster.compute.run import build_compute
from datapipe_dagster.dagster.assets import build_step_asset
from datapipe_dagster.dagster.io_manager import Binding, DatapipeIOManager
from datapipe_dagster.dagster.partitions import BucketPartitions
from datapipe_dagster.dagster.sensors import build_step_sensor
from datapipe_dagster.dagster.translator import DatapipeSpecs, DatapipeTranslator, build_specs

DEFAULT_IO_MANAGER_KEY = "datapipe_io_manager"


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

    Returns:
        Definitions that can be merged with the user's own (``dg.Definitions.merge``).
    """
    steps = build_compute(datastore, catalog, pipeline)  # binds declarations; opens no connection
    parts = BucketPartitions(partitions) if partitions else None
    translator = translator or DatapipeTranslator(key_prefix=key_prefix, group_name=group_name)
    specs = build_specs(catalog, steps, translator, parts)
    user_keys = _keys_of(assets)
    status = dg.DefaultSensorStatus.RUNNING if sensors_running else dg.DefaultSensorStatus.STOPPED

    all_assets: list[Any] = [
        specs.table_specs[t] for t in specs.source_tables if specs.key(t) not in user_keys
    ]
    sensors: list[dg.SensorDefinition] = []
    # Each declared source table is observed by the sensor of the first step reading it.
    unobserved = {t for t in specs.source_tables if specs.key(t) not in user_keys}
    for step, props in zip(steps, specs.steps, strict=True):
        if not props.outputs:
            continue  # a step without output tables has no asset to materialize
        sources = {
            dt.name: (specs.key(dt.name), dt)
            for dt in getattr(step, "input_dts", [])
            if dt.name in unobserved
        }
        all_assets.append(build_step_asset(step, props, specs, parts, datastore))
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
        )
        if sensor is not None:
            sensors.append(sensor)
            unobserved -= set(sources)
    all_assets.extend(assets)
    io_manager = DatapipeIOManager.bound(Binding(datastore, catalog, specs, parts), replace=replace_outputs)
    return dg.Definitions(assets=all_assets, sensors=sensors, resources={io_manager_key: io_manager})


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
