"""``make dev``'s seeding step (``example_project.demo.seed_dev``): the UI opens on a populated example."""

from __future__ import annotations

import warnings
from pathlib import Path

import dagster as dg

from example_project.catalog import open_store
from example_project.demo import seed_dev


def test_seed_populates_data_and_instance_once(tmp_path: Path) -> None:
    home, db = tmp_path / "dagster_home", tmp_path / "data.sqlite"
    said: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = seed_dev(home, db, n_events=150, n_users=12, partitions=4, say=said.append)
    assert first == {"seeded": True, "events": 150, "users": 12, "runs": first["runs"], "sensor_runs": first["sensor_runs"]}
    assert first["sensor_runs"] >= 4 and first["runs"] == first["sensor_runs"] + 1  # + the profiles ingestion
    assert said == [f"make dev: seeded 150 events of 12 users into sqlite:///{db} and {first['runs']} runs "
                    f"into the Dagster instance in {home}"]

    st = open_store(db)
    try:
        report = st.catalog.get_datatable(st.ds, "user_report").get_data()
        assert len(report) == 12 and not (report["country"] == "unknown").any()  # profiles were ingested first
    finally:
        st.dispose()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for asset in ("user_profiles", "click_count", "ip_stats", "user_report"):
            assert instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None, asset

    # Once the instance holds runs, a second `make dev` leaves data and instance alone.
    again = seed_dev(home, db, n_events=999, n_users=50, partitions=4, say=said.append)
    assert again == {"seeded": False} and "already has runs: not seeding again" in said[-1]
    st = open_store(db)
    try:
        assert st.catalog.get_datatable(st.ds, "events").get_size() == 150
    finally:
        st.dispose()
