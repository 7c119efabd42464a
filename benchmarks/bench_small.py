"""One changed event + run, measured finely (issue 11's "1 change ≤ 20 ms" target).

    cd /tmp && PYTHONPATH=/path/to/tree python /path/to/tree/benchmarks/bench_small.py --events 100000
    ... --build-only > urls.json; then, alternating trees: ... --urls "$(cat urls.json)"; finally --drop

Run it by path from another directory: ``python -m`` puts the working directory first on ``sys.path``,
so every run would import the code of the directory it started in, whatever ``PYTHONPATH`` says. The
package it measured is printed first.

Builds a database of ``--events`` events per backend once (bulk loaded through ``store_chunk``, then the
first full run), then times ``--changes`` single changes (``bench_engine._one_change``'s scenario):
``store_chunk`` of one rewritten event and ``run_steps`` timed separately, median and best, plus the
client's CPU time per change. Compare code versions by running it with another ``PYTHONPATH`` against the
same data: ``--keep DIR`` leaves the databases for the next run (``--reuse DIR``); ``--drop DIR`` removes them.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import sys
import time

from benchmarks.bench_engine import drop_url, fresh_url
from benchmarks.workload import build, make_events
from datapipe_dagster import DBConn, build_compute, run_steps


def create(backend: str, workdir: str, n: int) -> str:
    """A fresh database holding ``n`` events and the first full run's outputs; returns its URL."""
    url = fresh_url(backend, workdir)
    dbconn = DBConn(url)
    ds, catalog, pipeline = build(dbconn)
    events = catalog.get_datatable(ds, "events")
    df = make_events(n, max(n // 10, 1))
    for start in range(0, n, 100_000):
        events.store_chunk(df.iloc[start : start + 100_000])
    run_steps(ds, build_compute(ds, catalog, pipeline))
    dbconn.engine.dispose()
    return url


def drop(url: str) -> None:
    drop_url(url)
    path = url.removeprefix("sqlite:///")
    for p in (path, path + "-wal", path + "-shm") if url.startswith("sqlite") else ():
        if os.path.exists(p):
            os.remove(p)


def measure(url: str, n: int, changes: int, seed: int, profile: str | None = None) -> dict[str, list[float]]:
    """Time ``changes`` single changes: store ms, run ms, total ms, CPU ms each; then count the Python
    function calls of five more (``calls``)."""
    dbconn = DBConn(url)
    ds, catalog, pipeline = build(dbconn)
    steps = build_compute(ds, catalog, pipeline)
    events = catalog.get_datatable(ds, "events")
    base = make_events(n, max(n // 10, 1))
    run_steps(ds, steps)  # warm: tables ready, caches filled
    out: dict[str, list[float]] = {"store": [], "run": [], "total": [], "cpu": []}

    prof = cProfile.Profile() if profile else None
    nonce = f"{os.getpid()}-{time.time_ns()}"  # every change is a change, whichever run came before
    for i in range(changes + 3):
        row = (n // 3 + 7919 * (i + seed)) % n
        ev = base.loc[[row]].copy()
        ev["event"] = [{"event_type": "click", "ip": f"192.168.{nonce}.{i}"}]
        c0, t0 = time.process_time(), time.perf_counter()
        if prof:
            prof.enable()
        events.store_chunk(ev)
        t1 = time.perf_counter()
        summary = run_steps(ds, steps)
        t2 = time.perf_counter()
        if prof:
            prof.disable()
        c1 = time.process_time()
        assert summary.steps[0].keys_processed == 1, summary
        if i < 3:
            continue  # warm-up
        out["store"].append((t1 - t0) * 1000)
        out["run"].append((t2 - t1) * 1000)
        out["total"].append((t2 - t0) * 1000)
        out["cpu"].append((c1 - c0) * 1000)
    # Python function calls per change: a measure the machine's load does not move.
    counter = cProfile.Profile()
    for i in range(5):
        ev = base.loc[[(n // 5 + 7919 * (i + seed)) % n]].copy()
        ev["event"] = [{"event_type": "click", "ip": f"10.9.{nonce}.{i}"}]
        counter.enable()
        events.store_chunk(ev)
        run_steps(ds, steps)
        counter.disable()
    out["calls"] = [pstats.Stats(counter).total_calls / 5]  # type: ignore[attr-defined]
    got = catalog.get_datatable(ds, "ip").get_data(ev[["user_id"]])
    assert list(got["ip"]) == [ev["event"].iloc[0]["ip"]], got
    dbconn.engine.dispose()
    if prof:
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats("datapipe_dagster|workload", 70)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--changes", type=int, default=40)
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--workdir", default="/tmp")
    p.add_argument("--urls", help="JSON {backend: url} of databases built before (skip the build)")
    p.add_argument("--build-only", action="store_true", help="build the databases, print their URLs as JSON")
    p.add_argument("--drop", action="store_true", help="drop the databases in --urls")
    p.add_argument("--seed", type=int, default=0, help="shifts the rewritten events")
    p.add_argument("--profile", action="store_true", help="cProfile the changes (stderr)")
    a = p.parse_args()
    import datapipe_dagster

    print(f"code: {os.path.dirname(os.path.dirname(datapipe_dagster.__file__))}", flush=True)
    urls = json.loads(a.urls) if a.urls else {b: create(b, a.workdir, a.events) for b in a.backends.split(",")}
    if a.drop:
        for u in urls.values():
            drop(u)
        return
    if a.build_only:
        print(json.dumps(urls))
        return
    try:
        for backend, url in urls.items():
            r = measure(url, a.events, a.changes, a.seed, "x" if a.profile else None)
            calls = r.pop("calls")[0]
            cells = " | ".join(f"{statistics.median(v):.1f} ({min(v):.1f})" for v in r.values())
            cells += f" | {calls:,.0f}"
            print(f"| {backend} | {a.events:,} | {cells} |", flush=True)
    finally:
        if not a.urls:
            for u in urls.values():
                drop(u)


if __name__ == "__main__":
    main()
