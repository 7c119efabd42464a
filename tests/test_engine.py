"""Engine semantics (issue 2; README "Concepts"), each on SQLite and PostgreSQL."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy import CheckConstraint, Column, Integer, String

from datapipe_dagster import (
    BatchTransform,
    Catalog,
    ChangeList,
    ConfigurationError,
    DataStore,
    Pipeline,
    StepFailedError,
    Table,
    TableStoreDB,
    UnknownTableError,
    build_compute,
    run_steps,
    run_steps_changelist,
)
from tests.engine_helpers import as_dict, event, frame, parse_clicks_ip, seed_catalog, seed_setup


def test_default_transform_keys_are_the_common_primary_keys(dbconn) -> None:
    _, _, steps = seed_setup(dbconn)
    assert steps[0].transform_keys == ["user_id"]


def test_explicit_transform_keys_override(dbconn) -> None:
    calls: list[int] = []

    def per_event(df: pd.DataFrame) -> pd.DataFrame:
        calls.append(len(df))
        return df[["user_id", "event_id"]].assign(n=1)

    catalog = seed_catalog(
        dbconn,
        {"per_event": Table(TableStoreDB("per_event", dbconn, [Column("user_id", String(), primary_key=True), Column("event_id", String(), primary_key=True), Column("n", Integer())]))},
    )
    ds = DataStore(dbconn)
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(per_event, ["events"], ["per_event"], transform_keys=["user_id", "event_id"], chunk_size=1)]))
    assert steps[0].transform_keys == ["user_id", "event_id"]
    catalog.get_datatable(ds, "events").store_chunk(frame(event("1", "1"), event("1", "2")))
    run_steps(ds, steps)
    assert calls == [1, 1]  # one key (user, event) per call with chunk_size=1


def test_a_call_gets_all_input_rows_of_its_keys_in_write_order(dbconn) -> None:
    seen: list[list[str]] = []

    def spy(df: pd.DataFrame):  # noqa: ANN202
        seen.append(list(df["event_id"]))
        return parse_clicks_ip(df)

    ds, catalog, steps = seed_setup(dbconn, spy)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(frame(event("1", "1"), event("1", "2")))
    run_steps(ds, steps)
    seen.clear()
    events.store_chunk(frame(event("1", "1", ip="9.9.9.9")))  # one changed row
    run_steps(ds, steps)
    assert seen == [["2", "1"]]  # all of user 1's rows, the rewritten one last
    assert as_dict(catalog.get_datatable(ds, "ip").get_data(), "user_id", "ip") == {"1": "9.9.9.9"}


def test_only_stale_keys_are_recomputed(dbconn) -> None:
    seen: list[set[str]] = []

    def spy(df: pd.DataFrame):  # noqa: ANN202
        seen.append(set(df["user_id"]))
        return parse_clicks_ip(df)

    ds, catalog, steps = seed_setup(dbconn, spy)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(frame(*[event(str(u), "1") for u in range(5)]))
    run_steps(ds, steps)
    assert seen == [{"0", "1", "2", "3", "4"}]
    seen.clear()
    assert len(steps[0].get_stale_keys()) == 0
    run_steps(ds, steps)
    assert seen == []  # nothing stale, nothing called
    events.store_chunk(frame(event("3", "2")))
    assert list(steps[0].get_stale_keys()["user_id"]) == ["3"]
    run_steps(ds, steps)
    assert seen == [{"3"}]
    assert as_dict(catalog.get_datatable(ds, "click_count").get_data(), "user_id", "click_count")["3"] == 2


def test_unchanged_rows_are_not_rewritten_and_nothing_downstream_recomputes(dbconn) -> None:
    ds, catalog, steps = seed_setup(dbconn)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(frame(event("1", "1"), event("2", "1")))
    run_steps(ds, steps)
    before = events.get_metadata()
    idx = events.store_chunk(frame(event("1", "1"), event("2", "1")))
    assert len(idx) == 0
    after = events.get_metadata()
    pd.testing.assert_frame_equal(before, after)
    assert len(steps[0].get_stale_keys()) == 0
    # an output whose content does not change keeps its update time
    cc = catalog.get_datatable(ds, "click_count")
    cc_before = cc.get_metadata()
    events.store_chunk(frame(event("1", "1", ip="5.5.5.5")))  # ip changes, click_count stays 1
    res = run_steps(ds, steps)
    assert res.steps[0].outputs["click_count"].updated == 0
    assert res.steps[0].outputs["ip"].updated == 1
    pd.testing.assert_frame_equal(cc_before, cc.get_metadata())


def test_outputs_a_key_no_longer_produces_are_deleted(dbconn) -> None:
    def per_event_type(df: pd.DataFrame) -> pd.DataFrame:
        import json

        types = df.assign(t=df["event"].map(lambda e: json.loads(e)["event_type"]))
        return types.groupby(["user_id", "t"], as_index=False).size().rename(columns={"t": "event_type", "size": "n"})

    catalog = seed_catalog(
        dbconn,
        {"by_type": Table(TableStoreDB("by_type", dbconn, [Column("user_id", String(), primary_key=True), Column("event_type", String(), primary_key=True), Column("n", Integer())]))},
    )
    ds = DataStore(dbconn)
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(per_event_type, ["events"], ["by_type"])]))
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(frame(event("1", "1", "click"), event("1", "2", "view"), event("2", "1", "click")))
    run_steps(ds, steps)
    by_type = catalog.get_datatable(ds, "by_type")
    assert sorted(zip(by_type.get_data()["user_id"], by_type.get_data()["event_type"], strict=False)) == [("1", "click"), ("1", "view"), ("2", "click")]
    events.store_chunk(frame(event("1", "2", "click")))  # user 1 no longer has a "view"
    res = run_steps(ds, steps)
    assert res.steps[0].outputs["by_type"].deleted == 1
    assert sorted(zip(by_type.get_data()["user_id"], by_type.get_data()["event_type"], strict=False)) == [("1", "click"), ("2", "click")]
    # a key whose inputs are all gone loses its outputs
    events.delete_by_idx(pd.DataFrame({"user_id": ["2"]}))
    run_steps(ds, steps)
    assert list(by_type.get_data()["user_id"]) == ["1"]
    assert len(by_type.get_metadata(include_deleted=True)) == 3  # soft deletes keep the metadata


def test_deleted_input_row_makes_its_key_stale(dbconn) -> None:
    ds, catalog, steps = seed_setup(dbconn)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(frame(event("1", "1"), event("1", "2")))
    run_steps(ds, steps)
    events.delete_by_idx(pd.DataFrame({"user_id": ["1"], "event_id": ["2"]}))
    assert list(steps[0].get_stale_keys()["user_id"]) == ["1"]
    run_steps(ds, steps)
    assert as_dict(catalog.get_datatable(ds, "click_count").get_data(), "user_id", "click_count") == {"1": 1}


def _two_input_setup(dbconn):  # noqa: ANN001, ANN202
    def join(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
        keys = sorted(set(a["k"]) | set(b["k"]))
        return pd.DataFrame({"k": keys, "total": [int(a.loc[a.k == k, "v"].sum() + b.loc[b.k == k, "v"].sum()) for k in keys]})

    def kv(name: str) -> Table:
        return Table(TableStoreDB(name, dbconn, [Column("k", String(), primary_key=True), Column("v", Integer())]))

    catalog = Catalog({"a": kv("a"), "b": kv("b"), "out": Table(TableStoreDB("out", dbconn, [Column("k", String(), primary_key=True), Column("total", Integer())]))})
    ds = DataStore(dbconn)
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(join, ["a", "b"], ["out"])]))
    return ds, catalog, steps


def test_multi_input_key_missing_from_one_input_is_found(dbconn) -> None:
    """Regression: epoch8's datapipe misses a change to a key present in only one input on SQLite."""
    ds, catalog, steps = _two_input_setup(dbconn)
    a, b = catalog.get_datatable(ds, "a"), catalog.get_datatable(ds, "b")
    a.store_chunk(pd.DataFrame({"k": ["x"], "v": [1]}))
    b.store_chunk(pd.DataFrame({"k": ["y"], "v": [10]}))  # "y" exists only in b
    run_steps(ds, steps)
    out = catalog.get_datatable(ds, "out")
    assert as_dict(out.get_data(), "k", "total") == {"x": 1, "y": 10}
    b.store_chunk(pd.DataFrame({"k": ["y"], "v": [20]}))
    assert list(steps[0].get_stale_keys()["k"]) == ["y"]
    run_steps(ds, steps)
    assert as_dict(out.get_data(), "k", "total") == {"x": 1, "y": 20}
    a.store_chunk(pd.DataFrame({"k": ["y"], "v": [5]}))  # now in both
    run_steps(ds, steps)
    assert as_dict(out.get_data(), "k", "total") == {"x": 1, "y": 25}


