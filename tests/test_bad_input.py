"""Bad input to store_chunk: a clear error naming table, column and key; nothing written."""

from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import Column, Float, Integer, String

from datapipe_dagster import Catalog, DataStore, SchemaError, Table, TableStoreDB


@pytest.fixture
def users(dbconn):  # noqa: ANN001, ANN201
    schema = [Column("org", String(), primary_key=True), Column("user_id", Integer(), primary_key=True), Column("name", String()), Column("score", Float())]
    catalog = Catalog({"users": Table(TableStoreDB("users", dbconn, schema))})
    dt = catalog.get_datatable(DataStore(dbconn), "users")
    dt.store_chunk(pd.DataFrame({"org": ["a"], "user_id": [1], "name": ["ann"], "score": [1.5]}))
    return dt


CASES = [
    (pd.DataFrame({"org": ["a", "a"], "name": ["x", "y"]}), "column 'user_id': primary-key column missing", None),
    (pd.DataFrame({"org": ["a", None], "user_id": [2, 3]}), "column 'org'", "key org=None, user_id=3: null value in a primary-key column"),
    (pd.DataFrame({"org": ["a", "b", "a"], "user_id": [2, 3, 2]}), "key org='a', user_id=2: duplicate key in one chunk", None),
    (pd.DataFrame({"org": ["a"], "user_id": [2], "nmae": ["x"]}), "column 'nmae': column not in the schema", "known columns: org, user_id, name, score"),
    (pd.DataFrame({"org": ["a", "a"], "user_id": [2, 3], "score": [1.0, "high"]}), "column 'score'", "key org='a', user_id=3: expected a number, got 'high'"),
    (pd.DataFrame({"org": ["a", "a"], "user_id": [2, 2.5]}), "column 'user_id'", "fractional part"),
    (pd.DataFrame({"org": ["a"], "user_id": ["seven"]}), "column 'user_id'", "expected an integer, got 'seven'"),
    (pd.DataFrame({"org": ["a"], "user_id": [2], "name": [{"not": "a string"}]}), "column 'name'", "key org='a', user_id=2: expected a string"),
]


@pytest.mark.parametrize(("df", "must", "also"), CASES, ids=["missing-pk", "null-key", "duplicate", "unknown-column", "wrong-type", "fractional-int", "bad-int", "dict-as-string"])
def test_bad_input_names_table_column_key_and_writes_nothing(users, df: pd.DataFrame, must: str, also: str | None) -> None:  # noqa: ANN001
    before_meta = users.get_metadata(include_deleted=True)
    before = users.get_data()
    with pytest.raises(SchemaError) as err:
        users.store_chunk(df)
    msg = str(err.value)
    assert msg.startswith("table 'users'")
    assert must in msg
    if also:
        assert also in msg
    pd.testing.assert_frame_equal(before, users.get_data())
    pd.testing.assert_frame_equal(before_meta, users.get_metadata(include_deleted=True))


def test_numbers_for_a_string_key_are_coerced_like_the_database_would(users) -> None:  # noqa: ANN001
    users.store_chunk(pd.DataFrame({"org": [7], "user_id": ["2"], "name": ["bob"]}))
    row = users.get_data(pd.DataFrame({"org": ["7"]}))
    assert list(row["user_id"]) == [2] and list(row["name"]) == ["bob"]


def test_empty_chunk_is_a_no_op(users) -> None:  # noqa: ANN001
    assert len(users.store_chunk(pd.DataFrame({"org": [], "user_id": []}))) == 0
    assert len(users.get_data()) == 1
