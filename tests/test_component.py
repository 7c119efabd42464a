"""``DatapipeComponent`` on real Dagster: loaded from defs.yaml in ``dagster.components.testing`` sandboxes,
the scaffolded starter materialized end to end, equivalence with ``build_definitions``, the translation
block, the errors a user sees, and the ``dg`` CLI (list, scaffold, check) in a subprocess."""

from __future__ import annotations

import datetime as dt
import inspect
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
from dagster.components.testing import create_defs_folder_sandbox
from test_dagster_support import execute, tick

from datapipe_dagster import DatapipeComponent, DataStore, DBConn, build_definitions
from datapipe_dagster.dagster.component import ComponentTranslator
from datapipe_dagster.dagster.constants import RANGE_END_TAG, RANGE_START_TAG
from datapipe_dagster.dagster.partitions import BucketPartitions

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STARTER = REPO / "datapipe_dagster" / "dagster" / "templates" / "pipeline.py"
K = dg.AssetKey
NOWHERE_PG = "postgresql+psycopg2://nobody@127.0.0.1:1/nowhere"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def attrs(url: str, **extra: Any) -> dict[str, Any]:
    """defs.yaml contents for the starter pipeline beside it."""
    return {
        "type": "datapipe_dagster.DatapipeComponent",
        "attributes": {"catalog": ".pipeline.catalog", "pipeline": ".pipeline.pipeline", "database_url": url, **extra},
    }


@contextmanager
def loaded(contents: dict[str, Any] | None = None) -> Iterator[tuple[DatapipeComponent, dg.Definitions, Path]]:
    """Scaffold the component into a sandbox (optionally replacing its defs.yaml), load it, build its defs."""
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(component_cls=DatapipeComponent, defs_path="events", defs_yaml_contents=contents)
        with sandbox.load_component_and_build_defs(defs_path=path) as (component, defs):
            yield component, defs, sandbox.project_root


def load_error(contents: dict[str, Any], files: dict[str, str] | None = None) -> str:
    """The text of the error (and its causes) that loading ``contents`` raises."""
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(component_cls=DatapipeComponent, defs_path="events", defs_yaml_contents=contents)
        for name, text in (files or {}).items():
            (path / name).write_text(textwrap.dedent(text))
        with pytest.raises(Exception) as info:  # noqa: PT011 - Dagster wraps our error; its text is checked
            with sandbox.load_component_and_build_defs(defs_path=path):
                pass
    parts, exc = [], info.value
    while exc is not None:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


EVENTS, USER_COUNTS = K("events"), K("user_counts")


def materialize_starter(
    defs: dg.Definitions, instance: dg.DagsterInstance, events: dg.AssetKey = EVENTS,
    counts: dg.AssetKey = USER_COUNTS,
) -> None:
    """Materialize the starter as a user would: the sample events, then every partition of the counts."""
    res = defs.resolve_implicit_job_def_def_for_assets([events]).execute_in_process(
        instance=instance, asset_selection=[events]
    )
    assert res.success
    keys = defs.resolve_assets_def(counts).partitions_def.get_partition_keys()
    res = defs.resolve_implicit_job_def_def_for_assets([counts]).execute_in_process(
        instance=instance, asset_selection=[counts], tags={RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}
    )
    assert res.success
    mats = {ev.partition for ev in res.get_asset_materialization_events() if ev.asset_key == counts}
    assert mats == set(keys)