def config_catalog(dbconn) -> Catalog:  # noqa: ANN001
    """The seed tables plus a small keyless ``config(name, value)`` and a per-user ``score``."""
    return seed_catalog(
        dbconn,
        {
            "config": Table(TableStoreDB("config", dbconn, [Column("name", String(), primary_key=True), Column("value", Integer())])),
            "score": Table(TableStoreDB("score", dbconn, [Column("user_id", String(), primary_key=True), Column("score", Integer())])),
        },
    )


def test_keyless_config_input_is_passed_whole_and_its_change_makes_every_key_stale(dbconn) -> None:
    calls: list[tuple[int, int]] = []

    def scaled(events: pd.DataFrame, config: pd.DataFrame) -> pd.DataFrame:
        calls.append((events["user_id"].nunique(), len(config)))
        factor = int(config.loc[config["name"] == "factor", "value"].iloc[0])
        return events.groupby("user_id", as_index=False).size().assign(score=lambda d: d["size"] * factor)[["user_id", "score"]]

    catalog = config_catalog(dbconn)
    ds = DataStore(dbconn)
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(scaled, ["events", "config"], ["score"])]))
    assert steps[0].transform_keys == ["user_id"]
    catalog.get_datatable(ds, "config").store_chunk(pd.DataFrame({"name": ["factor", "other"], "value": [2, 0]}))
    catalog.get_datatable(ds, "events").store_chunk(frame(event("1", "1"), event("2", "1"), event("2", "2")))
    run_steps(ds, steps)
    assert calls == [(2, 2)]
    assert as_dict(catalog.get_datatable(ds, "score").get_data(), "user_id", "score") == {"1": 2, "2": 4}
    assert len(steps[0].get_stale_keys()) == 0
    catalog.get_datatable(ds, "config").store_chunk(pd.DataFrame({"name": ["factor"], "value": [10]}))
    assert sorted(steps[0].get_stale_keys()["user_id"]) == ["1", "2"]
    run_steps(ds, steps)
    assert as_dict(catalog.get_datatable(ds, "score").get_data(), "user_id", "score") == {"1": 10, "2": 20}
    # the changelist path too
    cl = ChangeList.create("config", catalog.get_datatable(ds, "config").store_chunk(pd.DataFrame({"name": ["factor"], "value": [1]})))
    run_steps_changelist(ds, steps, cl)
    assert as_dict(catalog.get_datatable(ds, "score").get_data(), "user_id", "score") == {"1": 1, "2": 2}


