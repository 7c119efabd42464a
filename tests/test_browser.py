"""A real browser on the Dagster UI: the asset graph and one asset's partitions page, with screenshots.

Headless Chromium (Debian package ``chromium``, installed by ``.ci/install-browser.sh``) driven by
Playwright's Python package. The instance is prepared in process (sensors ticked, runs executed, as the
daemon would), then ``dagster-webserver`` serves it on a free loopback port. Screenshots land in
``test-artifacts/`` (git-ignored).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from example_helpers import EXAMPLE_TABLES, REPO, running_dagster_dev

from datapipe_dagster.dagster import BucketPartitions
from example_project.catalog import open_store
from example_project.demo import seed_dev

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path(os.environ.get("DATAPIPE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts"
PARTITIONS = 16


def chromium_or_skip() -> Path:
    """The Chromium binary. When missing, runs ``.ci/install-browser.sh`` (what the build does) once, and
    skips with the installer's reason only if Chromium still cannot be installed (no root, no apt)."""
    found = CHROMIUM if CHROMIUM.exists() else Path(shutil.which("chromium") or CHROMIUM)
    if found.exists():
        return found
    proc = subprocess.run(
        ["bash", str(REPO / ".ci" / "install-browser.sh")], capture_output=True, text=True, timeout=900
    )
    if CHROMIUM.exists():
        return CHROMIUM
    reason = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    message = f"{CHROMIUM} is missing and .ci/install-browser.sh could not install it: {reason[0]}"
    if os.environ.get("DATAPIPE_REQUIRE_BROWSER", "") not in ("", "0", "false"):
        pytest.fail(f"DATAPIPE_REQUIRE_BROWSER is set and {message}")
    pytest.skip(message)


@pytest.fixture
def prepared(tmp_path: Path) -> Iterator[tuple[Path, Path, list[str]]]:
    """A DAGSTER_HOME and data DB seeded the way ``make dev`` seeds them (``seed_dev``): profiles ingested,
    events stored, the sensors' runs executed; 10 users leave some click_count partitions unmaterialized."""
    home, db = tmp_path / "dagster_home", tmp_path / "data.sqlite"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seeded = seed_dev(home, db, n_events=200, n_users=10, partitions=PARTITIONS, say=lambda _msg: None)
    assert seeded["seeded"] and seeded["users"] == 10
    st = open_store(db)
    users = st.catalog.get_datatable(st.ds, "click_count").get_data()[["user_id"]]
    st.dispose()
    yield home, db, BucketPartitions(PARTITIONS).stale_partitions(users, ["user_id"])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_asset_graph_and_partitions_page_in_chromium(
    prepared: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    chromium = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    home, db, materialized = prepared
    ARTIFACTS.mkdir(exist_ok=True)
    with (
        running_dagster_dev(
            home, str(db), tmp_path / "webserver.log", timeout=90, webserver_only=True
        ) as web,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(30_000)

            # The asset graph of the group: every table is a node.
            page.goto(
                f"{web.url}/locations/example_project/asset-groups/clicks", wait_until="domcontentloaded"
            )
            dismiss_welcome(page)
            for name in EXAMPLE_TABLES:
                expect(page.get_by_text(name, exact=True).first).to_be_visible()
            expect(page.get_by_text("16 partitions").first).to_be_visible()
            page.wait_for_timeout(1000)  # let the graph finish its layout animation
            page.screenshot(path=str(ARTIFACTS / "asset-graph.png"), full_page=True)

            # One asset's partitions: the ones the sensor's runs materialized, the rest missing.
            page.goto(f"{web.url}/assets/click_count?view=partitions", wait_until="domcontentloaded")
            dismiss_welcome(page)
            expect(page.get_by_text(f"Materialized ({len(materialized)})")).to_be_visible()
            expect(page.get_by_text(f"Missing ({PARTITIONS - len(materialized)})")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "click_count-partitions.png"), full_page=True)

            # A materialized partition shows the run's datapipe metadata.
            page.get_by_text(materialized[0], exact=True).first.click()
            expect(page.get_by_text("datapipe/keys_processed").first).to_be_visible()
            page.screenshot(
                path=str(ARTIFACTS / f"click_count-partition-{materialized[0]}.png"), full_page=True
            )

            # The runs settled with no stale key: no partition is Unsynced (Dagster shows staleness of a
            # partitioned asset on each partition's page).
            part_url = f"{web.url}/assets/click_count?view=partitions&partition="
            page.goto(part_url + materialized[0], wait_until="domcontentloaded")
            expect(page.get_by_text("datapipe/keys_processed").first).to_be_visible()
            assert page.get_by_text("Unsynced").count() == 0
            page.screenshot(path=str(ARTIFACTS / "in-sync.png"), full_page=True)

            # A new event of one user, seen by the sensor's tick, its run not yet executed: exactly that
            # partition is Unsynced; once the run committed, it is in sync again.
            user, partition = first_user(db)
            drive(
                home,
                db,
                pd.DataFrame(
                    [{"user_id": user, "event_id": "x1", "event": {"event_type": "click", "ip": "9.9.9.9"}}]
                ),
                run=False,
            )
            page.goto(part_url + partition, wait_until="domcontentloaded")
            expect(page.get_by_text("Unsynced").first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "unsynced.png"), full_page=True)
            drive(home, db, None, run=True)
            page.goto(part_url + partition, wait_until="domcontentloaded")
            expect(page.get_by_text("datapipe/keys_processed").first).to_be_visible()
            assert page.get_by_text("Unsynced").count() == 0

            # An event whose JSON does not parse: its run fails that key, and the check on click_count
            # turns red naming the key and its partition.
            drive(
                home, db, pd.DataFrame([{"user_id": user, "event_id": "x2", "event": "{not json"}]), run=True
            )
            page.goto(f"{web.url}/assets/click_count?view=checks", wait_until="domcontentloaded")
            page.get_by_text("parse_clicks_ip_no_failed_keys").first.click()
            expect(page.get_by_text("Failed").first).to_be_visible()
            # The check's table of failed keys: user_id | partition | error.
            expect(page.get_by_role("columnheader", name="partition", exact=True).first).to_be_visible()
            expect(page.get_by_role("cell", name=user, exact=True).first).to_be_visible()
            expect(page.get_by_role("cell", name=partition, exact=True).first).to_be_visible()
            expect(page.get_by_text("JSONDecodeError").first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "failed-key-check.png"), full_page=True)
        finally:
            browser.close()
    for name in (
        "asset-graph.png",
        "click_count-partitions.png",
        f"click_count-partition-{materialized[0]}.png",
        "in-sync.png",
        "unsynced.png",
        "failed-key-check.png",
    ):
        assert (ARTIFACTS / name).stat().st_size > 10_000, name
    if os.environ.get("DATAPIPE_UPDATE_DOC_IMAGES", "") not in ("", "0"):
        for name in ("in-sync.png", "unsynced.png", "failed-key-check.png"):
            shutil.copy(ARTIFACTS / name, REPO / "docs" / "img" / name)


