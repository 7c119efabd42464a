"""The IO manager serving plain Dagster assets: an ingestion ``@asset`` makes the events table tracked,
transforms downstream recompute only what it changed, and a user asset loads a table as a DataFrame."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from test_dagster_support import (
    execute,
    make_catalog,
    make_events,
    mat_metadata,
    materialize,
    seed_pipeline,
    table,
    tick,
)

from datapipe_dagster import DataStore, Table, TableStoreDB, build_definitions
from datapipe_dagster.dagster import constants as c

SENSOR = "clicks_ip_stale_sensor"
K = dg.AssetKey


def _defs(dbconn, payload: dict[str, Any]) -> tuple[DataStore, Any, dg.Definitions]:  # noqa: ANN001
    ds = DataStore(dbconn)
    catalog = make_catalog(dbconn)
    catalog.add_datatable(
        "daily",
        Table(
            TableStoreDB(
                "daily",
                dbconn,
                [
                    sa.Column("day", sa.String, primary_key=True),
                    sa.Column("item", sa.Integer, primary_key=True),
                    sa.Column("v", sa.Integer),
                ],
            )
        ),
    )

    @dg.asset(key="events", io_manager_key="datapipe_io_manager", metadata={c.META_REPLACE: True})
    def ingest() -> pd.DataFrame:
        return payload["events"]

    @dg.asset(ins={"click_count": dg.AssetIn(key="click_count", input_manager_key="datapipe_io_manager")})
    def report(click_count: pd.DataFrame) -> dg.MaterializeResult:
        payload["report"] = click_count
        return dg.MaterializeResult(metadata={"users": len(click_count)})

    @dg.asset(
        key="daily",
        io_manager_key="datapipe_io_manager",
        partitions_def=dg.StaticPartitionsDefinition(["d1", "d2"]),
        metadata={c.META_PARTITION_COLUMN: "day"},
    )
    def daily(context) -> pd.DataFrame:  # noqa: ANN001 - dagster rejects string annotations here
        n = payload["daily"][context.partition_key]
        return pd.DataFrame({"day": context.partition_key, "item": range(n), "v": 1})

    defs = build_definitions(catalog, seed_pipeline(), ds, partitions=8, assets=[ingest, report, daily])
    return ds, catalog, defs


def test_user_asset_through_io_manager(dbconn) -> None:
    payload: dict[str, Any] = {"events": make_events(10)}
    ds, catalog, defs = _defs(dbconn, payload)
    ag = defs.resolve_asset_graph()
    assert ag.get(K("events")).is_executable  # the user's asset replaces the source declaration
    with dg.instance_for_test() as instance:
        run = materialize(defs, instance, [K("events")])
        md = mat_metadata(run, "events")[0]
        assert md["datapipe/rows_inserted"] == 30 and md["dagster/row_count"] == 30
        assert len(catalog.get_datatable(ds, "events").get_metadata()) == 30  # tracked: row metadata exists

        res = tick(defs, instance, SENSOR, None)
        for req in res.run_requests:
            execute(defs, instance, req)
        res = tick(defs, instance, SENSOR, res.cursor)
        assert res.run_requests == []

        # Re-ingest: one event changed, one dropped (replace), the rest identical and not rewritten.
        ev = payload["events"].copy()
        ev.loc[(ev["user_id"] == 4) & (ev["event_id"] == 401), "event_type"] = "click"
        payload["events"] = ev[~((ev["user_id"] == 4) & (ev["event_id"] == 402))]
        md = mat_metadata(materialize(defs, instance, [K("events")]), "events")[0]
        assert (md["datapipe/rows_inserted"], md["datapipe/rows_updated"], md["datapipe/rows_deleted"]) == (
            0,
            1,
            1,
        )
        assert md["datapipe/rows_unchanged"] == 28
        res = tick(defs, instance, SENSOR, res.cursor)
        assert len(res.run_requests) == 1  # only user 4's partition
        run = execute(defs, instance, res.run_requests[0])
        assert mat_metadata(run, "click_count")[0]["datapipe/keys_processed"] == 1
        assert table(ds, catalog, "click_count").set_index("user_id")["click_count"][4] == 2

        # A plain downstream asset loads the table through the IO manager.
        materialize(defs, instance, [K("report")])
        assert len(payload["report"]) == 10 and set(payload["report"].columns) == {"user_id", "click_count"}


def test_partitioned_user_asset_deletes_within_its_partition(dbconn) -> None:
    payload: dict[str, Any] = {"events": make_events(1), "daily": {"d1": 3, "d2": 2}}
    ds, catalog, defs = _defs(dbconn, payload)
    daily = catalog.get_datatable(ds, "daily")
    with dg.instance_for_test() as instance:
        materialize(defs, instance, [K("daily")], partition_key="d1")
        materialize(defs, instance, [K("daily")], partition_key="d2")
        assert daily.get_size() == 5
        payload["daily"]["d1"] = 1
        md = mat_metadata(materialize(defs, instance, [K("daily")], partition_key="d1"), "daily")[0]
        assert md["datapipe/rows_deleted"] == 2 and md["datapipe/rows_inserted"] == 0
    got = daily.get_data().sort_values(["day", "item"])
    assert got[["day", "item"]].values.tolist() == [["d1", 0], ["d2", 0], ["d2", 1]]


def test_bucket_partitioned_user_asset_loads_its_partitions_rows(dbconn) -> None:
    """A user asset on the pipeline's hash buckets gets only the rows of its partition's keys."""
    from datapipe_dagster.dagster import BucketPartitions

    parts = BucketPartitions(8)
    seen: dict[str, pd.DataFrame] = {}

    @dg.asset(
        partitions_def=parts.definition,
        ins={"ip": dg.AssetIn(key="ip", input_manager_key="datapipe_io_manager")},
    )
    def ip_report(context, ip: pd.DataFrame) -> None:  # noqa: ANN001
        seen[context.partition_key] = ip

    ds = DataStore(dbconn)
    catalog = make_catalog(dbconn)
    defs = build_definitions(catalog, seed_pipeline(), ds, partitions=8, assets=[ip_report])
    catalog.get_datatable(ds, "events").store_chunk(make_events(30))
    with dg.instance_for_test() as instance:
        rng = {
            "dagster/asset_partition_range_start": parts.keys[0],
            "dagster/asset_partition_range_end": parts.keys[-1],
        }
        materialize(defs, instance, [K("click_count"), K("ip")], tags=rng)
        materialize(defs, instance, [K("ip_report")], partition_key=parts.keys[3])
    want = parts.select(pd.DataFrame({"user_id": range(30)}), ["user_id"], [parts.keys[3]])
    assert sorted(seen[parts.keys[3]]["user_id"]) == sorted(want["user_id"]) and len(want) > 0
