"""``DatapipeComponent``: a catalog and a pipeline declared in a ``defs.yaml``, loaded by Dagster's components.

A thin layer over :func:`build_definitions` (no second code path): the YAML attributes become its
arguments, references such as ``.pipeline.catalog`` are imported, and the ``translation`` block (the shape
the dbt and dlt components use) goes through the one naming override point, the translator. Loading opens
no connection, like ``build_definitions``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import dagster as dg
from dagster.components.utils.translation import TranslationFn, TranslationFnResolver
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from datapipe_dagster.compute.catalog import Catalog, Pipeline
from datapipe_dagster.compute.datatable import DataStore
from datapipe_dagster.dagster.definitions import build_definitions
from datapipe_dagster.dagster.references import (
    COMPONENT,
    call_factory,
    check_assets,
    check_catalog,
    check_pipeline,
    import_reference,
)
from datapipe_dagster.dagster.translator import DatapipeTranslator, TableProps
from datapipe_dagster.errors import ConfigurationError
from datapipe_dagster.store.database import DBConn

TEMPLATES = Path(__file__).parent / "templates"

Automation = Literal["sensors", "conditions"]


def _component_context(context: dg.ResolutionContext) -> dg.ComponentLoadContext | None:
    try:
        return dg.ComponentLoadContext.from_resolution_context(context)  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - resolution outside a defs folder (e.g. resolve_from_yaml) has none
        return None


def _resolve_catalog(context: dg.ResolutionContext, value: Any) -> Any:
    value = context.resolve_value(value)
    if not isinstance(value, str):
        return check_catalog(value, "catalog", repr(value))
    return check_catalog(import_reference(value, "catalog", _component_context(context)), "catalog", value)


def _resolve_pipeline(context: dg.ResolutionContext, value: Any) -> Any:
    value = context.resolve_value(value)
    if not isinstance(value, str):
        return check_pipeline(value, "pipeline", repr(value))
    return check_pipeline(
        import_reference(value, "pipeline", _component_context(context)), "pipeline", value
    )


def _resolve_assets(context: dg.ResolutionContext, value: Any) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    refs = context.resolve_value(value) or []
    out: list[dg.AssetsDefinition | dg.AssetSpec] = []
    for i, ref in enumerate(refs):
        if isinstance(ref, str):
            out += check_assets(import_reference(ref, f"assets[{i}]", _component_context(context)), ref)
        else:
            out += check_assets(ref, repr(ref))
    return out


def _resolve_automation(context: dg.ResolutionContext, value: Any) -> str:
    return context.resolve_value(value)


def _typed(attribute: str, tp: Any, description: str) -> dg.Resolver:
    """A field resolved from its template, then checked, so a wrong type points at its line in defs.yaml."""
    adapter = TypeAdapter(tp)

    def resolve(context: dg.ResolutionContext, value: Any) -> Any:
        value = context.resolve_value(value)
        try:
            return adapter.validate_python(value)
        except ValidationError:
            raise ConfigurationError(
                f"{COMPONENT} attribute `{attribute}`: expected {_type_name(tp)}, found {value!r}"
            ) from None

    return dg.Resolver(resolve, model_field_type=tp, description=description)


def _type_name(tp: Any) -> str:
    return {int: "an integer", bool: "true or false"}.get(tp, "an integer or null")


def _translation_resolver() -> TranslationFnResolver:
    # The dbt/dlt components' block: one set of asset attributes, templated per table with `table`.
    resolver = TranslationFnResolver[TableProps](template_vars_for_translation_fn=lambda table: {"table": table})
    resolver.description = (
        "Per-table asset attributes, as in the dbt and dlt components: key, key_prefix, group_name, "
        "description, tags, owners, kinds, freshness_policy, metadata; templated with `table` (name, "
        "description, columns, store_kind, writer) and `spec` (the default AssetSpec)."
    )
    resolver.examples = [
        {"owners": ["team:analytics"], "tags": {"layer": "{{ 'raw' if table.writer is none else 'derived' }}"}}
    ]
    return resolver


class ComponentTranslator(DatapipeTranslator):
    """The translator ``build_definitions`` gets: the prefix and group, then the ``translation`` block."""

    def __init__(
        self,
        key_prefix: str | Sequence[str] | None,
        group_name: str | None,
        translation: TranslationFn[TableProps] | None,
    ):
        super().__init__(key_prefix=key_prefix, group_name=group_name)
        self.translation = translation

    def get_asset_spec(self, table: TableProps) -> dg.AssetSpec:
        spec = super().get_asset_spec(table)
        return self.translation(spec, table) if self.translation is not None else spec


class DatapipeScaffolder(dg.Scaffolder):
    """``dg scaffold defs datapipe_dagster.DatapipeComponent NAME``: a defs.yaml (or, with ``--format python``,
    a component.py) and a starter pipeline.py."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        folder = request.target_path
        folder.mkdir(parents=True, exist_ok=True)
        fmt = "component.py" if request.scaffold_format == "python" else "defs.yaml"
        text = (TEMPLATES / fmt).read_text(encoding="utf-8")
        (folder / fmt).write_text(text.replace("{type}", request.type_name).replace("{name}", folder.name))
        starter = folder / "pipeline.py"
        if not starter.exists():  # never overwrite the user's code
            starter.write_text((TEMPLATES / "pipeline.py").read_text(encoding="utf-8"), encoding="utf-8")


