"""Hostile values (issue 8, items 2-4, 11, 15): exact integers, range checks, one time-zone rule, ``%``
in names, clear errors, picklable errors. Every test runs on SQLite and PostgreSQL, and the write-path
tests at 1 row (a single INSERT) and at 1,200 rows (executemany on SQLite, COPY on PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import pickle

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy import BigInteger, Column, DateTime, Float, Integer, SmallInteger, String

from datapipe_dagster import (
    BatchTransform,
    Catalog,
    ConfigurationError,
    DatapipeError,
    DataStore,
    Pipeline,
    SchemaError,
    StepFailedError,
    Table,
    TableStoreDB,
    UnknownTableError,
    build_compute,
    run_steps,
)
from datapipe_dagster.store.pgcopy import COPY_MIN_ROWS

SIZES = [1, 1200]
assert 1200 >= COPY_MIN_ROWS  # the large size takes the bulk path


def make_table(dbconn, name: str, columns: list[Column]):  # noqa: ANN001, ANN201
    catalog = Catalog({name: Table(TableStoreDB(name, dbconn, columns))})
    return catalog.get_datatable(DataStore(dbconn), name)


def raw_rows(dt_, columns: list[str]) -> list[tuple]:  # noqa: ANN001
    """The rows as the database holds them, read with plain SQL (not through the library's reader)."""
    t = dt_.table_store.data_table
    with dt_.ds.meta_dbconn.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(*[t.c[c] for c in columns]).order_by(t.c[columns[0]]))]


def assert_nothing_written(dt_) -> None:  # noqa: ANN001
    assert len(dt_.get_data()) == 0
    assert len(dt_.get_metadata(include_deleted=True)) == 0


# ---------------------------------------------------------------- 2. integers never through float

BIG = 1152921504606846977  # 2**60 + 1: float64 rounds it (and its neighbour) to 2**60


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("form", ["str", "object-int", "object-int-with-none"])
def test_big_integer_ids_are_exact_and_stay_distinct(dbconn, n: int, form: str) -> None:  # noqa: ANN001
    t = make_table(dbconn, "big", [Column("id", BigInteger(), primary_key=True), Column("ref", BigInteger())])
    ids = [BIG + i for i in range(n + 1)]  # n + 1 >= 2: two ids float64 cannot tell apart
    if form == "str":
        df = pd.DataFrame({"id": [str(i) for i in ids], "ref": [str(i) for i in ids]})
    else:
        refs: list[object] = list(ids)
        if form == "object-int-with-none":
            refs[-1] = None  # a missing value must not push the column through float64
        df = pd.DataFrame({"id": pd.Series(ids, dtype=object), "ref": pd.Series(refs, dtype=object)})
    t.store_chunk(df)
    rows = raw_rows(t, ["id", "ref"])
    assert [r[0] for r in rows] == ids
    expected_refs = ids if form != "object-int-with-none" else ids[:-1] + [None]
    assert [r[1] for r in rows] == expected_refs
    back = t.get_data()
    assert sorted(back["id"].tolist()) == ids


def test_a_second_big_id_never_replaces_the_first(dbconn) -> None:  # noqa: ANN001
    t = make_table(dbconn, "big", [Column("id", BigInteger(), primary_key=True), Column("v", String())])
    t.store_chunk(pd.DataFrame({"id": [str(BIG)], "v": ["first"]}))
    t.store_chunk(pd.DataFrame({"id": [str(BIG + 1)], "v": ["second"]}))
    assert raw_rows(t, ["id", "v"]) == [(BIG, "first"), (BIG + 1, "second")]


@pytest.mark.parametrize(
    "value",
    ["12x", "1.5", True, {"a": 1}, b"7", float("nan")],
    ids=["junk-string", "fractional-string", "bool", "dict", "bytes", "nan-in-key"],
)
def test_an_integer_key_that_is_not_an_integer_is_refused(dbconn, value: object) -> None:  # noqa: ANN001
    t = make_table(dbconn, "ints", [Column("id", BigInteger(), primary_key=True)])
    with pytest.raises(SchemaError) as err:
        t.store_chunk(pd.DataFrame({"id": pd.Series(["5", value], dtype=object)}))
    assert err.value.table == "ints" and err.value.column == "id"
    assert_nothing_written(t)


def test_integer_strings_with_spaces_and_exponents_are_read_exactly(dbconn) -> None:  # noqa: ANN001
    t = make_table(dbconn, "ints", [Column("id", Integer(), primary_key=True), Column("v", BigInteger())])
    t.store_chunk(pd.DataFrame({"id": pd.Series([" 1", "2", "3"], dtype=object), "v": pd.Series(["1e3", "-9223372036854775808", None], dtype=object)}))
    assert raw_rows(t, ["id", "v"]) == [(1, 1000), (2, -(2**63)), (3, None)]


