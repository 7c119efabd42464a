"""Parity with datapipe-core's transform keys: cross joins, key aliases, outputs without the transform keys,
and context by parameter name for BatchTransform functions (issue #12, items 1, 2, 4 and 12)."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from datapipe_dagster import (
    BatchTransform,
    Catalog,
    ChangeList,
    ConfigurationError,
    DataStore,
    DBConn,
    Input,
    Output,
    Pipeline,
    RowTransform,
    Table,
    TableStoreDB,
    build_compute,
    build_definitions,
    run_steps,
    run_steps_changelist,
)
from datapipe_dagster.compute.partitioning import key_buckets

I = sa.Integer  # noqa: E741


def col(name: str, pk: bool = False) -> sa.Column:
    return sa.Column(name, I, primary_key=pk)


def tables(dbconn: DBConn, **schemas: list[sa.Column]) -> Catalog:
    return Catalog({n: Table(TableStoreDB(n, dbconn, cols)) for n, cols in schemas.items()})


def cross(*dfs: pd.DataFrame) -> pd.DataFrame:
    out = dfs[0]
    for d in dfs[1:]:
        out = out.merge(d, how="cross")
    return out


def rows(dt, keys: list[str]) -> list[tuple]:  # noqa: ANN001
    df = dt.get_data()
    return sorted(map(tuple, df[keys].to_numpy().tolist())) if len(df) else []


def stale(step) -> list[tuple]:  # noqa: ANN001
    df = step.get_stale_keys(advance_watermark=False)
    return sorted(map(tuple, df[step.transform_keys].to_numpy().tolist()))


# ---------------------------------------------------------------- 1. cross-join transform keys


def cross_setup(dbconn: DBConn, func: Any = cross, name: str = "lxr", ds: DataStore | None = None):  # noqa: ANN201
    cat = tables(
        dbconn,
        left=[col("id_left", True), col("a")],
        right=[col("id_right", True), col("b")],
        lxr=[col("id_left", True), col("id_right", True), col("a"), col("b")],
    )
    ds = ds or DataStore(dbconn)
    bt = BatchTransform(func, ["left", "right"], ["lxr"], transform_keys=["id_left", "id_right"], name=name)
    (step,) = build_compute(ds, cat, Pipeline([bt]))
    return ds, step, *(cat.get_datatable(ds, n) for n in ("left", "right", "lxr"))


def lr(ids: list[int], name: str, value: str) -> pd.DataFrame:
    return pd.DataFrame({name: ids, value: [i * 10 for i in ids]})


def test_cross_join_processes_the_product_and_a_change_makes_stale_exactly_its_keys(dbconn) -> None:
    ds, step, left, right, out = cross_setup(dbconn)
    left.store_chunk(lr([1, 2, 3], "id_left", "a"))
    right.store_chunk(lr([7, 8], "id_right", "b"))
    assert len(stale(step)) == 6
    assert run_steps(ds, [step]).ok
    want = cross(left.get_data(), right.get_data())
    assert rows(out, ["id_left", "id_right", "a", "b"]) == sorted(map(tuple, want[["id_left", "id_right", "a", "b"]].to_numpy().tolist()))
    assert stale(step) == []

    left.store_chunk(pd.DataFrame({"id_left": [2], "a": [99]}))
    assert stale(step) == [(2, 7), (2, 8)]
    right.store_chunk(lr([9], "id_right", "b"))
    assert stale(step) == [(1, 9), (2, 7), (2, 8), (2, 9), (3, 9)]
    res = run_steps(ds, [step])
    assert res["lxr"].keys_processed == 5 and stale(step) == []
    assert len(out.get_data()) == 9 and set(out.get_data().query("id_left == 2")["a"]) == {99}

    # A removed left row removes its keys' outputs; a removed right row too.
    left.delete_by_idx(pd.DataFrame({"id_left": [3]}))
    assert stale(step) == [(3, 7), (3, 8), (3, 9)]
    right.delete_by_idx(pd.DataFrame({"id_right": [7]}))
    run_steps(ds, [step])
    assert rows(out, ["id_left", "id_right"]) == [(1, 8), (1, 9), (2, 8), (2, 9)]
    assert stale(step) == []


def test_cross_join_removes_keys_whose_values_are_gone_from_both_inputs(dbconn) -> None:
    ds, step, left, right, out = cross_setup(dbconn)
    left.store_chunk(lr([1, 2], "id_left", "a"))
    right.store_chunk(lr([7, 8], "id_right", "b"))
    run_steps(ds, [step])
    left.delete_by_idx(pd.DataFrame({"id_left": [2]}))
    right.delete_by_idx(pd.DataFrame({"id_right": [8]}))
    assert (2, 8) in stale(step)  # neither side is live: only the transform state knows the key
    run_steps(ds, [step])
    assert rows(out, ["id_left", "id_right"]) == [(1, 7)]


def test_cross_join_changelist_path(dbconn) -> None:
    ds, step, left, right, out = cross_setup(dbconn)
    right.store_chunk(lr([7, 8], "id_right", "b"))
    changed = left.store_chunk(lr([1, 2], "id_left", "a"))
    res = run_steps_changelist(ds, [step], ChangeList.create("left", changed))
    assert rows(out, ["id_left", "id_right"]) == [(1, 7), (1, 8), (2, 7), (2, 8)]
    assert res["lxr"].keys_processed == 4
    changed = left.store_chunk(pd.DataFrame({"id_left": [1], "a": [5]}))
    res = run_steps_changelist(ds, [step], ChangeList.create("left", changed))
    assert res["lxr"].keys_processed == 2 and set(out.get_data().query("id_left == 1")["a"]) == {5}
    left.store_chunk(pd.DataFrame({"id_left": [1], "a": [6]}))
    ev = step.eval(pd.DataFrame({"id_left": [1], "id_right": [7]}))  # one key of the product, nothing written
    assert ev.outputs["lxr"].updated[["id_left", "id_right", "a"]].to_numpy().tolist() == [[1, 7, 6]]
    assert set(out.get_data().query("id_left == 1")["a"]) == {5}
    run_steps(ds, [step])
    gone = left.delete_by_idx(pd.DataFrame({"id_left": [2]}))
    run_steps_changelist(ds, [step], ChangeList.create("left", gone))
    assert rows(out, ["id_left", "id_right"]) == [(1, 7), (1, 8)]


def test_cross_join_drops_product_rows_outside_the_chunk_and_refuses_foreign_keys(dbconn) -> None:
    calls: list[int] = []

    def product(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
        calls.append(len(left) * len(right))
        return cross(left, right)

    ds, step, left, right, out = cross_setup(dbconn, product, name="product")
    left.store_chunk(lr([1, 2, 3], "id_left", "a"))
    right.store_chunk(lr([7, 8, 9], "id_right", "b"))
    step.chunk_size = 4  # chunks are not rectangles: the product returns keys of other chunks
    assert run_steps(ds, [step]).ok
    assert len(out.get_data()) == 9 and stale(step) == []
    assert max(calls) <= 2 * 3  # keys are sorted: a chunk of 4 spans at most 2 left values

    def foreign(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
        return cross(left, right).assign(id_left=100)

    ds, step, left, right, out = cross_setup(dbconn, foreign, name="foreign")
    res = run_steps(ds, [step])
    assert not res.ok and "id_left=100" in res["foreign"].failed["error"].iloc[0]


def test_cross_join_three_inputs_and_overlapping_factors(dbconn) -> None:
    cat = tables(
        dbconn,
        a=[col("ia", True), col("x")],
        b=[col("ib", True), col("y")],
        c=[col("ic", True), col("z")],
        abc=[col("ia", True), col("ib", True), col("ic", True), col("s")],
        ab=[col("ia", True), col("ib", True)],
        bc=[col("ib", True), col("ic", True)],
        joined=[col("ia", True), col("ib", True), col("ic", True)],
    )
    ds = DataStore(dbconn)

    def total(a: pd.DataFrame, b: pd.DataFrame, c: pd.DataFrame) -> pd.DataFrame:
        df = cross(a, b, c)
        return df.assign(s=df["x"] + df["y"] + df["z"])[["ia", "ib", "ic", "s"]]

    def join(ab: pd.DataFrame, bc: pd.DataFrame) -> pd.DataFrame:
        return ab.merge(bc, on="ib")

    steps = build_compute(
        ds,
        cat,
        Pipeline(
            [
                BatchTransform(total, ["a", "b", "c"], ["abc"], transform_keys=["ia", "ib", "ic"]),
                BatchTransform(join, ["ab", "bc"], ["joined"], transform_keys=["ia", "ib", "ic"]),
            ]
        ),
    )
    t3, tj = steps
    a, b, c, ab, bc, joined = (cat.get_datatable(ds, n) for n in ("a", "b", "c", "ab", "bc", "joined"))
    a.store_chunk(pd.DataFrame({"ia": [1, 2], "x": [1, 2]}))
    b.store_chunk(pd.DataFrame({"ib": [1, 2], "y": [10, 20]}))
    c.store_chunk(pd.DataFrame({"ic": [1, 2, 3], "z": [100, 200, 300]}))
    run_steps(ds, [t3])
    assert len(cat.get_datatable(ds, "abc").get_data()) == 12
    b.store_chunk(pd.DataFrame({"ib": [2], "y": [50]}))
    assert stale(t3) == [(ia, 2, ic) for ia in (1, 2) for ic in (1, 2, 3)]
    c.delete_by_idx(pd.DataFrame({"ic": [3]}))
    run_steps(ds, [t3])
    got = cat.get_datatable(ds, "abc").get_data()
    assert len(got) == 8 and set(got.query("ib == 2")["s"]) == {151, 152, 251, 252}

    # ab(ia, ib) and bc(ib, ic) share ib: the keys are their join, not their product.
    ab.store_chunk(pd.DataFrame({"ia": [1, 2], "ib": [1, 2]}))
    bc.store_chunk(pd.DataFrame({"ib": [1, 1, 3], "ic": [5, 6, 7]}))
    assert stale(tj) == [(1, 1, 5), (1, 1, 6)]
    run_steps(ds, [tj])
    bc.store_chunk(pd.DataFrame({"ib": [2], "ic": [8]}))
    assert stale(tj) == [(2, 2, 8)]
    ab.delete_by_idx(pd.DataFrame({"ia": [1]}))
    assert stale(tj) == [(1, 1, 5), (1, 1, 6), (2, 2, 8)]
    run_steps(ds, [tj])
    assert rows(joined, ["ia", "ib", "ic"]) == [(2, 2, 8)]


def test_cross_join_stale_queries_use_indexes_not_the_product(tmp_path) -> None:
    """SQLite's plan for every stale-key query after one changed row: the transform state is probed by
    index, never scanned (the state holds the whole product)."""
    dbconn = DBConn(f"sqlite:///{tmp_path / 'plan.sqlite'}")
    ds, step, left, right, _ = cross_setup(dbconn)
    left.store_chunk(lr(list(range(20)), "id_left", "a"))
    right.store_chunk(lr(list(range(20)), "id_right", "b"))
    run_steps(ds, [step])
    statements: list[tuple[str, Any]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ANN202
        if "transform_meta" in statement and statement.lstrip().upper().startswith(("WITH", "SELECT")):
            statements.append((statement, parameters))

    for changed, n_stale in ((left, 20), (right, 39)):  # (3, *), then also (*, 3)
        changed.store_chunk(pd.DataFrame({changed.primary_keys[0]: [3], "ab"[changed is right]: [1]}))
        sa.event.listen(dbconn.engine, "before_cursor_execute", capture)
        try:
            assert len(step.get_stale_keys(advance_watermark=False)) == n_stale
        finally:
            sa.event.remove(dbconn.engine, "before_cursor_execute", capture)
    assert statements
    state = step.meta.table.name
    with dbconn.engine.connect() as conn:
        for stmt, params in statements:
            plan = " | ".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + stmt, params).fetchall())
            assert f"SCAN {state}" not in plan, plan


def test_cross_join_partition_materializes_only_its_bucket(tmp_path) -> None:
    dbconn = DBConn(f"sqlite:///{tmp_path / 'p.sqlite'}")
    cat = tables(
        dbconn,
        left=[col("id_left", True), col("a")],
        right=[col("id_right", True), col("b")],
        lxr=[col("id_left", True), col("id_right", True), col("a"), col("b")],
    )
    ds = DataStore(dbconn)
    pipeline = Pipeline([BatchTransform(cross, ["left", "right"], ["lxr"], transform_keys=["id_left", "id_right"])])
    defs = build_definitions(cat, pipeline, ds, partitions=4)
    cat.get_datatable(ds, "left").store_chunk(lr(list(range(6)), "id_left", "a"))
    cat.get_datatable(ds, "right").store_chunk(lr(list(range(5)), "id_right", "b"))
    job = defs.resolve_implicit_job_def_def_for_assets([dg.AssetKey("lxr")])
    assert job is not None
    with dg.instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("lxr")], partition_key="02").success
    got = cat.get_datatable(ds, "lxr").get_data()
    every = cross(pd.DataFrame({"id_left": range(6)}), pd.DataFrame({"id_right": range(5)}))
    want = every.loc[key_buckets(every, ["id_left", "id_right"], 4) == 2]
    assert 0 < len(got) < 30
    assert sorted(map(tuple, got[["id_left", "id_right"]].to_numpy().tolist())) == sorted(map(tuple, want.to_numpy().tolist()))


def test_cross_join_refuses_a_key_no_input_carries(dbconn) -> None:
    cat = tables(dbconn, left=[col("id_left", True)], right=[col("id_right", True)], out=[col("id_left", True), col("k", True)])
    with pytest.raises(ConfigurationError, match=r"no input has transform key column 'k'.*left\['id_left'\]"):
        build_compute(DataStore(dbconn), cat, Pipeline([BatchTransform(cross, ["left", "right"], ["out"], transform_keys=["id_left", "k"])]))


# ---------------------------------------------------------------- 2. key aliases


def alias_setup(dbconn: DBConn, func: Any = None, **kw: Any):  # noqa: ANN201
    cat = Catalog(
        {
            "users": Table(TableStoreDB("users", dbconn, [sa.Column("user_id", sa.String, primary_key=True), sa.Column("name", sa.String)])),
            "posts": Table(
                TableStoreDB(
                    "posts",
                    dbconn,
                    [sa.Column("author_id", sa.String, primary_key=True), col("post_id", True), sa.Column("text", sa.String)],
                )
            ),
            "user_posts": Table(TableStoreDB("user_posts", dbconn, [sa.Column("user_id", sa.String, primary_key=True), sa.Column("name", sa.String), col("n_posts")])),
        }
    )
    seen: list[list[str]] = []

    def count_posts(users: pd.DataFrame, posts: pd.DataFrame) -> pd.DataFrame:
        seen.append(list(posts.columns))
        n = posts.groupby("author_id").size().rename("n_posts").reset_index().rename(columns={"author_id": "user_id"})
        out = users.merge(n, on="user_id", how="left").fillna({"n_posts": 0})
        return out.astype({"n_posts": "int64"})

    ds = DataStore(dbconn)
    bt = BatchTransform(func or count_posts, ["users", Input("posts", keys={"user_id": "author_id"})], ["user_posts"], **kw)
    (step,) = build_compute(ds, cat, Pipeline([bt]))
    return ds, step, cat, seen


def n_posts(cat: Catalog, ds: DataStore) -> dict[str, int]:
    df = cat.get_datatable(ds, "user_posts").get_data()
    return dict(zip(df["user_id"], df["n_posts"], strict=True))


def test_key_alias_feeds_a_transform_keyed_by_another_name(dbconn) -> None:
    ds, step, cat, seen = alias_setup(dbconn)
    assert step.transform_keys == ["user_id"]  # the default keys see posts' author_id as user_id
    users, posts = cat.get_datatable(ds, "users"), cat.get_datatable(ds, "posts")
    users.store_chunk(pd.DataFrame({"user_id": ["u1", "u2"], "name": ["A", "B"]}))
    posts.store_chunk(pd.DataFrame({"author_id": ["u1", "u1", "u2"], "post_id": [1, 2, 3], "text": ["x", "y", "z"]}))
    run_steps(ds, [step])
    assert n_posts(cat, ds) == {"u1": 2, "u2": 1}
    assert seen[0] == ["author_id", "post_id", "text"]  # the function sees the table's own column names

    posts.store_chunk(pd.DataFrame({"author_id": ["u2"], "post_id": [4], "text": ["w"]}))
    assert stale(step) == [("u2",)]
    posts.delete_by_idx(pd.DataFrame({"author_id": ["u1"], "post_id": [1]}))
    assert stale(step) == [("u1",), ("u2",)]
    run_steps(ds, [step])
    assert n_posts(cat, ds) == {"u1": 1, "u2": 2}

    changed = posts.store_chunk(pd.DataFrame({"author_id": ["u1"], "post_id": [5], "text": ["v"]}))
    res = run_steps_changelist(ds, [step], ChangeList.create("posts", changed))
    assert res["count_posts"].keys_processed == 1 and n_posts(cat, ds)["u1"] == 2
    ev = step.eval(pd.DataFrame({"user_id": ["u2"]}))
    assert ev.outputs["user_posts"].inserted.empty and ev.outputs["user_posts"].updated.empty


def test_key_alias_as_the_only_input(dbconn) -> None:
    cat = tables(dbconn, src=[col("author", True), col("n", True)], out=[col("user_id", True), col("total")])
    ds = DataStore(dbconn)

    def total(src: pd.DataFrame) -> pd.DataFrame:
        return src.groupby("author", as_index=False)["n"].sum().rename(columns={"author": "user_id", "n": "total"})

    (step,) = build_compute(ds, cat, Pipeline([BatchTransform(total, [Input("src", keys={"user_id": "author"})], ["out"])]))
    src = cat.get_datatable(ds, "src")
    src.store_chunk(pd.DataFrame({"author": [1, 1, 2], "n": [1, 2, 3]}))
    run_steps(ds, [step])
    src.store_chunk(pd.DataFrame({"author": [2], "n": [4]}))
    assert stale(step) == [(2,)]
    run_steps(ds, [step])
    assert rows(cat.get_datatable(ds, "out"), ["user_id", "total"]) == [(1, 3), (2, 7)]


def test_the_same_table_twice_under_different_aliases(dbconn) -> None:
    """datapipe's example: enrich both sides of a subscription from the users table."""
    s = sa.String
    cat = Catalog(
        {
            "users": Table(TableStoreDB("users", dbconn, [sa.Column("user_id", s, primary_key=True), sa.Column("name", s)])),
            "subs": Table(TableStoreDB("subs", dbconn, [sa.Column("user_id", s, primary_key=True), sa.Column("sub_user_id", s, primary_key=True)])),
            "pairs": Table(
                TableStoreDB(
                    "pairs",
                    dbconn,
                    [sa.Column("user_id", s, primary_key=True), sa.Column("sub_user_id", s, primary_key=True), sa.Column("names", s)],
                )
            ),
        }
    )

    def enrich(subs: pd.DataFrame, users: pd.DataFrame, sub_users: pd.DataFrame) -> pd.DataFrame:
        assert list(sub_users.columns) == ["user_id", "name"]  # the table's own names
        df = subs.merge(users, on="user_id").merge(sub_users.rename(columns={"user_id": "sub_user_id", "name": "sub"}), on="sub_user_id")
        return df.assign(names=df["name"] + "->" + df["sub"])[["user_id", "sub_user_id", "names"]]

    ds = DataStore(dbconn)
    inputs = ["subs", "users", Input("users", keys={"sub_user_id": "user_id"})]
    bt = BatchTransform(enrich, inputs, ["pairs"], transform_keys=["user_id", "sub_user_id"])
    (step,) = build_compute(ds, cat, Pipeline([bt]))
    specs = build_definitions(cat, Pipeline([bt]), ds).resolve_all_asset_specs()
    assert [d.asset_key for s in specs if s.key == dg.AssetKey("pairs") for d in s.deps] == [dg.AssetKey("subs"), dg.AssetKey("users")]
    users, subs, pairs = (cat.get_datatable(ds, n) for n in ("users", "subs", "pairs"))
    users.store_chunk(pd.DataFrame({"user_id": ["a", "b", "c"], "name": ["A", "B", "C"]}))
    subs.store_chunk(pd.DataFrame({"user_id": ["a", "b", "c"], "sub_user_id": ["b", "c", "a"]}))
    run_steps(ds, [step])
    assert rows(pairs, ["user_id", "names"]) == [("a", "A->B"), ("b", "B->C"), ("c", "C->A")]
    users.store_chunk(pd.DataFrame({"user_id": ["b"], "name": ["Bee"]}))
    assert stale(step) == [("a", "b"), ("b", "c")]  # b on either side
    changed = users.store_chunk(pd.DataFrame({"user_id": ["c"], "name": ["Cee"]}))
    run_steps_changelist(ds, [step], ChangeList.create("users", changed))
    run_steps(ds, [step])
    assert rows(pairs, ["user_id", "names"]) == [("a", "A->Bee"), ("b", "Bee->Cee"), ("c", "Cee->A")]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"user_id": "writer"}, r"input 'posts' has no column 'writer' \(mapped to transform key 'user_id'\); its primary-key columns are \['author_id', 'post_id'\]"),
        ({"user_id": "text"}, r"maps transform key 'user_id' to 'text', a data column.*re-keyed by 'text'"),
        ({"owner": "author_id"}, r"maps 'owner' to 'author_id', but 'owner' is not a transform key \['user_id'\]"),
    ],
)
def test_key_alias_errors_name_the_table_and_column(dbconn, keys: dict, message: str) -> None:
    cat = Catalog(
        {
            "posts": Table(TableStoreDB("posts", dbconn, [sa.Column("author_id", sa.String, primary_key=True), col("post_id", True), sa.Column("text", sa.String)])),
            "out": Table(TableStoreDB("out", dbconn, [sa.Column("user_id", sa.String, primary_key=True)])),
        }
    )
    bt = BatchTransform(lambda p: p, [Input("posts", keys=keys)], ["out"], transform_keys=["user_id"], name="t")
    with pytest.raises(ConfigurationError, match=message):
        build_compute(DataStore(dbconn), cat, Pipeline([bt]))


