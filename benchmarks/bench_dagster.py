"""Dagster-layer benchmark on SQLite: sensor ticks, change-to-output latency, Dagster overhead.

    .venv/bin/python -m benchmarks.bench_dagster --events 1000000 --users 100000

On one data set of N events over U users (the seed's events -> click_count, ip transform):
- a full materialization of all partitions (one backfill-style range run, in process, on a SQLite-backed
  Dagster instance) vs the engine's ``run_steps`` on an identical copy of the data (the overhead ratio);
- sensor tick time with 0 stale keys (nothing written: the cursor short-cut; and forced through the
  stale-key query), 1 stale key and 100 stale keys;
- the time from storing one changed event to its derived rows being written, through a sensor tick and
  the in-process run it requests.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import dagster as dg
import pandas as pd

from benchmarks.workload import build, make_events
from datapipe_dagster import DBConn, build_compute, run_steps
from datapipe_dagster.dagster import build_definitions
from datapipe_dagster.dagster.inprocess import materialize, tick_sensor

SENSOR = "clicks_ip_stale_sensor"
OUTPUTS = [dg.AssetKey("click_count"), dg.AssetKey("ip")]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def tick(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None
) -> tuple[float, dg.SensorResult]:
    return timed(lambda: tick_sensor(defs, instance, SENSOR, cursor))


def execute(defs: dg.Definitions, instance: dg.DagsterInstance, req: dg.RunRequest) -> None:
    materialize(defs, instance, OUTPUTS, partition_key=req.partition_key, tags=dict(req.tags))


def store_events(events: Any, df: pd.DataFrame) -> float:
    t0 = time.perf_counter()
    for start in range(0, len(df), 100_000):
        events.store_chunk(df.iloc[start : start + 100_000])
    return time.perf_counter() - t0


def seed_copy(src: str, dst: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        try:
            shutil.copyfile(src + suffix, dst + suffix)
        except FileNotFoundError:
            pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=None, help="default: events / 10")
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--chunk-size", type=int, default=1000)
    args = ap.parse_args()
    n, users = args.events, args.users or max(1, args.events // 10)
    rows: list[tuple[str, str]] = []

    with tempfile.TemporaryDirectory() as work:
        # ---- one data set, two identical copies (engine baseline / Dagster)
        eng_path, dg_path = f"{work}/engine.sqlite", f"{work}/dagster.sqlite"
        db = DBConn(f"sqlite:///{eng_path}")
        ds, catalog, _ = build(db, args.chunk_size)
        events = catalog.get_datatable(ds, "events")
        t_store = store_events(events, make_events(n, users))
        db.engine.dispose()
        seed_copy(eng_path, dg_path)
        stale_path = f"{work}/dagster_stale.sqlite"
        seed_copy(eng_path, stale_path)
        rows.append((f"store {n:,} events (store_chunk)", f"{t_store:.1f} s ({n / t_store:,.0f} rows/s)"))

        ds, catalog, pipeline = build(DBConn(f"sqlite:///{eng_path}"), args.chunk_size)
        t_engine, summary = timed(lambda: run_steps(ds, build_compute(ds, catalog, pipeline)))
        rows.append(
            (f"engine run_steps, full ({summary.steps[0].keys_processed:,} keys)", f"{t_engine:.2f} s")
        )

        ds, catalog, pipeline = build(DBConn(f"sqlite:///{dg_path}"), args.chunk_size)
        defs = build_definitions(catalog, pipeline, ds, partitions=args.partitions)
        parts = defs.resolve_asset_graph().get(OUTPUTS[0]).partitions_def.get_partition_keys()
        backfill = dg.RunRequest(
            tags={
                "dagster/backfill": "bench",
                "dagster/asset_partition_range_start": parts[0],
                "dagster/asset_partition_range_end": parts[-1],
            }
        )
        with dg.instance_for_test() as instance:
            t_dag, _ = timed(lambda: execute(defs, instance, backfill))
            rows.append((f"dagster: all {len(parts)} partitions, one range run (reparse)", f"{t_dag:.2f} s"))
            rows.append(("  overhead ratio dagster / engine (target < 1.5x)", f"{t_dag / t_engine:.2f}x"))
            # The same first run as a sensor would launch it (stale mode), on a third identical copy.
            ds_s, catalog_s, pipeline_s = build(DBConn(f"sqlite:///{stale_path}"), args.chunk_size)
            defs_s = build_definitions(catalog_s, pipeline_s, ds_s, partitions=args.partitions)
            stale_run = dg.RunRequest(tags={**backfill.tags, "datapipe/mode": "stale"})
            t_dag_s, _ = timed(lambda: execute(defs_s, instance, stale_run))
            rows.append(
                (f"dagster: all {len(parts)} partitions, one range run (stale mode)", f"{t_dag_s:.2f} s")
            )
            rows.append(("  overhead ratio dagster stale / engine", f"{t_dag_s / t_engine:.2f}x"))

            # ---- sensor ticks
            _, res = tick(
                defs, instance, None
            )  # first tick: records the cursor (nothing stale after the run)
            cursor = res.cursor
            t0s, res = tick(defs, instance, cursor)
            rows.append(("sensor tick, 0 stale, nothing written (cursor short-cut)", f"{t0s * 1000:.1f} ms"))
            t0q, res = tick(defs, instance, '{"seq": 0}')
            assert not res.run_requests
            rows.append(("sensor tick, 0 stale, forced stale-key query", f"{t0q * 1000:.1f} ms"))

            # ---- one changed event: store -> tick -> run -> derived rows written
            ev = catalog.get_datatable(ds, "events")
            one = ev.get_data(pd.DataFrame({"user_id": ["u7"]})).head(1).copy()
            one["event"] = [{"event_type": "click", "ip": "333.333.333.333"}]
            t_a = time.perf_counter()
            ev.store_chunk(one)
            t_b = time.perf_counter()
            t1, res = tick(defs, instance, cursor)
            t_c = time.perf_counter()
            assert len(res.run_requests) == 1, res
            execute(defs, instance, res.run_requests[0])
            t_d = time.perf_counter()
            cursor = res.cursor
            ip = catalog.get_datatable(ds, "ip").get_data(pd.DataFrame({"user_id": ["u7"]}))
            assert ip["ip"].iloc[0] == "333.333.333.333", ip
            rows.append(("sensor tick, 1 stale key", f"{t1 * 1000:.1f} ms"))
            rows.append(
                ("1 event -> derived rows (store + tick + in-process run)", f"{(t_d - t_a) * 1000:.0f} ms")
            )
            rows.append(
                (
                    "  of which store / tick / run",
                    f"{(t_b - t_a) * 1000:.0f} / {(t_c - t_b) * 1000:.0f} / {(t_d - t_c) * 1000:.0f} ms",
                )
            )

            # ---- 100 stale keys
            hundred = make_events(100, 1, seed=3, start=n + 1)
            hundred["user_id"] = [
                f"u{u}" for u in range(100, 100 + 100 * max(1, users // 200), max(1, users // 200))
            ][:100]
            ev.store_chunk(hundred)
            t100, res = tick(defs, instance, cursor)
            n_parts = sum(
                1
                if r.partition_key
                else parts.index(r.tags["dagster/asset_partition_range_end"])
                - parts.index(r.tags["dagster/asset_partition_range_start"])
                + 1
                for r in res.run_requests
            )
            rows.append(
                (
                    f"sensor tick, 100 stale keys ({len(res.run_requests)} run(s), {n_parts} partitions)",
                    f"{t100 * 1000:.1f} ms",
                )
            )
            t_runs, _ = timed(lambda: [execute(defs, instance, r) for r in res.run_requests])
            rows.append(("  executing those runs in process", f"{t_runs:.2f} s"))
            t_after, res = tick(defs, instance, res.cursor)
            assert not res.run_requests
            rows.append(("sensor tick after they ran (0 stale, query)", f"{t_after * 1000:.1f} ms"))

    width = max(len(k) for k, _ in rows)
    print(
        f"\nbench_dagster: N={n:,} events, U={users:,} users, {args.partitions} partitions, SQLite, chunk_size={args.chunk_size}"
    )
    print("-" * (width + 22))
    for k, v in rows:
        print(f"{k:<{width}}  {v:>18}")


if __name__ == "__main__":
    main()
