"""Declarations: tables in a catalog, steps in a pipeline, and the compute-step interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from datapipe_dagster.errors import ConfigurationError, UnknownTableError
from datapipe_dagster.meta.plan import PLAN_SUFFIX
from datapipe_dagster.meta.tables import (
    EXTERNAL_STATE_TABLE,
    SEQ_TABLE,
    TRANSFORM_META_SUFFIX,
    WATERMARK_TABLE,
    internal_table_names,
)
from datapipe_dagster.store.base import TableStore
from datapipe_dagster.store.dbconn import MAX_IDENTIFIER_BYTES, fit_identifier

if TYPE_CHECKING:
    import pandas as pd

    from datapipe_dagster.compute.datatable import DataStore, DataTable
    from datapipe_dagster.compute.result import StepResult
    from datapipe_dagster.types import ChangeList


@dataclass
class Table:
    """A catalog entry: a store (and, in the Dagster layer, an optional description)."""

    store: TableStore
    description: str | None = None


_SHARED_INTERNAL = {
    SEQ_TABLE: "the write-sequence table",
    WATERMARK_TABLE: "the watermark table",
    EXTERNAL_STATE_TABLE: "the external-table scan state",
}


def _spellings(name: str) -> set[str]:
    """``name`` as every backend would create it (PostgreSQL shortens long internal names)."""
    return {name} | {fit_identifier(name, limit) for limit in MAX_IDENTIFIER_BYTES.values()}


def check_internal_names(names: list[str]) -> None:
    """Refuse catalog names that are (or would be) tables the metadata layer creates.

    Raises:
        ConfigurationError: naming the catalog table and the internal table it collides with.
    """
    internal: dict[str, str] = {}
    for spelled, what in _SHARED_INTERNAL.items():
        internal[spelled] = what
    for other in names:
        for meta in internal_table_names(other):
            for spelled in _spellings(meta):
                internal.setdefault(spelled, f"the row metadata of table {other!r}")
    for name in names:
        if name.endswith(TRANSFORM_META_SUFFIX):
            step = name[: -len(TRANSFORM_META_SUFFIX)]
            raise ConfigurationError(
                f"catalog table {name!r} collides with the internal table {name!r}, the state of a transform "
                f"named {step!r} (names ending in {TRANSFORM_META_SUFFIX!r} are reserved): rename the table"
            )
        if name.endswith(PLAN_SUFFIX):
            step = name[: -len(PLAN_SUFFIX)]
            raise ConfigurationError(
                f"catalog table {name!r} collides with the internal table {name!r}, the run plans of a transform "
                f"named {step!r} (names ending in {PLAN_SUFFIX!r} are reserved): rename the table"
            )
        if name in internal:
            raise ConfigurationError(
                f"catalog table {name!r} collides with the internal table {name!r}, {internal[name]}: rename the table"
            )


class Catalog:
    """The tables of a pipeline by name.

    Raises:
        ConfigurationError: a name collides with a table the metadata layer creates (``datapipe_seq``,
            ``<table>_meta`` of another catalog table, ``<step>__transform_meta``, ``<step>__plan``, ...).
    """

    def __init__(self, catalog: dict[str, Table]):
        check_internal_names(list(catalog))
        self.catalog = dict(catalog)

    def add_datatable(self, name: str, table: Table) -> None:
        check_internal_names([*self.catalog, name])
        self.catalog[name] = table

    def names(self) -> list[str]:
        return list(self.catalog)

    def get_table(self, name: str) -> Table:
        try:
            return self.catalog[name]
        except KeyError:
            raise UnknownTableError(name, list(self.catalog)) from None

    def get_datatable(self, ds: DataStore, name: str) -> DataTable:
        """The DataTable for ``name``; raises UnknownTableError listing the known tables."""
        return ds.get_or_create_table(name, self.get_table(name).store)


class ComputeStep(ABC):
    """A runnable step bound to a DataStore (what ``build_compute`` returns): a base for the built-in
    step kinds. What a step can do is declared by the protocols in ``compute/steps.py``."""

    name: str
    input_dts: list[DataTable]
    output_dts: list[DataTable]
    code_version: str | None = None
    shared_outputs: frozenset[str] = frozenset()
    """Outputs another step of the pipeline writes too (set by ``build_compute``): a step cleans up
    under its own keys only there, and leaves rows under keys it never processed to their writer."""

    @abstractmethod
    def run_full(self) -> StepResult:
        """Process everything that is stale."""

    @abstractmethod
    def run_changelist(self, changelist: ChangeList) -> StepResult:
        """Process what the changes in ``changelist`` make stale; the result's ``changed`` feeds the next step."""

    def get_stale_keys(self) -> pd.DataFrame | None:
        """Keys needing work (None for steps without keys)."""
        return None


class PipelineStep(ABC):
    """A declared step; ``build_compute`` binds it to a DataStore and a Catalog."""

    @abstractmethod
    def build_compute(self, ds: DataStore, catalog: Catalog) -> list[ComputeStep]:
        """The compute steps this declaration becomes."""


@dataclass
class Pipeline:
    """An ordered list of steps (each step's inputs are written by earlier steps or from outside)."""

    steps: list[PipelineStep] = field(default_factory=list)

    def __iter__(self) -> Any:
        return iter(self.steps)