def rows(db: Path, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()  # noqa: S608 - a test's own table name


COMPONENT_METADATA = {"dagster/code_references", "dagster/component_origin"}
COUNTS = [("u1", 3, 2), ("u2", 2, 0), ("u3", 1, 1)]


# --- scaffold, load, materialize -------------------------------------------------------------------------


def test_scaffolded_starter_loads_and_materializes() -> None:
    with loaded() as (component, defs, root):
        folder = next(root.glob("src/*/defs/events"))
        assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["defs.yaml", "pipeline.py"]
        text = (folder / "pipeline.py").read_text()
        assert "What to change" in text and "replace it with your source" in text
        assert "# Where the tables and their row metadata live" in (folder / "defs.yaml").read_text()
        assert isinstance(component, DatapipeComponent) and component.partitions == 4
        db = root / ".datapipe" / "events.sqlite"
        assert not db.exists()  # loading opened nothing
        assert defs.resolve_asset_graph().get_all_asset_keys() == {K("events"), K("user_counts")}
        assert [s.name for s in defs.sensors] == ["count_events_stale_sensor"]
        with dg.instance_for_test() as instance:
            materialize_starter(defs, instance)
            assert rows(db, "user_counts") == COUNTS
            # Incremental from here: one changed user -> the sensor requests only that user's partition.
            sensor = "count_events_stale_sensor"
            first = tick(defs, instance, sensor, None)
            starter = sys.modules[next(m for m in sys.modules if m.endswith(".defs.events.pipeline"))]
            dbconn = DBConn(sqlite_url(db))
            new = pd.DataFrame({"user_id": ["u2"], "event_id": ["e9"], "event_type": ["click"]})
            starter.catalog(dbconn).get_datatable(DataStore(dbconn), "events").store_chunk(new)
            res = tick(defs, instance, sensor, first.cursor)
            (req,) = res.run_requests
            assert req.partition_key == BucketPartitions(4).stale_partitions(new[["user_id"]], ["user_id"])[0]
            execute(defs, instance, req)
            dbconn.engine.dispose()
        assert rows(db, "user_counts") == [("u1", 3, 2), ("u2", 3, 1), ("u3", 1, 1)]


def test_scaffolded_as_python_loads_and_materializes() -> None:
    """``dg scaffold defs ... --format python``: a component.py building the component, relative references."""
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(component_cls=DatapipeComponent, defs_path="events", scaffold_format="python")
        assert sorted(p.name for p in path.iterdir() if p.is_file()) == ["component.py", "pipeline.py"]
        assert 'group_name="events"' in (path / "component.py").read_text()
        with sandbox.load_component_and_build_defs(defs_path=path) as (_, defs):
            assert {s.group_name for s in defs.resolve_all_asset_specs()} == {"events"}
            with dg.instance_for_test() as instance:
                materialize_starter(defs, instance)
        assert rows(sandbox.project_root / ".datapipe" / "events.sqlite", "user_counts") == COUNTS


@pytest.mark.parametrize("url", ["sqlite", NOWHERE_PG])
def test_loading_opens_no_connection(tmp_path: Path, url: str) -> None:
    """The webserver, the daemon and every run worker load the component: no connection, no file."""
    db = tmp_path / "never" / "never.sqlite"
    with loaded(attrs(sqlite_url(db) if url == "sqlite" else url, partitions=8)) as (_, defs, _root):
        defs.get_repository_def().get_all_jobs()  # what the webserver does on load
        assert len(defs.resolve_assets_def(K("user_counts")).partitions_def.get_partition_keys()) == 8
    assert not db.exists()


def test_relative_sqlite_path_is_relative_to_the_project_root() -> None:
    with loaded(attrs("data/pipe.sqlite")) as (_, defs, root):
        with dg.instance_for_test() as instance:
            materialize_starter(defs, instance)
        assert rows(root / "data" / "pipe.sqlite", "user_counts") == COUNTS


# --- equivalence with build_definitions ------------------------------------------------------------------


def sensor_targets(sensor: dg.SensorDefinition, defs: dg.Definitions) -> list[str]:
    """The assets a sensor launches runs of: its asset selection, or the assets of the jobs it targets
    (each step's sensor launches that step's job)."""
    graph = defs.resolve_asset_graph()
    if sensor.asset_selection is not None:
        return sorted(map(str, sensor.asset_selection.resolve(graph)))
    keys = set()
    for t in sensor.targets:
        keys |= set(defs.resolve_job_def(t.job_name).asset_layer.selected_asset_keys)
    return sorted(map(str, keys))


def shape(defs: dg.Definitions) -> dict[str, Any]:
    """What a user sees of a code location: every spec, partitions, backfill policies, sensors and checks."""
    specs = {}
    for spec in defs.resolve_all_asset_specs():
        # Dagster adds the defs.yaml line and the component instance to component-made assets; the rest must match.
        md = {k: v for k, v in spec.metadata.items() if k not in COMPONENT_METADATA}
        specs[spec.key] = spec.replace_attributes(metadata=md)
    graph = defs.resolve_asset_graph()
    return {
        "specs": specs,
        "backfill": {k: graph.get(k).backfill_policy for k in graph.get_all_asset_keys()},
        "sensors": sorted(
            (s.name, s.minimum_interval_seconds, s.default_status, sensor_targets(s, defs))
            for s in defs.sensors
        ),
        "checks": sorted(map(str, graph.asset_check_keys)),
        "resources": sorted(defs.resources),
    }


def test_minimal_yaml_equals_build_definitions(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "db.sqlite")
    with loaded(attrs(url, partitions=5)) as (_, defs, root):
        starter = sys.modules[next(m for m in sys.modules if m.endswith(".defs.events.pipeline"))]
        dbconn = DBConn(url)
        expected = build_definitions(starter.catalog(dbconn), starter.pipeline, DataStore(dbconn), partitions=5)
        assert shape(defs) == shape(expected)
        assert len(shape(defs)["specs"]) == 2 and shape(defs)["sensors"] and shape(defs)["checks"]
    # Every build_definitions option the component passes on.
    options = {"key_prefix": ["acme", "clicks"], "group_name": "clicks", "sensor_interval_seconds": 11,
               "reparse_on_code_change": True, "sensors_running": True}
    with loaded(attrs(url, partitions=3, **options)) as (_, defs, _root):
        starter = sys.modules[next(m for m in sys.modules if m.endswith(".defs.events.pipeline"))]
        dbconn = DBConn(url)
        expected = build_definitions(
            starter.catalog(dbconn), starter.pipeline, DataStore(dbconn), partitions=3, **options
        )
        assert shape(defs) == shape(expected)
        assert K(["acme", "clicks", "user_counts"]) in shape(defs)["specs"]
        assert shape(defs)["sensors"][0][1:3] == (11, dg.DefaultSensorStatus.RUNNING)
    # The unpartitioned form too (partitions: null).
    with loaded(attrs(url, partitions=None)) as (_, defs, _root):
        assert defs.resolve_assets_def(K("user_counts")).partitions_def is None


def test_unset_attributes_take_build_definitions_defaults() -> None:
    params = inspect.signature(build_definitions).parameters
    fields = DatapipeComponent.model_fields
    for name in ("partitions", "sensor_interval_seconds", "reparse_on_code_change", "sensors_running",
                 "key_prefix", "group_name"):
        assert fields[name].default == params[name].default, name


def test_example_defs_folder_equals_make_definitions(tmp_path: Path) -> None:
    """The example's code location (defs/clicks/defs.yaml) is what make_definitions builds in Python."""
    code = textwrap.dedent(
        """
        import pickle, sys
        from example_project.catalog import open_store
        from example_project.definitions import defs, make_definitions
        sys.path.insert(0, sys.argv[1])
        from test_component import shape
        a, b = shape(defs), shape(make_definitions(open_store(), partitions=4, sensor_interval_seconds=7))
        assert a == b, (a, b)
        print(len(a["specs"]), len(a["sensors"]), len(a["checks"]))
        """
    )
    env = {**os.environ, "DATAPIPE_EXAMPLE_DB": str(tmp_path / "ex.sqlite"), "DATAPIPE_EXAMPLE_PARTITIONS": "4",
           "DATAPIPE_EXAMPLE_SENSOR_INTERVAL": "7"}
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["7", "4", "5"]  # specs, sensors, checks (one per transform output)
    assert not (tmp_path / "ex.sqlite").exists()


def test_usable_from_python(tmp_path: Path) -> None:
    """A component.py may build the component in Python, with objects or absolute references."""
    url = sqlite_url(tmp_path / "py.sqlite")
    module = "datapipe_dagster.dagster.templates.pipeline"
    by_ref = DatapipeComponent(catalog=f"{module}.catalog", pipeline=f"{module}.pipeline", database_url=url, partitions=3)
    import datapipe_dagster.dagster.templates.pipeline as starter

    by_obj = DatapipeComponent(
        catalog=starter.catalog(DBConn(url)), pipeline=starter.pipeline, database_url=url, partitions=3
    )
    a, b = dg.build_defs_for_component(by_ref), dg.build_defs_for_component(by_obj)
    assert shape(a) == shape(b)
    with dg.instance_for_test() as instance:
        materialize_starter(a, instance)
    assert rows(tmp_path / "py.sqlite", "user_counts") == COUNTS


# --- translation ------------------------------------------------------------------------------------------


def test_translation_sets_per_table_attributes(tmp_path: Path) -> None:
    translation = {
        "key": "{{ 'raw_events' if table.name == 'events' else table.name }}",
        "key_prefix": "shop",
        "group_name": "{{ 'raw' if table.name == 'events' else 'derived' }}",
        "description": "{{ table.name }}: {{ table.columns | map(attribute=0) | join(', ') }}",
        "tags": {"layer": "{{ table.name }}"},
        "owners": ["team:analytics"],
        "kinds": ["pandas"],
        "freshness_policy": "{{ dg.FreshnessPolicy.time_window(fail_window=datetime.timedelta(hours=6)) "
        "if table.name == 'user_counts' else none }}",
    }
    db = tmp_path / "t.sqlite"
    with loaded(attrs(sqlite_url(db), partitions=2, translation=translation)) as (component, defs, _root):
        assert isinstance(component.translation, object) and component.translation is not None
        specs = {s.key: s for s in defs.resolve_all_asset_specs()}
        events, counts = K(["shop", "raw_events"]), K(["shop", "user_counts"])
        assert set(specs) == {events, counts}
        assert (specs[events].group_name, specs[counts].group_name) == ("raw", "derived")
        assert specs[counts].description == "user_counts: user_id, n_events, n_clicks"
        assert specs[counts].tags["layer"] == "user_counts" and specs[events].tags["layer"] == "events"
        assert specs[counts].owners == ["team:analytics"]
        assert specs[counts].kinds == {"pandas"}
        policy = specs[counts].freshness_policy
        assert isinstance(policy, dg.FreshnessPolicy) and policy.fail_window.to_timedelta() == dt.timedelta(hours=6)
        assert specs[events].freshness_policy is None
        # Lineage, sensors and the IO manager follow the translated keys.
        assert {d.asset_key for d in specs[counts].deps} == {events}
        assert shape(defs)["sensors"][0][3] == [str(counts)]
        with dg.instance_for_test() as instance:
            materialize_starter(defs, instance, events, counts)
            first = defs.resolve_assets_def(counts).partitions_def.get_partition_keys()[0]
            res = defs.resolve_implicit_job_def_def_for_assets([counts]).execute_in_process(
                instance=instance, asset_selection=[counts], partition_key=first
            )
            assert res.success
    assert rows(db, "user_counts") == COUNTS  # tables keep their names; only the asset keys changed


def test_translator_applies_prefix_and_group_before_translation() -> None:
    from datapipe_dagster.dagster.translator import TableProps

    table = TableProps(name="t", description=None, columns=(("k", "VARCHAR", True),), store_kind="sqlite", writer=None)
    plain = ComponentTranslator("p", "g", None).get_asset_spec(table)
    assert plain.key == K(["p", "t"]) and plain.group_name == "g"
    renamed = ComponentTranslator("p", "g", lambda spec, t: spec.replace_attributes(group_name=f"x_{t.name}"))
    assert renamed.get_asset_spec(table).group_name == "x_t"


# --- errors -----------------------------------------------------------------------------------------------


def test_reference_that_does_not_import_names_module_and_attribute(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "e.sqlite")
    err = load_error(attrs(url, catalog=".nomodule.catalog"))
    assert "attribute `catalog`: cannot import module" in err and ".defs.events.nomodule'" in err
    assert "(attribute 'catalog')" in err
    err = load_error(attrs(url, pipeline=".pipeline.pipe"))
    assert "attribute `pipeline`: module" in err and ".defs.events.pipeline' has no attribute 'pipe'" in err
    assert "defines: " in err and "count_events" in err.split("defines: ")[1]
    err = load_error(attrs(url, pipeline="no_such_pkg.mod.pipeline"))
    assert "cannot import module 'no_such_pkg.mod'" in err and "(attribute 'pipeline')" in err
    err = load_error(attrs(url, catalog="catalog"))
    assert "'catalog' is not a reference to a Python object" in err
    assert not (tmp_path / "e.sqlite").exists()


def test_wrong_kind_says_expected_and_found(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "k.sqlite")
    err = load_error(attrs(url, catalog=".pipeline.pipeline"))
    assert "attribute `catalog` (.pipeline.pipeline): expected a datapipe_dagster Catalog" in err
    assert "found datapipe_dagster.compute.catalog.Pipeline" in err
    # A function is accepted as a factory; its signature and what it returns are checked when it is called.
    err = load_error(attrs(url, pipeline=".pipeline.count_events"))
    assert "attribute `pipeline`: the function count_events must take no arguments and return a Pipeline" in err
    err = load_error(attrs(url, pipeline=".extra.make"), files={"extra.py": "def make():\n    return 42\n"})
    assert "the function make must return a datapipe_dagster Pipeline; it returned builtins.int" in err
    err = load_error(attrs(url, assets=[".pipeline.pipeline"]))
    assert "attribute `assets` (.pipeline.pipeline): expected a Dagster asset" in err
    assert "found datapipe_dagster.compute.catalog.Pipeline" in err
    assert not (tmp_path / "k.sqlite").exists()


def test_wrong_type_or_attribute_names_it(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "w.sqlite")
    err = load_error(attrs(url, partitions="lots"))
    assert "attribute `partitions`: expected an integer or null, found 'lots'" in err
    err = load_error(attrs(url, sensors_running="sometimes"))
    assert "attribute `sensors_running`: expected true or false, found 'sometimes'" in err
    err = load_error(attrs(url, partition=3))
    assert "`attributes.partition at " in err and "defs.yaml:4`\n  Extra inputs are not permitted" in err
    assert not (tmp_path / "w.sqlite").exists()


def test_automation_conditions(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "a.sqlite")
    with loaded(attrs(url, automation="conditions")) as (component, defs, _root):
        assert component.automation == "conditions"
        assert "count_events_stale_sensor" not in [s.name for s in defs.sensors]
        counts = defs.resolve_assets_def(K("user_counts")).specs_by_key[K("user_counts")]
        assert counts.automation_condition is not None
    with loaded(attrs(url, automation="sensors")) as (_, defs, _root):
        assert [s.name for s in defs.sensors] == ["count_events_stale_sensor"]
    err = load_error(attrs(url, automation="cron"))
    assert "automation" in err and "cron" in err


# --- the dg CLI -------------------------------------------------------------------------------------------


def dg_cli(*args: str, cwd: Path, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VIRTUAL_ENV": str(BIN.parent), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "NO_COLOR": "1", "COLUMNS": "200", **env_vars}
    return subprocess.run([str(BIN / "dg"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def new_project(root: Path) -> Path:
    """A minimal dg project (pyproject + src layout), as `dg scaffold project` lays it out."""
    (root / "src" / "shop" / "defs").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "shop"\nversion = "0.0.1"\n\n[tool.dg]\ndirectory_type = "project"\n\n'
        '[tool.dg.project]\nroot_module = "shop"\n'
    )
    (root / "src" / "shop" / "__init__.py").write_text("")
    (root / "src" / "shop" / "defs" / "__init__.py").write_text("")
    (root / "src" / "shop" / "definitions.py").write_text(
        "from pathlib import Path\n\nimport dagster as dg\n\n"
        "defs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)\n"
    )
    return root


def test_dg_list_scaffold_check(tmp_path: Path) -> None:
    root = new_project(tmp_path / "shop")
    listed = dg_cli("list", "components", "--json", cwd=root)
    assert listed.returncode == 0, listed.stderr
    items = {i["key"]: i["summary"] for i in json.loads(listed.stdout)["items"]}
    assert items["datapipe_dagster.DatapipeComponent"].startswith("A datapipe catalog and pipeline")
    schema = dg_cli("utils", "inspect-component", "datapipe_dagster.DatapipeComponent", "--defs-yaml-json-schema",
                    cwd=root)
    assert schema.returncode == 0, schema.stderr
    props = json.loads(schema.stdout)["properties"]["attributes"]["properties"]
    assert {"catalog", "pipeline", "database_url", "partitions", "translation", "automation"} <= set(props)

    made = dg_cli("scaffold", "defs", "datapipe_dagster.DatapipeComponent", "events", cwd=root)
    assert made.returncode == 0, made.stderr
    folder = root / "src" / "shop" / "defs" / "events"
    defs_yaml = folder / "defs.yaml"
    assert defs_yaml.read_text().count("type: datapipe_dagster.DatapipeComponent") == 1
    assert (folder / "pipeline.py").exists()
    checked = dg_cli("check", "defs", cwd=root)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The project is not installed in this environment (a real one is): put its src/ on the path.
    listed_defs = dg_cli("list", "defs", "--json", cwd=root, PYTHONPATH=str(root / "src"))
    assert listed_defs.returncode == 0, listed_defs.stderr
    assert {"events", "user_counts"} == {a["asset_key"] for a in json.loads(listed_defs.stdout)["assets"]}

    good = defs_yaml.read_text()
    line = next(i for i, t in enumerate(good.splitlines(), 1) if t.strip().startswith("partitions:"))
    defs_yaml.write_text(good.replace("  partitions: 4", "  partitions: lots"))
    bad = dg_cli("check", "defs", cwd=root)
    out = bad.stdout + bad.stderr
    assert bad.returncode != 0
    assert f"defs.yaml:{line} - attributes.partitions" in out and "expected an integer or null, found 'lots'" in out
    defs_yaml.write_text(good.replace("  partitions: 4", "  partition: 4"))
    bad = dg_cli("check", "defs", cwd=root)
    out = bad.stdout + bad.stderr
    assert bad.returncode != 0
    assert f"defs.yaml:{line} - datapipe_dagster.DatapipeComponent attributes.partition" in out
    assert "'partition' was unexpected" in out
    assert not (root / ".datapipe").exists() or not any((root / ".datapipe").iterdir())


def test_dg_check_and_list_defs_from_the_repository_root(tmp_path: Path) -> None:
    db = str(tmp_path / "example.sqlite")
    checked = dg_cli("check", "defs", cwd=REPO, DATAPIPE_EXAMPLE_DB=db)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr
    listed = dg_cli("list", "defs", "--json", cwd=REPO, DATAPIPE_EXAMPLE_DB=db)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    keys = {a["asset_key"] for a in data["assets"]}
    assert {"events", "click_count", "ip", "user_ips", "ip_stats", "user_profiles", "user_report"} == keys
    assert len(data["sensors"]) == 4
    assert {a["source"] for a in data["assets"] if a["asset_key"] != "user_profiles"} == {
        "example_project/defs/clicks/defs.yaml:4"
    }
    assert not Path(db).exists()
