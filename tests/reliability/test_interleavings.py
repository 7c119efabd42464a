"""Two processors of one transform, and writers, at the same time: no update is lost.

The deterministic tests pin one interleaving with gates (threads and events); the randomized test runs
several processors (``run_steps`` and changelist runs) and writers over the same keys and checks the end
state against a pandas recomputation with nothing stale.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable

import pandas as pd
import pytest

from datapipe_dagster import ChangeList, DataStore, run_steps, run_steps_changelist
from tests.engine_helpers import as_dict, event, parse_clicks_ip, seed_setup

GATE_TIMEOUT = 30


def expected_counts(events: pd.DataFrame) -> dict:
    cc, _ = parse_clicks_ip(events)
    return as_dict(cc, "user_id", "click_count")


def wrong_users(catalog, ds: DataStore, events: pd.DataFrame) -> set[str]:  # noqa: ANN001
    """Users whose click_count or ip differs from a pandas recomputation over ``events``."""
    cc, ips = parse_clicks_ip(events)
    wrong = set()
    for table, col, want in (("click_count", "click_count", cc), ("ip", "ip", ips)):
        got = as_dict(catalog.get_datatable(ds, table).get_data(), "user_id", col)
        expected = as_dict(want, "user_id", col)
        wrong |= {u for u in set(got) | set(expected) if got.get(u) != expected.get(u)}
    return wrong


def gated(hold_when) -> tuple:  # noqa: ANN001
    """A transform that, when ``hold_when(events)`` is true, signals ``entered`` and waits for ``release``."""
    entered, release = threading.Event(), threading.Event()

    def func(df: pd.DataFrame):  # noqa: ANN202
        if hold_when(df) and not release.is_set():
            entered.set()
            assert release.wait(GATE_TIMEOUT), "gate never opened"
        return parse_clicks_ip(df)

    func.__name__ = "parse_clicks_ip"
    return func, entered, release


def second_processor(dbconn, ds_a) -> tuple:  # noqa: ANN001
    """Another process's view of the same pipeline: its own DataStore, steps and engine on the database."""
    return seed_setup(dbconn.__class__(dbconn.connstr, schema=dbconn.schema))


def test_slow_processor_cannot_overwrite_newer_result(dbconn) -> None:
    """A reads u1 (1 event) and stalls; a new event arrives; B processes u1 (2 events) and the watermark
    moves on; A then commits. u1 must keep B's result and nothing may be left stale or wrong."""
    func, entered, release = gated(lambda df: (df["user_id"] == "u1").any() and len(df[df["user_id"] == "u1"]) == 1)
    ds_a, catalog_a, steps_a = seed_setup(dbconn, func=func)
    events = catalog_a.get_datatable(ds_a, "events")
    events.store_chunk(pd.DataFrame([event("u1", "e1"), event("u2", "e1")]))
    errors: list[BaseException] = []
    summaries = []

    def processor_a() -> None:
        try:
            summaries.append(run_steps(ds_a, steps_a))
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    t = threading.Thread(target=processor_a)
    t.start()
    assert entered.wait(GATE_TIMEOUT)
    ds_b, catalog_b, steps_b = second_processor(dbconn, ds_a)
    catalog_b.get_datatable(ds_b, "events").store_chunk(pd.DataFrame([event("u1", "e2")]))
    release_b = run_steps(ds_b, steps_b)  # B sees 2 events for u1 (A's function only holds A)
    assert release_b.ok
    assert as_dict(catalog_b.get_datatable(ds_b, "click_count").get_data(), "user_id", "click_count")["u1"] == 2
    release.set()
    t.join(GATE_TIMEOUT)
    assert not errors, errors
    counts = catalog_a.get_datatable(ds_a, "click_count").get_data()
    assert as_dict(counts, "user_id", "click_count") == expected_counts(events.get_data()) == {"u1": 2, "u2": 1}
    assert summaries[0]["parse_clicks_ip"].keys_superseded >= 1
    for steps in (steps_a, steps_b):
        assert len(steps[0].get_stale_keys()) == 0


