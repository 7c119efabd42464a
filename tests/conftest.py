"""Shared fixtures: every engine test runs on SQLite and on PostgreSQL (a fresh schema per test).

PostgreSQL is 127.0.0.1:5432 by default (``DATAPIPE_PG_URL`` overrides). Without it, PostgreSQL tests
skip with the reason, unless ``DATAPIPE_REQUIRE_PG=1`` (set by ``.ci/run``), which makes them fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from datapipe_dagster import DBConn

PG_URL = os.environ.get("DATAPIPE_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("DATAPIPE_REQUIRE_PG", "") not in ("", "0", "false")

_pg_state: dict[str, object] = {}


def pg_available() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    if "reason" not in _pg_state:
        try:
            eng = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
            with eng.connect() as c:
                c.execute(sa.text("select 1"))
            eng.dispose()
            _pg_state["reason"] = None
        except Exception as e:  # noqa: BLE001 - any failure means "not reachable"
            _pg_state["reason"] = f"PostgreSQL not reachable at {PG_URL}: {type(e).__name__}: {str(e).splitlines()[0]}"
    return _pg_state["reason"]  # type: ignore[return-value]


def require_pg() -> None:
    reason = pg_available()
    if reason:
        if REQUIRE_PG:
            pytest.fail(f"DATAPIPE_REQUIRE_PG is set and {reason}")
        pytest.skip(reason)


@pytest.fixture
def pg_schema_conn() -> Iterator[DBConn]:
    """A DBConn on a fresh PostgreSQL schema, dropped afterwards."""
    require_pg()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = DBConn(PG_URL, schema=schema)
    yield conn
    eng = sa.create_engine(PG_URL)
    with eng.begin() as c:
        c.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    eng.dispose()
    if conn._engine is not None:
        conn._engine.dispose()


@pytest.fixture
def pg_database() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database, dropped afterwards."""
    require_pg()
    name = f"dp_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    yield url
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def dbconn(backend: str, tmp_path, request: pytest.FixtureRequest) -> Iterator[DBConn]:
    """A DBConn on a fresh database: a SQLite file, or a fresh PostgreSQL schema."""
    if backend == "sqlite":
        conn = DBConn(f"sqlite:///{tmp_path / 'store.sqlite'}")
        yield conn
        if conn._engine is not None:
            conn._engine.dispose()
    else:
        yield request.getfixturevalue("pg_schema_conn")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tests (a live ``dagster dev``, the browser, the whole demo) first, so that pytest-xdist
    workers start them early instead of finishing the run on one of them (the order is otherwise kept)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
