"""A fanned-out backfill on 2 Celery workers vs 1 worker vs the in-process executor, same run.

    .venv/bin/python -m benchmarks.bench_celery --events 200000 --users 20000 --repeat 2

Needs PostgreSQL (``DATAPIPE_PG_URL``, default ``postgresql+psycopg2://postgres@127.0.0.1:5432/test``)
and Redis (``--redis``, default ``redis://127.0.0.1:6379/12``; that database number is flushed).

The benchmark workload's events (``benchmarks.workload``) are stored once in a seed database; every
trial runs on a fresh copy of it (``CREATE DATABASE ... TEMPLATE``), so each one is the first full run
of ``--partitions`` partitions, as one range run of ``benchmarks.celery_location.asset_job`` with
``fan_out_partitions=True`` through ``dagster.execute_job`` on a temporary Dagster instance:

- *engine*: ``run_steps`` without Dagster (the floor);
- *in process*: the fanned-out run on ``in_process_executor`` (steps one after another);
- *celery 1* / *celery 2*: the same run on ``dagster_celery``'s executor with one or two
  ``celery worker --pool=solo`` processes (one task at a time each), started before the clock starts.

The modes alternate within each repeat (engine, in process, celery 1, celery 2, then again), so load
from other processes hits them about equally. Printed: every run, the means and the ratios.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from benchmarks.bench_engine import PG_ADMIN, drop_url
from benchmarks.workload import build, make_events
from datapipe_dagster import DBConn, build_compute, run_steps

ROOT = Path(__file__).resolve().parents[1]
MODES = ("engine", "in process", "celery 1", "celery 2")


def _admin(sql: str) -> None:
    eng = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with eng.connect() as c:
            c.execute(sa.text(sql))
    finally:
        eng.dispose()


def _url(name: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def seed(events: int, users: int) -> str:
    name = f"bench_seed_{uuid.uuid4().hex[:8]}"
    _admin(f'CREATE DATABASE "{name}"')
    dbconn = DBConn(_url(name))
    ds, catalog, _ = build(dbconn)
    table = catalog.get_datatable(ds, "events")
    df = make_events(events, users)
    for start in range(0, len(df), 100_000):
        table.store_chunk(df.iloc[start : start + 100_000])
    dbconn.engine.dispose()
    return name


def copy_of(seed_name: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{seed_name}"')
    return _url(name)


def start_workers(n: int, broker: str, env: dict[str, str], logdir: Path) -> list[subprocess.Popen]:
    celery = str(Path(sys.executable).with_name("celery"))
    names = [f"w{i + 1}" for i in range(n)]
    procs = []
    for name in names:
        log = logdir / f"{name}.log"
        log.unlink(missing_ok=True)
        procs.append(
            subprocess.Popen(
                [celery, "-A", "dagster_celery.app", "-b", broker, "--result-backend", broker, "worker",
                 "--pool=solo", "--prefetch-multiplier=1", "-Q", "dagster", "-n", f"{name}@%h", "--loglevel=INFO"],
                cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                start_new_session=True,
            )
        )
    deadline = time.monotonic() + 120
    while not all(b"ready." in (logdir / f"{n}.log").read_bytes() for n in names):
        if time.monotonic() > deadline:
            stop_workers(procs)
            raise RuntimeError(f"celery workers did not start within 120 s; logs in {logdir}")
        time.sleep(0.2)
    return procs


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


def run_engine(url: str) -> tuple[float, int]:
    dbconn = DBConn(url)
    ds, catalog, pipeline = build(dbconn)
    steps = build_compute(ds, catalog, pipeline)
    t0 = time.perf_counter()
    run_steps(ds, steps)
    elapsed = time.perf_counter() - t0
    dbconn.engine.dispose()
    return elapsed, -1


def run_dagster(partitions: int) -> tuple[float, int, dict[str, int]]:
    import dagster as dg

    from benchmarks import celery_location

    tags = {"dagster/asset_partition_range_start": "00", "dagster/asset_partition_range_end": f"{partitions - 1:02d}"}
    with dg.DagsterInstance.get() as instance:
        t0 = time.perf_counter()
        with dg.execute_job(
            dg.reconstructable(celery_location.asset_job), instance=instance, tags=tags, asset_selection=celery_location.KEYS
        ) as res:
            elapsed = time.perf_counter() - t0
            if not res.success:
                raise RuntimeError(f"run {res.run_id} failed")
            per_worker: dict[str, int] = {}
            for e in res.all_events:
                md = getattr(e.event_specific_data, "metadata", None) or {}
                if e.event_type_value == "ENGINE_EVENT" and "Celery worker" in md and e.step_key:
                    w = str(md["Celery worker"].value).split("@")[0]
                    per_worker[w] = per_worker.get(w, 0) + 1
            mats = [m for m in res.get_asset_materialization_events() if m.asset_key == celery_location.KEYS[0]]
            keys = sum(int(m.materialization.metadata["datapipe/keys_processed"].value) for m in mats)
    return elapsed, keys, per_worker


def output_rows(url: str) -> int:
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            return int(c.execute(sa.text("SELECT count(*) FROM click_count")).scalar_one())
    finally:
        eng.dispose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--partitions", type=int, default=16)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: " + ", ".join(MODES))
    a = p.parse_args()
    modes = [m.strip() for m in a.modes.split(",")]
    import redis

    redis.Redis.from_url(a.redis).flushdb()
    times: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as workdir:
        home = Path(workdir, "dagster_home")
        home.mkdir()
        os.environ["DAGSTER_HOME"] = str(home)
        os.environ["DATAPIPE_BENCH_PARTITIONS"] = str(a.partitions)
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        t0 = time.perf_counter()
        seed_name = seed(a.events, a.users)
        print(f"seeded {a.events:,} events / {a.users:,} users in {time.perf_counter() - t0:.1f} s", flush=True)
        try:
            for r in range(a.repeat):
                for mode in modes:
                    url = copy_of(seed_name)
                    os.environ["DATAPIPE_BENCH_DB"] = url
                    workers: list[subprocess.Popen] = []
                    try:
                        if mode == "engine":
                            os.environ.pop("DATAPIPE_BENCH_BROKER", None)
                            elapsed, keys = run_engine(url)
                            spread: dict[str, int] = {}
                        else:
                            if mode.startswith("celery"):
                                os.environ["DATAPIPE_BENCH_BROKER"] = a.redis
                                workers = start_workers(int(mode.split()[1]), a.redis, dict(os.environ), Path(workdir))
                            else:
                                os.environ.pop("DATAPIPE_BENCH_BROKER", None)
                            elapsed, keys, spread = run_dagster(a.partitions)
                        rows = output_rows(url)
                        if rows != a.users and rows != len(set(make_events(a.events, a.users)["user_id"])):
                            raise RuntimeError(f"{mode}: click_count has {rows} rows")
                        if keys not in (-1, rows):
                            raise RuntimeError(f"{mode}: keys_processed {keys} != {rows} output rows")
                    finally:
                        stop_workers(workers)
                        drop_url(url)
                    times[mode].append(elapsed)
                    print(f"repeat {r + 1} | {mode} | {elapsed:.2f} s | steps per worker {spread or '-'}", flush=True)
        finally:
            _admin(f'DROP DATABASE IF EXISTS "{seed_name}" WITH (FORCE)')
    base = sum(times[modes[0]]) / len(times[modes[0]])
    print()
    print(f"| mode | runs s | mean s | mean / {modes[0]} |")
    print("|---|---|---|---|")
    for m in modes:
        mean = sum(times[m]) / len(times[m])
        print(f"| {m} | {', '.join(f'{t:.2f}' for t in times[m])} | {mean:.2f} | {mean / base:.2f}x |")


if __name__ == "__main__":
    main()
