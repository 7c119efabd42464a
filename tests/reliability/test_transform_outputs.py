"""What a transform may write: only under the keys it was called for; and outputs no key produces go."""

from __future__ import annotations

import pandas as pd

from datapipe_dagster import (
    BatchTransform,
    DataStore,
    Pipeline,
    Table,
    TableStoreDB,
    build_compute,
    run_steps,
)
from tests.engine_helpers import as_dict, event, events_schema, parse_clicks_ip, seed_catalog, seed_setup


def test_rows_outside_the_chunk_keys_are_refused(dbconn) -> None:
    def leaky(df: pd.DataFrame):  # noqa: ANN202
        cc, ip = parse_clicks_ip(df)
        if "u1" in set(df["user_id"]):
            cc = pd.concat([cc, pd.DataFrame([{"user_id": "u2", "click_count": 99}])], ignore_index=True)
        return cc, ip

    ds, catalog, steps = seed_setup(dbconn, func=leaky)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(pd.DataFrame([event("u2", "a")]))
    run_steps(ds, steps)
    events.store_chunk(pd.DataFrame([event("u1", "a"), event("u3", "a")]))
    summary = run_steps(ds, steps)
    failed = summary.failed["leaky"]
    assert list(failed["user_id"]) == ["u1"]
    msg = failed["error"].iloc[0]
    assert "'click_count'" in msg and "user_id='u2'" in msg and "not called for" in msg
    counts = as_dict(catalog.get_datatable(ds, "click_count").get_data(), "user_id", "click_count")
    assert counts == {"u2": 1, "u3": 1}  # u2 untouched, u1 wrote nothing, u3 went on


def test_transform_returning_none_names_the_step_and_outputs(dbconn) -> None:
    ds, catalog, steps = seed_setup(dbconn, func=lambda df: None, name="nothing")
    catalog.get_datatable(ds, "events").store_chunk(pd.DataFrame([event("u1", "a")]))
    summary = run_steps(ds, steps)
    err = summary.failed["nothing"]["error"].iloc[0]
    assert "returned None" in err and "['click_count', 'ip']" in err and "empty DataFrame" in err
    assert catalog.get_datatable(ds, "click_count").get_size() == 0


def test_outputs_under_keys_deleted_before_the_first_run_are_cleaned(dbconn) -> None:
    """Outputs exist (written by an earlier version of the step, or by hand) for a key whose inputs
    were deleted before this step ever ran: the first run and a reparse both delete them."""
    catalog = seed_catalog(dbconn)
    ds = DataStore(dbconn)
    cc = catalog.get_datatable(ds, "click_count")
    cc.store_chunk(pd.DataFrame([{"user_id": "gone", "click_count": 5}, {"user_id": "u1", "click_count": 7}]))
    catalog.get_datatable(ds, "ip").store_chunk(pd.DataFrame([{"user_id": "gone", "ip": "9.9.9.9"}]))
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(pd.DataFrame([event("u1", "a"), event("gone", "a")]))
    events.delete_by_idx(pd.DataFrame({"user_id": ["gone"], "event_id": ["a"]}))
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(parse_clicks_ip, inputs=["events"], outputs=["click_count", "ip"])]))
    assert set(steps[0].get_stale_keys(advance_watermark=False)["user_id"]) == {"u1", "gone"}
    run_steps(ds, steps, raise_on_error=True)
    assert as_dict(cc.get_data(), "user_id", "click_count") == {"u1": 1}
    assert as_dict(catalog.get_datatable(ds, "ip").get_data(), "user_id", "ip") == {"u1": "1.1.1.1"}
    assert len(steps[0].get_stale_keys()) == 0
    # Written by hand later: a reparse (every key the step knows) removes it too.
    cc.store_chunk(pd.DataFrame([{"user_id": "stray", "click_count": 3}]))
    assert "stray" in set(steps[0].get_all_keys()["user_id"])
    steps[0].process_keys(steps[0].get_all_keys())
    assert as_dict(cc.get_data(), "user_id", "click_count") == {"u1": 1}


