"""``make demo``: the example end to end, headless, on SQLite, in under a minute.

    python -m example_project.demo [--dir .demo/demo] [--events 3000] [--users 200]
    python -m example_project.demo --seed     # what `make dev` runs first (see ``seed_dev``)

What it shows, with a temporary Dagster instance and everything executed in process (as the daemon
would launch it): ingest user profiles through the IO manager, write events, let the sensors request
runs for the partitions holding stale keys and execute them, rewrite a few events and show that only their
partitions ran, re-ingest profiles and show only the changed users recompute, reparse one partition
the way a backfill does, then print the derived tables and a summary. It checks its own claims: a
wrong result ends it with an error.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from datapipe_dagster.dagster import BucketPartitions
from datapipe_dagster.dagster.constants import BACKFILL_TAG, RANGE_END_TAG, RANGE_START_TAG
from datapipe_dagster.dagster.inprocess import SensorDriver, materialize
from example_project.catalog import DB_ENV_VAR, REPO_ROOT, ExampleStore, open_store
from example_project.definitions import make_definitions
from example_project.generate import make_events

QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
"""Run config that keeps in-process runs from printing Dagster's per-step event log."""


class DemoError(AssertionError):
    """The demo saw something it did not expect (the library is wrong, or the demo is)."""


def expect(ok: bool, what: str) -> None:
    """Raise DemoError with ``what`` unless ``ok``."""
    if not ok:
        raise DemoError(what)


@dataclass
class RunRecord:
    """One run the driver executed: which sensor asked, which partitions, what it processed."""

    sensor: str
    step: str
    partitions: list[str]
    keys_processed: int
    mode: str


