"""Names: internal tables that fit PostgreSQL's 63-byte limit, catalog names that collide with them,
and connection strings whose password never shows (repr, tracebacks, the example's output)."""

from __future__ import annotations

import json
import pickle
import traceback

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy import Column, Integer, String

from datapipe_dagster import (
    BatchTransform,
    Catalog,
    ConfigurationError,
    DataStore,
    DBConn,
    Pipeline,
    SchemaError,
    Table,
    TableStoreDB,
    build_compute,
    run_steps,
)
from datapipe_dagster.meta.tables import MetaTable, TransformMetaTable
from datapipe_dagster.store.dbconn import fit_identifier, mask_url
from tests.conftest import PG_URL
from tests.engine_helpers import event, events_schema, frame, parse_clicks_ip, seed_catalog

# ------------------------------------------------------------------------------------ identifiers


def test_names_that_fit_are_unchanged_on_every_backend(tmp_path) -> None:  # noqa: ANN001
    """Existing databases keep working: the historical names are kept wherever they fit."""
    for conn in (DBConn(f"sqlite:///{tmp_path / 'a.sqlite'}"), DBConn(PG_URL, schema="s")):
        key = [Column("user_id", String(), primary_key=True)]
        meta = MetaTable(conn, "events", key)
        tmeta = TransformMetaTable(conn, "clicks", key)
        assert meta.table.name == "events_meta"
        assert [ix.name for ix in meta.table.indexes] == ["ix_events_meta_seq"]
        assert tmeta.table.name == "clicks__transform_meta"
        assert sorted(ix.name for ix in tmeta.table.indexes) == [
            "ix_clicks__transform_meta_key_hash",
            "ix_clicks__transform_meta_success",
        ]


def test_long_names_are_shortened_stably_and_only_on_postgresql(tmp_path) -> None:  # noqa: ANN001
    name = "s" * 60
    key = [Column("k", Integer, primary_key=True)]
    pg = TransformMetaTable(DBConn(PG_URL, schema="s"), name, key)
    assert len(pg.table.name.encode()) <= 63
    assert pg.table.indexes and all(len(ix.name.encode()) <= 63 for ix in pg.table.indexes)
    # pinned: the mapping must never change between versions (it names tables in users' databases)
    assert fit_identifier("a" * 70, 63) == "a" * 54 + "_" + "6bd5e503"
    assert fit_identifier(name + "__transform_meta", 63) == pg.table.name
    # SQLite has no limit: its (working) long names stay as they were
    lite = TransformMetaTable(DBConn(f"sqlite:///{tmp_path / 'a.sqlite'}"), name, key)
    assert lite.table.name == name + "__transform_meta"
    # distinct long names stay distinct, multi-byte names are cut on a character boundary
    assert fit_identifier("x" * 80 + "1", 63) != fit_identifier("x" * 80 + "2", 63)
    cyr = fit_identifier("таблица_" * 8, 63)
    assert len(cyr.encode()) <= 63 and cyr.encode().decode() == cyr


def _long_names_setup(dbconn: DBConn):  # noqa: ANN202
    ev, cc, ip = ("e" * 59) + "v", ("c" * 59) + "c", ("i" * 59) + "p"
    step = "step_" + "x" * 55
    assert len(ev) == len(cc) == len(ip) == len(step) == 60
    catalog = Catalog(
        {
            ev: Table(TableStoreDB(ev, dbconn, events_schema())),
            cc: Table(TableStoreDB(cc, dbconn, [Column("user_id", String(), primary_key=True), Column("click_count", Integer())])),
            ip: Table(TableStoreDB(ip, dbconn, [Column("user_id", String(), primary_key=True), Column("ip", String())])),
        }
    )
    ds = DataStore(dbconn)
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(parse_clicks_ip, inputs=[ev], outputs=[cc, ip], name=step)]))
    return ds, catalog, steps, (ev, cc, ip)