def test_result_from_older_inputs_stays_stale(dbconn) -> None:
    """A reads u1, a new event for u1 arrives, A commits its older result: u1 must still be stale, and
    the next run repairs it (the watermark never passes the new row)."""
    func, entered, release = gated(lambda df: len(df[df["user_id"] == "u1"]) == 1)
    ds, catalog, steps = seed_setup(dbconn, func=func)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(pd.DataFrame([event("u1", "e1")]))
    t = threading.Thread(target=run_steps, args=(ds, steps))
    t.start()
    assert entered.wait(GATE_TIMEOUT)
    ds2, catalog2, _ = second_processor(dbconn, ds)
    catalog2.get_datatable(ds2, "events").store_chunk(pd.DataFrame([event("u1", "e2")]))
    release.set()
    t.join(GATE_TIMEOUT)
    assert as_dict(catalog.get_datatable(ds, "click_count").get_data(), "user_id", "click_count") == {"u1": 1}
    assert list(steps[0].get_stale_keys()["user_id"]) == ["u1"]
    run_steps(ds, steps, raise_on_error=True)
    assert as_dict(catalog.get_datatable(ds, "click_count").get_data(), "user_id", "click_count") == {"u1": 2}
    assert len(steps[0].get_stale_keys()) == 0


def test_older_failure_does_not_hide_newer_success(dbconn) -> None:
    """A fails on u1's old inputs and records it after B succeeded on newer inputs: B's state stands."""
    entered, release = threading.Event(), threading.Event()

    def func(df: pd.DataFrame):  # noqa: ANN202
        if len(df[df["user_id"] == "u1"]) == 1 and not release.is_set():
            entered.set()
            assert release.wait(GATE_TIMEOUT)
            raise ValueError("old inputs are bad")
        return parse_clicks_ip(df)

    func.__name__ = "parse_clicks_ip"
    ds, catalog, steps = seed_setup(dbconn, func=func)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(pd.DataFrame([event("u1", "e1")]))
    t = threading.Thread(target=run_steps, args=(ds, steps))
    t.start()
    assert entered.wait(GATE_TIMEOUT)
    ds_b, catalog_b, steps_b = second_processor(dbconn, ds)
    catalog_b.get_datatable(ds_b, "events").store_chunk(pd.DataFrame([event("u1", "e2")]))
    assert run_steps(ds_b, steps_b).ok
    release.set()
    t.join(GATE_TIMEOUT)
    assert len(steps[0].failed_keys()) == 0
    assert as_dict(catalog.get_datatable(ds, "click_count").get_data(), "user_id", "click_count") == {"u1": 2}
    assert len(steps[0].get_stale_keys()) == 0


def test_changelist_processor_beside_full_runs(dbconn) -> None:
    """The example's real-time path (store_chunk + run_steps_changelist) racing a run_steps loop."""
    func, entered, release = gated(lambda df: len(df[df["user_id"] == "u1"]) == 2)
    ds, catalog, steps = seed_setup(dbconn, func=func)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(pd.DataFrame([event("u1", "e1")]))
    run_steps(ds, steps)
    changed = events.store_chunk(pd.DataFrame([event("u1", "e2")]))
    t = threading.Thread(target=run_steps_changelist, args=(ds, steps, ChangeList.create("events", changed)))
    t.start()
    assert entered.wait(GATE_TIMEOUT)
    ds_b, catalog_b, steps_b = second_processor(dbconn, ds)
    catalog_b.get_datatable(ds_b, "events").store_chunk(pd.DataFrame([event("u1", "e3", "view")]))
    catalog_b.get_datatable(ds_b, "events").store_chunk(pd.DataFrame([event("u1", "e4")]))
    assert run_steps(ds_b, steps_b).ok
    release.set()
    t.join(GATE_TIMEOUT)
    assert as_dict(catalog.get_datatable(ds, "click_count").get_data(), "user_id", "click_count") == {"u1": 3}
    assert len(steps[0].get_stale_keys()) == 0


SOAK = int(os.environ.get("DATAPIPE_SOAK_INTERLEAVINGS", "0"))
STEPS = SOAK or 120  # scheduled actions per interleaving test; DATAPIPE_SOAK_INTERLEAVINGS=N runs N


