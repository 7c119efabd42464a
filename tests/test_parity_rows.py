"""Parity with seed 000's item-by-item controls: PipeBreak, PipeError, prepare/finish, context by name."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from datapipe_dagster import (
    Catalog,
    ConfigurationError,
    DataStore,
    DBConn,
    PipeBreak,
    PipeError,
    Pipeline,
    RowTransform,
    Table,
    TableStoreDB,
    build_compute,
    run_steps,
)

ID = sa.Column("id", sa.Integer, primary_key=True)


def setup(dbconn: DBConn, func, **kw: Any):  # noqa: ANN001, ANN201
    cat = Catalog(
        {
            "src": Table(TableStoreDB("src", dbconn, [ID, sa.Column("x", sa.Integer)])),
            "dst": Table(TableStoreDB("dst", dbconn, [ID, sa.Column("y", sa.Integer)])),
        }
    )
    ds = DataStore(dbconn)
    (step,) = build_compute(ds, cat, Pipeline([RowTransform(func, inputs=["src"], outputs=["dst"], **kw)]))
    src = cat.get_datatable(ds, "src")
    dst = cat.get_datatable(ds, "dst")
    return ds, step, src, dst


def ys(dst) -> dict[int, int]:  # noqa: ANN001
    df = dst.get_data()
    return dict(zip(df["id"].tolist(), df["y"].tolist(), strict=True))


def stale(step) -> list[int]:  # noqa: ANN001
    return sorted(step.get_stale_keys(advance_watermark=False)["id"].tolist())


class Switch:
    """A function that raises ``exc`` on row ``at`` while armed."""

    def __init__(self, exc: type[Exception], at: int):
        self.exc, self.at, self.armed = exc, at, True

    def __call__(self, row: dict) -> dict:
        if self.armed and row["id"] == self.at:
            raise self.exc(f"stop at {row['id']}")
        return {"y": row["x"] * 10}


def test_pipe_break_keeps_rows_done_and_leaves_the_rest_for_the_next_run(dbconn) -> None:
    f = Switch(PipeBreak, at=3)
    ds, step, src, dst = setup(dbconn, f, chunk_size=10, name="brk")
    src.store_chunk(pd.DataFrame({"id": [1, 2, 3, 4, 5], "x": [1, 2, 3, 4, 5]}))
    res = run_steps(ds, [step])
    assert ys(dst) == {1: 10, 2: 20}  # rows before the break are written
    assert res.ok and res["brk"].keys_processed == 2  # a break is not an error
    assert stale(step) == [3, 4, 5]  # the current row and the rest are left for the next run
    f.armed = False
    res = run_steps(ds, [step])
    assert res["brk"].keys_processed == 3
    assert ys(dst) == {1: 10, 2: 20, 3: 30, 4: 40, 5: 50}


def test_pipe_break_stops_the_run_across_chunks(dbconn) -> None:
    f = Switch(PipeBreak, at=3)
    ds, step, src, dst = setup(dbconn, f, chunk_size=2, name="brk")
    src.store_chunk(pd.DataFrame({"id": [1, 2, 3, 4, 5], "x": [1, 2, 3, 4, 5]}))
    res = step.process_keys(pd.DataFrame({"id": [1, 2, 3, 4, 5]}))  # chunks [1, 2], [3, 4], [5]
    assert res.keys_processed == 2
    assert ys(dst) == {1: 10, 2: 20}
    assert stale(step) == [3, 4, 5]  # the chunk after the break did not run either


def test_pipe_error_rolls_back_the_whole_chunk_and_marks_its_keys_failed(dbconn) -> None:
    ds, step, src, dst = setup(dbconn, lambda row: {"y": row["x"]}, chunk_size=10, name="err")
    src.store_chunk(pd.DataFrame({"id": [1, 2, 3], "x": [1, 2, 3]}))
    run_steps(ds, [step])
    before = dst.get_data()
    f = Switch(PipeError, at=3)
    ds, step, src, dst = setup(dbconn, f, chunk_size=10, name="err")
    src.store_chunk(pd.DataFrame({"id": [1, 2, 3, 4], "x": [7, 7, 7, 7]}))
    res = run_steps(ds, [step])
    pd.testing.assert_frame_equal(dst.get_data(), before)  # nothing of the chunk was written
    assert not res.ok
    failed = res["err"].failed
    assert sorted(failed["id"].tolist()) == [1, 2, 3, 4]
    assert failed["error"].str.contains("PipeError: stop at 3").all()
    assert step.count_failed() == 4
    f.armed = False
    assert run_steps(ds, [step]).ok  # retried on the next run
    assert ys(dst) == {1: 70, 2: 70, 3: 70, 4: 70}


def test_prepare_and_finish_run_once_per_chunk_and_share_a_context(dbconn) -> None:
    calls: list[tuple[str, Any]] = []

    def prepare(rows: list[dict], context) -> list[dict]:  # noqa: ANN001
        calls.append(("prepare", sorted(r["id"] for r in rows)))
        context.model = {"factor": 100}  # e.g. a model opened once per chunk
        return [r for r in rows if r["id"] != 2]  # rows left out are skipped

    def func(row: dict, context) -> dict:  # noqa: ANN001
        return {"y": row["x"] * context.model["factor"]}

    def finish(results: dict, context) -> None:  # noqa: ANN001
        calls.append(("finish", sorted(r["id"] for r in results["dst"])))
        context.model = None

    ds, step, src, dst = setup(dbconn, func, chunk_size=2, prepare=prepare, finish=finish)
    src.store_chunk(pd.DataFrame({"id": [1, 2, 3, 4, 5], "x": [1, 2, 3, 4, 5]}))
    step.process_keys(pd.DataFrame({"id": [1, 2, 3, 4, 5]}))
    assert ys(dst) == {1: 100, 3: 300, 4: 400, 5: 500}
    assert calls == [
        ("prepare", [1, 2]), ("finish", [1]),
        ("prepare", [3, 4]), ("finish", [3, 4]),
        ("prepare", [5]), ("finish", [5]),
    ]
    assert stale(step) == []  # a row prepare leaves out counts as done (like SkipRow)


def test_functions_get_ds_chunk_keys_and_run_config_by_parameter_name(dbconn) -> None:
    seen: list[Any] = []

    def func(row: dict, ds, idx: pd.DataFrame, run_config: dict, scale: int) -> dict:  # noqa: ANN001
        seen.append((type(ds).__name__, sorted(idx["id"].tolist())))
        return {"y": row["x"] * scale * run_config.get("mult", 1)}

    ds, step, src, dst = setup(dbconn, func, chunk_size=2, kwargs={"scale": 2})
    assert step.name == "func"
    src.store_chunk(pd.DataFrame({"id": [1, 2, 3], "x": [1, 2, 3]}))
    step.process_keys(pd.DataFrame({"id": [1, 2, 3]}), run_config={"mult": 5})
    assert ys(dst) == {1: 10, 2: 20, 3: 30}
    assert seen == [("DataStore", [1, 2]), ("DataStore", [1, 2]), ("DataStore", [3])]
    step.process_keys(pd.DataFrame({"id": [1]}))  # run_config is per call
    assert ys(dst) == {1: 2, 2: 20, 3: 30}


def test_context_parameter_names_clashing_with_kwargs_are_refused() -> None:
    def func(row: dict, ds) -> dict:  # noqa: ANN001
        return row

    with pytest.raises(ConfigurationError, match=r"kwargs \['ds'\] clash with the context parameters"):
        RowTransform(func, inputs=["src"], outputs=["dst"], kwargs={"ds": 1})