def test_chains_propagate_in_one_call(dbconn) -> None:
    def total(cc: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"user_id": cc["user_id"], "doubled": cc["click_count"] * 2})

    catalog = seed_catalog(dbconn, {"doubled": Table(TableStoreDB("doubled", dbconn, [Column("user_id", String(), primary_key=True), Column("doubled", Integer())]))})
    ds = DataStore(dbconn)
    steps = build_compute(
        ds,
        catalog,
        Pipeline([BatchTransform(parse_clicks_ip, ["events"], ["click_count", "ip"]), BatchTransform(total, ["click_count"], ["doubled"])]),
    )
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(frame(event("1", "1"), event("1", "2")))
    run_steps(ds, steps)
    doubled = catalog.get_datatable(ds, "doubled")
    assert as_dict(doubled.get_data(), "user_id", "doubled") == {"1": 4}
    cl = ChangeList.create("events", events.store_chunk(frame(event("1", "3"))))
    summary = run_steps_changelist(ds, steps, cl)
    assert summary["total"].keys_processed == 1
    assert as_dict(doubled.get_data(), "user_id", "doubled") == {"1": 6}
    assert all(len(s.get_stale_keys()) == 0 for s in steps)


def test_failing_keys_are_isolated_recorded_and_retried(dbconn) -> None:
    bad = {"3"}

    def fragile(df: pd.DataFrame):  # noqa: ANN202
        if bad & set(df["user_id"]):
            raise ValueError("cannot parse user " + ",".join(sorted(bad & set(df["user_id"]))))
        return parse_clicks_ip(df)

    ds, catalog, steps = seed_setup(dbconn, fragile, chunk_size=8)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(frame(*[event(str(u), "1") for u in range(8)]))
    summary = run_steps(ds, steps)
    assert not summary.ok
    failed = summary.failed["fragile"]
    assert list(failed["user_id"]) == ["3"]
    assert "ValueError: cannot parse user 3" in failed["error"].iloc[0]
    assert "Traceback" in failed["traceback"].iloc[0]
    assert "user_id='3'" in str(summary)
    # the good keys of the same chunk were processed
    assert sorted(catalog.get_datatable(ds, "click_count").get_data()["user_id"]) == ["0", "1", "2", "4", "5", "6", "7"]
    stored = steps[0].failed_keys()
    assert list(stored["user_id"]) == ["3"] and "cannot parse" in stored["error"].iloc[0]
    # failed keys stay stale; raise_on_error raises at the end with the summary
    assert list(steps[0].get_stale_keys()["user_id"]) == ["3"]
    with pytest.raises(StepFailedError, match="user_id='3'"):
        run_steps(ds, steps, raise_on_error=True)
    bad.clear()  # the code is fixed
    summary = run_steps(ds, steps)
    assert summary.ok and summary.steps[0].keys_processed == 1
    assert steps[0].count_failed() == 0
    assert "3" in set(catalog.get_datatable(ds, "click_count").get_data()["user_id"])