@dataclass
class Driver(SensorDriver):
    """Evaluates sensors and executes their run requests in process, as the Dagster daemon would."""

    parts: BucketPartitions = field(default_factory=lambda: BucketPartitions(16))
    runs: list[RunRecord] = field(default_factory=list)

    def partitions_of(self, req: dg.RunRequest) -> list[str]:
        """The partitions a run request covers (one key, a range in tags, or none)."""
        if req.partition_key is not None:
            return [req.partition_key]
        a, b = req.tags.get(RANGE_START_TAG), req.tags.get(RANGE_END_TAG)
        if a is None or b is None:
            return []
        return [k for k in self.parts.keys if a <= k <= b]

    def execute(
        self,
        keys: Iterable[dg.AssetKey],
        *,
        partition_key: str | None = None,
        tags: dict[str, str] | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> dg.ExecuteInProcessResult:
        """Materialize ``keys`` in process (one run), raising if the run fails."""
        keys = list(keys)
        res = materialize(
            self.defs,
            self.instance,
            keys,
            partition_key=partition_key,
            tags=tags,
            run_config={**QUIET_RUN_CONFIG, **(run_config or {})},
        )
        expect(res.success, f"run of {keys} failed")
        return res

    def run_request(self, sensor: str, req: dg.RunRequest) -> RunRecord:
        res = self.execute(req.asset_selection or [], partition_key=req.partition_key, tags=dict(req.tags))
        step = sensor.removesuffix("_stale_sensor")
        # A range run's materializations carry each partition's own count: add them up per asset.
        per_asset: dict[str, int] = {}
        for md in materializations(res):
            per_asset[md["asset"]] = per_asset.get(md["asset"], 0) + int(md.get("datapipe/keys_processed", 0))
        processed = max(per_asset.values(), default=0)
        rec = RunRecord(sensor, step, self.partitions_of(req), processed, req.tags.get("datapipe/mode", "?"))
        self.runs.append(rec)
        return rec

    def settle(self, say: Callable[[str], None], max_rounds: int = 8) -> list[RunRecord]:
        """Tick every sensor and run what it requests, until a round requests nothing (bounded)."""
        done: list[RunRecord] = []
        for rnd in range(1, max_rounds + 1):
            requested = [(name, req) for name in self.sensor_names for req in self.tick(name).run_requests]
            if not requested:
                say(f"  tick {rnd}: every sensor is quiet: nothing stale")
                return done
            for name, req in requested:
                rec = self.run_request(name, req)
                done.append(rec)
                say(
                    f"  tick {rnd}: {name} -> run for {describe_partitions(rec.partitions, self.parts)}: "
                    f"{rec.step} processed {rec.keys_processed} key(s) [{rec.mode}]"
                )
        raise DemoError(f"sensors still requesting runs after {max_rounds} rounds")


def materializations(res: dg.ExecuteInProcessResult) -> list[dict[str, Any]]:
    """Metadata (plain values) of every materialization in a run."""
    out = []
    for ev in res.get_asset_materialization_events():
        md = {k: getattr(v, "value", v) for k, v in ev.materialization.metadata.items()}
        md["asset"] = ev.asset_key.to_user_string()
        md["partition"] = ev.partition
        out.append(md)
    return out


def describe_partitions(keys: list[str], parts: BucketPartitions) -> str:
    if not keys:
        return "the whole table"
    if len(keys) == parts.n:
        return f"all {parts.n} partitions ({keys[0]}..{keys[-1]})"
    return f"partition{'s' if len(keys) > 1 else ''} {', '.join(keys)} (of {parts.n})"


def head(st: ExampleStore, table: str, n: int = 5) -> str:
    df = st.catalog.get_datatable(st.ds, table).get_data()
    for col in [c for c in df.columns if c.endswith("_ts")]:
        df[col] = pd.to_datetime(df[col], unit="s").dt.strftime("%H:%M:%S")
    return f"{table}: {len(df)} rows\n" + (df.head(n).to_string(index=False) if len(df) else "(empty)")


def run_demo(
    workdir: Path,
    n_events: int = 3000,
    n_users: int = 200,
    partitions: int = 16,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The demo in ``workdir`` (wiped first). Returns the summary figures; raises DemoError on a wrong result."""
    started = time.perf_counter()
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "dagster_home").mkdir(parents=True)
    st = open_store(workdir / "example.sqlite")
    defs = make_definitions(st, partitions=partitions)
    parts = BucketPartitions(partitions)
    events_dt = st.catalog.get_datatable(st.ds, "events")
    summary: dict[str, Any] = {}
    with dg.DagsterInstance.local_temp(tempdir=str(workdir / "dagster_home")) as instance:
        drv = Driver(defs, instance, parts=parts)
        say(f"datapipe_dagster demo: data in {st.dbconn.safe_url}, Dagster instance in {workdir / 'dagster_home'}")
        say(
            f"  assets: {', '.join(sorted(k.to_user_string() for k in defs.get_repository_def().asset_graph.get_all_asset_keys()))}"
        )
        say(
            f"  sensors: {', '.join(drv.sensor_names)}; {partitions} hash-bucket partitions per transform key"
        )

        say("\n1. Ingest user profiles: a plain @asset whose DataFrame goes through the datapipe IO manager")
        md = materializations(
            drv.execute([dg.AssetKey("user_profiles")], run_config=profiles_config(n_users, 0))
        )[0]
        say(f"  user_profiles: {md['datapipe/rows_inserted']} rows inserted")

        say(
            f"\n2. Write {n_events} events of {n_users} users with store_chunk (as the API or the simulator would)"
        )
        events = make_events(n_events, n_users, seed=7)
        events_dt.store_chunk(events)
        say("  the sensors find the stale keys and request runs for the partitions holding them:")
        first = drv.settle(say)
        holding = set(BucketPartitions(partitions).stale_partitions(events[["user_id"]].drop_duplicates(), ["user_id"]))
        expect(
            any(r.step == "parse_clicks_ip" and set(r.partitions) == holding for r in first),
            "the first tick should request every partition holding a user of parse_clicks_ip",
        )
        check_clicks(st, events_dt.get_data())
        say("  click_count and ip match a direct computation over all events")

        say("\n3. Rewrite 3 events of 3 users (the seed's 'clack' event: new type, new ip)")
        changed = events.drop_duplicates("user_id").head(3).copy()
        changed["event"] = [
            {"event_type": "clack", "ip": f"203.0.113.{i}", "ts": time.time()} for i in range(3)
        ]
        events_dt.store_chunk(changed)
        users = sorted(changed["user_id"])
        want = parts.stale_partitions(changed[["user_id"]], ["user_id"])
        say(f"  users {', '.join(users)} live in {describe_partitions(want, parts)}")
        second = drv.settle(say)
        ran = sorted({p for r in second if r.step == "parse_clicks_ip" for p in r.partitions})
        expect(ran == want, f"parse_clicks_ip ran partitions {ran}, expected only {want}")
        expect(
            sum(r.keys_processed for r in second if r.step == "parse_clicks_ip") == 3,
            "expected 3 users recomputed",
        )
        ip = st.catalog.get_datatable(st.ds, "ip").get_data(changed[["user_id"]]).set_index("user_id")["ip"]
        expect(
            all(ip[u] == f"203.0.113.{i}" for i, u in enumerate(changed["user_id"])),
            "ip is the last written event's ip",
        )
        say(
            f"  only {', '.join(ran)} ran for parse_clicks_ip ({len(ran)} of {partitions}); 3 users recomputed; "
            "their ip is now the rewritten event's"
        )
        check_clicks(st, events_dt.get_data())

        say("\n4. Re-ingest profiles, version 1 of the export upgrades 4 users to 'enterprise'")
        md = materializations(
            drv.execute([dg.AssetKey("user_profiles")], run_config=profiles_config(n_users, 1))
        )[0]
        say(
            f"  user_profiles: {md['datapipe/rows_updated']} rows updated, {md['datapipe/rows_unchanged']} unchanged"
        )
        third = drv.settle(say)
        recomputed = sum(r.keys_processed for r in third if r.step == "build_user_report")
        expect(
            recomputed == md["datapipe/rows_updated"],
            f"user_report recomputed {recomputed} users, expected {md['datapipe/rows_updated']}",
        )
        say(f"  user_report recomputed only those {recomputed} users")

        target = want[0]
        say(
            f"\n5. Reparse partition {target} of parse_clicks_ip the way a backfill does (tag {BACKFILL_TAG})"
        )
        res = drv.execute(
            [dg.AssetKey("click_count"), dg.AssetKey("ip")],
            partition_key=target,
            tags={BACKFILL_TAG: "demo-reparse"},
        )
        md = next(m for m in materializations(res) if m["asset"] == "click_count")
        in_part = len(
            parts.select(
                st.catalog.get_datatable(st.ds, "click_count").get_data()[["user_id"]], ["user_id"], [target]
            )
        )
        expect(
            md["datapipe/mode"] == "reparse" and md["datapipe/keys_processed"] == in_part,
            f"the reparse should recompute all {in_part} users of partition {target}: {md}",
        )
        say(
            f"  mode={md['datapipe/mode']}: all {md['datapipe/keys_processed']} users of partition {target} recomputed, "
            f"{md['datapipe/rows_inserted']} inserted / {md['datapipe/rows_updated']} updated / {md['datapipe/rows_deleted']} deleted "
            "(same code, same data: nothing changes)"
        )
        after = drv.settle(say)
        expect(not after, "nothing should be stale after the reparse")

        say("\n6. The derived tables")
        for t in ("click_count", "ip", "user_ips", "ip_stats", "user_report"):
            say(head(st, t))
            say("")
        runs = drv.runs
        summary = {
            "events": events_dt.get_size(),
            "users": st.catalog.get_datatable(st.ds, "click_count").get_size(),
            "ips": st.catalog.get_datatable(st.ds, "ip_stats").get_size(),
            "sensor_runs": len(runs),
            "partitions_materialized": sum(max(1, len(r.partitions)) for r in runs),
            "runs_in_instance": len(instance.get_run_records()),
            "after_rewrite_partitions": ran,
            "elapsed_s": round(time.perf_counter() - started, 1),
        }
    st.dispose()
    say(
        f"Summary: {summary['events']} events -> {summary['users']} users, {summary['ips']} ips; "
        f"{summary['sensor_runs']} sensor-requested runs over {summary['partitions_materialized']} partitions "
        f"({summary['runs_in_instance']} runs in the instance in total); rewriting 3 events ran only partitions "
        f"{', '.join(ran)}; {summary['elapsed_s']} s."
    )
    return summary


NEXT_AFTER_DEMO = """Next: `make dev` opens the Dagster UI on this example at http://127.0.0.1:3000 (data in
.demo/example.sqlite, seeded with events, profiles and the sensors' first runs; sensors on, ticking every
5 s). Then `make simulate` in a second terminal writes events: watch the sensors request runs under Runs."""


def seed_dev(
    dagster_home: Path,
    db: str | os.PathLike[str] | None = None,
    *,
    n_events: int = 1000,
    n_users: int = 100,
    partitions: int | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Populate the place ``make dev`` serves, once: ingest profiles, write events, run what the sensors ask.

    ``dagster_home`` is the Dagster instance ``dagster dev`` will use (its ``dagster.yaml``, if any, is
    read); ``db`` the example's data (default ``$DATAPIPE_EXAMPLE_DB`` or ``.demo/example.sqlite``). The
    runs are executed in process and recorded in that instance, so the UI opens on materialized assets, a
    few runs and a ``user_report`` with real countries and plans. An instance that already holds runs is
    left alone (returns ``{"seeded": False}``): seeding never overwrites a user's work.
    """
    partitions = partitions or int(os.environ.get("DATAPIPE_EXAMPLE_PARTITIONS", "").strip() or 16)
    dagster_home.mkdir(parents=True, exist_ok=True)
    st = open_store(db)
    try:
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            if instance.get_run_records(limit=1):
                say(f"make dev: the Dagster instance in {dagster_home} already has runs: not seeding again")
                return {"seeded": False}
            defs = make_definitions(st, partitions=partitions)
            drv = Driver(defs, instance, parts=BucketPartitions(partitions))
            events_dt = st.catalog.get_datatable(st.ds, "events")
            if st.catalog.get_datatable(st.ds, "user_profiles").get_size() == 0:
                drv.execute([dg.AssetKey("user_profiles")], run_config=profiles_config(n_users, 0))
            if events_dt.get_size() == 0:
                events_dt.store_chunk(make_events(n_events, n_users, seed=7))
            runs = drv.settle(lambda _msg: None)
            summary = {
                "seeded": True,
                "events": events_dt.get_size(),
                "users": st.catalog.get_datatable(st.ds, "user_report").get_size(),
                "runs": len(instance.get_run_records()),
                "sensor_runs": len(runs),
            }
    finally:
        st.dispose()
    say(
        f"make dev: seeded {summary['events']} events of {summary['users']} users into {st.url} and "
        f"{summary['runs']} runs into the Dagster instance in {dagster_home}"
    )
    return summary


def profiles_config(n_users: int, version: int) -> dict[str, Any]:
    return {"ops": {"user_profiles": {"config": {"n_users": n_users, "version": version}}}}


def check_clicks(st: ExampleStore, events: pd.DataFrame) -> None:
    """click_count and ip equal a direct computation over all events, in the order they were written."""
    from example_project.pipeline import parse_clicks_ip

    cc, ip = parse_clicks_ip(events)
    got_cc = (
        st.catalog.get_datatable(st.ds, "click_count")
        .get_data()
        .set_index("user_id")["click_count"]
        .sort_index()
    )
    got_ip = st.catalog.get_datatable(st.ds, "ip").get_data().set_index("user_id")["ip"].sort_index()
    expect(
        got_cc.to_dict() == cc.set_index("user_id")["click_count"].sort_index().to_dict(),
        "click_count differs from the events",
    )
    expect(
        got_ip.to_dict() == ip.set_index("user_id")["ip"].sort_index().to_dict(), "ip differs from the events"
    )


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (``make demo``)."""
    parser = argparse.ArgumentParser(
        prog="python -m example_project.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--dir", type=Path, default=REPO_ROOT / ".demo" / "demo", help="work folder, wiped first"
    )
    parser.add_argument("--events", type=int, default=None, help="default: 3000 (--seed: 1000)")
    parser.add_argument("--users", type=int, default=None, help="default: 200 (--seed: 100)")
    parser.add_argument("--partitions", type=int, default=None, help="default: $DATAPIPE_EXAMPLE_PARTITIONS or 16")
    parser.add_argument(
        "--seed",
        action="store_true",
        help=f"seed the Dagster instance in $DAGSTER_HOME and the data in ${DB_ENV_VAR} (what `make dev` "
        "runs first; does nothing when the instance already has runs) instead of the demo",
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")  # Dagster's beta/preview warnings are noise in a demo
    logging.getLogger("dagster").setLevel(logging.ERROR)
    try:
        if args.seed:
            home = os.environ.get("DAGSTER_HOME")
            if not home:
                parser.error("--seed needs DAGSTER_HOME (the instance `dagster dev` will serve)")
            seed_dev(Path(home), n_events=args.events or 1000, n_users=args.users or 100, partitions=args.partitions)
            return 0
        run_demo(args.dir, args.events or 3000, args.users or 200, args.partitions or 16)
    except DemoError as e:
        print(f"\nDEMO FAILED: {e}", file=sys.stderr)
        return 1
    print("\n" + NEXT_AFTER_DEMO)
    return 0


if __name__ == "__main__":
    sys.exit(main())
