"""Run plans (issue 11): stale-key queries per fanned-out run, one partition's keys, a first run's peak RSS.

Old (a baseline checkout) and new (this tree) alternated in one session, each measurement a child
process run with ``PYTHONPATH`` set to its tree, on the same data::

    .venv/bin/python -m benchmarks.bench_plan --old <checkout of the old code> --new . --events 200000 --users 20000 \\
        --rss-events 1000000 --rss-users 1000000 --rounds 2

1. Stale-key queries of one 16-partition fanned-out run through Dagster (``execute_in_process``).
2. Finding one partition's stale keys without Dagster, on SQLite at ``--events``: old, every partition
   step's stale-key query filtered to its bucket; new, the plan made once per run, then each partition's
   index range read from it (both figures given: per run, plan + 16 reads vs 16 queries).
3. Peak RSS (VmHWM) of reading the first run's stale keys alone (``--rounds`` times), and of the first
   full ``run_steps`` at ``--rss-events`` / ``--rss-users`` on SQLite, in a
   child process (``bench_engine.child_full_run``), on copies of one prepared database.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

PARTITIONS = 16


def child_queries(url: str) -> None:
    """Count the stale-key queries of one 16-partition fanned-out stale run through Dagster."""
    import dagster as dg

    from benchmarks.workload import build
    from datapipe_dagster import DBConn
    from datapipe_dagster.compute import batch_keys
    from datapipe_dagster.dagster import build_definitions

    dbconn = DBConn(url)
    ds, catalog, pipeline = build(dbconn)
    defs = build_definitions(catalog, pipeline, ds, partitions=PARTITIONS, fan_out_partitions=True)
    calls = []
    real = batch_keys.stale_keys_query

    def counted(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*a, **k)

    batch_keys.stale_keys_query = counted
    keys = [dg.AssetKey("click_count"), dg.AssetKey("ip")]
    job = defs.resolve_implicit_job_def_def_for_assets(keys)
    tags = {
        "dagster/asset_partition_range_start": "00",
        "dagster/asset_partition_range_end": f"{PARTITIONS - 1:02d}",
        "datapipe/mode": "stale",
    }
    with dg.instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, asset_selection=keys, tags=tags).success
    print(json.dumps({"stale_key_queries": len(calls)}))


def child_partition_keys(url: str, repeats: int) -> None:
    """Seconds to find one partition's stale keys: old (stale-key query, filtered) or new (read the plan)."""
    from benchmarks.workload import build
    from datapipe_dagster import DBConn, build_compute
    from datapipe_dagster.compute.partition_runner import STALE, PartitionRunner
    from datapipe_dagster.compute.partitioning import Buckets

    try:
        from datapipe_dagster.compute.run_plan import RunPlan
    except ImportError:
        RunPlan = None  # noqa: N806 - the old tree has no plans

    dbconn = DBConn(url)
    ds, catalog, pipeline = build(dbconn)
    (step,) = build_compute(ds, catalog, pipeline)
    buckets = Buckets(PARTITIONS)
    parts = buckets.keys
    _ = step.meta  # the state table exists before anything is timed (as in every run but the first)
    out: dict[str, object] = {"tree": "old" if RunPlan is None else "new"}
    times, cpu, found = [], [], 0
    if RunPlan is None:
        runner = PartitionRunner(step, buckets)
        for i in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            found = len(runner.keys_for(STALE, [parts[i % PARTITIONS]]))
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    else:
        plan = RunPlan(step, buckets)
        _ = plan.table
        t0, c0 = time.perf_counter(), time.process_time()
        plan.make("bench", STALE, parts)
        out["plan_s"], out["plan_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        for i in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            found = len(plan.keys("bench", STALE, parts[i % PARTITIONS]))
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        plan.drop("bench")
    out.update(median_s=statistics.median(times), best_s=min(times), cpu_median_s=statistics.median(cpu), keys=found)
    print(json.dumps(out))


def child_rss(url: str) -> None:
    from benchmarks.bench_engine import child_full_run

    child_full_run(url, 1000)


def child_stale_rss(url: str) -> None:
    """Peak RSS of reading a first run's stale keys (every key) alone, state untouched."""
    from benchmarks.bench_engine import peak_rss_mb
    from benchmarks.workload import build
    from datapipe_dagster import DBConn, build_compute

    ds, catalog, pipeline = build(DBConn(url))
    (step,) = build_compute(ds, catalog, pipeline)
    _ = step.meta
    base = peak_rss_mb()
    t0 = time.perf_counter()
    keys = step.get_stale_keys(advance_watermark=False)
    print(json.dumps({"elapsed": time.perf_counter() - t0, "peak_mb": peak_rss_mb(), "base_mb": base, "keys": len(keys)}))


def prepare(url: str, events: int, users: int) -> None:
    """Store the events (nothing processed: every key is stale, a first run)."""
    from benchmarks.workload import build, make_events
    from datapipe_dagster import DBConn

    dbconn = DBConn(url)
    ds, catalog, _ = build(dbconn)
    table = catalog.get_datatable(ds, "events")
    for start in range(0, events, 200_000):
        table.store_chunk(make_events(min(200_000, events - start), users, seed=start, start=start))
    with dbconn.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # the file alone holds it all: copies see it
    dbconn.engine.dispose()


def _child(tree: str, *args: str) -> dict:
    """Run this file's ``main`` in a child whose ``datapipe_dagster`` (and ``benchmarks``) come from ``tree``."""
    tree = os.path.abspath(tree)
    env = {**os.environ, "PYTHONPATH": tree}
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    # The script's own directory leads sys.path: it holds no package, so the tree's are imported.
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=tree)
    return json.loads(res.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> None:
    trees = {"old": args.old, "new": args.new}
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        small = f"sqlite:///{tmp}/small.sqlite"
        prepare(small, 2_000, 200)
        for name, tree in trees.items():
            shutil.copy(f"{tmp}/small.sqlite", f"{tmp}/small-{name}.sqlite")
            print(name, "queries per fanned-out run:", _child(tree, "queries", f"sqlite:///{tmp}/small-{name}.sqlite"), flush=True)
        mid = f"sqlite:///{tmp}/mid.sqlite"
        prepare(mid, args.events, args.users)
        for r in range(args.rounds):
            for name, tree in trees.items():
                print(f"round {r}", name, "one partition's keys:", _child(tree, "partition-keys", mid, str(args.repeats)), flush=True)
        os.remove(f"{tmp}/mid.sqlite")
        if args.rss_events:
            big = f"{tmp}/big.sqlite"
            prepare(f"sqlite:///{big}", args.rss_events, args.rss_users)
            for r in range(args.rounds):
                for name, tree in trees.items():
                    print(f"round {r}", name, "stale keys read:", _child(tree, "stale-rss", f"sqlite:///{big}"), flush=True)
            for r in range(args.rss_rounds):
                for name, tree in trees.items():
                    shutil.copy(big, f"{tmp}/run.sqlite")
                    print(f"round {r}", name, "first full run:", _child(tree, "rss", f"sqlite:///{tmp}/run.sqlite"), flush=True)
                    os.remove(f"{tmp}/run.sqlite")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("queries", "partition-keys", "rss", "stale-rss"):
        what, rest = sys.argv[1], sys.argv[2:]
        if what == "queries":
            child_queries(rest[0])
        elif what == "stale-rss":
            child_stale_rss(rest[0])
        elif what == "partition-keys":
            child_partition_keys(rest[0], int(rest[1]))
        else:
            child_rss(rest[0])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", required=True, help="the baseline tree (PYTHONPATH of the old runs)")
    p.add_argument("--new", default=".", help="this tree")
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rss-events", type=int, default=0, help="0: skip the peak-RSS measurement")
    p.add_argument("--rss-users", type=int, default=1_000_000)
    p.add_argument("--rss-rounds", type=int, default=1, help="a first full run at 1M takes minutes (0: skip it)")
    compare(p.parse_args())


if __name__ == "__main__":
    main()
