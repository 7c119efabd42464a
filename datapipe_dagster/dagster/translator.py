"""Pure spec building: catalog tables and pipeline steps -> Dagster ``AssetSpec``s. Runs nothing.

``build_specs`` reads only declarations (names, SQLAlchemy columns, transform keys, code versions), never
a database, so importing a code location stays free of connections and the shape is unit-testable.
Naming goes through one override point, :class:`DatapipeTranslator`, fed frozen records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import dagster as dg

from datapipe_dagster.compute.catalog import Catalog
from datapipe_dagster.compute.steps import KeyedStep, Step
from datapipe_dagster.dagster import constants as c
from datapipe_dagster.dagster.partitions import BucketPartitions
from datapipe_dagster.errors import ConfigurationError


@dataclass(frozen=True)
class TableProps:
    """What the translator knows about a catalog table."""

    name: str
    description: str | None
    columns: tuple[tuple[str, str, bool], ...]  # (name, SQL type, is primary key)
    store_kind: str
    writer: str | None  # the step writing it; None for a source table


@dataclass(frozen=True)
class StepProps:
    """What the translator knows about a pipeline step."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    transform_keys: tuple[str, ...] | None  # None: not a keyed step; (): keyless (one key)
    code_version: str | None

    @property
    def partitioned(self) -> bool:
        return bool(self.transform_keys)


class DatapipeTranslator:
    """Naming of the assets a pipeline becomes; subclass and override to change keys, groups, tags.

    Args:
        key_prefix: prepended to every table's asset key (a string or path components).
        group_name: the asset group of every table.
    """

    def __init__(self, key_prefix: str | Sequence[str] | None = None, group_name: str | None = "datapipe"):
        if isinstance(key_prefix, str):
            key_prefix = [key_prefix]
        self.key_prefix = [c.safe_name(p) for p in (key_prefix or [])]
        self.group_name = group_name

    def get_asset_key(self, table: TableProps) -> dg.AssetKey:
        """The asset key of a table: the prefix plus the table name."""
        return dg.AssetKey([*self.key_prefix, c.safe_name(table.name)])

    def get_group_name(self, table: TableProps) -> str | None:
        return self.group_name

    def get_description(self, table: TableProps) -> str | None:
        if table.description:
            return table.description
        pks = ", ".join(n for n, _, pk in table.columns if pk)
        made = (
            f"written by transform `{table.writer}`"
            if table.writer
            else "source table (written from outside)"
        )
        return f"Table `{table.name}` ({table.store_kind}), primary key ({pks}); {made}."

    def get_tags(self, table: TableProps) -> dict[str, str]:
        return {}

    def get_kinds(self, table: TableProps) -> set[str]:
        # Dagster shows an icon for the kinds it knows; its PostgreSQL kind is "postgres".
        return {"postgres" if table.store_kind == "postgresql" else table.store_kind}

    def get_metadata(self, table: TableProps) -> dict[str, object]:
        schema = dg.TableSchema(
            columns=[
                dg.TableColumn(
                    name=n, type=t, constraints=dg.TableColumnConstraints(nullable=not pk, unique=False)
                )
                for n, t, pk in table.columns
            ]
        )
        return {
            "dagster/column_schema": schema,
            c.META_TABLE: table.name,
            c.META_PRIMARY_KEYS: [n for n, _, pk in table.columns if pk],
        }

    def get_asset_spec(self, table: TableProps) -> dg.AssetSpec:
        """The spec of a table, before deps, partitions and code version are attached."""
        return dg.AssetSpec(
            key=self.get_asset_key(table),
            description=self.get_description(table),
            group_name=self.get_group_name(table),
            tags=self.get_tags(table),
            kinds=self.get_kinds(table),
            metadata=self.get_metadata(table),
        )


@dataclass
class DatapipeSpecs:
    """Everything ``build_definitions`` wires up, computed without running anything."""

    tables: dict[str, TableProps]
    steps: list[StepProps]
    table_specs: dict[str, dg.AssetSpec]  # every table, before deps/partitions
    source_tables: list[str]
    step_specs: dict[str, list[dg.AssetSpec]] = field(default_factory=dict)  # per step: its outputs
    partitioned_sources: set[str] = field(default_factory=set)
    """Source tables partitioned like the steps reading them (see ``source_partitioning``)."""
    check_specs: dict[str, list[dg.AssetCheckSpec]] = field(default_factory=dict)

    def key(self, table: str) -> dg.AssetKey:
        return self.table_specs[table].key

    def table_of(self, key: dg.AssetKey) -> str | None:
        for name, spec in self.table_specs.items():
            if spec.key == key:
                return name
        return None


