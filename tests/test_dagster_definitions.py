"""The shape of the definitions, built without running anything and without opening a connection."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
from test_dagster_support import materialize

from datapipe_dagster import (
    BatchTransform,
    Catalog,
    ComputeStep,
    DataStore,
    DBConn,
    Pipeline,
    PipelineStep,
    StepResult,
    Table,
    TableStoreDB,
    build_definitions,
)
from datapipe_dagster.compute.partitioning import key_buckets
from datapipe_dagster.dagster import BucketPartitions, datapipe_specs
from datapipe_dagster.dagster.inprocess import tick_sensor
from datapipe_dagster.errors import ConfigurationError


def clicks(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    g = events.assign(click=(events["event_type"] == "click").astype("int64"))
    cc = g.groupby("user_id", as_index=False).agg(click_count=("click", "sum"))
    return cc, events[["user_id", "ip"]].drop_duplicates()


def ip_users(user_ip: pd.DataFrame) -> pd.DataFrame:
    return user_ip.groupby("ip", as_index=False).agg(n_users=("user_id", "nunique"))


def totals(click_count: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {"metric": ["clicks", "users"], "value": [int(click_count["click_count"].sum()), len(click_count)]}
    )


class CopyStep(ComputeStep):
    """A step that is not a BatchTransform: copies a table (runs through ``run_full``)."""

    def __init__(self, src, dst):  # noqa: ANN001
        self.name = "copy_users"
        self.input_dts = [src]
        self.output_dts = [dst]

    def run_full(self):  # noqa: ANN001, ANN201
        df = self.input_dts[0].get_data()[["user_id", "click_count"]]
        self.output_dts[0].store_chunk(df, processed_idx=self.output_dts[0].get_metadata()[["user_id"]])
        return StepResult(self.name, keys_processed=len(df))

    def run_changelist(self, changelist):  # noqa: ANN001, ANN201
        return self.run_full()


class Copy(PipelineStep):
    def build_compute(self, ds, catalog):  # noqa: ANN001, ANN201
        return [CopyStep(catalog.get_datatable(ds, "click_count"), catalog.get_datatable(ds, "click_copy"))]


def make(dbconn: DBConn) -> tuple[DataStore, Catalog, Pipeline]:
    S, Int = sa.String, sa.Integer  # noqa: N806
    schemas = {
        "events": [
            sa.Column("user_id", Int, primary_key=True),
            sa.Column("event_id", Int, primary_key=True),
            sa.Column("event_type", S),
            sa.Column("ip", S),
        ],
        "click_count": [sa.Column("user_id", Int, primary_key=True), sa.Column("click_count", Int)],
        "user_ip": [sa.Column("user_id", Int, primary_key=True), sa.Column("ip", S, primary_key=True)],
        "ip_users": [sa.Column("ip", S, primary_key=True), sa.Column("n_users", Int)],
        "totals": [sa.Column("metric", S, primary_key=True), sa.Column("value", Int)],
        "click_copy": [sa.Column("user_id", Int, primary_key=True), sa.Column("click_count", Int)],
        "unused_config": [sa.Column("k", S, primary_key=True), sa.Column("v", S)],
    }
    catalog = Catalog(
        {n: Table(TableStoreDB(n, dbconn, cols), description=f"the {n} table") for n, cols in schemas.items()}
    )
    pipeline = Pipeline(
        [
            BatchTransform(clicks, ["events"], ["click_count", "user_ip"]),
            BatchTransform(ip_users, ["user_ip"], ["ip_users"], transform_keys=["ip"]),
            BatchTransform(totals, ["click_count"], ["totals"], transform_keys=[]),
            Copy(),
        ]
    )
    return DataStore(dbconn), catalog, pipeline


K = dg.AssetKey


def test_shape_without_any_connection(tmp_path) -> None:
    path = tmp_path / "never.sqlite"
    for url in (f"sqlite:///{path}", "postgresql+psycopg2://nobody@127.0.0.1:1/nowhere"):
        ds, catalog, pipeline = make(DBConn(url))
        defs = build_definitions(catalog, pipeline, ds, key_prefix="dp", sensor_interval_seconds=15)
        ag = defs.resolve_asset_graph()
        defs.get_repository_def().get_all_jobs()  # what the webserver does on load
        assert not path.exists()
        for dt in ds._tables.values():
            assert dt.table_store.dbconn._engine is None

    names = ["events", "click_count", "user_ip", "ip_users", "totals", "click_copy", "unused_config"]
    assert ag.get_all_asset_keys() == {K(["dp", n]) for n in names}
    # Source tables are declared, not materializable; outputs are materialized by their step.
    assert (
        not ag.get(K(["dp", "events"])).is_executable and not ag.get(K(["dp", "unused_config"])).is_executable
    )
    assert ag.get(K(["dp", "click_count"])).is_executable
    # Lineage.
    assert ag.get(K(["dp", "click_count"])).parent_keys == {K(["dp", "events"])}
    assert ag.get(K(["dp", "ip_users"])).parent_keys == {K(["dp", "user_ip"])}
    assert ag.get(K(["dp", "click_copy"])).parent_keys == {K(["dp", "click_count"])}
    # Partitions: 16 hash buckets for keyed steps, none for keyless and non-keyed steps.
    pdef = ag.get(K(["dp", "click_count"])).partitions_def
    assert pdef.get_partition_keys() == [f"{i:02d}" for i in range(16)]
    assert ag.get(K(["dp", "totals"])).partitions_def is None
    assert ag.get(K(["dp", "click_copy"])).partitions_def is None
    # Different keys hash differently: every upstream bucket may feed any downstream bucket.
    assert isinstance(
        ag.get_partition_mapping(K(["dp", "ip_users"]), K(["dp", "user_ip"])), dg.AllPartitionMapping
    )
    clicks_def = defs.resolve_assets_def(K(["dp", "click_count"]))
    assert clicks_def.keys == {K(["dp", "click_count"]), K(["dp", "user_ip"])}
    assert clicks_def.backfill_policy == dg.BackfillPolicy.single_run()
    cv = clicks_def.code_versions_by_key[K(["dp", "click_count"])]
    assert cv == BatchTransform(clicks, ["events"], ["click_count", "user_ip"]).code_version
    # Checks: one per keyed step, on every output.
    assert ag.asset_check_keys == {
        dg.AssetCheckKey(K(["dp", "click_count"]), "clicks_no_failed_keys"),
        dg.AssetCheckKey(K(["dp", "user_ip"]), "clicks_no_failed_keys"),
        dg.AssetCheckKey(K(["dp", "ip_users"]), "ip_users_no_failed_keys"),
        dg.AssetCheckKey(K(["dp", "totals"]), "totals_no_failed_keys"),
    }
    # Sensors: one per step that inputs can make stale.
    sensors = {s.name: s for s in defs.sensors}
    assert set(sensors) == {
        "clicks_stale_sensor",
        "ip_users_stale_sensor",
        "totals_stale_sensor",
        "copy_users_stale_sensor",
    }
    assert sensors["clicks_stale_sensor"].minimum_interval_seconds == 15
    assert sensors["clicks_stale_sensor"].default_status == dg.DefaultSensorStatus.STOPPED
    # Table metadata: column schema, description, group.
    spec = next(s for s in defs.assets if isinstance(s, dg.AssetSpec) and s.key == K(["dp", "events"]))
    assert [c.name for c in spec.metadata["dagster/column_schema"].columns] == [
        "user_id",
        "event_id",
        "event_type",
        "ip",
    ]
    assert spec.description == "the events table" and spec.group_name == "datapipe"
    assert "datapipe_io_manager" in defs.resources


def test_whole_chain_runs(tmp_path) -> None:
    ds, catalog, pipeline = make(DBConn(f"sqlite:///{tmp_path / 's.sqlite'}"))
    defs = build_definitions(catalog, pipeline, ds, partitions=4)
    ev = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 3],
            "event_id": [1, 2, 3, 4],
            "event_type": ["click", "view", "click", "click"],
            "ip": ["a", "a", "b", "a"],
        }
    )
    catalog.get_datatable(ds, "events").store_chunk(ev)
    rng = {"dagster/asset_partition_range_start": "00", "dagster/asset_partition_range_end": "03"}
    with dg.instance_for_test() as instance:
        materialize(defs, instance, [K("click_count"), K("user_ip")], tags=rng)
        materialize(defs, instance, [K("ip_users")], tags=rng)
        materialize(defs, instance, [K("totals")])
        # A step that is not a BatchTransform: its sensor sees its input change, its run calls run_full.
        res = tick_sensor(defs, instance, "copy_users_stale_sensor")
        assert len(res.run_requests) == 1
        materialize(defs, instance, [K("click_copy")])
    got = catalog.get_datatable(ds, "ip_users").get_data().sort_values("ip").reset_index(drop=True)
    assert got.to_dict("list") == {"ip": ["a", "b"], "n_users": [2, 1]}
    assert catalog.get_datatable(ds, "totals").get_data().set_index("metric")["value"].to_dict() == {
        "clicks": 3,
        "users": 3,
    }
    assert catalog.get_datatable(ds, "click_copy").get_size() == 3


def test_specs_are_pure_and_configurable(tmp_path) -> None:
    ds, catalog, pipeline = make(DBConn(f"sqlite:///{tmp_path / 'x.sqlite'}"))
    specs = datapipe_specs(catalog, pipeline, ds, partitions=None)
    assert specs.source_tables == ["events", "unused_config"]
    assert all(s.partitions_def is None for outs in specs.step_specs.values() for s in outs)
    with pytest.raises(ConfigurationError, match="partitions"):
        build_definitions(catalog, pipeline, ds, partitions=0.5)  # type: ignore[arg-type]
    assert not (tmp_path / "x.sqlite").exists()


def test_bucket_partitions() -> None:
    parts = BucketPartitions(16)
    assert parts.keys[0] == "00" and parts.keys[-1] == "15" and parts.bucket_of("07") == 7
    assert parts.contiguous_ranges(["03", "01", "02", "07", "15", "14"]) == [
        ("01", "03"),
        ("07", "07"),
        ("14", "15"),
    ]
    with pytest.raises(ConfigurationError, match="unknown partition"):
        parts.bucket_of("16")
    with pytest.raises(ConfigurationError, match="unknown partition '3'; partitions are 00…03"):
        BucketPartitions(4).bucket_of("3")  # the unpadded name is not an alias
    keys = pd.DataFrame({"u": range(1000)})
    picked = pd.concat([parts.select(keys, ["u"], [p]) for p in parts.keys])
    assert sorted(picked["u"]) == list(range(1000))  # every key in exactly one partition


def test_partition_names_have_at_least_two_digits_and_one_width() -> None:
    """The documented naming rule: bucket numbers zero-padded to max(2, digits of N-1)."""
    for n, first, last in [(1, "00", "00"), (4, "00", "03"), (16, "00", "15"), (100, "00", "99"), (128, "000", "127")]:
        keys = BucketPartitions(n).keys
        assert (keys[0], keys[-1], len(keys)) == (first, last, n)
        assert len({len(k) for k in keys}) == 1 and keys == sorted(keys), n


def test_buckets_stable_across_processes_and_dtypes() -> None:
    keys = pd.DataFrame({"a": [1, 2, 3, 40], "b": ["x", "y", "z", "w"]})
    here = key_buckets(keys, ["a", "b"], 16).tolist()
    code = (
        "import pandas as pd; from datapipe_dagster.compute.partitioning import key_buckets;"
        "print(key_buckets(pd.DataFrame({'a': pd.array([1, 2, 3, 40], dtype='Int64'), 'b': ['x','y','z','w']}), ['a','b'], 16).tolist())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
    )
    assert out.stdout.strip() == str(here)
    as_float = key_buckets(keys.astype({"a": "float64"}), ["a", "b"], 16).tolist()
    assert as_float == here


def test_merges_with_the_users_definitions(tmp_path) -> None:
    ds, catalog, pipeline = make(DBConn(f"sqlite:///{tmp_path / 'm.sqlite'}"))

    @dg.asset
    def unrelated() -> None:
        return None

    merged = dg.Definitions.merge(
        build_definitions(catalog, pipeline, ds), dg.Definitions(assets=[unrelated])
    )
    keys = merged.resolve_asset_graph().get_all_asset_keys()
    assert K("unrelated") in keys and K("click_count") in keys
    assert not (tmp_path / "m.sqlite").exists()