def test_inputs_and_outputs_must_be_names_or_specs() -> None:
    with pytest.raises(ConfigurationError, match=r"an input must be a table name or Input\(...\), got int: 3"):
        BatchTransform(cross, ["a", 3], ["b"])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match=r"an output must be a table name or Output"):
        BatchTransform(cross, ["a"], [Input("b")])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match=r"RowTransform 'cross': inputs and outputs are table names"):
        RowTransform(cross, [Input("a", keys={"x": "y"})], ["b"])  # type: ignore[list-item]


# ---------------------------------------------------------------- 3. outputs without the transform keys


def model_setup(dbconn: DBConn, func: Any = None, cleanup: bool = False, ds: DataStore | None = None):  # noqa: ANN201
    cat = Catalog(
        {
            "samples": Table(TableStoreDB("samples", dbconn, [sa.Column("dataset", sa.String, primary_key=True), col("sample_id", True), col("x")])),
            "models": Table(TableStoreDB("models", dbconn, [sa.Column("model_id", sa.String, primary_key=True), sa.Column("mean", sa.Float)])),
        }
    )

    def train(samples: pd.DataFrame) -> pd.DataFrame:
        m = samples.groupby("dataset", as_index=False)["x"].mean()
        return pd.DataFrame({"model_id": "model-" + m["dataset"], "mean": m["x"].astype(float)})

    ds = ds or DataStore(dbconn)
    out = Output("models", cleanup=False) if not cleanup else "models"
    bt = BatchTransform(func or train, ["samples"], [out], transform_keys=["dataset"], name="train")
    (step,) = build_compute(ds, cat, Pipeline([bt]))
    return ds, step, cat.get_datatable(ds, "samples"), cat.get_datatable(ds, "models")