# ---------------------------------------------------------------- 3. out-of-range integers

OUT_OF_RANGE = [
    (BigInteger(), 1e30, "BigInteger (64-bit)"),
    (BigInteger(), 2**63, "BigInteger (64-bit)"),
    (BigInteger(), -1e19, "BigInteger (64-bit)"),
    (BigInteger(), str(2**63), "BigInteger (64-bit)"),
    (BigInteger(), -(2**63) - 1, "BigInteger (64-bit)"),
    (Integer(), 2**40, "Integer (32-bit)"),
    (Integer(), 2**31, "Integer (32-bit)"),
    (Integer(), float(-(2**31) - 1), "Integer (32-bit)"),
    (SmallInteger(), 2**15, "SmallInteger (16-bit)"),
    (SmallInteger(), "-32769", "SmallInteger (16-bit)"),
]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize(("sqltype", "value", "name"), OUT_OF_RANGE, ids=[f"{type(t).__name__}-{v!r}" for t, v, _ in OUT_OF_RANGE])
def test_out_of_range_integers_are_refused_on_every_backend(dbconn, n: int, sqltype, value, name: str) -> None:  # noqa: ANN001
    t = make_table(dbconn, "nums", [Column("id", Integer(), primary_key=True), Column("v", sqltype)])
    values: list[object] = [1] * (n - 1) + [value]  # the bad value last, after good ones
    df = pd.DataFrame({"id": range(n), "v": pd.Series(values, dtype=object) if n > 1 else [value]})
    with pytest.raises(SchemaError) as err:
        t.store_chunk(df)
    msg = str(err.value)
    assert f"table 'nums'; column 'v'; key id={n - 1}: integer out of range for {name}" in msg
    assert err.value.key == {"id": n - 1}
    assert_nothing_written(t)


@pytest.mark.parametrize(("sqltype", "lo", "hi"), [(SmallInteger(), -(2**15), 2**15 - 1), (Integer(), -(2**31), 2**31 - 1), (BigInteger(), -(2**63), 2**63 - 1)])
def test_integer_bounds_themselves_are_stored_exactly(dbconn, sqltype, lo: int, hi: int) -> None:  # noqa: ANN001
    t = make_table(dbconn, "nums", [Column("id", Integer(), primary_key=True), Column("v", sqltype)])
    t.store_chunk(pd.DataFrame({"id": [1, 2, 3, 4], "v": pd.Series([lo, hi, str(lo), str(hi)], dtype=object)}))
    assert raw_rows(t, ["id", "v"]) == [(1, lo), (2, hi), (3, lo), (4, hi)]


def test_a_uint64_column_in_range_is_stored(dbconn) -> None:  # noqa: ANN001
    t = make_table(dbconn, "nums", [Column("id", BigInteger(), primary_key=True)])
    t.store_chunk(pd.DataFrame({"id": np.array([2**63 - 1, 5], dtype=np.uint64)}))
    assert raw_rows(t, ["id"]) == [(5,), (2**63 - 1,)]


# ---------------------------------------------------------------- 4. time zones

PLUS3 = dt.timezone(dt.timedelta(hours=3))
NOON_PLUS3 = dt.datetime(2020, 1, 1, 12, 0, tzinfo=PLUS3)
NINE_UTC = dt.datetime(2020, 1, 1, 9, 0)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("form", ["datetime", "timestamp-series", "iso-string"])
def test_tz_aware_values_are_stored_as_utc_whatever_the_path(dbconn, n: int, form: str) -> None:  # noqa: ANN001
    t = make_table(
        dbconn, "times", [Column("id", Integer(), primary_key=True), Column("naive", DateTime()), Column("aware", DateTime(timezone=True))]
    )
    if form == "datetime":
        vals: object = [NOON_PLUS3] * n
    elif form == "timestamp-series":
        vals = pd.Series(pd.to_datetime([NOON_PLUS3] * n))
    else:
        vals = ["2020-01-01T12:00:00+03:00"] * n
    t.store_chunk(pd.DataFrame({"id": range(n), "naive": vals, "aware": vals}))
    rows = raw_rows(t, ["id", "naive", "aware"])
    assert len(rows) == n
    for _, naive, aware in rows:
        # DateTime(): the UTC wall time, naive. DateTime(timezone=True): the same instant, aware UTC on
        # PostgreSQL (SQLite keeps no zone: it holds the UTC wall time, which the reader marks as UTC).
        assert naive == NINE_UTC
        assert (aware if aware.tzinfo else aware.replace(tzinfo=dt.timezone.utc)) == NOON_PLUS3
    back = t.get_data()
    assert (back["naive"] == pd.Timestamp(NINE_UTC)).all()
    assert str(back["aware"].dt.tz) == "UTC"
    assert (back["aware"] == pd.Timestamp(NOON_PLUS3)).all()
    # The upsert path (the keys exist now) follows the same rule.
    later = dt.datetime(2020, 1, 1, 13, 0, tzinfo=PLUS3)
    t.store_chunk(pd.DataFrame({"id": range(n), "naive": [later] * n, "aware": [later] * n}))
    assert {r[1] for r in raw_rows(t, ["id", "naive"])} == {dt.datetime(2020, 1, 1, 10, 0)}
    assert (t.get_data()["aware"] == pd.Timestamp(later)).all()