@dg.scaffold_with(DatapipeScaffolder)
class DatapipeComponent(dg.Component, dg.Resolvable, dg.Model):
    """A datapipe catalog and pipeline as Dagster assets: incremental, row-level, partitioned by key buckets.

    Every catalog table becomes an asset, every transform a partitioned multi-asset whose runs recompute
    only the keys whose input rows changed; sensors request runs for the partitions holding stale keys,
    and a backfill of a partition reparses it. Exactly what ``datapipe_dagster.build_definitions`` makes.

    Example ``defs.yaml``::

        type: datapipe_dagster.DatapipeComponent
        attributes:
          catalog: .pipeline.catalog      # pipeline.py beside this file
          pipeline: .pipeline.pipeline
          database_url: "{{ env('DATAPIPE_DB', 'sqlite:///' ~ context.project_root ~ '/data.sqlite') }}"
          partitions: 16
          translation:
            group_name: clicks
            owners: ["team:analytics"]
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    catalog: Annotated[
        Any,
        dg.Resolver(
            _resolve_catalog,
            model_field_type=str,
            description="The tables: a reference to a Catalog, or to a function taking a DBConn (the "
            "database_url's) and returning one. Relative to this folder (`.pipeline.catalog` is `catalog` "
            "in pipeline.py beside defs.yaml) or absolute (`my_pkg.pipeline.catalog`).",
            examples=[".pipeline.catalog", "my_pkg.pipeline.make_catalog"],
        ),
    ]
    pipeline: Annotated[
        Any,
        dg.Resolver(
            _resolve_pipeline,
            model_field_type=str,
            description="The steps: a reference to a Pipeline, or to a function without arguments "
            "returning one (relative or absolute, like `catalog`).",
            examples=[".pipeline.pipeline", "my_pkg.pipeline.make_pipeline"],
        ),
    ]
    database_url: str = Field(
        description="Where row and transform metadata live: a SQLAlchemy URL (sqlite:///..., "
        "postgresql://...) or a SQLite file path (relative paths are relative to the project root). "
        "Opened on the first run, never at load.",
        examples=["sqlite:///data/pipeline.sqlite", "{{ env('DATAPIPE_DB') }}"],
    )
    partitions: Annotated[
        int | None,
        _typed(
            "partitions",
            int | None,
            "Hash buckets of each keyed transform's key (the Dagster partitions); null: unpartitioned.",
        ),
    ] = 16
    sensor_interval_seconds: Annotated[
        int, _typed("sensor_interval_seconds", int, "Minimum seconds between sensor ticks (Dagster's floor is 5).")
    ] = 30
    reparse_on_code_change: Annotated[
        bool,
        _typed(
            "reparse_on_code_change",
            bool,
            "When a transform's code changes, its sensor requests a reparse of every partition.",
        ),
    ] = False
    sensors_running: Annotated[
        bool,
        _typed("sensors_running", bool, "Start the sensors as running (default: stopped until turned on)."),
    ] = False
    automation: Annotated[
        Automation,
        dg.Resolver(
            _resolve_automation,
            model_field_type=Automation,
            description="What launches runs for stale keys: 'sensors' (one per transform), or 'conditions' "
            "(declarative automation conditions on the transforms' assets).",
        ),
    ] = "sensors"
    fan_out_partitions: Annotated[
        bool,
        _typed(
            "fan_out_partitions",
            bool,
            "A run over N partitions of a transform executes as N Dagster steps (one per partition), so the "
            "run's executor (multiprocess, Celery, Kubernetes) spreads them.",
        ),
    ] = False
    max_partitions_per_run: Annotated[
        int | None,
        _typed(
            "max_partitions_per_run",
            int | None,
            "Backfills and sensor requests are split into runs of at most this many partitions.",
        ),
    ] = None
    assets: Annotated[
        list[Any],
        dg.Resolver(
            _resolve_assets,
            model_field_type=list[str],
            description="Your own assets that write catalog tables through the datapipe IO manager (e.g. an "
            "ingestion @asset returning a DataFrame): references, relative or absolute like `catalog`. "
            "Their tables are not declared as source assets, and the component includes them.",
            examples=[[".ingest.user_profiles"]],
        ),
    ] = Field(default_factory=list)
    key_prefix: Annotated[
        str | list[str] | None,
        dg.Resolver.default(description="Prepended to every table's asset key (a string or path components)."),
    ] = None
    group_name: Annotated[
        str | None, dg.Resolver.default(description="The asset group of every table (before `translation`).")
    ] = "datapipe"
    translation: Annotated[TranslationFn[TableProps] | None, _translation_resolver()] = None

    @classmethod
    def get_spec(cls) -> dg.ComponentTypeSpec:
        return dg.ComponentTypeSpec(
            tags=["datapipe", "incremental", "pandas"], produces=["asset", "asset_check", "sensor", "resource"]
        )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        catalog = self.catalog
        pipeline = self.pipeline
        if isinstance(catalog, str):  # given from Python as a reference
            catalog = check_catalog(import_reference(catalog, "catalog", _load_context(context)), "catalog", catalog)
        if isinstance(pipeline, str):
            pipeline = check_pipeline(
                import_reference(pipeline, "pipeline", _load_context(context)), "pipeline", pipeline
            )
        dbconn = DBConn(self._url(context))
        if not isinstance(catalog, Catalog):
            catalog = call_factory(catalog, "catalog", Catalog, dbconn)
        if not isinstance(pipeline, Pipeline):
            pipeline = call_factory(pipeline, "pipeline", Pipeline)
        assets: list[dg.AssetsDefinition | dg.AssetSpec] = []
        for i, item in enumerate(self.assets):
            if isinstance(item, str):  # given from Python as a reference
                item = import_reference(item, f"assets[{i}]", _load_context(context))
            assets += check_assets(item, repr(item))
        extra: dict[str, Any] = {}
        if self.automation != "sensors":
            extra["automation"] = self.automation
        if self.fan_out_partitions:
            extra["fan_out_partitions"] = True
        if self.max_partitions_per_run is not None:
            extra["max_partitions_per_run"] = self.max_partitions_per_run
        defs = build_definitions(
            catalog,
            pipeline,
            DataStore(dbconn),
            partitions=self.partitions,
            sensor_interval_seconds=self.sensor_interval_seconds,
            reparse_on_code_change=self.reparse_on_code_change,
            sensors_running=self.sensors_running,
            translator=ComponentTranslator(self.key_prefix, self.group_name, self.translation),
            assets=assets,
            **extra,
        )
        if dbconn.backend == "sqlite":
            # A folder, not a connection: SQLite cannot create the file's parent on the first run.
            database = dbconn.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        return defs

    def _url(self, context: dg.ComponentLoadContext | None) -> str:
        value = str(self.database_url).strip()
        if not value:
            raise ConfigurationError(f"{COMPONENT} attribute `database_url` is empty")
        if "://" in value:
            return value
        path = Path(value).expanduser()
        if not path.is_absolute():
            root = getattr(context, "project_root", None) if context is not None else None
            path = Path(root or Path.cwd()) / path
        return f"sqlite:///{path.resolve()}"


def _load_context(context: dg.ComponentLoadContext) -> dg.ComponentLoadContext | None:
    try:
        context.path  # noqa: B018 - a test context has no component folder
    except Exception:  # noqa: BLE001
        return None
    return context