def first_user(db: Path) -> tuple[str, str]:
    """A user with derived rows, and its partition."""
    st = open_store(db)
    try:
        user = str(st.catalog.get_datatable(st.ds, "click_count").get_data()["user_id"].iloc[0])
    finally:
        st.dispose()
    (partition,) = BucketPartitions(PARTITIONS).stale_partitions(
        pd.DataFrame({"user_id": [user]}), ["user_id"]
    )
    return user, partition


def drive(home: Path, db: Path, events: pd.DataFrame | None, run: bool) -> None:
    """Store ``events``, tick ``parse_clicks_ip``'s sensor in process as the daemon would (recording its
    observations) and, when ``run``, execute the runs it requests (a run whose keys fail may fail)."""
    import dagster as dg

    from datapipe_dagster.dagster.inprocess import execute_request
    from example_project.definitions import make_definitions
    from example_project.demo import Driver

    st = open_store(db)
    try:
        if events is not None:
            st.catalog.get_datatable(st.ds, "events").store_chunk(events)
        defs = make_definitions(st, partitions=PARTITIONS)
        with warnings.catch_warnings(), dg.DagsterInstance.from_config(str(home)) as instance:
            warnings.simplefilter("ignore")
            res = Driver(defs, instance, parts=BucketPartitions(PARTITIONS)).tick("parse_clicks_ip_stale_sensor")
            for req in res.run_requests if run else []:
                execute_request(defs, instance, req, raise_on_error=False)
    finally:
        st.dispose()


def dismiss_welcome(page: Page) -> None:
    """Close the UI's one-time "Join the Dagster community" dialog if it shows up."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(state="visible", timeout=5_000)
        skip.click()
    except Exception:  # noqa: BLE001 - no dialog: nothing to dismiss
        pass