def means(models) -> dict[str, float]:  # noqa: ANN001
    df = models.get_data()
    return dict(zip(df["model_id"], df["mean"], strict=True))


def test_output_without_transform_keys_is_upserted_and_never_deleted(dbconn) -> None:
    ds, step, samples, models = model_setup(dbconn)
    samples.store_chunk(pd.DataFrame({"dataset": ["d1", "d1", "d2"], "sample_id": [1, 2, 3], "x": [1, 3, 5]}))
    run_steps(ds, [step])
    assert means(models) == {"model-d1": 2.0, "model-d2": 5.0}
    samples.store_chunk(pd.DataFrame({"dataset": ["d1"], "sample_id": [4], "x": [8]}))
    assert stale(step) == [("d1",)]
    run_steps(ds, [step])
    assert means(models) == {"model-d1": 4.0, "model-d2": 5.0}
    samples.delete_by_idx(pd.DataFrame({"dataset": ["d2"]}))
    run_steps(ds, [step])
    assert means(models) == {"model-d1": 4.0, "model-d2": 5.0}  # a key that stops producing keeps its rows
    assert stale(step) == []
    ev = step.eval(pd.DataFrame({"dataset": ["d1"]}))
    assert ev.outputs["models"].deleted.empty


def test_output_without_transform_keys_is_refused_without_cleanup_false(dbconn) -> None:
    with pytest.raises(ConfigurationError, match=r"output table 'models' lacks transform key column 'dataset'.*Output\('models', cleanup=False\)"):
        model_setup(dbconn, cleanup=True)


