"""datapipe_dagster: incremental, row-level data processing that runs as a Dagster code location.

The engine (stores, row metadata, transforms, changelists) never imports Dagster; ``build_definitions``
and ``DatapipeComponent`` (in ``datapipe_dagster.dagster``) are imported lazily on first access.
"""

from __future__ import annotations

from typing import Any

from datapipe_dagster.compute.batch_transform import BatchTransform, BatchTransformStep
from datapipe_dagster.compute.catalog import Catalog, ComputeStep, Pipeline, PipelineStep, Table
from datapipe_dagster.compute.datatable import DataStore, DataTable
from datapipe_dagster.compute.evaluate import EvalResult, OutputDiff
from datapipe_dagster.compute.external import UpdateExternalTable
from datapipe_dagster.compute.generate import BatchGenerate
from datapipe_dagster.compute.result import RunSummary, StepResult
from datapipe_dagster.compute.row_transform import PipeBreak, PipeError, RowTransform
from datapipe_dagster.compute.run import NoFixedPointError, build_compute, run_steps, run_steps_changelist
from datapipe_dagster.compute.spec import Input, Output
from datapipe_dagster.compute.steps import GeneratingStep, KeyedStep, ScanningStep, Step
from datapipe_dagster.errors import (
    ConfigurationError,
    DatapipeError,
    SchemaError,
    SkipRow,
    StepFailedError,
    UnknownTableError,
)
from datapipe_dagster.store.base import FileListing, SQLTable, TableStore
from datapipe_dagster.store.database import DBConn, TableStoreDB
from datapipe_dagster.store.filedir import BytesFile, FileAdapter, JSONFile, TableStoreFiledir, TextFile
from datapipe_dagster.store.filetable import TableStoreCSV, TableStoreExcel, TableStoreJsonLine
from datapipe_dagster.store.image import ImageFile
from datapipe_dagster.store.parquet import TableStoreParquet
from datapipe_dagster.types import ChangeList

__all__ = [
    "BatchGenerate",
    "BatchTransform",
    "BatchTransformStep",
    "BytesFile",
    "Catalog",
    "ChangeList",
    "ComputeStep",
    "ConfigurationError",
    "DBConn",
    "DataStore",
    "DataTable",
    "DatapipeComponent",
    "DatapipeError",
    "EvalResult",
    "FileAdapter",
    "FileListing",
    "GeneratingStep",
    "ImageFile",
    "Input",
    "JSONFile",
    "KeyedStep",
    "NoFixedPointError",
    "Output",
    "OutputDiff",
    "PipeBreak",
    "PipeError",
    "Pipeline",
    "PipelineStep",
    "RowTransform",
    "RunSummary",
    "SQLTable",
    "ScanningStep",
    "SchemaError",
    "SkipRow",
    "Step",
    "StepFailedError",
    "StepResult",
    "Table",
    "TableStore",
    "TableStoreCSV",
    "TableStoreDB",
    "TableStoreExcel",
    "TableStoreFiledir",
    "TableStoreJsonLine",
    "TableStoreParquet",
    "TextFile",
    "UnknownTableError",
    "UpdateExternalTable",
    "build_compute",
    "build_definitions",
    "run_steps",
    "run_steps_changelist",
]


def __getattr__(name: str) -> Any:
    # The Dagster layer is imported on demand so the engine stays usable (and fast to import) without it.
    if name == "build_definitions":
        from datapipe_dagster.dagster.definitions import build_definitions

        return build_definitions
    if name == "DatapipeComponent":
        from datapipe_dagster.dagster.component import DatapipeComponent

        return DatapipeComponent
    raise AttributeError(f"module 'datapipe_dagster' has no attribute {name!r}")


def __dir__() -> list[str]:
    # `dg list components` finds components with dir() on this module (the dg plugin entry point).
    return sorted({*globals(), *__all__})
