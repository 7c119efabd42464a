"""Every built-in store passes the one store conformance suite, with metadata on SQLite and PostgreSQL.

The SQL store shares its database with the metadata (one transaction for data and metadata); the file
stores keep their data in ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from datapipe_dagster import DBConn, TableStore
from datapipe_dagster.testing import StoreConformance, builtin_store_factories

FACTORIES = builtin_store_factories()


class TestBuiltinStores(StoreConformance):
    @pytest.fixture(params=sorted(FACTORIES))
    def store(self, request: pytest.FixtureRequest, tmp_path: Path, dbconn: DBConn) -> TableStore:
        return FACTORIES[request.param](tmp_path, dbconn)

    @pytest.fixture
    def meta_dbconn(self, dbconn: DBConn) -> DBConn:
        return dbconn
