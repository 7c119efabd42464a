"""The datapipe pipeline in pipeline.py beside this file, as Dagster assets (the Python form of defs.yaml)."""

import os
from pathlib import Path

import dagster as dg

from datapipe_dagster import DatapipeComponent


@dg.component_instance
def load(context: dg.ComponentLoadContext) -> DatapipeComponent:
    # Where the tables and their row metadata live: a SQLAlchemy URL or a SQLite file. Nothing connects here.
    default = f"sqlite:///{Path(context.project_root).resolve() / '.datapipe' / '{name}.sqlite'}"
    return DatapipeComponent(
        catalog=".pipeline.catalog",  # `catalog` in pipeline.py beside this file
        pipeline=".pipeline.pipeline",
        database_url=os.environ.get("DATAPIPE_DB", default),
        partitions=4,  # hash buckets of each transform's key: the partitions in the UI
        group_name="{name}",
    )
