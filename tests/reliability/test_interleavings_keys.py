"""Two processors, and writers, racing on the same keys of a cross-join transform and of a transform
with a ``cleanup=False`` output: no update is lost and no deleted key's output comes back."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest

from datapipe_dagster import ChangeList, DataStore, DBConn, run_steps
from tests.engine_helpers import event, seed_setup
from tests.reliability.test_interleavings import GatedProcessor, gated, schedule
from tests.test_parity_keys import cross, cross_setup, lr, means, model_setup, rows, stale

GATE_TIMEOUT = 30


def other(dbconn: DBConn) -> DataStore:
    """Another process's DataStore on the same database."""
    return DataStore(dbconn.__class__(dbconn.connstr, schema=dbconn.schema))


def gate_on(func: Callable[..., Any], hold_when: Callable[..., bool]) -> tuple[Callable[..., Any], threading.Event, threading.Event]:
    """``func`` that, on a call where ``hold_when(*inputs)``, signals ``entered`` and waits for ``release``."""
    entered, release = threading.Event(), threading.Event()

    def gated(*dfs: pd.DataFrame) -> Any:
        if hold_when(*dfs) and not release.is_set():
            entered.set()
            assert release.wait(GATE_TIMEOUT), "gate never opened"
        return func(*dfs)

    gated.__name__ = func.__name__
    return gated, entered, release


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(target())
        except BaseException as e:  # noqa: BLE001 - surfaced by the test
            out.append(e)

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_cross_join_stalled_processor_cannot_bring_back_a_deleted_keys_output(dbconn) -> None:
    """A reads keys (1,7), (2,7) and stalls; left 2 is deleted and left 1 changes; B processes both keys
    (deleting (2,7)'s output). A's commit must leave both keys to B: (2,7) stays deleted."""
    func, entered, release = gate_on(cross, lambda left, right: 2 in set(left["id_left"]))
    ds_a, step_a, left, right, out = cross_setup(dbconn, func, name="lxr")
    left.store_chunk(lr([1, 2], "id_left", "a"))
    right.store_chunk(lr([7], "id_right", "b"))
    t, res_a = in_thread(lambda: run_steps(ds_a, [step_a]))
    assert entered.wait(GATE_TIMEOUT)
    ds_b, step_b, left_b, _, _ = cross_setup(dbconn, cross, name="lxr", ds=other(dbconn))
    left_b.delete_by_idx(pd.DataFrame({"id_left": [2]}))
    left_b.store_chunk(pd.DataFrame({"id_left": [1], "a": [55]}))
    assert run_steps(ds_b, [step_b]).ok
    release.set()
    t.join(GATE_TIMEOUT)
    assert res_a[0].ok and res_a[0]["lxr"].keys_superseded == 2
    assert rows(out, ["id_left", "id_right", "a"]) == [(1, 7, 55)]
    assert stale(step_a) == []


def test_cross_join_delete_during_a_run_leaves_the_key_stale_then_cleans_it(dbconn) -> None:
    """A reads (2,7) and stalls; left 2 is deleted by a writer; A commits its old result, but the key is
    marked at A's read, so the delete keeps it stale and the next run removes its output."""
    func, entered, release = gate_on(cross, lambda left, right: 2 in set(left["id_left"]))
    ds, step, left, right, out = cross_setup(dbconn, func)
    left.store_chunk(lr([1, 2], "id_left", "a"))
    right.store_chunk(lr([7], "id_right", "b"))
    t, res = in_thread(lambda: run_steps(ds, [step]))
    assert entered.wait(GATE_TIMEOUT)
    _, _, left_w, _, _ = cross_setup(dbconn, cross, ds=other(dbconn))
    left_w.delete_by_idx(pd.DataFrame({"id_left": [2]}))
    release.set()
    t.join(GATE_TIMEOUT)
    assert res[0].ok
    assert stale(step) == [(2, 7)]
    run_steps(ds, [step])
    assert rows(out, ["id_left", "id_right"]) == [(1, 7)] and stale(step) == []


