"""Declarations: tables in a catalog, steps in a pipeline, and the compute-step interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from datapipe_dagster.errors import UnknownTableError
from datapipe_dagster.store.base import TableStore

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


class Catalog:
    """The tables of a pipeline by name."""

    def __init__(self, catalog: dict[str, Table]):
        self.catalog = dict(catalog)

    def add_datatable(self, name: str, table: Table) -> None:
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
    """A runnable step bound to a DataStore (what ``build_compute`` returns)."""

    name: str
    input_dts: list[DataTable]
    output_dts: list[DataTable]
    shared_outputs: frozenset[str] = frozenset()
    """Outputs another step of the pipeline writes too (set by ``build_compute``): a step cleans up
    under its own keys only there, and leaves rows under keys it never processed to their writer."""

    @abstractmethod
    def run_full(self, ds: DataStore) -> StepResult:
        """Process everything that is stale."""

    @abstractmethod
    def run_changelist(self, ds: DataStore, changelist: ChangeList) -> StepResult:
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
