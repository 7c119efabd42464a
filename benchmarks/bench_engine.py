"""Engine benchmark: datapipe_dagster vs a naive full recompute, on SQLite and PostgreSQL.

    .venv/bin/python -m benchmarks.bench_engine --sizes 100000:10000,1000000:100000 --backends sqlite,postgres

Per backend and size, in one run: store_chunk of new rows vs a plain bulk insert and the fastest bulk
load (COPY on PostgreSQL); the first full ``run_steps`` vs the naive baseline (read every event,
recompute with pandas, rewrite the outputs); a run with nothing stale; one changed event then
``run_steps``; and the peak memory (RSS) of the full run, measured in a child process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable

import pandas as pd
import sqlalchemy as sa

from benchmarks.workload import build, clicks_ip, make_events, schemas
from datapipe_dagster import ChangeList, DBConn, build_compute, run_steps, run_steps_changelist
from datapipe_dagster.store.pgcopy import copy_frame, executemany_frame
from datapipe_dagster.store.records import to_records

PG_ADMIN = os.environ.get("DATAPIPE_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def fresh_url(backend: str, workdir: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{workdir}/bench-{uuid.uuid4().hex[:8]}.sqlite"
    name = f"bench_{uuid.uuid4().hex[:8]}"
    eng = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    eng.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def drop_url(url: str) -> None:
    if url.startswith("postgresql"):
        eng = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
        eng.dispose()


def naive_recompute(dbconn: DBConn) -> float:
    """Read every event in write order, recompute with pandas, replace both outputs in one transaction."""
    md = sa.MetaData()
    tables = {n: sa.Table(f"naive_{n}", md, *[c._copy() for c in cols]) for n, cols in schemas().items() if n != "events"}
    md.create_all(dbconn.engine)
    events = sa.Table("events", sa.MetaData(), autoload_with=dbconn.engine)
    t0 = time.perf_counter()
    with dbconn.engine.begin() as conn:
        import pandas as pd

        rows = conn.execute(sa.select(events)).fetchall()
        df = pd.DataFrame.from_records(rows, columns=[c.name for c in events.columns])
        cc, ip = clicks_ip(df)
        for name, out in (("click_count", cc), ("ip", ip)):
            conn.execute(sa.delete(tables[name]))
            conn.execute(sa.insert(tables[name]), to_records(out))
    return time.perf_counter() - t0


def _timed_load(dbconn: DBConn, n: int, users: int, name: str, load: Callable[[sa.Connection, sa.Table, pd.DataFrame], None]) -> float:
    """rows/s of ``load`` putting the same events, 100,000 at a time, into a fresh keyed table ``name``."""
    md = sa.MetaData()
    t = sa.Table(name, md, *[c._copy() for c in schemas()["events"]])
    md.create_all(dbconn.engine)
    df = make_events(n, users, seed=7)
    t0 = time.perf_counter()
    with dbconn.engine.begin() as conn:
        for start in range(0, n, 100_000):
            load(conn, t, df.iloc[start : start + 100_000])
    return n / (time.perf_counter() - t0)


def plain_bulk_insert(dbconn: DBConn, n: int, users: int) -> float:
    """rows/s of a plain executemany INSERT of the same events into an unindexed-but-keyed table."""
    return _timed_load(dbconn, n, users, "plain_events", lambda conn, t, part: conn.execute(sa.insert(t), to_records(part)))


def bulk_load(dbconn: DBConn, n: int, users: int) -> float:
    """rows/s of the fastest plain load of the same events into a keyed table, the ingest's real limit:
    COPY on PostgreSQL, an ``executemany`` of tuples on SQLite (the library's own bulk inserts)."""

    def load(conn: sa.Connection, t: sa.Table, part: pd.DataFrame) -> None:
        if not (dbconn.backend == "postgresql" and copy_frame(conn, t, part)):
            executemany_frame(conn, t, part)

    return _timed_load(dbconn, n, users, "bulk_events", load)


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss would carry the parent's peak across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssPeaks:
    """Peaks of the anonymous (heap) and file-backed parts of the resident set, sampled every 5 ms while
    in use. VmHWM counts both, and SQLite reads the database through a memory map whose touched pages
    count as the process's file-backed RSS: shared page cache the kernel reclaims, not the run's objects."""

    def __init__(self) -> None:
        self.anon_mb = self.file_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def now() -> dict[str, float]:
        with open("/proc/self/status") as f:
            return {k: int(v.split()[0]) / 1024 for k, _, v in (line.partition(":") for line in f) if k in ("RssAnon", "RssFile")}

    def _sample(self) -> None:
        while True:
            s = self.now()
            self.anon_mb, self.file_mb = max(self.anon_mb, s["RssAnon"]), max(self.file_mb, s["RssFile"])
            if self._stop.wait(0.005):
                return

    def __enter__(self) -> RssPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class SeqLockTimer:
    """Seconds the write-sequence row lock is held: from the ``UPDATE datapipe_seq`` that takes it to the
    end of the commit (or rollback) that releases it, summed over transactions. Instruments the engine's
    dialect (benchmark only)."""

    def __init__(self, engine: sa.Engine):
        self.held = 0.0
        self.transactions = 0
        self._since: dict[int, float] = {}

        @sa.event.listens_for(engine, "after_cursor_execute")
        def _taken(conn: sa.Connection, cursor: object, statement: str, *args: object) -> None:
            if statement.lstrip().upper().startswith("UPDATE") and "datapipe_seq" in statement:
                # Keyed by the pooled connection: the dialect's commit receives that, not the DBAPI one.
                self._since.setdefault(id(conn.connection), time.perf_counter())

        dialect = engine.dialect
        for name in ("do_commit", "do_rollback"):
            orig = getattr(dialect, name)
            setattr(dialect, name, self._releasing(orig))

    def _releasing(self, orig):  # noqa: ANN001, ANN202
        def release(dbapi_conn: object) -> None:
            try:
                orig(dbapi_conn)
            finally:
                since = self._since.pop(id(dbapi_conn), None)
                if since is not None:
                    self.held += time.perf_counter() - since
                    self.transactions += 1

        return release


def child_full_run(url: str, chunk_size: int) -> None:
    """Run in a child process: the first full run_steps, printing its time, peak RSS and the share of it
    the write-sequence lock was held."""
    dbconn = DBConn(url)
    ds, catalog, pipeline = build(dbconn, chunk_size)
    steps = build_compute(ds, catalog, pipeline)
    lock = SeqLockTimer(dbconn.engine)
    base = peak_rss_mb()
    with RssPeaks() as parts:
        t0 = time.perf_counter()
        summary = run_steps(ds, steps)
        elapsed = time.perf_counter() - t0
    peak = peak_rss_mb()
    print(json.dumps({
        "elapsed": elapsed, "peak_mb": peak, "base_mb": base, "keys": summary.steps[0].keys_processed,
        "anon_mb": parts.anon_mb, "file_mb": parts.file_mb,
        "lock_share": lock.held / elapsed, "lock_tx": lock.transactions,
    }))


REPEATS = 20
THOUSAND_ROUNDS = 3
"""Small measurements are repeated (a loaded machine adds noise of several milliseconds): an idle run shows
its first time (after the full run) and the best of these repeats, one change the median and the best."""


def _timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _probe_rows(n: int) -> list[int]:
    rows = {n // 2} | {(n // 3 + 7919 * i) % n for i in range(REPEATS)} | {(n // 1000) * i + 1 for i in range(1000)}
    return sorted(rows)


def _one_change(events, ds, steps, df, n: int, i: int) -> None:  # noqa: ANN001
    ev = df.loc[[(n // 3 + 7919 * i) % n]].copy()
    ev["event"] = [{"event_type": "click", "ip": f"192.168.1.{i}"}]
    events.store_chunk(ev)
    summary = run_steps(ds, steps)
    assert summary.steps[0].keys_processed == 1, summary


def bench_one(backend: str, n: int, users: int, chunk_size: int, workdir: str) -> dict[str, float]:
    url = fresh_url(backend, workdir)
    try:
        dbconn = DBConn(url)
        ds, catalog, pipeline = build(dbconn, chunk_size)
        steps = build_compute(ds, catalog, pipeline)
        events = catalog.get_datatable(ds, "events")
        df = make_events(n, users)
        events.ensure_ready()
        t0 = time.perf_counter()
        for start in range(0, n, 100_000):
            events.store_chunk(df.iloc[start : start + 100_000])
        store_rps = n / (time.perf_counter() - t0)
        df = df.loc[_probe_rows(n)]  # keep only the rows the change measurements rewrite (memory at 10M)
        bulk_rps = plain_bulk_insert(dbconn, n, users)
        load_rps = bulk_load(dbconn, n, users)
        naive = naive_recompute(dbconn)
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_engine", "--child-full-run", url, "--chunk-size", str(chunk_size)],
            capture_output=True, text=True, check=True,
        )
        full = json.loads(out.stdout.strip().splitlines()[-1])
        t0 = time.perf_counter()
        run_steps(ds, steps)
        nothing = time.perf_counter() - t0
        nothing_min = min(_timed(lambda: run_steps(ds, steps)) for _ in range(REPEATS))
        ev = df.loc[[n // 2]].copy()
        ev["event"] = [{"event_type": "click", "ip": "192.168.0.1"}]
        t0 = time.perf_counter()
        events.store_chunk(ev)
        summary = run_steps(ds, steps)
        one = time.perf_counter() - t0
        assert summary.steps[0].keys_processed == 1, summary
        got = catalog.get_datatable(ds, "ip").get_data(ev[["user_id"]])
        assert list(got["ip"]) == ["192.168.0.1"], got
        ones = sorted(_timed(lambda i=i: _one_change(events, ds, steps, df, n, i)) for i in range(REPEATS))
        one, one_min = ones[len(ones) // 2], ones[0]
        many = df.loc[[(n // 1000) * i + 1 for i in range(1000)]].copy()
        rounds, rounds_cl = [], []
        for r in range(THOUSAND_ROUNDS):  # the median of a few: one round moved by 30% from run to run
            many["event"] = [{"event_type": "click", "ip": f"10.0.{r}.2"}] * len(many)
            t0 = time.perf_counter()
            events.store_chunk(many)
            summary = run_steps(ds, steps)
            rounds.append(time.perf_counter() - t0)
            assert summary.steps[0].keys_processed == many["user_id"].nunique(), summary
            many["event"] = [{"event_type": "click", "ip": f"10.0.{r}.3"}] * len(many)
            t0 = time.perf_counter()
            run_steps_changelist(ds, steps, ChangeList.create("events", events.store_chunk(many)))
            rounds_cl.append(time.perf_counter() - t0)
        thousand, thousand_cl = statistics.median(rounds), statistics.median(rounds_cl)
        # correctness against the naive result
        with dbconn.engine.connect() as c:
            naive_n = c.execute(sa.text("select count(*) from naive_click_count")).scalar_one()
        assert naive_n == catalog.get_datatable(ds, "click_count").get_size()
        dbconn.engine.dispose()
        return {
            "store_rps": store_rps, "bulk_rps": bulk_rps, "load_rps": load_rps, "naive_s": naive, "full_s": full["elapsed"],
            "ratio": full["elapsed"] / naive, "nothing_ms": nothing * 1000, "one_ms": one * 1000,
            "thousand_s": thousand, "thousand_cl_s": thousand_cl,
            "peak_mb": full["peak_mb"], "base_mb": full["base_mb"], "anon_mb": full["anon_mb"], "file_mb": full["file_mb"], "lock_share": full["lock_share"],
            "nothing_min_ms": nothing_min * 1000, "one_min_ms": one_min * 1000,
        }
    finally:
        drop_url(url)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000:10000", help="comma-separated EVENTS:USERS pairs")
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--chunk-size", type=int, default=1000)
    p.add_argument("--child-full-run", metavar="URL", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child_full_run:
        child_full_run(a.child_full_run, a.chunk_size)
        return
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for backend in a.backends.split(","):
            for pair in a.sizes.split(","):
                n, u = (int(x) for x in pair.split(":"))
                r = bench_one(backend, n, u, a.chunk_size, workdir)
                rows.append((backend, n, u, r))
                print(f"done {backend} {n}: {r}", file=sys.stderr, flush=True)
    hdr = "| backend | events | users | store_chunk rows/s | plain insert rows/s | store/plain | bulk load rows/s (COPY on PG) | naive recompute s | first run s | first/naive | seq lock share | nothing stale ms (best) | 1 change ms median (best) | 1,000 changes + run s (median of 3) | 1,000 changes, changelist s (median of 3) | full-run peak RSS MB (after imports) | of which heap / file pages, peak MB |"
    print(hdr)
    print("|---" * (hdr.count("|") - 1) + "|")
    for backend, n, u, r in rows:
        print(
            f"| {backend} | {n:,} | {u:,} | {r['store_rps']:,.0f} | {r['bulk_rps']:,.0f} | {r['store_rps'] / r['bulk_rps']:.2f}x | {r['load_rps']:,.0f} | {r['naive_s']:.2f} | {r['full_s']:.2f} | "
            f"{r['ratio']:.2f}x | {r['lock_share']:.0%} | {r['nothing_ms']:.1f} ({r['nothing_min_ms']:.1f}) | {r['one_ms']:.1f} ({r['one_min_ms']:.1f}) | "
            f"{r['thousand_s']:.2f} | {r['thousand_cl_s']:.2f} | {r['peak_mb']:.0f} ({r['base_mb']:.0f}) | {r['anon_mb']:.0f} / {r['file_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