def test_sixty_character_table_and_step_names_end_to_end(dbconn: DBConn) -> None:
    ds, catalog, steps, (ev, cc, ip) = _long_names_setup(dbconn)
    events = catalog.get_datatable(ds, ev)
    events.store_chunk(frame(event("u1", "1"), event("u1", "2", ip="2.2.2.2"), event("u2", "1", "view")))
    assert run_steps(ds, steps).ok
    assert dict(zip(*catalog.get_datatable(ds, cc).get_data()[["user_id", "click_count"]].T.values, strict=True)) == {
        "u1": 2,
        "u2": 0,
    }
    events.store_chunk(frame(event("u2", "2")))
    assert len(steps[0].get_stale_keys()) == 1
    assert run_steps(ds, steps).ok
    assert len(steps[0].get_stale_keys()) == 0
    assert set(catalog.get_datatable(ds, ip).get_data()["user_id"]) == {"u1", "u2"}
    names = set(sa.inspect(dbconn.engine).get_table_names(schema=dbconn.schema))
    assert {ev, cc, ip} <= names
    if dbconn.backend == "postgresql":
        assert all(len(n.encode()) <= 63 for n in names)
    # a second process (a fresh DataStore) finds the same tables: the names are stable
    ds2, catalog2, steps2, _ = _long_names_setup(DBConn(dbconn.connstr, schema=dbconn.schema))
    assert len(steps2[0].get_stale_keys()) == 0
    assert len(catalog2.get_datatable(ds2, ev).get_data()) == 4


def test_user_table_name_over_the_postgresql_limit_is_refused(tmp_path) -> None:  # noqa: ANN001
    name = "t" * 64
    with pytest.raises(ConfigurationError, match=r"table 'tttt.*64 bytes.*at most 63"):
        TableStoreDB(name, DBConn(PG_URL), [Column("id", Integer, primary_key=True)])
    with pytest.raises(ConfigurationError, match=r"column 'cccc.*at most 63"):
        TableStoreDB("t", DBConn(PG_URL), [Column("c" * 64, Integer, primary_key=True)])
    TableStoreDB(name, DBConn(f"sqlite:///{tmp_path / 'a.sqlite'}"), [Column("id", Integer, primary_key=True)])


# ------------------------------------------------------------------------------------ collisions


@pytest.mark.parametrize(
    ("name", "internal"),
    [
        ("datapipe_seq", "write-sequence"),
        ("datapipe_watermarks", "watermark"),
        ("datapipe_external_state", "external-table"),
        ("clicks__transform_meta", "state of a transform named 'clicks'"),
        ("events_meta", "row metadata of table 'events'"),
        ("events_meta_files", "row metadata of table 'events'"),
        ("ip_meta", "row metadata of table 'ip'"),
    ],
)
def test_catalog_names_colliding_with_internal_tables_are_refused(tmp_path, name: str, internal: str) -> None:  # noqa: ANN001
    dbconn = DBConn(f"sqlite:///{tmp_path / 'a.sqlite'}")
    extra = {name: Table(TableStoreDB(name, dbconn, [Column("id", Integer, primary_key=True)]))}
    with pytest.raises(ConfigurationError, match=rf"catalog table '{name}' collides with the internal table '{name}'.*{internal}"):
        seed_catalog(dbconn, extra)
    catalog = seed_catalog(dbconn)
    with pytest.raises(ConfigurationError, match=rf"'{name}'.*{internal}"):
        catalog.add_datatable(name, extra[name])
    assert name not in catalog.names()


def test_meta_named_table_is_refused_when_its_base_table_arrives(tmp_path) -> None:  # noqa: ANN001
    dbconn = DBConn(f"sqlite:///{tmp_path / 'a.sqlite'}")
    catalog = Catalog({"orders_meta": Table(TableStoreDB("orders_meta", dbconn, [Column("id", Integer, primary_key=True)]))})
    with pytest.raises(ConfigurationError, match=r"'orders_meta'.*row metadata of table 'orders'"):
        catalog.add_datatable("orders", Table(TableStoreDB("orders", dbconn, [Column("id", Integer, primary_key=True)])))