# ---------------------------------------------------------------- 4. context by parameter name


def test_batch_transform_gets_ds_idx_and_run_config_by_parameter_name(dbconn) -> None:
    got: list[dict[str, Any]] = []

    def scaled(src: pd.DataFrame, ds, idx: pd.DataFrame, run_config: dict, factor: int) -> pd.DataFrame:  # noqa: ANN001
        got.append({"ds": ds, "idx": sorted(idx["id"]), "run_config": run_config})
        return src.assign(y=src["x"] * factor * run_config.get("mult", 1))[["id", "y"]]

    cat = tables(dbconn, src=[col("id", True), col("x")], dst=[col("id", True), col("y")])
    ds = DataStore(dbconn)
    (step,) = build_compute(ds, cat, Pipeline([BatchTransform(scaled, ["src"], ["dst"], kwargs={"factor": 2})]))
    cat.get_datatable(ds, "src").store_chunk(pd.DataFrame({"id": [1, 2], "x": [1, 2]}))
    step.process_keys(pd.DataFrame({"id": [1, 2]}), run_config={"mult": 5})
    assert got == [{"ds": ds, "idx": [1, 2], "run_config": {"mult": 5}}]
    assert rows(cat.get_datatable(ds, "dst"), ["id", "y"]) == [(1, 10), (2, 20)]
    run_steps(ds, [step])  # nothing stale, no call
    step.process_keys(pd.DataFrame({"id": [1]}))
    assert got[-1]["run_config"] == {} and got[-1]["idx"] == [1]
    ev = step.eval(pd.DataFrame({"id": [2]}), run_config={"mult": 1})
    assert ev.outputs["dst"].updated["y"].tolist() == [4]


