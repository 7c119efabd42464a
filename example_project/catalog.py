"""The example's tables, and where their data and row metadata live.

Nothing here opens a connection: ``DBConn`` creates its engine on first use, so the Dagster code
location (``example_project.definitions``) can import this module in the webserver, the daemon and every
run worker for free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import JSON, Column, Float, Integer, String

from datapipe_dagster import Catalog, DataStore, DBConn, Table, TableStoreDB

DB_ENV_VAR = "DATAPIPE_EXAMPLE_DB"
"""Environment variable: a path to a SQLite file, or any SQLAlchemy URL (``postgresql://...``)."""

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB_PATH = REPO_ROOT / ".demo" / "example.sqlite"
"""Where the data lives when ``DATAPIPE_EXAMPLE_DB`` is not set (``.demo/`` is git-ignored)."""


def events_schema() -> list[Column]:
    """``events``: one row per site event, as in the seed notebook (``event`` holds type, ip, ts)."""
    return [
        Column("user_id", String(), primary_key=True),
        Column("event_id", String(), primary_key=True),
        Column("event", JSON()),
    ]


def click_count_schema() -> list[Column]:
    """``click_count``: clicks per user (the seed)."""
    return [Column("user_id", String(), primary_key=True), Column("click_count", Integer())]


def ip_schema() -> list[Column]:
    """``ip``: the ip of each user's last written event (the seed)."""
    return [Column("user_id", String(), primary_key=True), Column("ip", String())]


def user_ips_schema() -> list[Column]:
    """``user_ips``: which users were seen on which ip, keyed by (ip, user_id)."""
    return [
        Column("ip", String(), primary_key=True),
        Column("user_id", String(), primary_key=True),
        Column("n_events", Integer()),
        Column("last_ts", Float()),
    ]


def ip_stats_schema() -> list[Column]:
    """``ip_stats``: per-ip summary (keyed by ip: a second partitioning in the Dagster UI)."""
    return [
        Column("ip", String(), primary_key=True),
        Column("n_users", Integer()),
        Column("n_events", Integer()),
        Column("shared", Integer()),
    ]


def user_profiles_schema() -> list[Column]:
    """``user_profiles``: user attributes from a CRM export, written by an ingestion asset."""
    return [
        Column("user_id", String(), primary_key=True),
        Column("country", String()),
        Column("plan", String()),
    ]


def user_report_schema() -> list[Column]:
    """``user_report``: one row per user joining profile, clicks and last ip."""
    return [
        Column("user_id", String(), primary_key=True),
        Column("country", String()),
        Column("plan", String()),
        Column("click_count", Integer()),
        Column("ip", String()),
    ]


SCHEMAS = {
    "events": (
        events_schema,
        "Site events (user_id, event_id, event JSON), written by the API, the simulator or store_chunk.",
    ),
    "click_count": (click_count_schema, "Clicks per user."),
    "ip": (ip_schema, "The ip of each user's last written event."),
    "user_ips": (user_ips_schema, "Users seen per ip, keyed by (ip, user_id)."),
    "ip_stats": (ip_stats_schema, "Per-ip summary: users and events seen on the ip."),
    "user_profiles": (user_profiles_schema, "User attributes, ingested by the user_profiles asset."),
    "user_report": (user_report_schema, "Per-user report: profile, clicks and last ip."),
}


def db_url(path_or_url: str | os.PathLike[str] | None = None) -> str:
    """A SQLAlchemy URL from a SQLite path or URL; default: ``$DATAPIPE_EXAMPLE_DB`` or ``.demo/example.sqlite``.

    Creates the parent folder of a SQLite file (a folder, not a connection).
    """
    value = (
        str(path_or_url) if path_or_url is not None else os.environ.get(DB_ENV_VAR) or str(DEFAULT_DB_PATH)
    )
    if "://" in value:
        return value
    path = Path(value).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def make_catalog(dbconn: DBConn) -> Catalog:
    """The example's catalog: every table in the database behind ``dbconn``."""
    return Catalog(
        {
            name: Table(
                store=TableStoreDB(name=name, dbconn=dbconn, data_sql_schema=schema()), description=desc
            )
            for name, (schema, desc) in SCHEMAS.items()
        }
    )


@dataclass
class ExampleStore:
    """The catalog and the DataStore of one example database (data and row metadata in the same DB)."""

    dbconn: DBConn
    catalog: Catalog
    ds: DataStore

    @property
    def url(self) -> str:
        return self.dbconn.connstr

    def dispose(self) -> None:
        """Close the engine's pooled connections (if it was ever created)."""
        if self.dbconn._engine is not None:
            self.dbconn._engine.dispose()


def open_store(path_or_url: str | os.PathLike[str] | None = None) -> ExampleStore:
    """Declare the example's catalog and DataStore on a database (see ``db_url``). Opens no connection."""
    dbconn = DBConn(db_url(path_or_url))
    return ExampleStore(dbconn=dbconn, catalog=make_catalog(dbconn), ds=DataStore(dbconn))