def test_chunk_outputs_and_metadata_commit_atomically(dbconn) -> None:
    """A database error on the second output rolls back the first output's rows of that chunk."""

    def two(df: pd.DataFrame):  # noqa: ANN202
        n = df.groupby("user_id", as_index=False).size()
        return n.rename(columns={"size": "a"}), n.assign(b=lambda d: -d["size"])[["user_id", "b"]]

    catalog = seed_catalog(
        dbconn,
        {
            "out_a": Table(TableStoreDB("out_a", dbconn, [Column("user_id", String(), primary_key=True), Column("a", Integer())])),
            "out_b": Table(TableStoreDB("out_b", dbconn, [Column("user_id", String(), primary_key=True), Column("b", Integer(), CheckConstraint("b >= 0"))])),
        },
    )
    ds = DataStore(dbconn)
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(two, ["events"], ["out_a", "out_b"])]))
    catalog.get_datatable(ds, "events").store_chunk(frame(event("1", "1")))
    summary = run_steps(ds, steps)
    assert list(summary.failed["two"]["user_id"]) == ["1"]
    assert "IntegrityError" in summary.failed["two"]["error"].iloc[0]
    out_a = catalog.get_datatable(ds, "out_a")
    assert len(out_a.get_data()) == 0 and len(out_a.get_metadata(include_deleted=True)) == 0
    with dbconn.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(out_a.table_store.data_table)).scalar_one() == 0


