"""kill -9: a process loading events (``store_chunk``) and running the pipeline (``run_steps``) is killed
with SIGKILL at random moments. After every kill the database is consistent (every load all-or-nothing,
row metadata equal to the data, outputs equal to a recomputation for every processed key) and at the end a
run completes with outputs equal to a pandas recomputation and no stale key.

``DATAPIPE_SOAK_KILLS=N`` sets the kills per backend (default 5, about 10-20 s per backend here; a soak run sets 100);
``DATAPIPE_SOAK_SEED`` fixes the random schedule (default: a new one each run, printed on failure).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

from datapipe_dagster import DBConn, run_steps
from tests.engine_helpers import event, frame, seed_setup
from tests.reliability.test_faults import assert_complete, assert_consistent

ROOT = Path(__file__).parents[2]
KILLS = int(os.environ.get("DATAPIPE_SOAK_KILLS", "5"))

def worker(url: str, schema: str | None, seed: str, log: str, phase: str, ready) -> None:  # noqa: ANN001
    """Loads and runs forever (until killed). Forked from the test process: no import to pay per kill."""
    ds, catalog, steps = seed_setup(DBConn(url, schema=schema), chunk_size=7, name="clicks")
    events = catalog.get_datatable(ds, "events")
    rng = random.Random(seed)
    with open(log, "a") as logf, open(phase, "w") as phasef:

        def note(what: str) -> None:
            phasef.seek(0)
            phasef.write(what.ljust(8))
            phasef.flush()

        note("start")
        ready.set()
        batch = 0
        while True:
            tag = f"{seed}-{batch}"
            if rng.random() < 0.6:
                n = rng.randint(20, 1500)
                rows = [
                    {
                        "user_id": f"u{rng.randrange(150)}",
                        "event_id": f"{tag}-{i}",
                        "event": json.dumps(
                            {
                                "event_type": rng.choice(["click", "view"]),
                                "ip": f"10.{batch % 250}.{i % 250}.{rng.randrange(250)}",
                                "batch": tag,
                                "size": n,
                                "pad": "x" * rng.randrange(200),
                            }
                        ),
                    }
                    for i in range(n)
                ]
                note("load")
                events.store_chunk(frame(*rows))
                logf.write(f"{tag} {n}\n")
                logf.flush()
            else:
                note("run")
                run_steps(ds, steps)
            batch += 1


def check_after_kill(dbconn: DBConn, log: Path) -> int:
    """Every load is whole or absent, every load the worker saw return is there; returns the rows."""
    ds, catalog, steps = seed_setup(DBConn(dbconn.connstr, schema=dbconn.schema), chunk_size=7, name="clicks")
    try:
        events = catalog.get_datatable(ds, "events").get_data()
        parsed = events["event"].apply(json.loads)
        present = Counter(e["batch"] for e in parsed if "batch" in e)
        sizes = {e["batch"]: e["size"] for e in parsed if "batch" in e}
        for tag, n in present.items():
            assert n == sizes[tag], f"load {tag} is half there: {n} of {sizes[tag]} rows"
        for line in log.read_text().splitlines():
            tag, n = line.split()
            assert present.get(tag) == int(n), f"load {tag} returned but holds {present.get(tag)} of {n} rows"
        assert_consistent(ds, catalog, steps)
        return len(events)
    finally:
        ds.meta_dbconn.engine.dispose()


def test_kill_9_at_random_points_loses_nothing(dbconn: DBConn, tmp_path: Path) -> None:
    seed = int(os.environ.get("DATAPIPE_SOAK_SEED", str(random.randrange(1_000_000))))
    rng = random.Random(seed)
    ds, catalog, steps = seed_setup(dbconn, chunk_size=7, name="clicks")
    catalog.get_datatable(ds, "events").store_chunk(frame(*[event(f"u{i}", "0") for i in range(150)]))
    log = tmp_path / "loads.log"
    log.touch()
    phases: Counter[str] = Counter()
    rows = 0
    ctx = multiprocessing.get_context("fork")
    phase = tmp_path / "phase"
    for k in range(KILLS):
        if dbconn._engine is not None:
            dbconn._engine.dispose()  # the child must not inherit pooled connections
        ready = ctx.Event()
        proc = ctx.Process(target=worker, args=(dbconn.connstr, dbconn.schema, f"{seed}.{k}", str(log), str(phase), ready))
        proc.start()
        if not ready.wait(timeout=60):
            proc.kill()
            raise AssertionError(f"seed {seed}: worker {k} did not start (exit code {proc.exitcode})")
        time.sleep(rng.uniform(0.02, 1.0))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=60)
        assert proc.exitcode == -signal.SIGKILL, f"seed {seed}: worker {k} ended by itself ({proc.exitcode})"
        phases[phase.read_text().strip() if phase.exists() else "start"] += 1
        phase.unlink(missing_ok=True)
        rows = check_after_kill(dbconn, log)
    print(f"{dbconn.backend}: survived {KILLS} kills (seed {seed}), at {dict(phases)}; {rows} events")
    assert run_steps(ds, steps).ok
    assert_complete(ds, catalog, steps)


SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {root!r})
    from datapipe_dagster import DBConn, run_steps
    from tests.engine_helpers import parse_clicks_ip, seed_setup

    def dies_on_u7(df):
        if "u7" in set(df["user_id"]):
            os._exit(9)  # the process dies without cleanup, mid-run, inside a chunk
        return parse_clicks_ip(df)

    ds, catalog, steps = seed_setup(DBConn({url!r}, schema={schema!r}), dies_on_u7, chunk_size=3, name="clicks")
    run_steps(ds, steps)
    """
)


def test_killed_run_leaves_whole_chunks_and_rerun_completes(dbconn: DBConn, tmp_path: Path) -> None:
    """A deterministic kill inside a transform call: whole chunks or none."""
    ds, catalog, steps = seed_setup(dbconn, chunk_size=3, name="clicks")
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(frame(*[event(f"u{i}", "1") for i in range(10)]))
    script = tmp_path / "crash.py"
    script.write_text(SCRIPT.format(root=str(ROOT), url=dbconn.connstr, schema=dbconn.schema))
    proc = subprocess.run([sys.executable, str(script)], env=dict(os.environ), timeout=120)
    assert proc.returncode == 9
    cc = catalog.get_datatable(ds, "click_count")
    done = set(cc.get_data()["user_id"])
    # whatever committed did so a whole chunk at a time, outputs and transform state together
    assert len(done) % 3 == 0 and "u7" not in done
    assert set(catalog.get_datatable(ds, "ip").get_data()["user_id"]) == done
    stale = set(steps[0].get_stale_keys()["user_id"])
    assert stale == {f"u{i}" for i in range(10)} - done
    summary = run_steps(ds, steps)
    assert summary.ok
    assert set(cc.get_data()["user_id"]) == {f"u{i}" for i in range(10)}
