"""1,000 changed events + run at 1M events: one database per backend, built once, then rounds timed part
by part, old and new code alternated against the same database.

    python -m benchmarks.bench_thousand --events 1000000 --users 100000 --backends sqlite,postgres \\
        --old <checkout of the old code> --new . --rounds 5 --alternations 3

Build: ``store_chunk`` of the seed workload in 100k slices and one full ``run_steps``. A round: ``store_chunk``
of 1,000 events spread over the table with new content, then ``run_steps`` (and the same with
``run_steps_changelist``). Each round is split into store / stale query / input reads / function / output
writes (prepare + apply + mark) / commit, and every statement's time is summed by statement shape. One
more round per child runs under cProfile for the time spent inside the driver's own calls: the floor of
the round with these statements, whatever the Python around them costs. Each
``--old`` / ``--new`` tree runs in a child process of its own (``PYTHONPATH``), alternated. The databases
are dropped at the end (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from typing import Any

import numpy as np
import sqlalchemy as sa

PG_ADMIN = os.environ.get("DATAPIPE_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
PARTS = ["store", "stale", "read", "func", "write", "commit", "other"]


def _pg_admin(sql: str) -> None:
    eng = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(sa.text(sql))
    eng.dispose()


def make_url(backend: str, workdir: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{workdir}/thousand-{uuid.uuid4().hex[:8]}.sqlite"
    name = f"bench_thousand_{uuid.uuid4().hex[:8]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def drop(url: str) -> None:
    if url.startswith("postgresql"):
        _pg_admin(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    else:
        path = url.split("///", 1)[1]
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)


# ------------------------------------------------------------------ child: build


def child_build(url: str, n: int, users: int) -> None:
    from benchmarks.workload import build, make_events
    from datapipe_dagster import DBConn, build_compute, run_steps

    dbconn = DBConn(url)
    ds, catalog, pipeline = build(dbconn)
    steps = build_compute(ds, catalog, pipeline)
    events = catalog.get_datatable(ds, "events")
    t0 = time.perf_counter()
    df = make_events(n, users)
    for start in range(0, n, 100_000):
        events.store_chunk(df.iloc[start : start + 100_000])
    stored = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_steps(ds, steps)
    print(json.dumps({"store_s": stored, "run_s": time.perf_counter() - t0}))


# ------------------------------------------------------------------ child: rounds


class Parts:
    """Wall and CPU time per part of a round, by wrapping the engine's methods (benchmark only). On a
    loaded machine the CPU time is the steadier figure; wall minus CPU is the database (and the wait)."""

    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.stack: list[str] = []

    def wrap(self, cls: type, name: str, part: str) -> None:
        orig = getattr(cls, name)
        parts = self

        def timed(*a: Any, **kw: Any) -> Any:
            if parts.stack:  # nested: counted by the outer part
                return orig(*a, **kw)
            parts.stack.append(part)
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return orig(*a, **kw)
            finally:
                parts.t[part] += time.perf_counter() - t0
                parts.cpu[part] += time.process_time() - c0
                parts.stack.pop()

        setattr(cls, name, timed)


def _shape(statement: str) -> str:
    s = re.sub(r"\s+", " ", statement)
    s = re.sub(r"\(%\(.*?\)s(, %\(.*?\)s)*\)", "(…)", s)
    s = re.sub(r"\((\?, )+\?\)", "(…)", s)
    s = re.sub(r"__\[POSTCOMPILE_\w+\]", "…", s)
    s = re.sub(r"(\(…\), )+\(…\)", "(…)", s)
    return s[:300]


class Statements:
    """Time per statement shape, and the last parameters of each (for EXPLAIN)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self.n: dict[str, int] = defaultdict(int)
        self.last: dict[str, tuple[str, Any]] = {}
        self.on = False

        @sa.event.listens_for(engine, "before_cursor_execute")
        def _before(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ANN202
            conn.info["t0"] = time.perf_counter()

        @sa.event.listens_for(engine, "after_cursor_execute")
        def _after(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ANN202
            if not self.on:
                return
            key = _shape(statement)
            self.t[key] += time.perf_counter() - conn.info.pop("t0")
            self.n[key] += 1
            if not executemany:
                self.last[key] = (statement, parameters)


def _changed_events(n: int, users: int, round_no: int) -> Any:
    """1,000 existing events spread over the table, with content new to this round."""
    import pandas as pd

    rng = np.random.default_rng(0)  # make_events draws the user ids first
    uid = rng.integers(0, users, n)
    rows = [(n // 1000) * i + (round_no * 7) % (n // 1000) for i in range(1000)]
    return pd.DataFrame(
        {
            "user_id": [f"u{uid[r]}" for r in rows],
            "event_id": [f"e{r}" for r in rows],
            "event": [{"event_type": "click", "ip": f"172.{round_no // 250 % 250}.{round_no % 250}.{i % 250}"} for i in range(1000)],
        }
    )


def _explain(engine: sa.Engine, statement: str, params: Any) -> str:
    backend = engine.dialect.name
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None  # a checked-out connection holds its driver connection
        cur = raw.cursor()
        try:
            if backend == "postgresql":
                cur.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, params)
                text = "\n".join(r[0] for r in cur.fetchall())
            else:
                cur.execute("EXPLAIN QUERY PLAN " + statement, params)
                text = "\n".join(str(r[-1]) for r in cur.fetchall())
        finally:
            cur.close()
            raw.rollback()
    return text


def child_rounds(url: str, n: int, users: int, rounds: int, first_round: int, mode: str, explain: bool) -> None:
    import datapipe_dagster
    from benchmarks.workload import build
    from datapipe_dagster import DBConn, build_compute, run_steps
    from datapipe_dagster.compute import batch_keys, chunk_runner, table_write
    from datapipe_dagster.meta import tables

    dbconn = DBConn(url)
    ds, catalog, pipeline = build(dbconn)
    steps = build_compute(ds, catalog, pipeline)
    events = catalog.get_datatable(ds, "events")
    parts = Parts()
    parts.wrap(table_write.TableWriter, "store_chunk", "store")
    parts.wrap(batch_keys.KeyedBatchStep, "_stale", "stale")
    parts.wrap(batch_keys.KeyedBatchStep, "keys_for_changes", "stale")
    parts.wrap(chunk_runner.ChunkRunner, "_read_chunk", "read")
    parts.wrap(chunk_runner.ChunkRunner, "_call", "func")
    parts.wrap(table_write.TableWriter, "prepare_write", "write")
    parts.wrap(table_write.TableWriter, "apply_write", "write")
    parts.wrap(tables.TransformMetaTable, "newer_than", "write")
    parts.wrap(tables.TransformMetaTable, "mark", "write")
    dialect = dbconn.engine.dialect
    orig_commit = dialect.do_commit

    def commit(c: Any) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        orig_commit(c)
        if parts.stack == []:
            parts.t["commit"] += time.perf_counter() - t0
            parts.cpu["commit"] += time.process_time() - c0

    dialect.do_commit = commit  # type: ignore[method-assign, assignment]
    stmts = Statements(dbconn.engine)
    run_steps(ds, steps)  # warm: connections, table checks
    out: list[dict[str, Any]] = []
    for r in range(first_round, first_round + rounds):
        many = _changed_events(n, users, r)
        parts.t.clear()
        parts.cpu.clear()
        n0 = sum(stmts.n.values())
        stmts.on = True
        c0, t0 = time.process_time(), time.perf_counter()
        _round(events, ds, steps, many, mode)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        stmts.on = False
        rec = {"total": total, "cpu": cpu, "statements": sum(stmts.n.values()) - n0, **dict(parts.t)}
        rec["other"] = total - sum(parts.t.values())
        rec.update({f"cpu_{p}": v for p, v in parts.cpu.items()})
        rec["cpu_other"] = cpu - sum(parts.cpu.values())
        out.append(rec)
    driver = _driver_round(lambda: _round(events, ds, steps, _changed_events(n, users, first_round + rounds), mode))
    plans = {}
    if explain:
        for key, (statement, params) in stmts.last.items():
            if statement.lstrip().upper().startswith(("SELECT", "WITH")):
                plans[key] = _explain(dbconn.engine, statement, params)
    print(json.dumps({
        "file": datapipe_dagster.__file__, "rounds": out, "stmts": {k: [stmts.t[k], stmts.n[k]] for k in stmts.t},
        "plans": plans, "driver": driver,
    }))


def _round(events: Any, ds: Any, steps: Any, many: Any, mode: str) -> None:
    """``store_chunk`` of the changed events, then the run; checks that it processed every changed user."""
    from datapipe_dagster import ChangeList, run_steps, run_steps_changelist

    if mode == "changelist":
        summary = run_steps_changelist(ds, steps, ChangeList.create("events", events.store_chunk(many)))
    else:
        events.store_chunk(many)
        summary = run_steps(ds, steps)
    keys = summary.steps[0].keys_processed
    assert keys == many["user_id"].nunique(), (keys, summary)


DRIVER_TYPES = ("'sqlite3.", "'psycopg2.", "'psycopg.")


def _driver_round(fn: Any) -> dict[str, float]:
    """One more round under cProfile: its time, and the part spent inside the database driver's own
    methods (sqlite3's or psycopg's cursor and connection: executing, fetching, committing). cProfile
    slows the Python around them, not them, so the driver part is what the round costs at least with
    these statements, however fast the Python: SQLite's own work, or PostgreSQL's plus the round trips."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(fn)
    total = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    inside = sum(v[2] for (_, _, name), v in stats.items() if any(t in name for t in DRIVER_TYPES))
    return {"profiled_s": total, "driver_s": inside}


# ------------------------------------------------------------------ driver


def _child(tree: str, args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    # This file is loaded by path, the engine (and benchmarks.workload) from ``tree``; cwd /tmp keeps the
    # current directory's package off the path.
    code = (
        "import importlib.util as u; s = u.spec_from_file_location('bench_thousand', "
        f"{os.path.abspath(__file__)!r}); m = u.module_from_spec(s); s.loader.exec_module(m); m.main()"
    )
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, cwd="/tmp")
    if out.returncode:
        raise RuntimeError(out.stderr[-4000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(label: str, rounds: list[dict[str, Any]], prefix: str = "") -> str:
    tot = [r["total"] for r in rounds]
    cells = [f"{statistics.median(tot):.3f} / {min(tot):.3f}", f"{statistics.median(r['cpu'] for r in rounds):.3f}"]
    cells.append(f"{statistics.median(r.get('statements', 0) for r in rounds):.0f}")
    cells += [f"{statistics.median(r.get(prefix + p, 0.0) for r in rounds) * 1000:.1f}" for p in PARTS]
    return f"| {label} | " + " | ".join(cells) + " |"


class _Kept:
    """A directory under /tmp that outlives the run (``--keep``)."""

    def __enter__(self) -> str:
        return tempfile.mkdtemp(prefix="bench_thousand_", dir="/tmp")

    def __exit__(self, *exc: object) -> None:
        return None


def driver(a: argparse.Namespace) -> None:
    trees = {"old": a.old, "new": a.new}
    with tempfile.TemporaryDirectory(dir="/tmp") if not a.keep else _Kept() as workdir:
        for backend in a.backends.split(","):
            url = a.urls.get(backend) or make_url(backend, workdir)
            try:
                if backend not in a.urls:
                    built = _child(a.new, ["--child-build", url, "--events", str(a.events), "--users", str(a.users)])
                    print(f"## {backend}: built {url} in {built}", flush=True)
                results: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
                stmts: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
                plans: dict[str, dict[str, str]] = {}
                drivers: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
                round_no = int(time.time()) % 60000  # content no earlier run (kept database) wrote
                for alt in range(a.alternations):
                    for mode in ("run", "changelist"):
                        for label, tree in trees.items():
                            last = alt == a.alternations - 1
                            res = _child(tree, [
                                "--child-rounds", url, "--events", str(a.events), "--users", str(a.users),
                                "--rounds", str(a.rounds), "--first-round", str(round_no), "--mode", mode,
                            ] + (["--explain"] if last and mode == "run" else []))
                            round_no += a.rounds + 1  # and the profiled round's
                            drivers[(label, mode)].append(res["driver"])
                            results[(label, mode)] += res["rounds"]
                            for k, (t, c) in res["stmts"].items():
                                stmts[(label, mode)][k][0] += t
                                stmts[(label, mode)][k][1] += c
                            if res["plans"]:
                                plans[label] = res["plans"]
                            print(f"  {label} {mode} ({res['file']}): " + ", ".join(f"{r['total']:.3f}" for r in res["rounds"]), flush=True)
                for what, prefix in (("wall", ""), ("client CPU", "cpu_")):
                    print(f"\n### {backend}: round s (median / best), cpu s, statements, parts: {what} ms (median)\n")
                    print("| code, path | round s | cpu s | statements | " + " | ".join(PARTS) + " |")
                    print("|---" * (4 + len(PARTS)) + "|")
                    for mode in ("run", "changelist"):
                        for label in trees:
                            print(_summary(f"{label}, {mode}", results[(label, mode)], prefix))
                print(f"\n### {backend}: time inside the driver's calls, one round under cProfile per child (median)\n")
                for (label, mode), ds_ in drivers.items():
                    inside = statistics.median(d["driver_s"] for d in ds_) * 1000
                    whole = statistics.median(d["profiled_s"] for d in ds_) * 1000
                    print(f"- {label}, {mode}: {inside:.0f} ms of a profiled round of {whole:.0f} ms")
                for mode in ("run", "changelist"):
                    print(f"\n### {backend} {mode}: statements, ms per round (old → new)\n")
                    nr = {lb: len(results[(lb, mode)]) for lb in trees}
                    keys = sorted(set(stmts[("old", mode)]) | set(stmts[("new", mode)]),
                                  key=lambda k: -max(stmts[(lb, mode)][k][0] / nr[lb] for lb in trees))
                    for k in keys[: a.top]:
                        o, nw = (stmts[(lb, mode)][k] for lb in trees)
                        print(f"- {o[0] / nr['old'] * 1000:7.1f} ms ({o[1] / nr['old']:.0f}×) → {nw[0] / nr['new'] * 1000:7.1f} ms ({nw[1] / nr['new']:.0f}×)  {k[:220]}")
                if a.plans:
                    for label, ps in plans.items():
                        print(f"\n### {backend} plans, {label}\n")
                        for k, p in ps.items():
                            short = re.sub(r"'[{][^}]{60,}[}]'", "'{…}'", p)
                            print(f"-- {k[:200]}\n{short}\n")
            finally:
                if not a.keep and backend not in a.urls:
                    drop(url)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--old", help="a checkout of the code to compare with (required by the driver)")
    p.add_argument("--new", default=".")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--alternations", type=int, default=3)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--plans", action="store_true", help="print the plans of the last round's SELECTs")
    p.add_argument("--keep", action="store_true", help="keep the databases built (their URLs are printed)")
    p.add_argument("--url", action="append", default=[], help="reuse a database kept before (not dropped)")
    p.add_argument("--child-build", metavar="URL")
    p.add_argument("--child-rounds", metavar="URL")
    p.add_argument("--first-round", type=int, default=1)
    p.add_argument("--mode", default="run")
    p.add_argument("--explain", action="store_true")
    a = p.parse_args()
    if a.child_build:
        child_build(a.child_build, a.events, a.users)
    elif a.child_rounds:
        child_rounds(a.child_rounds, a.events, a.users, a.rounds, a.first_round, a.mode, a.explain)
    else:
        if not a.old:
            p.error("--old is required")
        a.urls = {("sqlite" if u.startswith("sqlite") else "postgres"): u for u in a.url}
        driver(a)


if __name__ == "__main__":
    main()
