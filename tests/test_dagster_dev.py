"""A new user's loop, for real: ``dagster dev`` against workspace.yaml, a sensor turned on through the
GraphQL API, events stored, and the daemon launching runs for exactly the stale partitions.

Starts ``dagster dev`` (webserver + daemon + code server) on a free loopback port with a temporary
DAGSTER_HOME and data database; every process it starts is stopped (process-group kill) at the end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from example_helpers import EXAMPLE_TABLES, DagsterDev, running_dagster_dev, wait_for

from datapipe_dagster.dagster import BucketPartitions
from example_project.catalog import open_store
from example_project.generate import make_events
from example_project.pipeline import parse_clicks_ip

LOCATION = "example_project"
REPOSITORY = "__repository__"  # the repository name Dagster gives a Definitions object
SENSOR = "parse_clicks_ip_stale_sensor"
PARTITIONS = 16

ASSETS_QUERY = """
query {
  assetNodes { assetKey { path } groupName isPartitioned partitionKeys
               assetChecksOrError { ... on AssetChecks { checks { name } } } }
}
"""
SENSORS_QUERY = """
query ($repo: RepositorySelector!) {
  sensorsOrError(repositorySelector: $repo) {
    __typename ... on Sensors { results { name minIntervalSeconds sensorState { status } } }
    ... on PythonError { message }
  }
}
"""
START_SENSOR = """
mutation ($sel: SensorSelector!) {
  startSensor(sensorSelector: $sel) {
    __typename ... on Sensor { name sensorState { status } } ... on PythonError { message }
  }
}
"""
RUNS_QUERY = """
query {
  runsOrError(filter: {tags: [{key: "datapipe/mode", value: "stale"}]}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""
PARTITION_STATS = """
query { assetNodeOrError(assetKey: {path: ["click_count"]}) {
  ... on AssetNode { partitionStats { numMaterialized numPartitions numFailed } } } }
"""


def run_partitions(run: dict[str, Any], parts: BucketPartitions) -> set[str]:
    """The partitions a run covered: its ``dagster/partition`` tag, or its partition range tags."""
    tags = {t["key"]: t["value"] for t in run["tags"]}
    if "dagster/partition" in tags:
        return {tags["dagster/partition"]}
    a, b = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    return {k for k in parts.keys if a is not None and b is not None and a <= k <= b}


def stale_runs(dev: DagsterDev) -> list[dict[str, Any]]:
    return dev.graphql(RUNS_QUERY)["runsOrError"]["results"]


def derived_matches(db: Path, events: pd.DataFrame) -> bool:
    """click_count and ip in the data database equal the seed transform over all events."""
    st = open_store(db)
    try:
        cc, ip = parse_clicks_ip(events)
        got_cc = st.catalog.get_datatable(st.ds, "click_count").get_data()
        got_ip = st.catalog.get_datatable(st.ds, "ip").get_data()
    finally:
        st.dispose()
    return (
        got_cc.set_index("user_id")["click_count"].to_dict()
        == cc.set_index("user_id")["click_count"].to_dict()
        and got_ip.set_index("user_id")["ip"].to_dict() == ip.set_index("user_id")["ip"].to_dict()
    )


def rewrite_first_event(db: Path, events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Store the first event again as the seed's "clack"; return it and every event now stored."""
    ev = events.iloc[[0]].copy()
    ev["event"] = [{"event_type": "clack", "ip": "333.333.333.333"}]
    st = open_store(db)
    try:
        st.catalog.get_datatable(st.ds, "events").store_chunk(ev)
        return ev, st.catalog.get_datatable(st.ds, "events").get_data()
    finally:
        st.dispose()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_dagster_dev_sensor_launches_runs_for_stale_partitions(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    db = tmp_path / "data.sqlite"
    parts = BucketPartitions(PARTITIONS)
    env = {"DATAPIPE_EXAMPLE_SENSOR_INTERVAL": "5", "DATAPIPE_EXAMPLE_PARTITIONS": str(PARTITIONS)}
    with running_dagster_dev(home, str(db), tmp_path / "dagster_dev.log", timeout=90, extra_env=env) as dev:
        # The UI's view of the code location: every table an asset, partitions, checks, sensors.
        nodes = {"/".join(n["assetKey"]["path"]): n for n in dev.graphql(ASSETS_QUERY)["assetNodes"]}
        assert set(nodes) == set(EXAMPLE_TABLES)
        for key in ("click_count", "ip", "user_ips", "ip_stats", "user_report"):
            assert nodes[key]["isPartitioned"] and nodes[key]["partitionKeys"] == parts.keys, key
        # events is partitioned like the two steps reading it (both keyed by user_id).
        assert nodes["events"]["partitionKeys"] == parts.keys and nodes["click_count"]["groupName"] == "clicks"
        checks = [c["name"] for c in nodes["click_count"]["assetChecksOrError"]["checks"]]
        assert checks == ["parse_clicks_ip_no_failed_keys"]
        # Every output of a transform carries its failed-keys check.
        ip_checks = [c["name"] for c in nodes["ip"]["assetChecksOrError"]["checks"]]
        assert ip_checks == ["parse_clicks_ip_no_failed_keys"]

        repo = {"repositoryName": REPOSITORY, "repositoryLocationName": LOCATION}
        sensors = dev.graphql(SENSORS_QUERY, {"repo": repo})["sensorsOrError"]
        assert sensors["__typename"] == "Sensors", sensors
        by_name = {s["name"]: s for s in sensors["results"]}
        assert set(by_name) == {
            "parse_clicks_ip_stale_sensor",
            "collect_user_ips_stale_sensor",
            "summarise_ips_stale_sensor",
            "build_user_report_stale_sensor",
        }
        assert (
            by_name[SENSOR]["sensorState"]["status"] == "STOPPED"
            and by_name[SENSOR]["minIntervalSeconds"] == 5
        )

        started = dev.graphql(START_SENSOR, {"sel": {**repo, "sensorName": SENSOR}})["startSensor"]
        assert started["__typename"] == "Sensor" and started["sensorState"]["status"] == "RUNNING", started

        # Events arrive (as the simulator writes them); only the partitions holding their users are stale.
        events = make_events(300, 12, seed=5)
        st = open_store(db)
        try:
            st.catalog.get_datatable(st.ds, "events").store_chunk(events)
        finally:
            st.dispose()
        want = set(parts.stale_partitions(events[["user_id"]].drop_duplicates(), ["user_id"]))
        assert 1 < len(want) < PARTITIONS  # 12 users cannot fill 16 buckets: some partitions stay untouched

        t0 = time.monotonic()

        def first_wave_done() -> bool:
            runs = stale_runs(dev)
            failed = [r for r in runs if r["status"] in ("FAILURE", "CANCELED")]
            assert not failed, f"runs failed: {failed}\n{dev.log_tail()}"
            return bool(runs) and all(r["status"] == "SUCCESS" for r in runs) and derived_matches(db, events)

        wait_for("the daemon to run the stale partitions", first_wave_done, timeout=120, interval=1.0)
        first_wave = time.monotonic() - t0
        # A tick that raced the last write may still add a (no-op) run: let one more sensor interval pass.
        time.sleep(6)
        wait_for("every first-wave run to finish", first_wave_done, timeout=60, interval=1.0)
        runs = stale_runs(dev)
        covered = set().union(*(run_partitions(r, parts) for r in runs))
        # Sensor runs are the step's own job (in-process executor) and tag themselves with a summary.
        for r in runs:
            tags = {t["key"]: t["value"] for t in r["tags"]}
            assert tags.get("datapipe/summary", "").startswith("partition"), tags
        assert covered == want, f"runs covered {sorted(covered)}, stale partitions were {sorted(want)}"
        stats = dev.graphql(PARTITION_STATS)["assetNodeOrError"]["partitionStats"]
        assert stats == {"numMaterialized": len(want), "numPartitions": PARTITIONS, "numFailed": 0}

        # One user's event is rewritten (the seed's "clack"): exactly one more run, for that user's partition.
        ev, events_now = rewrite_first_event(db, events)
        (target,) = parts.stale_partitions(ev[["user_id"]], ["user_id"])
        n_before = len(runs)

        def second_run_done() -> list[dict[str, Any]] | None:
            new = [r for r in stale_runs(dev) if r["runId"] not in {x["runId"] for x in runs}]
            if new and all(r["status"] == "SUCCESS" for r in new) and derived_matches(db, events_now):
                return new
            return None

        new = wait_for(
            "the daemon to run the rewritten event's partition", second_run_done, timeout=60, interval=1.0
        )
        assert len(new) == 1 and run_partitions(new[0], parts) == {target}
        assert len(stale_runs(dev)) == n_before + 1
    print(f"first wave of runs done {first_wave:.1f}s after the events were stored")


ALL_RUNS_QUERY = """
query { runsOrError { ... on Runs { results { runId status tags { key value } } } } }
"""


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_dagster_dev_automation_conditions_run_exactly_the_stale_partitions(tmp_path: Path) -> None:
    """``automation="conditions"`` live: the daemon's automation sensor (evaluated in the code location)
    requests the partitions holding stale keys, and its runs process those keys only."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    db = tmp_path / "data.sqlite"
    parts = BucketPartitions(PARTITIONS)
    events = make_events(200, 10, seed=7)
    st = open_store(db)
    try:
        st.catalog.get_datatable(st.ds, "events").store_chunk(events)
    finally:
        st.dispose()
    want = set(parts.stale_partitions(events[["user_id"]].drop_duplicates(), ["user_id"]))
    assert 1 < len(want) < PARTITIONS
    env = {
        "DATAPIPE_EXAMPLE_SENSOR_INTERVAL": "5",
        "DATAPIPE_EXAMPLE_PARTITIONS": str(PARTITIONS),
        "DATAPIPE_EXAMPLE_AUTOMATION": "conditions",
        "DATAPIPE_EXAMPLE_SENSORS_RUNNING": "1",
        # The automation sensor's runs are asset-job runs: in-process steps spare a Python start per step
        # (on a loaded two-core machine that is most of a run's time).
        "DATAPIPE_EXAMPLE_EXECUTOR": "in_process",
    }
    with running_dagster_dev(home, str(db), tmp_path / "dagster_dev.log", timeout=90, extra_env=env) as dev:
        repo = {"repositoryName": REPOSITORY, "repositoryLocationName": LOCATION}
        sensors = dev.graphql(SENSORS_QUERY, {"repo": repo})["sensorsOrError"]["results"]
        assert [(s["name"], s["sensorState"]["status"]) for s in sensors] == [
            ("datapipe_automation_sensor", "RUNNING")
        ]

        def parse_runs() -> list[dict[str, Any]]:
            runs = dev.graphql(ALL_RUNS_QUERY)["runsOrError"]["results"]
            for r in runs:
                assert r["status"] not in ("FAILURE", "CANCELED"), f"run failed: {r}\n{dev.log_tail()}"
            return [r for r in runs if run_partitions(r, parts) and any(
                t["key"] == "dagster/from_automation_condition" for t in r["tags"])]

        def first_wave_done() -> bool:
            runs = parse_runs()
            return bool(runs) and all(r["status"] == "SUCCESS" for r in runs) and derived_matches(db, events)

        def seen() -> str:
            runs = dev.graphql(ALL_RUNS_QUERY)["runsOrError"]["results"]
            return f"runs: {[(r['runId'][:8], r['status']) for r in runs]}\n{dev.log_tail()}"

        # The sensor's requests are a backfill, submitted on the backfill daemon's next 30 s loop.
        wait_for("the automation sensor to run the stale partitions", first_wave_done, timeout=240, interval=1.0,
                 diagnose=seen)
        runs = parse_runs()
        covered = set().union(*(run_partitions(r, parts) for r in runs))
        assert want <= covered, f"runs covered {sorted(covered)}, stale partitions were {sorted(want)}"
        for r in runs:  # an automation run is never a reparse: it processes stale keys only
            tags = {t["key"]: t["value"] for t in r["tags"]}
            assert tags.get("datapipe/mode") != "reparse", tags

        # One user's event is rewritten: a run for that user's partition brings the outputs up to date.
        ev, events_now = rewrite_first_event(db, events)
        (target,) = parts.stale_partitions(ev[["user_id"]], ["user_id"])
        seen = {r["runId"] for r in runs}

        def second_wave() -> list[dict[str, Any]] | None:
            new = [r for r in parse_runs() if r["runId"] not in seen]
            if new and all(r["status"] == "SUCCESS" for r in new) and derived_matches(db, events_now):
                return new
            return None

        new = wait_for("the automation sensor to run the rewritten event's partition", second_wave, timeout=150,
                       interval=1.0, diagnose=seen)
        assert target in set().union(*(run_partitions(r, parts) for r in new))