class GatedProcessor:
    """A processor (its own DataStore and steps, as another process would have) whose transform stops at
    a gate before computing, so a scheduler decides when each call goes on."""

    def __init__(self, dbconn, name: str, changelist: bool, setup=None, inner=parse_clicks_ip):  # noqa: ANN001
        """``setup(dbconn, func)`` builds ``(ds, catalog, steps)`` around the gated ``func``, which calls
        ``inner`` (default: the seed's pipeline)."""
        self.name, self.changelist = name, changelist
        self.state = "idle"  # idle | running | gate
        self.cond = threading.Condition()
        self.go = False
        self.pending = None  # the changelist of the next run (changelist processors)
        self.error: BaseException | None = None

        def func(*dfs: pd.DataFrame):  # noqa: ANN202
            with self.cond:
                self.state, self.go = "gate", False
                self.cond.notify_all()
                assert self.cond.wait_for(lambda: self.go, GATE_TIMEOUT), "never released"
                self.state = "running"
            return inner(*dfs)

        func.__name__ = inner.__name__
        own = dbconn.__class__(dbconn.connstr, schema=dbconn.schema)
        if setup is None:
            self.ds, self.catalog, self.steps = seed_setup(own, func=func, chunk_size=1)
        else:
            self.ds, self.catalog, self.steps = setup(own, func)
        _ = self.steps[0].meta  # first use (DDL) before the race

    def _run(self) -> None:
        try:
            if self.changelist:
                run_steps_changelist(self.ds, self.steps, self.pending)
            else:
                run_steps(self.ds, self.steps)
        except BaseException as e:  # noqa: BLE001 - surfaced by the scheduler
            self.error = e
        with self.cond:
            self.state = "idle"
            self.cond.notify_all()

    def _settle(self) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.state != "running", GATE_TIMEOUT), f"{self.name} hangs"
        if self.error is not None:
            raise self.error

    def start(self, changelist: ChangeList | None = None) -> None:
        """Start a run; returns when it waits at the gate or has finished."""
        self.pending, self.state = changelist, "running"
        threading.Thread(target=self._run, daemon=True).start()
        self._settle()

    def release(self) -> None:
        """Let the waiting call compute and commit; returns at the next gate or when the run is over."""
        with self.cond:
            self.state, self.go = "running", True
            self.cond.notify_all()
        self._settle()


def schedule(
    rng: random.Random,
    procs: list[GatedProcessor],
    write: Callable[[], ChangeList],
    check: Callable[[], None],
    steps: int,
    write_share: float,
) -> None:
    """``steps`` actions, each a write (``write_share`` of them) or the next move of a random processor
    (release its gate, or start a run; a changelist processor's on a fresh write), ``check()`` after
    each; then every processor is let finish."""
    for _ in range(steps):
        p = rng.choice(procs)
        if rng.random() < write_share:
            write()
        elif p.state == "gate":
            p.release()
        elif p.changelist:
            p.start(write())
        else:
            p.start()
        check()
    for p in procs:
        while p.state == "gate":
            p.release()


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_random_interleavings(dbconn, seed: int) -> None:
    """A scheduler interleaves writes, full runs and changelist runs of three processors at random, one
    action at a time (each call of the transform is a scheduling point). After every action, every user
    whose outputs differ from a pandas recomputation must still be stale (wrong only while visibly
    stale); at the end, a run leaves outputs equal to the recomputation and nothing stale."""
    rng = random.Random(seed)
    users = ["u0", "u1", "u2"]
    ds, catalog, steps = seed_setup(dbconn)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(pd.DataFrame([event(u, "seed") for u in users]))
    procs = [GatedProcessor(dbconn, "full-a", False), GatedProcessor(dbconn, "full-b", False), GatedProcessor(dbconn, "cl", True)]
    checks = 0

    def write() -> pd.DataFrame:
        row = event(rng.choice(users), f"e{rng.randrange(4)}", rng.choice(["click", "view"]), f"10.0.0.{rng.randrange(256)}")
        if rng.random() < 0.15:
            return events.delete_by_idx(pd.DataFrame([row])[["user_id", "event_id"]])
        return events.store_chunk(pd.DataFrame([row]))

    def check() -> None:
        nonlocal checks
        wrong = wrong_users(catalog, ds, events.get_data())
        assert wrong <= set(steps[0].get_stale_keys(advance_watermark=False)["user_id"]), f"silently wrong: {wrong}"
        checks += 1

    schedule(rng, procs, lambda: ChangeList.create("events", write()), check, STEPS, write_share=0.35)
    run_steps(ds, steps, raise_on_error=True)
    assert wrong_users(catalog, ds, events.get_data()) == set()
    assert len(steps[0].get_stale_keys()) == 0
    assert checks == STEPS
