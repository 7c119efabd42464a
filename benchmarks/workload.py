"""The benchmark workload: N events over U users, the seed's events -> click_count, ip transform."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sqlalchemy import JSON, Column, Integer, String

from datapipe_dagster import BatchTransform, Catalog, DataStore, DBConn, Pipeline, Table, TableStoreDB

EVENT_TYPES = np.array(["click", "view", "scroll"])


def make_events(n: int, users: int, seed: int = 0, start: int = 0) -> pd.DataFrame:
    """``n`` events (ids ``start``..) spread over ``users`` users; ``event`` is a JSON object."""
    rng = np.random.default_rng(seed)
    uid = rng.integers(0, users, n)
    types = EVENT_TYPES[rng.integers(0, 3, n)]
    ips = rng.integers(1, 255, (n, 2))
    events = [{"event_type": t, "ip": f"10.0.{a}.{b}"} for t, (a, b) in zip(types, ips, strict=True)]
    return pd.DataFrame({"user_id": [f"u{u}" for u in uid], "event_id": [f"e{start + i}" for i in range(n)], "event": events})


def clicks_ip(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Vectorised seed transform: clicks per user and the ip of the user's last written event."""
    ev = df["event"]
    g = pd.DataFrame(
        {"user_id": df["user_id"], "click": (ev.map(lambda e: e["event_type"]) == "click").astype("int64"), "ip": ev.map(lambda e: e["ip"])}
    )
    agg = g.groupby("user_id", sort=False).agg(click_count=("click", "sum"), ip=("ip", "last")).reset_index()
    return agg[["user_id", "click_count"]], agg[["user_id", "ip"]]


def schemas() -> dict[str, list[Column]]:
    return {
        "events": [Column("user_id", String(), primary_key=True), Column("event_id", String(), primary_key=True), Column("event", JSON())],
        "click_count": [Column("user_id", String(), primary_key=True), Column("click_count", Integer())],
        "ip": [Column("user_id", String(), primary_key=True), Column("ip", String())],
    }


def build(dbconn: DBConn, chunk_size: int = 1000):  # noqa: ANN201
    catalog = Catalog({name: Table(TableStoreDB(name, dbconn, cols)) for name, cols in schemas().items()})
    ds = DataStore(dbconn)
    pipeline = Pipeline([BatchTransform(clicks_ip, ["events"], ["click_count", "ip"], chunk_size=chunk_size)])
    return ds, catalog, pipeline