def test_an_input_named_like_a_context_parameter_is_data(dbconn) -> None:
    cat = tables(dbconn, src=[col("id", True), col("x")], dst=[col("id", True), col("y")])
    ds = DataStore(dbconn)

    def f(idx: pd.DataFrame) -> pd.DataFrame:  # the first positional parameter is the input frame
        return idx.rename(columns={"x": "y"})

    (step,) = build_compute(ds, cat, Pipeline([BatchTransform(f, ["src"], ["dst"])]))
    cat.get_datatable(ds, "src").store_chunk(pd.DataFrame({"id": [1], "x": [3]}))
    assert run_steps(ds, [step]).ok
    assert rows(cat.get_datatable(ds, "dst"), ["id", "y"]) == [(1, 3)]


def test_kwargs_clashing_with_a_context_parameter_are_refused() -> None:
    def f(src: pd.DataFrame, run_config: dict) -> pd.DataFrame:
        return src

    with pytest.raises(ConfigurationError, match=r"BatchTransform 'f': kwargs \['run_config'\] clash"):
        BatchTransform(f, ["src"], ["dst"], kwargs={"run_config": {}})


def test_cleanup_false_output_in_a_dagster_partition(tmp_path) -> None:
    dbconn = DBConn(f"sqlite:///{tmp_path / 'm.sqlite'}")
    ds, step, samples, models = model_setup(dbconn)
    cat = Catalog({n: Table(dt.store) for n, dt in (("samples", samples), ("models", models))})
    pipeline = Pipeline([BatchTransform(step.func, ["samples"], [Output("models", cleanup=False)], transform_keys=["dataset"], name="train")])
    defs = build_definitions(cat, pipeline, ds, partitions=2)
    datasets = [f"d{i}" for i in range(6)]
    samples.store_chunk(pd.DataFrame({"dataset": datasets, "sample_id": range(6), "x": range(6)}))
    bucket = key_buckets(pd.DataFrame({"dataset": datasets}), ["dataset"], 2)
    job = defs.resolve_implicit_job_def_def_for_assets([dg.AssetKey("models")])
    assert job is not None
    with dg.instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("models")], partition_key="01").success
    assert sorted(means(models)) == sorted(f"model-{d}" for d, b in zip(datasets, bucket, strict=True) if b == 1)
