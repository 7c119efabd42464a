"""The bad-input matrix (issue 8): every class of bad input to ``store_chunk``, on SQLite and PostgreSQL.

Each case asserts that the error is a DatapipeError whose message starts with the table and names the
column (when there is one) and the offending row's key; that nothing was written (data, row metadata,
the downstream table and the write sequence are unchanged); and that a good ``store_chunk`` followed by
``run_steps`` works afterwards. One catalog per backend serves every case (the cases write nothing), so
the matrix stays fast. ``tests/test_bad_input.py`` keeps the original few cases with exact messages.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
)

from datapipe_dagster import (
    BatchTransform,
    Catalog,
    DatapipeError,
    DataStore,
    DBConn,
    Pipeline,
    Table,
    TableStoreDB,
    build_compute,
    run_steps,
)
from tests.conftest import PG_URL, require_pg

UTC = dt.timezone.utc
GOOD: dict[str, Any] = {
    "org": "a",
    "id": 100,
    "small": 1,
    "big": 1,
    "num": 1.0,
    "flag": True,
    "name": "x",
    "code": "ab",
    "born": dt.date(2020, 1, 1),
    "at": dt.datetime(2020, 1, 1, 12),
    "at_tz": dt.datetime(2020, 1, 1, 12, tzinfo=UTC),
    "doc": {"k": 1},
    "blob": b"x",
    "req": "r",
}
BAD_ID = 101
ROW_KEY = f"key org='a', id={BAD_ID}"


def schema() -> list[Column]:
    return [
        Column("org", String(8), primary_key=True),
        Column("id", Integer(), primary_key=True),
        Column("small", SmallInteger()),
        Column("big", BigInteger()),
        Column("num", Float()),
        Column("flag", Boolean()),
        Column("name", String()),
        Column("code", String(4)),
        Column("born", Date()),
        Column("at", DateTime()),
        Column("at_tz", DateTime(timezone=True)),
        Column("doc", JSON()),
        Column("blob", LargeBinary()),
        Column("req", String(), nullable=False),
    ]


def count_rows(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"org": df["org"], "id": df["id"], "n": 1})


@dataclass
class Env:
    ds: DataStore
    wide: Any
    out: Any
    steps: list
    ids: Iterator[int]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if request.param == "sqlite":
        dbconn = DBConn(f"sqlite:///{tmp_path_factory.mktemp('matrix') / 'matrix.sqlite'}")
    else:
        require_pg()
        dbconn = DBConn(PG_URL, schema=f"t_{uuid.uuid4().hex[:12]}")
    catalog = Catalog(
        {
            "wide": Table(TableStoreDB("wide", dbconn, schema())),
            "wide_out": Table(TableStoreDB("wide_out", dbconn, [Column("org", String(8), primary_key=True), Column("id", Integer(), primary_key=True), Column("n", Integer())])),
        }
    )
    ds = DataStore(dbconn)
    steps = build_compute(ds, catalog, Pipeline([BatchTransform(count_rows, ["wide"], ["wide_out"])]))
    wide = catalog.get_datatable(ds, "wide")
    wide.store_chunk(pd.DataFrame([GOOD]))
    run_steps(ds, steps, raise_on_error=True)
    yield Env(ds, wide, catalog.get_datatable(ds, "wide_out"), steps, itertools.count(1000))
    dbconn.engine.dispose()
    if dbconn.schema is not None:
        eng = sa.create_engine(PG_URL)
        with eng.begin() as c:
            c.execute(sa.text(f'DROP SCHEMA IF EXISTS "{dbconn.schema}" CASCADE'))
        eng.dispose()


# ---------------------------------------------------------------- the cases


@dataclass
class Case:
    name: str
    make: Callable[[], Any]  # the bad input (usually a DataFrame)
    column: str | None  # the column the message must name, if any
    key: str | None  # text naming the offending key, if any
    processed_idx: pd.DataFrame | None = None


def two_rows(column: str, value: Any) -> pd.DataFrame:
    """A good row, then a row (id 101) whose ``column`` holds ``value``."""
    bad = {**GOOD, "id": BAD_ID, column: value}
    return pd.DataFrame({c: pd.Series([GOOD[c], bad[c]], dtype=object) for c in GOOD})


def value_case(name: str, column: str, value: Any, key: str = ROW_KEY) -> Case:
    return Case(name, lambda: two_rows(column, value), column, key)


def frame_without(*columns: str) -> pd.DataFrame:
    return pd.DataFrame([GOOD]).drop(columns=list(columns))


def good_frame() -> pd.DataFrame:
    return pd.DataFrame([GOOD, dict(GOOD, id=BAD_ID)])


CASES: list[Case] = [
    # keys
    value_case("int-key-junk-string", "id", "seven", "key org='a', id='seven'"),
    value_case("int-key-fractional", "id", 1.5, "key org='a', id=1.5"),
    value_case("int-key-bool", "id", True, "key org='a', id=True"),
    value_case("int-key-inf", "id", float("inf"), "key org='a', id=inf"),
    value_case("int-key-overflow-32bit", "id", 2**31, f"key org='a', id={2**31}"),
    value_case("int-key-underflow-32bit", "id", -(2**31) - 1, f"key org='a', id={-(2**31) - 1}"),
    value_case("int-key-none", "id", None, "key org='a', id=None"),
    value_case("int-key-nan", "id", float("nan"), "key org='a', id=None"),
    value_case("int-key-nat", "id", pd.NaT, "key org='a', id=None"),
    value_case("str-key-none", "org", None, f"key org=None, id={BAD_ID}"),
    value_case("str-key-nan", "org", float("nan"), f"key org=None, id={BAD_ID}"),
    value_case("str-key-too-long", "org", "toolongorg", f"key org='toolongorg', id={BAD_ID}"),
    value_case("str-key-bytes", "org", b"a", f"key org=b'a', id={BAD_ID}"),
    value_case("str-key-dict", "org", {"a": 1}, f"key org={{'a': 1}}, id={BAD_ID}"),
    value_case("str-key-nul", "org", "a\x00", f"key org='a\\x00', id={BAD_ID}"),
    Case("duplicate-key", lambda: pd.DataFrame([GOOD, dict(GOOD, name="y")]), None, "key org='a', id=100: duplicate key in one chunk"),
    Case("duplicate-key-after-coercion", lambda: pd.DataFrame({"org": ["a", "a"], "id": pd.Series([100, "100"], dtype=object), "req": ["r", "r"]}), None, "key org='a', id=100: duplicate key"),
    # integers
    value_case("smallint-overflow", "small", 2**15),
    value_case("smallint-underflow", "small", -(2**15) - 1),
    value_case("smallint-fractional-string", "small", "1.5"),
    value_case("bigint-2**63", "big", 2**63),
    value_case("bigint-minus-1e19", "big", -1e19),
    value_case("bigint-1e30", "big", 1e30),
    value_case("bigint-overflow-string", "big", "99999999999999999999"),
    value_case("bigint-fractional-decimal", "big", Decimal("1.5")),
    value_case("bigint-list", "big", [1, 2]),
    value_case("bigint-bool", "big", False),
    value_case("bigint-minus-inf", "big", float("-inf")),
    # floats
    value_case("float-junk-string", "num", "high"),
    value_case("float-bool", "num", True),
    value_case("float-dict", "num", {"a": 1}),
    value_case("float-bytes", "num", b"1"),
    # booleans
    value_case("bool-string", "flag", "yes"),
    value_case("bool-two", "flag", 2),
    value_case("bool-fraction", "flag", 0.5),
    # strings
    value_case("string-bytes", "name", b"bytes"),
    value_case("string-dict", "name", {"nested": 1}),
    value_case("string-list", "name", [1, 2]),
    value_case("string-bool", "name", True),
    value_case("string-float", "name", 1.5),
    value_case("string-nul", "name", "a\x00b"),
    value_case("string-too-long", "code", "abcde"),
    value_case("not-null-none", "req", None),
    # dates and times
    value_case("date-bad-month", "born", "2020-13-45"),
    value_case("date-junk", "born", "not a date"),
    value_case("datetime-feb-30", "at", "2020-02-30 10:00"),
    value_case("datetime-year-20000", "at", "20000-01-01"),
    value_case("datetime-dict", "at", {"a": 1}),
    value_case("datetime-aware-after-naive", "at", dt.datetime(2020, 1, 1, 12, tzinfo=UTC)),
    value_case("datetime-naive-after-aware", "at_tz", dt.datetime(2020, 1, 1, 12)),
    value_case("datetime-aware-string-after-naive", "at", "2020-01-01T12:00:00+03:00"),
    # JSON and binary
    value_case("json-set", "doc", {1, 2}),
    value_case("json-object", "doc", object()),
    value_case("json-nested-nan", "doc", {"a": float("nan")}),
    value_case("json-top-level-inf", "doc", float("inf")),
    value_case("json-nested-bytes", "doc", {"a": b"x"}),
    value_case("json-nested-datetime", "doc", {"a": dt.datetime(2020, 1, 1)}),
    value_case("json-nested-numpy", "doc", {"a": np.int64(1)}),
    value_case("binary-string", "blob", "not bytes"),
    value_case("binary-int", "blob", 5),
    # the frame itself
    Case("missing-int-key-column", lambda: frame_without("id"), "id", None),
    Case("missing-str-key-column", lambda: frame_without("org"), "org", None),
    Case("empty-frame-without-columns", lambda: pd.DataFrame(), "org", None),
    Case("missing-not-null-column", lambda: frame_without("req"), "req", None),
    Case("unknown-column", lambda: pd.DataFrame([dict(GOOD, nmae="x")]), "nmae", None),
    Case("empty-column-name", lambda: pd.DataFrame([dict(GOOD, **{"": 1})]), "", None),
    Case("non-string-column-name", lambda: pd.DataFrame([GOOD]).assign(**{"0": 1}).rename(columns={"0": 0}), "0", None),
    Case("duplicate-column-names", lambda: pd.concat([pd.DataFrame([GOOD]), pd.DataFrame({"name": ["y"]})], axis=1), "name", None),
    Case("list-of-dicts", lambda: [GOOD], None, None),
    Case("dict-of-lists", lambda: {c: [v] for c, v in GOOD.items()}, None, None),
    Case("series", lambda: pd.Series(GOOD), None, None),
    Case("none", lambda: None, None, None),
    Case("processed-idx-non-key-column", good_frame, "name", None, processed_idx=pd.DataFrame({"name": ["x"]})),
]


def snapshot(env: Env) -> list[pd.DataFrame | int]:
    return [
        env.wide.get_data(),
        env.wide.get_metadata(include_deleted=True),
        env.out.get_data(),
        env.out.get_metadata(include_deleted=True),
        env.ds.current_seq(),
    ]


def test_the_matrix_has_at_least_50_distinct_classes() -> None:
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names) >= 50


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(env: Env, case: Case) -> None:
    before = snapshot(env)
    with pytest.raises(DatapipeError) as err:
        env.wide.store_chunk(case.make(), processed_idx=case.processed_idx)
    msg = str(err.value)
    assert msg.startswith("table 'wide'"), msg
    assert err.value.table == "wide"
    if case.column is not None:
        assert f"column {case.column!r}" in msg, msg
        assert err.value.column == case.column
    if case.key is not None:
        assert case.key in msg, msg
        assert err.value.key is not None
    after = snapshot(env)
    for b, a in zip(before, after, strict=True):
        if isinstance(b, pd.DataFrame):
            pd.testing.assert_frame_equal(b, a)
        else:
            assert b == a
    # The pipeline still works: a good row goes in and through the transform.
    new_id = next(env.ids)
    env.wide.store_chunk(pd.DataFrame([dict(GOOD, id=new_id)]))
    run_steps(env.ds, env.steps, raise_on_error=True)
    assert len(env.out.get_data(pd.DataFrame({"org": ["a"], "id": [new_id]}))) == 1