# ------------------------------------------------------------------------------------ passwords

SECRET = "s3cretPW"


def _secret_url(base: str) -> str:
    url = sa.engine.make_url(base)
    return url.set(password=SECRET).render_as_string(hide_password=False)


def test_repr_hides_the_password() -> None:
    conn = DBConn(_secret_url(PG_URL), schema="x")
    assert SECRET not in repr(conn) and "***" in repr(conn)
    assert SECRET not in repr(DataStore(conn))
    assert SECRET not in conn.safe_url
    assert SECRET not in mask_url(conn.url)
    assert mask_url("sqlite:///a.sqlite") == "sqlite:///a.sqlite"
    # the real string is still there to connect with (and survives pickling to a run worker)
    assert SECRET in pickle.loads(pickle.dumps(conn)).connstr


def _render(exc: BaseException) -> str:
    te = traceback.TracebackException.from_exception(exc, capture_locals=True)
    return "".join(te.format())


def _fail_in_engine(conn: DBConn) -> BaseException:
    ds = DataStore(conn)
    catalog = seed_catalog(conn)
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(frame(event("u1", "1")))
    try:
        events.store_chunk(pd.DataFrame({"user_id": ["u1"], "event": [json.dumps({})]}))
    except SchemaError as e:
        return e
    raise AssertionError("store_chunk accepted a frame without the event_id key column")


def test_traceback_with_locals_does_not_show_the_password(pg_schema_conn: DBConn) -> None:
    conn = DBConn(_secret_url(PG_URL), schema=pg_schema_conn.schema)
    try:
        text = _render(_fail_in_engine(conn))
        assert "store_chunk" in text and "DBConn(" in text
        assert SECRET not in text
    finally:
        conn.engine.dispose()


def test_traceback_of_a_database_error_in_a_run_does_not_show_the_password(pg_schema_conn: DBConn) -> None:
    from datapipe_dagster.errors import StepDatabaseError
    from tests.engine_helpers import seed_setup

    conn = DBConn(_secret_url(PG_URL), schema=pg_schema_conn.schema)
    try:
        ds, catalog, steps = seed_setup(conn, name="clicks")
        catalog.get_datatable(ds, "events").store_chunk(frame(event("u1", "1")))
        assert run_steps(ds, steps).ok
        catalog.get_datatable(ds, "events").store_chunk(frame(event("u1", "2")))
        with pg_schema_conn.engine.begin() as c:  # the table vanishes behind the library's back
            c.exec_driver_sql(f'DROP TABLE "{pg_schema_conn.schema}".clicks__transform_meta')
        with pytest.raises(StepDatabaseError, match=r"step 'clicks' \(inputs 'events' -> outputs 'click_count', 'ip'\)") as info:
            run_steps(ds, steps)
        assert isinstance(info.value.__cause__, sa.exc.ProgrammingError)
        text = _render(info.value)
        assert "Engine(" in text or "DBConn(" in text
        assert SECRET not in text
    finally:
        conn.engine.dispose()


def test_example_simulator_and_api_print_no_password(pg_database: str, capsys: pytest.CaptureFixture[str]) -> None:
    from fastapi.testclient import TestClient

    from example_project.api import create_app
    from example_project.catalog import open_store
    from example_project.simulate import main

    url = _secret_url(pg_database)
    main(["--events", "20", "--users", "5", "--rate", "max", "--quiet", "--db", url])
    out = capsys.readouterr().out
    assert "20" in out and SECRET not in out and "***" in out
    store = open_store(url)
    try:
        with TestClient(create_app(store)) as client:
            body = client.get("/health").json()
        assert SECRET not in json.dumps(body) and "***" in body["db"]
    finally:
        store.dispose()