def test_naive_values_in_a_timezone_column_are_taken_as_utc(dbconn) -> None:  # noqa: ANN001
    t = make_table(dbconn, "times", [Column("id", Integer(), primary_key=True), Column("aware", DateTime(timezone=True))])
    t.store_chunk(pd.DataFrame({"id": [1], "aware": [NINE_UTC]}))
    assert t.get_data()["aware"].iloc[0] == pd.Timestamp(NINE_UTC, tz="UTC")


def test_values_with_different_offsets_are_one_instant_scale(dbconn) -> None:  # noqa: ANN001
    t = make_table(dbconn, "times", [Column("id", Integer(), primary_key=True), Column("ts", DateTime())])
    t.store_chunk(pd.DataFrame({"id": [1, 2], "ts": ["2020-01-01T12:00:00+03:00", "2020-01-01T10:00:00+01:00"]}))
    assert raw_rows(t, ["id", "ts"]) == [(1, NINE_UTC), (2, NINE_UTC)]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("strings", [False, True], ids=["datetimes", "strings"])
def test_mixing_naive_and_aware_values_is_refused_by_name(dbconn, n: int, strings: bool) -> None:  # noqa: ANN001
    t = make_table(dbconn, "times", [Column("id", Integer(), primary_key=True), Column("ts", DateTime())])
    aware, naive = (("2020-01-01T12:00:00+03:00", "2020-01-01T12:00:00") if strings else (NOON_PLUS3, NINE_UTC))
    vals = [aware] * n + [naive]
    with pytest.raises(SchemaError) as err:
        t.store_chunk(pd.DataFrame({"id": range(n + 1), "ts": pd.Series(vals, dtype=object)}))
    msg = str(err.value)
    assert f"table 'times'; column 'ts'; key id={n}: mixes time-zone-aware and time-zone-naive date/times" in msg
    assert "tz_localize" in msg
    assert_nothing_written(t)


# ---------------------------------------------------------------- 11. '%' in names

@pytest.mark.parametrize("n", SIZES)
def test_percent_in_table_and_column_names_on_every_write_path(dbconn, n: int) -> None:  # noqa: ANN001
    catalog = Catalog(
        {
            "in%put": Table(TableStoreDB("in%put", dbconn, [Column("id", Integer(), primary_key=True), Column("v%al", String())])),
            "out%%put": Table(TableStoreDB("out%%put", dbconn, [Column("id", Integer(), primary_key=True), Column("n%", Integer())])),
        }
    )
    ds = DataStore(dbconn)
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(lambda df: df[["id"]].assign(**{"n%": df["v%al"].str.len()}), ["in%put"], ["out%%put"])]))
    src = catalog.get_datatable(ds, "in%put")
    src.store_chunk(pd.DataFrame({"id": range(n), "v%al": ["abc"] * n}))
    run_steps(ds, steps, raise_on_error=True)
    out = catalog.get_datatable(ds, "out%%put").get_data()
    assert len(out) == n and set(out["n%"]) == {3}
    src.store_chunk(pd.DataFrame({"id": range(n), "v%al": ["abcd"] * n}))  # the upsert path too
    run_steps(ds, steps, raise_on_error=True)
    assert set(catalog.get_datatable(ds, "out%%put").get_data()["n%"]) == {4}


# ---------------------------------------------------------------- 15. clear messages

