"""Parity with datapipe: steps run in dependency order, cycles run to a fixed point, default names are unique."""

from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import Column, Integer

from datapipe_dagster import (
    BatchTransform,
    Catalog,
    ChangeList,
    ConfigurationError,
    DataStore,
    Pipeline,
    Table,
    TableStoreDB,
    build_compute,
    run_steps,
    run_steps_changelist,
)
from datapipe_dagster.compute.order import order_steps
from datapipe_dagster.compute.run import NoFixedPointError


def int_catalog(dbconn, *names: str) -> Catalog:
    return Catalog(
        {n: Table(TableStoreDB(n, dbconn, [Column("id", Integer, primary_key=True), Column("v", Integer)])) for n in names}
    )


def plus_one(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(v=df["v"] + 1)


def clip10(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(v=df["v"].clip(upper=10))


def copy(df: pd.DataFrame) -> pd.DataFrame:
    return df


def values(cat: Catalog, ds: DataStore, name: str) -> dict[int, int]:
    df = cat.get_datatable(ds, name).get_data()
    return dict(zip(df["id"].tolist(), df["v"].tolist(), strict=True))


def test_steps_declared_out_of_order_are_run_in_dependency_order(dbconn) -> None:
    cat = int_catalog(dbconn, "a", "b", "c")
    ds = DataStore(dbconn)
    steps = build_compute(
        ds,
        cat,
        Pipeline([BatchTransform(plus_one, ["b"], ["c"], name="b_to_c"), BatchTransform(plus_one, ["a"], ["b"], name="a_to_b")]),
    )
    assert [s.name for s in order_steps(steps)] == ["a_to_b", "b_to_c"]
    a = cat.get_datatable(ds, "a")
    a.store_chunk(pd.DataFrame({"id": [1, 2], "v": [0, 5]}))
    run_steps(ds, steps)
    assert values(cat, ds, "c") == {1: 2, 2: 7}
    # a changelist from "a" reaches "c" in one call
    cl = ChangeList.create("a", a.store_chunk(pd.DataFrame({"id": [1], "v": [100]})))
    summary = run_steps_changelist(ds, steps, cl)
    assert values(cat, ds, "c") == {1: 102, 2: 7}
    assert [s.name for s in summary.steps] == ["a_to_b", "b_to_c"]
    assert summary["b_to_c"].keys_processed == 1


def cycle_steps(dbconn, back=clip10):  # noqa: ANN001, ANN201
    cat = int_catalog(dbconn, "a", "b")
    ds = DataStore(dbconn)
    steps = build_compute(
        ds, cat, Pipeline([BatchTransform(plus_one, ["a"], ["b"], name="add"), BatchTransform(back, ["b"], ["a"], name="back")])
    )
    return cat, ds, steps


def test_changelist_cycle_runs_to_its_fixed_point(dbconn) -> None:
    cat, ds, steps = cycle_steps(dbconn)
    a = cat.get_datatable(ds, "a")
    cl = ChangeList.create("a", a.store_chunk(pd.DataFrame({"id": [1, 2], "v": [0, 8]})))
    summary = run_steps_changelist(ds, steps, cl)
    assert values(cat, ds, "a") == {1: 10, 2: 10}
    assert values(cat, ds, "b") == {1: 11, 2: 11}
    assert [s.name for s in summary.steps] == ["add", "back"]  # one entry per step, passes merged
    assert summary["add"].keys_processed >= 11
    # nothing left: a second call with no change does nothing
    assert run_steps_changelist(ds, steps, ChangeList())["add"].keys_processed == 0


def test_full_run_cycle_runs_to_its_fixed_point(dbconn) -> None:
    cat, ds, steps = cycle_steps(dbconn)
    cat.get_datatable(ds, "a").store_chunk(pd.DataFrame({"id": [1], "v": [3]}))
    run_steps(ds, steps)
    assert values(cat, ds, "a") == {1: 10}
    assert values(cat, ds, "b") == {1: 11}
    assert all(len(s.get_stale_keys()) == 0 for s in steps)


@pytest.mark.parametrize("mode", ["changelist", "full"])
def test_a_cycle_that_never_settles_hits_the_bound_with_an_error_naming_its_steps(dbconn, mode: str) -> None:
    cat, ds, steps = cycle_steps(dbconn, back=copy)
    a = cat.get_datatable(ds, "a")
    idx = a.store_chunk(pd.DataFrame({"id": [1], "v": [0]}))
    with pytest.raises(NoFixedPointError) as ei:
        if mode == "changelist":
            run_steps_changelist(ds, steps, ChangeList.create("a", idx), max_passes=5)
        else:
            run_steps(ds, steps, max_passes=5)
    assert ei.value.steps == ["add", "back"]
    assert "'add'" in str(ei.value) and "'back'" in str(ei.value) and "5 passes" in str(ei.value)
    assert values(cat, ds, "b") == {1: 5}  # each pass committed; the bound stops the loop


# ---------------------------------------------------------------- default step names (item 6)


def test_two_steps_from_one_function_get_unique_stable_names(dbconn) -> None:
    cat = int_catalog(dbconn, "a", "b", "c", "d")
    ds = DataStore(dbconn)

    def pipeline() -> Pipeline:
        return Pipeline(
            [
                BatchTransform(plus_one, ["a"], ["b"]),
                BatchTransform(plus_one, ["b"], ["c"]),
                BatchTransform(plus_one, ["c"], ["d"]),
            ]
        )

    names = [s.name for s in build_compute(ds, cat, pipeline())]
    assert names == ["plus_one", "plus_one__c", "plus_one__d"]
    assert [s.name for s in build_compute(ds, cat, pipeline())] == names  # stable
    steps = build_compute(ds, cat, pipeline())
    cat.get_datatable(ds, "a").store_chunk(pd.DataFrame({"id": [1], "v": [1]}))
    run_steps(ds, steps)
    assert values(cat, ds, "d") == {1: 4}
    # state is kept under the derived names: a new build sees nothing stale
    assert all(len(s.get_stale_keys()) == 0 for s in build_compute(ds, cat, pipeline()))


def test_explicit_names_are_kept_and_duplicates_of_them_refused(dbconn) -> None:
    cat = int_catalog(dbconn, "a", "b", "c")
    ds = DataStore(dbconn)
    steps = build_compute(
        ds, cat, Pipeline([BatchTransform(plus_one, ["a"], ["b"], name="first"), BatchTransform(plus_one, ["b"], ["c"], name="second")])
    )
    assert [s.name for s in steps] == ["first", "second"]
    # an unnamed step never takes an explicit step's name
    steps = build_compute(
        ds, cat, Pipeline([BatchTransform(copy, ["a"], ["b"]), BatchTransform(plus_one, ["b"], ["c"], name="copy")])
    )
    assert [s.name for s in steps] == ["copy__b", "copy"]
    with pytest.raises(ConfigurationError, match="two steps are named 'x'"):
        build_compute(
            ds, cat, Pipeline([BatchTransform(copy, ["a"], ["b"], name="x"), BatchTransform(plus_one, ["b"], ["c"], name="x")])
        )