def step_props(step: Step) -> StepProps:
    """The frozen record of a compute step; ``transform_keys`` is None unless it is a ``KeyedStep``."""
    return StepProps(
        name=step.name,
        kind=type(step).__name__,
        inputs=tuple(dict.fromkeys(dt.name for dt in step.input_dts)),  # a table read twice (two aliases) is one dep
        outputs=tuple(dt.name for dt in step.output_dts),
        transform_keys=tuple(step.transform_keys) if isinstance(step, KeyedStep) else None,
        code_version=step.code_version,
    )


def table_props(catalog: Catalog, name: str, writer: str | None) -> TableProps:
    table = catalog.get_table(name)
    store = table.store
    cols = []
    for col in store.get_schema():
        try:
            typ = str(col.type)
        except Exception:  # noqa: BLE001 - some types only compile for a dialect
            typ = type(col.type).__name__
        cols.append((col.name, typ, bool(col.primary_key)))
    return TableProps(
        name=name, description=table.description, columns=tuple(cols), store_kind=store.kind, writer=writer
    )


def build_specs(
    catalog: Catalog,
    steps: Sequence[Step],
    translator: DatapipeTranslator,
    parts: BucketPartitions | None,
) -> DatapipeSpecs:
    """Asset specs of every table and step output, and check specs of every keyed step.

    Raises:
        ConfigurationError: a table written by two steps.
    """
    props = [step_props(s) for s in steps]
    writer: dict[str, str] = {}
    for p in props:
        for out in p.outputs:
            if out in writer:
                raise ConfigurationError(
                    f"table {out!r} is written by both {writer[out]!r} and {p.name!r}; a table has one writer"
                )
            writer[out] = p.name
    names = list(dict.fromkeys([*catalog.names(), *[t for p in props for t in (*p.inputs, *p.outputs)]]))
    tables = {n: table_props(catalog, n, writer.get(n)) for n in names}
    specs = DatapipeSpecs(
        tables=tables,
        steps=props,
        table_specs={n: translator.get_asset_spec(t) for n, t in tables.items()},
        source_tables=[n for n in names if n not in writer],
    )
    by_name = {p.name: p for p in props}
    for t in specs.source_tables:
        if source_partitioning(t, props, parts) is not None:
            specs.partitioned_sources.add(t)
            specs.table_specs[t] = specs.table_specs[t].replace_attributes(partitions_def=parts.definition if parts else None)
    for p in props:
        pdef = parts.definition if parts is not None and p.partitioned else None
        deps = [_dep(specs, by_name, writer, p, t, parts) for t in p.inputs]
        outs = []
        for out in p.outputs:
            base = specs.table_specs[out]
            outs.append(
                base.replace_attributes(
                    deps=deps, partitions_def=pdef, code_version=p.code_version
                ).merge_attributes(
                    metadata={c.META_TRANSFORM: p.name, c.META_TRANSFORM_KEYS: list(p.transform_keys or [])}
                )
            )
        specs.step_specs[p.name] = outs
        if p.transform_keys is not None and p.outputs:
            # Every output carries the check: a failing key leaves every output of the step without its
            # rows, so each of them must show red (the check names each failing key's partition).
            specs.check_specs[p.name] = [
                dg.AssetCheckSpec(
                    c.check_name(p.name),
                    asset=specs.key(out),
                    description=(
                        f"No key of transform `{p.name}` is failing (red lists the keys, their partitions "
                        "and errors)."
                    ),
                )
                for out in p.outputs
            ]
    return specs


def source_partitioning(table: str, steps: Sequence[StepProps], parts: BucketPartitions | None) -> tuple[str, ...] | None:
    """The transform keys a source table is partitioned by, or None (an unpartitioned source).

    A source table is partitioned like the steps that read it when they are all partitioned by the same
    transform keys: its partition ``07`` holds the rows of the keys in the steps' partition ``07``, and
    Dagster maps partition to partition, so a change to the table marks only the partitions holding the
    changed keys as Unsynced. A source read by steps keyed differently (or unpartitioned) stays one
    unpartitioned asset, and any change to it marks every partition downstream.
    """
    readers = [s for s in steps if table in s.inputs]
    if parts is None or not readers or not all(s.partitioned for s in readers):
        return None
    keys = {s.transform_keys for s in readers}
    return keys.pop() if len(keys) == 1 else None


def _dep(
    specs: DatapipeSpecs,
    by_name: dict[str, StepProps],
    writer: dict[str, str],
    step: StepProps,
    table: str,
    parts: BucketPartitions | None,
) -> dg.AssetDep:
    up = by_name.get(writer.get(table, ""))
    if parts is None or up is None or not up.partitioned or not step.partitioned:
        return dg.AssetDep(specs.key(table))
    if up.transform_keys == step.transform_keys:
        return dg.AssetDep(specs.key(table))  # same key, same bucket: partition i feeds partition i
    # Different keys hash differently: any upstream bucket may feed any downstream bucket.
    return dg.AssetDep(specs.key(table), partition_mapping=dg.AllPartitionMapping())
