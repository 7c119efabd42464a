"""Scale pieces of issue 11, each against a baseline in the same run.

    .venv/bin/python -m benchmarks.bench_scale --chunks 1000 --users 20000 --backends sqlite,postgres

1. ``ChangeList``: appending ``--chunks`` chunks of 1,000 keys (what a full run's ``StepResult`` does),
   against the former way (concatenate and de-duplicate everything on every append).
2. A partition's keys for a reparse: ``get_partition_keys`` (an index range of the stored key hash)
   against listing every key and hashing them in pandas (``get_all_keys`` + ``filter_buckets``), for one
   partition of 16, with ``--users`` keys.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import pandas as pd

from benchmarks.bench_engine import drop_url, fresh_url
from benchmarks.workload import build, make_events
from datapipe_dagster import ChangeList, DBConn, build_compute, run_steps
from datapipe_dagster.compute.partitioning import filter_buckets


def old_union(a: pd.DataFrame | None, b: pd.DataFrame) -> pd.DataFrame:
    if a is None or a.empty:
        return b.drop_duplicates().reset_index(drop=True)
    return pd.concat([a, b[list(a.columns)]], ignore_index=True).drop_duplicates().reset_index(drop=True)


def bench_changelist(chunks: int) -> tuple[float, float]:
    parts = [pd.DataFrame({"user_id": [f"u{i * 1000 + j}" for j in range(1000)]}) for i in range(chunks)]
    t0 = time.perf_counter()
    acc = None
    for p in parts:
        acc = old_union(acc, p)
    old = time.perf_counter() - t0
    t0 = time.perf_counter()
    cl = ChangeList()
    for p in parts:
        cl.append("t", p)
    assert len(cl.get("t")) == len(acc)
    return old, time.perf_counter() - t0


def bench_partition_keys(backend: str, users: int, workdir: str) -> tuple[float, float]:
    url = fresh_url(backend, workdir)
    try:
        dbconn = DBConn(url)
        ds, catalog, pipeline = build(dbconn, 1000)
        steps = build_compute(ds, catalog, pipeline)
        catalog.get_datatable(ds, "events").store_chunk(make_events(users, users))
        run_steps(ds, steps)
        step = steps[0]
        t0 = time.perf_counter()
        naive = filter_buckets(step.get_all_keys(), ["user_id"], 16, [5])
        t_naive = time.perf_counter() - t0
        t0 = time.perf_counter()
        ranged = step.get_partition_keys(16, [5])
        t_range = time.perf_counter() - t0
        assert sorted(naive["user_id"]) == sorted(ranged["user_id"])
        dbconn.engine.dispose()
        return t_naive, t_range
    finally:
        drop_url(url)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, default=1000)
    p.add_argument("--users", type=int, default=20000)
    p.add_argument("--backends", default="sqlite,postgres")
    a = p.parse_args()
    old, new = bench_changelist(a.chunks)
    print("| measurement | baseline s | now s | now / baseline |")
    print("|---|---|---|---|")
    print(f"| ChangeList, {a.chunks:,} appends of 1,000 keys | {old:.2f} | {new:.3f} | {new / old:.3f}x |")
    with tempfile.TemporaryDirectory() as workdir:
        for backend in a.backends.split(","):
            naive, ranged = bench_partition_keys(backend, a.users, workdir)
            print(
                f"| {backend}: keys of 1 partition of 16, {a.users:,} keys (all keys + pandas hash vs hash range) "
                f"| {naive:.3f} | {ranged:.3f} | {ranged / naive:.2f}x |"
            )


if __name__ == "__main__":
    main()