def test_duplicate_column_names_are_named(dbconn) -> None:  # noqa: ANN001
    t = make_table(dbconn, "dups", [Column("id", Integer(), primary_key=True), Column("v", Integer())])
    with pytest.raises(SchemaError) as err:
        t.store_chunk(pd.DataFrame([[1, 2, 3]], columns=["id", "v", "v"]))
    assert str(err.value).startswith("table 'dups'; column 'v': the frame has this column more than once")
    assert_nothing_written(t)


@pytest.mark.parametrize("n", SIZES)
def test_nul_characters_are_refused_with_the_fix(dbconn, n: int) -> None:  # noqa: ANN001
    t = make_table(dbconn, "texts", [Column("id", Integer(), primary_key=True), Column("s", String())])
    with pytest.raises(SchemaError) as err:
        t.store_chunk(pd.DataFrame({"id": range(n), "s": ["ok"] * (n - 1) + ["a\x00b"]}))
    msg = str(err.value)
    assert f"table 'texts'; column 's'; key id={n - 1}: a string holds a NUL character" in msg
    assert "str.replace" in msg
    assert_nothing_written(t)


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_infinity_in_an_integer_column_says_so(dbconn, value: float) -> None:  # noqa: ANN001
    t = make_table(dbconn, "nums", [Column("id", Integer(), primary_key=True), Column("v", Integer())])
    with pytest.raises(SchemaError) as err:
        t.store_chunk(pd.DataFrame({"id": [1, 2], "v": [1.0, value]}))
    msg = str(err.value)
    assert "table 'nums'; column 'v'; key id=2: expected an integer, an integer column cannot hold infinity" in msg
    assert "fractional" not in msg and "replace it with None" in msg
    assert_nothing_written(t)


def test_nan_in_a_nullable_integer_column_is_null_and_ints_stay_ints(dbconn) -> None:  # noqa: ANN001
    t = make_table(dbconn, "nums", [Column("id", Integer(), primary_key=True), Column("v", BigInteger()), Column("f", Float())])
    t.store_chunk(pd.DataFrame({"id": [1, 2], "v": [float(2**53), np.nan], "f": [np.inf, 0.5]}))
    assert raw_rows(t, ["id", "v", "f"]) == [(1, 2**53, float("inf")), (2, None, 0.5)]


def test_string_longer_than_its_column_is_refused(dbconn) -> None:  # noqa: ANN001
    t = make_table(dbconn, "texts", [Column("id", Integer(), primary_key=True), Column("code", String(3))])
    with pytest.raises(SchemaError) as err:
        t.store_chunk(pd.DataFrame({"id": [1, 2], "code": ["abc", "abcd"]}))
    assert "table 'texts'; column 'code'; key id=2: string of 4 characters, longer than the column's 3" in str(err.value)
    assert_nothing_written(t)


# ---------------------------------------------------------------- errors cross process boundaries

def _roundtrip(e: Exception) -> Exception:
    return pickle.loads(pickle.dumps(e))


def test_every_error_pickles_with_its_fields_and_message() -> None:
    errors: list[DatapipeError] = [
        SchemaError("t", "expected an integer, got 'x' (str)", "c", {"id": 1, "org": "a"}),
        SchemaError("t", "column missing"),
        UnknownTableError("nope", ["a", "b"]),
        ConfigurationError("table 'x': no column is marked primary_key=True"),
        StepFailedError("step s: 2 keys failed"),
        DatapipeError("plain"),
    ]
    for e in errors:
        back = _roundtrip(e)
        assert type(back) is type(e)
        assert str(back) == str(e)
        assert (back.table, back.column, back.key, back.reason) == (e.table, e.column, e.key, e.reason)
    s = _roundtrip(errors[0])
    assert (s.table, s.column, s.key, s.reason) == ("t", "c", {"id": 1, "org": "a"}, "expected an integer, got 'x' (str)")
    u = _roundtrip(errors[2])
    assert isinstance(u, KeyError) and (u.table, u.reason, u.known) == ("nope", "unknown table", ["a", "b"])
    assert (errors[3].table, errors[3].column, errors[3].key, errors[3].reason) == (None, None, None, None)


def test_an_error_raised_by_store_chunk_pickles(dbconn) -> None:  # noqa: ANN001
    t = make_table(dbconn, "nums", [Column("id", Integer(), primary_key=True), Column("v", Integer())])
    with pytest.raises(SchemaError) as err:
        t.store_chunk(pd.DataFrame({"id": np.array([7], dtype=np.int64), "v": [2**40]}))
    back = _roundtrip(err.value)
    assert str(back) == str(err.value)
    assert (back.table, back.column, back.key) == ("nums", "v", {"id": 7})
    assert type(back.key["id"]) is int  # structured fields hold plain Python values, not numpy scalars