def test_function_returning_wrong_shape_is_a_key_error_not_a_crash(dbconn) -> None:
    ds, catalog, steps = seed_setup(dbconn, lambda df: parse_clicks_ip(df)[0])
    catalog.get_datatable(ds, "events").store_chunk(frame(event("1", "1")))
    summary = run_steps(ds, steps)
    assert "expected 2 DataFrame(s)" in summary.failed[steps[0].name]["error"].iloc[0]


def test_get_data_returns_rows_in_last_write_order(dbconn) -> None:
    ds, catalog, _ = seed_setup(dbconn)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(frame(event("1", "1"), event("1", "2"), event("2", "1")))
    events.store_chunk(frame(event("1", "1", ip="2.2.2.2")))
    data = events.get_data()
    assert list(zip(data["user_id"], data["event_id"], strict=False)) == [("1", "2"), ("2", "1"), ("1", "1")]
    subset = events.get_data(pd.DataFrame({"user_id": ["1"]}))
    assert list(subset["event_id"]) == ["2", "1"]


def test_catalog_unknown_table_lists_known_tables(dbconn) -> None:
    catalog = seed_catalog(dbconn)
    with pytest.raises(UnknownTableError, match="unknown table 'evnts'; the catalog holds: click_count, events, ip"):
        catalog.get_datatable(DataStore(dbconn), "evnts")


def test_configuration_errors_are_clear(dbconn) -> None:
    catalog = seed_catalog(dbconn)
    ds = DataStore(dbconn)
    with pytest.raises(ConfigurationError, match="two steps are named 'parse_clicks_ip'"):
        build_compute(ds, catalog, Pipeline([BatchTransform(parse_clicks_ip, ["events"], ["click_count", "ip"])] * 2))
    with pytest.raises(ConfigurationError, match="output table 'click_count' lacks transform key column 'event_id'"):
        build_compute(ds, catalog, Pipeline([BatchTransform(parse_clicks_ip, ["events"], ["click_count", "ip"], transform_keys=["user_id", "event_id"])]))


def test_metadata_tables_are_created_idempotently(dbconn) -> None:
    for _ in range(2):
        ds, catalog, steps = seed_setup(dbconn)
        catalog.get_datatable(ds, "events").store_chunk(frame(event("1", "1")))
        run_steps(ds, steps)
    assert as_dict(catalog.get_datatable(ds, "click_count").get_data(), "user_id", "click_count") == {"1": 1}


def test_large_key_sets_go_through_temp_tables(dbconn) -> None:
    """Thousands of two-column keys (PostgreSQL rejects long row-value IN lists)."""
    ds, catalog, steps = seed_setup(dbconn)
    events = catalog.get_datatable(ds, "events")
    df = pd.DataFrame([event(f"u{i % 3000}", f"e{i}") for i in range(6000)])
    assert len(events.store_chunk(df)) == 6000
    assert len(events.store_chunk(df)) == 0  # 6000 keys looked up, none changed
    run_steps(ds, steps)
    assert catalog.get_datatable(ds, "click_count").get_size() == 3000
    gone = events.delete_by_idx(pd.DataFrame({"user_id": [f"u{i}" for i in range(2500)]}))
    assert len(gone) == 5000
    assert len(events.get_data(pd.DataFrame({"user_id": [f"u{i}" for i in range(3000)]}))) == 1000
    summary = run_steps(ds, steps)
    assert summary.steps[0].keys_processed == 2500
    assert catalog.get_datatable(ds, "click_count").get_size() == 500


