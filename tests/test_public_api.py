"""The public API a user of epoch8's datapipe ports to by changing imports only."""

from __future__ import annotations

import inspect

import datapipe_dagster
from datapipe_dagster import BatchTransform, DataTable, DBConn, TableStoreDB

ENGINE_NAMES = {
    "DBConn", "TableStoreDB", "Table", "Catalog", "DataStore", "DataTable", "Pipeline", "BatchTransform",
    "build_compute", "run_steps", "ChangeList", "run_steps_changelist", "build_definitions",
}
PARITY_NAMES = {
    "PipeBreak", "PipeError", "NoFixedPointError", "RowTransform", "SkipRow", "EvalResult", "OutputDiff",
    "ImageFile", "TableStoreParquet",
}


PUBLIC_NAMES = [
    "BatchGenerate", "BatchTransform", "BatchTransformStep", "BytesFile", "Catalog", "ChangeList",
    "ComputeStep", "ConfigurationError", "DBConn", "DataStore", "DataTable", "DatapipeComponent",
    "DatapipeError", "EvalResult", "FileAdapter", "FileListing", "GeneratingStep", "ImageFile", "Input",
    "JSONFile", "KeyedStep", "NoFixedPointError", "Output", "OutputDiff", "PipeBreak", "PipeError", "Pipeline",
    "PipelineStep", "RowTransform", "RunSummary", "SQLTable", "ScanningStep", "SchemaError", "SkipRow", "Step",
    "StepFailedError", "StepResult", "Table",
    "TableStore", "TableStoreCSV", "TableStoreDB", "TableStoreExcel", "TableStoreFiledir",
    "TableStoreJsonLine", "TableStoreParquet", "TextFile", "UnknownTableError", "UpdateExternalTable",
    "build_compute", "build_definitions", "run_steps", "run_steps_changelist",
]


def test_public_api_is_exactly_pinned() -> None:
    """Adding or removing a public name is a decision: change this list with it."""
    assert sorted(datapipe_dagster.__all__) == sorted(PUBLIC_NAMES)
    assert len(datapipe_dagster.__all__) == len(set(datapipe_dagster.__all__))


def test_datastore_create_meta_table_is_deprecated(tmp_path) -> None:  # noqa: ANN001
    import pytest

    conn = DBConn(f"sqlite:///{tmp_path / 'd.sqlite'}")
    with pytest.warns(DeprecationWarning, match="create_meta_table"):
        datapipe_dagster.DataStore(conn, create_meta_table=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        datapipe_dagster.DataStore(conn)  # no warning without the argument


def test_testing_module_does_not_import_pytest() -> None:
    import subprocess
    import sys

    code = "import sys, datapipe_dagster.testing; assert 'pytest' not in sys.modules, 'pytest imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_module_paths_users_import_survive_the_splits() -> None:
    """Names users import from a module path (datapipe's own, or the conformance suites) stay there."""
    from datapipe_dagster.store.database import DBConn as DBConn_
    from datapipe_dagster.store.database import TableStoreDB as TableStoreDB_
    from datapipe_dagster.store.filedir import BytesFile, FileAdapter, JSONFile, TableStoreFiledir, TextFile
    from datapipe_dagster.testing import StepCase, StepConformance, StoreConformance, builtin_store_factories

    assert (BytesFile, FileAdapter, JSONFile, TableStoreFiledir, TextFile) == (
        datapipe_dagster.BytesFile, datapipe_dagster.FileAdapter, datapipe_dagster.JSONFile,
        datapipe_dagster.TableStoreFiledir, datapipe_dagster.TextFile,
    )
    assert (DBConn_, TableStoreDB_) == (DBConn, TableStoreDB)
    assert all(callable(x) for x in (StepCase, StepConformance, StoreConformance, builtin_store_factories))


def test_postgres_url_without_a_driver_says_which_extra() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg2'] = None\n"
        "from datapipe_dagster import DBConn, ConfigurationError\n"
        "try:\n    DBConn('postgresql://u:secret@h/db')\n"
        "except ConfigurationError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "datapipe-dagster[postgres]" in out and "secret" not in out, out


def test_public_names_are_exported() -> None:
    assert ENGINE_NAMES <= set(datapipe_dagster.__all__)
    assert PARITY_NAMES <= set(datapipe_dagster.__all__)
    for name in datapipe_dagster.__all__:
        assert getattr(datapipe_dagster, name) is not None, name


def test_dagster_names_are_lazy_and_listed() -> None:
    """``build_definitions`` and ``DatapipeComponent`` load Dagster on first access; ``dir()`` lists them,
    which is how ``dg list components`` finds the component through the package's entry point."""
    from importlib.metadata import entry_points

    from datapipe_dagster.dagster.component import DatapipeComponent

    assert {"build_definitions", "DatapipeComponent"} <= set(datapipe_dagster.__all__) <= set(dir(datapipe_dagster))
    assert datapipe_dagster.DatapipeComponent is DatapipeComponent
    (ep,) = [e for e in entry_points(group="dagster_dg_cli.registry_modules") if e.name == "datapipe_dagster"]
    assert ep.value == "datapipe_dagster"


def params(obj: object) -> list[str]:
    return list(inspect.signature(obj).parameters)  # type: ignore[arg-type]


def test_signatures_match_datapipe() -> None:
    assert params(DBConn)[:2] == ["connstr", "schema"]
    assert params(TableStoreDB)[:4] == ["name", "dbconn", "data_sql_schema", "create_table"]
    assert params(BatchTransform)[:7] == ["func", "inputs", "outputs", "transform_keys", "chunk_size", "name", "kwargs"]
    assert params(DataTable.store_chunk)[:3] == ["self", "data_df", "processed_idx"]
    assert params(DataTable.get_data)[:2] == ["self", "idx"]
    assert params(datapipe_dagster.run_steps_changelist)[:3] == ["ds", "steps", "changelist"]


def test_importing_the_engine_does_not_import_dagster() -> None:
    import subprocess
    import sys

    code = "import sys, datapipe_dagster; assert 'dagster' not in sys.modules, 'dagster imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_postgres_url_forms(pg_database: str) -> None:
    import pandas as pd
    from sqlalchemy import Column, String

    from datapipe_dagster import Catalog, DataStore, Table

    base = pg_database.split("://", 1)[1]
    for url in (f"postgresql://{base}", f"postgresql+psycopg2://{base}"):
        conn = DBConn(url)
        dt = Catalog({"t": Table(TableStoreDB("t", conn, [Column("k", String(), primary_key=True)]))}).get_datatable(DataStore(conn), "t")
        dt.store_chunk(pd.DataFrame({"k": ["x"]}))
        assert list(dt.get_data()["k"]) == ["x"]
        conn.engine.dispose()


def test_declaring_a_catalog_opens_no_connection(tmp_path) -> None:  # noqa: ANN001
    from sqlalchemy import Column, String

    from datapipe_dagster import Catalog, DataStore, Pipeline, Table, build_compute

    path = tmp_path / "never.sqlite"
    conn = DBConn(f"sqlite:///{path}")
    catalog = Catalog({"a": Table(TableStoreDB("a", conn, [Column("k", String(), primary_key=True)])), "b": Table(TableStoreDB("b", conn, [Column("k", String(), primary_key=True)]))})
    build_compute(DataStore(conn), catalog, Pipeline([BatchTransform(lambda df: df, ["a"], ["b"], name="copy")]))
    assert not path.exists() and conn._engine is None
