"""The Dagster layer (the only package importing dagster): ``build_definitions`` and its parts."""

from __future__ import annotations

from datapipe_dagster.dagster.definitions import DEFAULT_IO_MANAGER_KEY, build_definitions, datapipe_specs
from datapipe_dagster.dagster.io_manager import DatapipeIOManager, TableSlice
from datapipe_dagster.dagster.partitions import BucketPartitions
from datapipe_dagster.dagster.translator import DatapipeSpecs, DatapipeTranslator, StepProps, TableProps

__all__ = [
    "DEFAULT_IO_MANAGER_KEY",
    "BucketPartitions",
    "DatapipeIOManager",
    "DatapipeSpecs",
    "DatapipeTranslator",
    "StepProps",
    "TableProps",
    "TableSlice",
    "build_definitions",
    "datapipe_specs",
]
