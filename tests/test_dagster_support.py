"""Shared helpers of the Dagster-layer tests (no tests here): a seed-like pipeline and a tiny driver
that evaluates sensors and executes their run requests in process, as the daemon would."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster import BatchTransform, Catalog, DataStore, DBConn, Pipeline, Table, TableStoreDB
from datapipe_dagster.dagster import build_definitions
from datapipe_dagster.dagster.inprocess import execute_request, tick_sensor
from datapipe_dagster.dagster.inprocess import materialize as run_in_process


def clicks_ip(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The seed transform: clicks per user and the ip of the user's last written event."""
    g = events.assign(click=(events["event_type"] == "click").astype("int64"))
    agg = g.groupby("user_id", sort=False).agg(click_count=("click", "sum"), ip=("ip", "last")).reset_index()
    return agg[["user_id", "click_count"]], agg[["user_id", "ip"]]


def clicks_ip_v2(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A changed function: users without clicks no longer get a click_count row."""
    g = events.assign(click=(events["event_type"] == "click").astype("int64"))
    agg = g.groupby("user_id", sort=False).agg(click_count=("click", "sum"), ip=("ip", "last")).reset_index()
    return agg.loc[agg["click_count"] > 0, ["user_id", "click_count"]], agg[["user_id", "ip"]]


def schemas() -> dict[str, list[sa.Column]]:
    return {
        "events": [
            sa.Column("user_id", sa.Integer, primary_key=True),
            sa.Column("event_id", sa.Integer, primary_key=True),
            sa.Column("event_type", sa.String),
            sa.Column("ip", sa.String),
        ],
        "click_count": [
            sa.Column("user_id", sa.Integer, primary_key=True),
            sa.Column("click_count", sa.Integer),
        ],
        "ip": [sa.Column("user_id", sa.Integer, primary_key=True), sa.Column("ip", sa.String)],
    }


def make_catalog(dbconn: DBConn) -> Catalog:
    return Catalog({n: Table(TableStoreDB(n, dbconn, cols)) for n, cols in schemas().items()})


def seed_pipeline(func: Callable[..., Any] = clicks_ip, **kw: Any) -> Pipeline:
    return Pipeline(
        [BatchTransform(func, ["events"], ["click_count", "ip"], name="clicks_ip", chunk_size=7, **kw)]
    )


def make_events(users: int, per_user: int = 3) -> pd.DataFrame:
    rows = []
    for u in range(users):
        for e in range(per_user):
            # user 0 never clicks: the changed function stops producing its click_count row
            kind = "view" if u == 0 or e == 1 else "click"
            rows.append({"user_id": u, "event_id": u * 100 + e, "event_type": kind, "ip": f"10.0.{u}.{e}"})
    return pd.DataFrame(rows)


def expected(events: pd.DataFrame, func: Callable[..., Any] = clicks_ip) -> tuple[pd.DataFrame, pd.DataFrame]:
    cc, ip = func(events)
    return cc.sort_values("user_id").reset_index(drop=True), ip.sort_values("user_id").reset_index(drop=True)


def table(ds: DataStore, catalog: Catalog, name: str) -> pd.DataFrame:
    return catalog.get_datatable(ds, name).get_data().sort_values("user_id").reset_index(drop=True)


def tick(
    defs: dg.Definitions, instance: dg.DagsterInstance, name: str, cursor: str | None
) -> dg.SensorResult:
    return tick_sensor(defs, instance, name, cursor)


def execute(
    defs: dg.Definitions, instance: dg.DagsterInstance, req: dg.RunRequest, success: bool = True
) -> dg.ExecuteInProcessResult:
    """Execute a run request in process; ``success=False``: the run must fail (e.g. failed keys)."""
    res = execute_request(defs, instance, req, raise_on_error=success)
    assert res.success == success
    return res


def materialize(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    keys: list[dg.AssetKey],
    tags: dict[str, str] | None = None,
    partition_key: str | None = None,
    success: bool = True,
) -> dg.ExecuteInProcessResult:
    res = run_in_process(defs, instance, keys, tags=tags, partition_key=partition_key, raise_on_error=success)
    assert res.success == success
    return res


def mat_metadata(res: dg.ExecuteInProcessResult, key: str) -> list[dict[str, Any]]:
    """Metadata values of every materialization of asset ``key`` in a run."""
    out = []
    for ev in res.get_asset_materialization_events():
        if ev.asset_key == dg.AssetKey(key):
            out.append(
                {
                    k: getattr(v, "value", getattr(v, "text", v))
                    for k, v in ev.materialization.metadata.items()
                }
            )
    return out


def build(
    dbconn: DBConn, func: Callable[..., Any] = clicks_ip, **kw: Any
) -> tuple[DataStore, Catalog, dg.Definitions]:
    ds = DataStore(dbconn)
    catalog = make_catalog(dbconn)
    return ds, catalog, build_definitions(catalog, seed_pipeline(func), ds, **kw)
