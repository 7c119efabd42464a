"""One changed event + run (issue 11's small path): what it costs in statements and transactions, pinned so
it cannot grow back unnoticed, and the watermarks a run of one chunk raises in its commit."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from datapipe_dagster import run_steps
from tests.engine_helpers import event, recorded_statements, seed_setup

# Statements of one changed event (``store_chunk``) and the run that recomputes its user, as the client
# sends them (SQLite's BEGINs included; PostgreSQL's driver sends its BEGIN with the first statement).
# store_chunk: read the metadata, reserve sequence numbers, upsert the row and its metadata (4).
# run, in one read transaction: the sequence value with the watermarks, one stale query for every input,
# swept output and the failed keys, the user's events (3); the commit: the transform's lock
# (PostgreSQL), the keys' state, both outputs' metadata, their state marked, the probe of rows between
# the watermarks and the sequence value, one reservation for every output, two upserts per output
# written (here one: the click count stays), every watermark (10).
# Before: 31 on SQLite and 27 on PostgreSQL in five transactions (issue 11's small path as first done);
# then 26 and 24 (a statement per input and a sequence read at each step of the run).
ONE_CHANGE_STATEMENTS = {"sqlite": 19, "postgresql": 17}
ONE_CHANGE_TRANSACTIONS = 3  # store_chunk; the stale query and the input read; the commit (watermarks included)


def _changed(i: int) -> pd.DataFrame:
    return pd.DataFrame([event("u1", "e1", "click", f"9.9.9.{i}")])


def _seeded(dbconn):  # noqa: ANN001, ANN202
    ds, catalog, steps = seed_setup(dbconn)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(pd.DataFrame([event("u1", "e1"), event("u1", "e2", "view"), event("u2", "e3")]))
    run_steps(ds, steps, raise_on_error=True)
    events.store_chunk(_changed(0))
    run_steps(ds, steps, raise_on_error=True)  # every table and statement ready
    return ds, catalog, steps, events


def test_one_changed_event_and_its_run_take_a_fixed_number_of_statements(dbconn) -> None:  # noqa: ANN001
    ds, catalog, steps, events = _seeded(dbconn)
    begins: list[int] = []

    def begun(conn) -> None:  # noqa: ANN001
        begins.append(1)

    sa.event.listen(dbconn.engine, "begin", begun)

    def change() -> None:
        events.store_chunk(_changed(1))
        assert run_steps(ds, steps, raise_on_error=True).steps[0].keys_processed == 1

    try:
        _, seen = recorded_statements(dbconn, change)
    finally:
        sa.event.remove(dbconn.engine, "begin", begun)
    statements = [" ".join(s.split()).lower() for s, _ in seen]
    shown = "\n".join(s[:120] for s in statements)
    assert len(statements) == ONE_CHANGE_STATEMENTS[dbconn.backend], shown
    assert len(begins) == ONE_CHANGE_TRANSACTIONS, shown
    # One reservation of sequence numbers per transaction that writes, whatever the number of outputs.
    assert sum("datapipe_seq set value" in s for s in statements) == 2, shown
    assert sum(s.startswith("insert into") and "datapipe_watermarks (" in s for s in statements) == 1, shown
    ip = catalog.get_datatable(ds, "ip").get_data()
    assert dict(zip(ip["user_id"], ip["ip"], strict=True)) == {"u1": "9.9.9.1", "u2": "1.1.1.1"}


def _failing_for_bad(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    if "bad" in set(df["user_id"]):
        raise ValueError("bad user")
    from tests.engine_helpers import parse_clicks_ip

    return parse_clicks_ip(df)


@pytest.mark.parametrize("with_failure", [False, True])
def test_a_run_raises_every_watermark_to_the_value_read_before_it(dbconn, with_failure: bool) -> None:  # noqa: ANN001
    """Whether its one chunk's commit raises them (one transaction) or, the chunk split by a failing key,
    the run after its parts: the input's watermark ends at the sequence value read before the stale query,
    the outputs' at their last write, and the next run finds nothing new to do. (The old code, raising them
in a transaction of their own after the run, passes this test too.)"""
    ds, catalog, steps = seed_setup(dbconn, func=_failing_for_bad)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(pd.DataFrame([event("u1", "e1"), event("u2", "e2", "view")]))
    run_steps(ds, steps)
    events.store_chunk(pd.DataFrame([event("u1", "e1", "view"), event("u2", "e3")] + ([event("bad", "e4")] if with_failure else [])))
    with dbconn.connect() as conn:
        before = ds.seq.current(conn)
    summary = run_steps(ds, steps)
    assert summary.steps[0].keys_processed == 2 and summary.steps[0].keys_failed == int(with_failure)
    with dbconn.connect() as conn:
        marks = ds.watermarks.get(conn, steps[0].name)
        after = ds.seq.current(conn)
    assert marks == {"events": before, "out:click_count": after, "out:ip": after}
    again = run_steps(ds, steps).steps[0]
    assert again.keys_processed == 0 and again.keys_failed == int(with_failure)  # a failed key is retried
    clicks = catalog.get_datatable(ds, "click_count").get_data()
    assert dict(zip(clicks["user_id"], clicks["click_count"], strict=True)) == {"u1": 0, "u2": 1}


def test_a_small_stale_query_takes_no_server_side_cursor(dbconn, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A server-side cursor (PostgreSQL's DECLARE, FETCH, CLOSE: round trips of their own) only where the
    stale keys may be many: more sequence numbers above the watermarks than a page holds (a first run)."""
    from datapipe_dagster.store import paged

    monkeypatch.setattr(paged, "PAGE_ROWS", 8)
    ds, catalog, steps = seed_setup(dbconn)
    events = catalog.get_datatable(ds, "events")
    streamed: list[bool] = []

    def seen(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001, ARG001
        if "union all" in statement.lower() and "is_success" in statement.lower():
            streamed.append(bool(context.execution_options.get("stream_results")))

    sa.event.listen(dbconn.engine, "before_cursor_execute", seen)
    try:
        events.store_chunk(pd.DataFrame([event(f"u{i}", f"e{i}") for i in range(10)]))
        assert run_steps(ds, steps, raise_on_error=True).steps[0].keys_processed == 10
        first = list(streamed)
        for i in (1, 2):  # the first change's span holds the first run's 20 output writes
            streamed.clear()
            events.store_chunk(_changed(i))
            assert run_steps(ds, steps, raise_on_error=True).steps[0].keys_processed == 1
    finally:
        sa.event.remove(dbconn.engine, "before_cursor_execute", seen)
    assert first == [True] and streamed == [False]