def test_cleanup_false_output_with_some_keys_newer_elsewhere_is_split_not_lost(dbconn) -> None:
    """A trains d1 and d2 in one chunk and stalls; a sample for d1 arrives and B trains d1 alone. A's chunk is
    partly superseded and its output cannot be split by key: it is retried in parts, and both models end
    up from the newest samples."""

    def train(samples: pd.DataFrame) -> pd.DataFrame:
        m = samples.groupby("dataset", as_index=False)["x"].mean()
        return pd.DataFrame({"model_id": "model-" + m["dataset"], "mean": m["x"].astype(float)})

    func, entered, release = gate_on(train, lambda s: set(s["dataset"]) == {"d1", "d2"})
    ds_a, step_a, samples, models = model_setup(dbconn, func)
    samples.store_chunk(pd.DataFrame({"dataset": ["d1", "d2"], "sample_id": [1, 2], "x": [1, 5]}))
    t, res_a = in_thread(lambda: run_steps(ds_a, [step_a]))
    assert entered.wait(GATE_TIMEOUT)
    ds_b, step_b, samples_b, _ = model_setup(dbconn, train, ds=other(dbconn))
    samples_b.store_chunk(pd.DataFrame({"dataset": ["d1"], "sample_id": [3], "x": [3]}))
    assert step_b.process_keys(pd.DataFrame({"dataset": ["d1"]})).keys_processed == 1  # d1 only
    assert means(models) == {"model-d1": 2.0}
    release.set()
    t.join(GATE_TIMEOUT)
    assert res_a[0].ok and res_a[0]["train"].keys_failed == 0
    assert means(models) == {"model-d1": 2.0, "model-d2": 5.0}
    assert stale(step_a) == []


def test_first_processing_of_a_key_beside_the_delete_of_its_only_row(dbconn) -> None:
    """A full input (the seed's events): A computes u3 (never processed) from its one event and stalls; the event is deleted and B runs.
    B must take u3 on (a deleted row of an unprocessed key is stale), so A's commit is overtaken and u3's
    output does not outlive its input."""
    func, entered, release = gated(lambda df: (df["user_id"] == "u3").any())
    ds_a, cat_a, steps_a = seed_setup(dbconn, func=func)
    cat_a.get_datatable(ds_a, "events").store_chunk(pd.DataFrame([event("u3", "e1")]))
    t, res_a = in_thread(lambda: run_steps(ds_a, steps_a))
    assert entered.wait(GATE_TIMEOUT)
    ds_b, cat_b, steps_b = seed_setup(DBConn(dbconn.connstr, schema=dbconn.schema))
    cat_b.get_datatable(ds_b, "events").delete_by_idx(pd.DataFrame({"user_id": ["u3"], "event_id": ["e1"]}))
    assert run_steps(ds_b, steps_b).ok
    release.set()
    t.join(GATE_TIMEOUT)
    assert res_a[0].ok
    assert len(cat_a.get_datatable(ds_a, "click_count").get_data()) == 0
    assert len(steps_a[0].get_stale_keys(advance_watermark=False)) == 0


@pytest.mark.parametrize("seed", [0])
def test_random_interleavings_of_a_cross_join(dbconn, seed: int) -> None:
    """As ``test_interleavings.test_random_interleavings``, for a cross-join transform: writes (and
    deletes) to either input, full runs and changelist runs of three processors, one action at a time.
    A key whose output differs from the pandas product is always stale; at the end one run settles all."""
    rng = random.Random(seed)

    def setup(own: DBConn, func: Callable[..., Any]) -> tuple:
        ds, step, *_ = cross_setup(own, func, name="lxr")
        step.chunk_size = 2
        _ = step.meta  # first use (DDL) before the race
        return ds, None, [step]

    ds, step, left, right, out = cross_setup(dbconn)
    procs = [
        GatedProcessor(dbconn, "full-a", False, setup, cross),
        GatedProcessor(dbconn, "full-b", False, setup, cross),
        GatedProcessor(dbconn, "cl", True, setup, cross),
    ]

    def write() -> ChangeList:
        dt, col, val = rng.choice([(left, "id_left", "a"), (right, "id_right", "b")])
        i = rng.randrange(3)
        if rng.random() < 0.2:
            return ChangeList.create(dt.name, dt.delete_by_idx(pd.DataFrame({col: [i]})))
        return ChangeList.create(dt.name, dt.store_chunk(pd.DataFrame({col: [i], val: [rng.randrange(100)]})))

    def wrong() -> set[tuple]:
        want = cross(left.get_data(), right.get_data())
        cols = ["id_left", "id_right", "a", "b"]
        expected = {tuple(r[:2]): tuple(r) for r in want[cols].to_numpy().tolist()} if len(want) else {}
        got = {tuple(r[:2]): tuple(r) for r in out.get_data()[cols].to_numpy().tolist()}
        return {k for k in set(got) | set(expected) if got.get(k) != expected.get(k)}

    def check() -> None:
        assert wrong() <= set(stale(step)), "silently wrong"

    schedule(rng, procs, write, check, 60, write_share=0.4)
    run_steps(ds, [step], raise_on_error=True)
    assert wrong() == set() and stale(step) == []
