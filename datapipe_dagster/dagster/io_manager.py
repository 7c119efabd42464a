"""The row-tracking IO manager: a DataFrame returned by a user's ``@asset`` becomes a tracked table.

Writing goes through the engine (``compute.table_slice.write_slice``: one write transaction), so every row gets its
content hash, times and write sequence, unchanged rows are not rewritten, and deletes within the scope
commit together with the upserts (unlike a delete-then-insert without a transaction, dagster#14091).
Transforms downstream then recompute only the keys whose rows changed.

Scope of a write (rows under it that the frame lacks are deleted):
- a partitioned asset whose definition metadata names ``datapipe/partition_column``: the rows whose
  column equals the partition key(s);
- an asset partitioned by the pipeline's hash buckets: the table's rows in those buckets;
- ``replace=True`` (resource config) or ``datapipe/replace`` metadata: the whole table;
- otherwise nothing is deleted (rows are upserted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import dagster as dg
import pandas as pd

from datapipe_dagster.compute.catalog import Catalog
from datapipe_dagster.compute.datatable import DataStore
from datapipe_dagster.compute.table_slice import TableSlice, read_slice, write_slice
from datapipe_dagster.dagster import constants as c
from datapipe_dagster.dagster.partitions import BucketPartitions
from datapipe_dagster.dagster.translator import DatapipeSpecs
from datapipe_dagster.errors import ConfigurationError, DatapipeError


@dataclass
class Binding:
    """The pipeline an IO manager serves (set by ``build_definitions``; never serialized as config)."""

    ds: DataStore
    catalog: Catalog
    specs: DatapipeSpecs
    parts: BucketPartitions | None

    def table_of(self, key: dg.AssetKey) -> str:
        name = self.specs.table_of(key)
        if name is None:
            known = ", ".join(s.key.to_user_string() for s in self.specs.table_specs.values())
            raise ConfigurationError(
                f"asset {key.to_user_string()!r} is not a table of the datapipe catalog (tables: {known}); "
                "add it to the Catalog or use another io_manager_key"
            )
        return name

    def bucket_columns(self, table: str) -> list[str]:
        """The columns a table's rows are bucketed by: its writer's transform keys (when the table holds
        them: an ``Output(cleanup=False)`` need not), else its primary key."""
        writer = self.specs.tables[table].writer
        pks = [n for n, _, pk in self.specs.tables[table].columns if pk]
        for p in self.specs.steps:
            if p.name == writer and p.transform_keys and all(k in pks for k in p.transform_keys):
                return list(p.transform_keys)
        return pks


class DatapipeIOManager(dg.ConfigurableIOManager):
    """Writes DataFrames into catalog tables with row metadata, and loads tables as DataFrames.

    Attributes:
        replace: a returned frame replaces the whole table of an unpartitioned asset (rows it lacks are
            deleted); by default rows are upserted only.
    """

    replace: bool = False
    # Dagster rebuilds resources from their config, dropping instance state, so the pipeline (not
    # serializable config) is bound to a per-definitions subclass instead.
    pipeline_binding: ClassVar[Binding | None] = None

    @classmethod
    def bound(cls, binding: Binding, **config: Any) -> DatapipeIOManager:
        """An IO manager serving ``binding``'s catalog and datastore."""
        sub = type(cls.__name__, (cls,), {"pipeline_binding": binding, "__module__": cls.__module__})
        return sub(**config)

    @property
    def binding(self) -> Binding:
        if self.pipeline_binding is None:
            raise ConfigurationError(
                "DatapipeIOManager is not bound to a pipeline; create it with build_definitions(...)"
            )
        return self.pipeline_binding

    # ------------------------------------------------------------------ slices

    def _slice(
        self, key: dg.AssetKey, has_partitions: bool, partition_keys: list[str] | None, pdef: Any, md: dict
    ) -> TableSlice:
        b = self.binding
        table = b.table_of(key)
        sl = TableSlice(table)
        if not has_partitions or not partition_keys:
            return sl
        sl.partitions = list(partition_keys)
        if md.get(c.META_PARTITION_COLUMN):
            sl.partition_column = str(md[c.META_PARTITION_COLUMN])
        elif b.parts is not None and pdef == b.parts.definition:
            sl.bucket_columns = b.bucket_columns(table)
        else:
            raise ConfigurationError(
                f"asset {key.to_user_string()!r} is partitioned, but the datapipe IO manager cannot tell which rows "
                f"belong to a partition; set definition metadata {{{c.META_PARTITION_COLUMN!r}: '<primary-key column>'}}"
            )
        return sl

    # ------------------------------------------------------------------ IO

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        key = context.asset_key
        if not isinstance(obj, pd.DataFrame):
            raise DatapipeError(
                f"asset {key.to_user_string()!r} returned {type(obj).__name__}; the datapipe IO manager stores DataFrames"
            )
        md = dict(context.definition_metadata or {})
        has = context.has_asset_partitions
        sl = self._slice(
            key,
            has,
            list(context.asset_partition_keys) if has else None,
            context.asset_partitions_def if has else None,
            md,
        )
        b = self.binding
        dt = b.catalog.get_datatable(b.ds, sl.table)
        replace = self.replace or bool(md.get(c.META_REPLACE))
        res = write_slice(dt, sl, obj, b.parts, replace)
        context.add_output_metadata(
            {
                "dagster/row_count": dg.MetadataValue.int(dt.get_size()),
                c.META_INSERTED: dg.MetadataValue.int(len(res.inserted)),
                c.META_UPDATED: dg.MetadataValue.int(len(res.updated)),
                c.META_DELETED: dg.MetadataValue.int(len(res.deleted)),
                "datapipe/rows_unchanged": dg.MetadataValue.int(int(res.unchanged)),
            }
        )

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        key = context.asset_key
        has = context.has_asset_partitions
        up_md = dict(context.upstream_output.definition_metadata or {}) if context.upstream_output else {}
        sl = self._slice(
            key,
            has,
            list(context.asset_partition_keys) if has else None,
            context.asset_partitions_def if has else None,
            up_md,
        )
        return self.read(sl)

    def read(self, sl: TableSlice) -> pd.DataFrame:
        """The live rows of a table slice, in the order they were last written."""
        b = self.binding
        return read_slice(b.catalog.get_datatable(b.ds, sl.table), sl, b.parts)

