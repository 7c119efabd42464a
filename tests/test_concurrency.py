"""Writers and runs at the same time: no change is missed (the write sequence and watermarks hold)."""

from __future__ import annotations

import threading
import time

import pandas as pd

from datapipe_dagster import run_steps
from tests.engine_helpers import as_dict, event, parse_clicks_ip, seed_setup


def test_concurrent_writers_and_runs_miss_nothing(dbconn) -> None:
    ds, catalog, steps = seed_setup(dbconn, chunk_size=7)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(pd.DataFrame([event("u0", "seed")]))
    run_steps(ds, steps)
    stop = time.monotonic() + 3.0
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            i = 0
            while time.monotonic() < stop:
                rows = [event(f"u{(w * 7 + i + j) % 23}", f"w{w}-{(i + j) % 40}", "click" if (i + j) % 3 else "view", f"10.0.{w}.{i % 250}") for j in range(5)]
                events.store_chunk(pd.DataFrame(rows))
                i += 1
        except BaseException as e:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(e)

    def runner() -> None:
        try:
            while time.monotonic() < stop:
                run_steps(ds, steps, raise_on_error=True)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)] + [threading.Thread(target=runner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    run_steps(ds, steps, raise_on_error=True)
    expected_cc, expected_ip = parse_clicks_ip(events.get_data())
    assert as_dict(catalog.get_datatable(ds, "click_count").get_data(), "user_id", "click_count") == as_dict(expected_cc, "user_id", "click_count")
    assert as_dict(catalog.get_datatable(ds, "ip").get_data(), "user_id", "ip") == as_dict(expected_ip, "user_id", "ip")
    assert len(steps[0].get_stale_keys()) == 0