def test_renamed_step_cleans_what_no_key_produces(dbconn) -> None:
    catalog = seed_catalog(dbconn)
    ds = DataStore(dbconn)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(pd.DataFrame([event("u1", "a"), event("u2", "a")]))
    old = build_compute(ds, catalog, Pipeline([BatchTransform(parse_clicks_ip, inputs=["events"], outputs=["click_count", "ip"], name="v1")]))
    run_steps(ds, old, raise_on_error=True)
    events.delete_by_idx(pd.DataFrame({"user_id": ["u2"], "event_id": ["a"]}))
    new = build_compute(ds, catalog, Pipeline([BatchTransform(parse_clicks_ip, inputs=["events"], outputs=["click_count", "ip"], name="v2")]))
    run_steps(ds, new, raise_on_error=True)
    assert as_dict(catalog.get_datatable(ds, "click_count").get_data(), "user_id", "click_count") == {"u1": 1}
    assert len(new[0].get_stale_keys()) == 0


def test_outputs_shared_by_two_steps_are_not_swept(dbconn) -> None:
    """Two steps with disjoint inputs write one table: neither treats the other's keys as orphans."""
    catalog = seed_catalog(dbconn, {"events2": Table(TableStoreDB("events2", dbconn, events_schema()))})
    ds = DataStore(dbconn)
    catalog.get_datatable(ds, "events").store_chunk(pd.DataFrame([event("a1", "x")]))
    catalog.get_datatable(ds, "events2").store_chunk(pd.DataFrame([event("b1", "x")]))
    steps = build_compute(
        ds,
        catalog,
        Pipeline(
            [
                BatchTransform(parse_clicks_ip, inputs=["events"], outputs=["click_count", "ip"], name="from_events"),
                BatchTransform(parse_clicks_ip, inputs=["events2"], outputs=["click_count", "ip"], name="from_events2"),
            ]
        ),
    )
    assert steps[0].shared_outputs == frozenset({"click_count", "ip"})
    run_steps(ds, steps, raise_on_error=True)
    run_steps(ds, steps, raise_on_error=True)
    assert as_dict(catalog.get_datatable(ds, "click_count").get_data(), "user_id", "click_count") == {"a1": 1, "b1": 1}
    assert all(len(s.get_stale_keys()) == 0 for s in steps)


def test_an_output_row_numbered_while_a_commit_waits_for_the_sequence_is_still_swept(pg_schema_conn) -> None:
    """PostgreSQL (SQLite's writer lock admits no second writer inside a commit): A's commit has probed the
    outputs below the sequence value it read and waits for the write-sequence lock; meanwhile a row no key
    produces is written into ``click_count`` and numbered just above that value. A must not move
    ``click_count``'s watermark past it (the probe under the lock sees it), so the next run deletes it."""
    import threading

    from tests.reliability.test_interleavings import GATE_TIMEOUT, second_processor

    dbconn = pg_schema_conn
    ds_a, catalog_a, steps_a = seed_setup(dbconn)
    catalog_a.get_datatable(ds_a, "events").store_chunk(pd.DataFrame([event("u1", "a")]))
    entered, release = threading.Event(), threading.Event()
    real_allocate = ds_a.seq.allocate

    def allocate(conn, n: int) -> int:  # noqa: ANN001 - the gate: before the commit's lock (its one reservation), once
        if not release.is_set():
            entered.set()
            assert release.wait(GATE_TIMEOUT), "gate never opened"
        return real_allocate(conn, n)

    ds_a.seq.allocate = allocate  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def processor_a() -> None:
        try:
            run_steps(ds_a, steps_a, raise_on_error=True)
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    t = threading.Thread(target=processor_a)
    t.start()
    assert entered.wait(GATE_TIMEOUT)
    ds_b, catalog_b, _ = second_processor(dbconn, ds_a)
    catalog_b.get_datatable(ds_b, "click_count").store_chunk(pd.DataFrame([{"user_id": "stray", "click_count": 9}]))
    release.set()
    t.join(GATE_TIMEOUT)
    assert not t.is_alive() and not errors, errors
    assert "stray" in set(steps_a[0].get_stale_keys(advance_watermark=False)["user_id"])
    run_steps(ds_a, steps_a, raise_on_error=True)
    assert as_dict(catalog_a.get_datatable(ds_a, "click_count").get_data(), "user_id", "click_count") == {"u1": 1}
