"""Small builders shared by the engine tests: the seed's tables and transform."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import JSON, Column, Integer, String

from datapipe_dagster import (
    BatchTransform,
    Catalog,
    DataStore,
    DBConn,
    Pipeline,
    Table,
    TableStoreDB,
    build_compute,
)


def events_schema() -> list[Column]:
    return [Column("user_id", String(), primary_key=True), Column("event_id", String(), primary_key=True), Column("event", JSON())]


def parse_clicks_ip(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    res, ips = [], []
    for user_id, grp in df.groupby("user_id", sort=False):
        events = grp["event"].apply(json.loads)
        res.append({"user_id": user_id, "click_count": sum(1 for x in events if x["event_type"] == "click")})
        ips.append({"user_id": user_id, "ip": events.iloc[-1]["ip"]})
    return pd.DataFrame.from_records(res, columns=["user_id", "click_count"]), pd.DataFrame.from_records(ips, columns=["user_id", "ip"])


def seed_catalog(dbconn: DBConn, extra: dict[str, Table] | None = None) -> Catalog:
    tables = {
        "events": Table(TableStoreDB("events", dbconn, events_schema())),
        "click_count": Table(
            TableStoreDB("click_count", dbconn, [Column("user_id", String(), primary_key=True), Column("click_count", Integer())])
        ),
        "ip": Table(TableStoreDB("ip", dbconn, [Column("user_id", String(), primary_key=True), Column("ip", String())])),
    }
    tables.update(extra or {})
    return Catalog(tables)


def seed_setup(dbconn: DBConn, func=parse_clicks_ip, **kw):  # noqa: ANN001, ANN201
    catalog = seed_catalog(dbconn)
    ds = DataStore(dbconn)
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(func, inputs=["events"], outputs=["click_count", "ip"], **kw)]))
    return ds, catalog, steps


def event(user: str, eid: str, etype: str = "click", ip: str = "1.1.1.1") -> dict:
    return {"user_id": user, "event_id": eid, "event": json.dumps({"event_type": etype, "ip": ip})}


def frame(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def as_dict(df: pd.DataFrame, key: str, col: str) -> dict:
    return dict(zip(df[key], df[col], strict=True))


def recorded_statements(dbconn: DBConn, fn: Callable[[], Any]) -> tuple[Any, list[tuple[str, Any]]]:
    """What ``fn()`` returns, and every statement (with its parameters) it sent through ``dbconn``'s engine."""
    seen: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        seen.append((statement, parameters))

    sa.event.listen(dbconn.engine, "before_cursor_execute", grab)
    try:
        out = fn()
    finally:
        sa.event.remove(dbconn.engine, "before_cursor_execute", grab)
    return out, seen