def test_bulk_insert_round_trips_awkward_values(dbconn) -> None:
    """Enough rows for PostgreSQL's COPY path: escapes, NULLs, JSON, booleans, floats, times."""
    import datetime as dt

    from sqlalchemy import JSON, Boolean, DateTime, Float

    schema = [
        Column("k", Integer(), primary_key=True),
        Column("s", String()),
        Column("j", JSON()),
        Column("b", Boolean()),
        Column("f", Float()),
        Column("t", DateTime()),
    ]
    dt_ = Catalog({"odd": Table(TableStoreDB("odd", dbconn, schema))}).get_datatable(DataStore(dbconn), "odd")
    texts = ["tab\there", "new\nline", "back\\slash", "", "\\N", "quote\"'", "ünï", None]
    jsons = [{"a": [1, 2], "b": "x\ty"}, "a json string", [1, None], None, 3.5]
    n = 700
    df = pd.DataFrame(
        {
            "k": range(n),
            "s": [texts[i % len(texts)] for i in range(n)],
            "j": [jsons[i % len(jsons)] for i in range(n)],
            "b": [i % 3 == 0 for i in range(n)],
            "f": [float(i) / 7 if i % 5 else None for i in range(n)],
            "t": [dt.datetime(2026, 1, 1, 12, 0, i % 60) for i in range(n)],
        }
    )
    assert len(dt_.store_chunk(df)) == n
    got = dt_.get_data().sort_values("k").reset_index(drop=True)
    assert got["s"].tolist() == df["s"].tolist()
    assert got["j"].tolist() == df["j"].tolist()
    assert got["b"].tolist() == df["b"].tolist()
    assert [None if pd.isna(v) else round(v, 9) for v in got["f"]] == [None if pd.isna(v) else round(v, 9) for v in df["f"]]
    assert [pd.Timestamp(v).to_pydatetime() for v in got["t"]] == df["t"].tolist()
    assert len(dt_.store_chunk(got)) == 0  # what was read back hashes the same: nothing changed


def test_bulk_insert_falls_back_when_rows_exist_outside_the_metadata(dbconn) -> None:
    schema = [Column("k", Integer(), primary_key=True), Column("v", String())]
    store = TableStoreDB("pre", dbconn, schema)
    dt_ = Catalog({"pre": Table(store)}).get_datatable(DataStore(dbconn), "pre")
    dt_.ensure_ready()
    with dbconn.engine.begin() as c:  # someone else wrote a row the metadata does not know
        c.execute(sa.insert(store.data_table), [{"k": 5, "v": "theirs"}])
    idx = dt_.store_chunk(pd.DataFrame({"k": range(1000), "v": "ours"}))
    assert len(idx) == 1000
    got = dt_.get_data()
    assert len(got) == 1000 and set(got["v"]) == {"ours"}


def test_change_to_a_whole_input_during_a_run_is_not_missed(dbconn) -> None:
    """A config table read once per run: keys processed with the old config stay stale after it changes."""
    state: dict[str, object] = {"calls": 0}

    def scaled(events: pd.DataFrame, config: pd.DataFrame) -> pd.DataFrame:
        state["calls"] = int(state["calls"]) + 1
        if state["calls"] == 1:  # another writer changes the config while the run is under way
            state["config"].store_chunk(pd.DataFrame({"name": ["factor"], "value": [10]}))  # type: ignore[union-attr]
        factor = int(config["value"].iloc[0])
        return events.groupby("user_id", as_index=False).size().assign(score=lambda d: d["size"] * factor)[["user_id", "score"]]

    catalog = config_catalog(dbconn)
    ds = DataStore(dbconn)
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(scaled, ["events", "config"], ["score"], chunk_size=1)]))
    state["config"] = catalog.get_datatable(ds, "config")
    state["config"].store_chunk(pd.DataFrame({"name": ["factor"], "value": [1]}))  # type: ignore[union-attr]
    catalog.get_datatable(ds, "events").store_chunk(frame(event("1", "1"), event("2", "1")))
    run_steps(ds, steps)
    assert sorted(steps[0].get_stale_keys()["user_id"]) == ["1", "2"]  # both saw factor 1, which changed
    run_steps(ds, steps)
    assert as_dict(catalog.get_datatable(ds, "score").get_data(), "user_id", "score") == {"1": 10, "2": 10}
