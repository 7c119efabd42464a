"""Row hashes are computed column by column without a frame (``store.rowhash.combine_hashes``); they must
equal pandas' ``hash_pandas_object`` of the frame of those columns, which is what every stored hash was
computed with."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from datapipe_dagster.store.rowhash import _NULL, encode_json_column, hash_rows

SCHEMA = [
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("f", sa.Float),
    sa.Column("n", sa.Integer),
    sa.Column("b", sa.Boolean),
    sa.Column("ts", sa.DateTime),
    sa.Column("tz", sa.DateTime(timezone=True)),
    sa.Column("d", sa.Date),
    sa.Column("j", sa.JSON),
    sa.Column("t", sa.Text),
    sa.Column("raw", sa.LargeBinary),
]


def _frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(rows)
    ts = pd.to_datetime(rng.integers(0, 2_000_000_000, rows), unit="s")
    df = pd.DataFrame(
        {
            "id": np.arange(rows, dtype="int64"),
            "name": [f"n{i}" if i % 7 else "ключ ✓" for i in range(rows)],
            "f": [np.nan if i % 5 == 0 else i / 3 for i in range(rows)],
            "n": pd.array([None if i % 4 == 0 else i for i in range(rows)], dtype="Int64"),
            "b": [bool(i % 2) for i in range(rows)],
            "ts": ts.where(np.arange(rows) % 6 != 0),
            "tz": ts.tz_localize("UTC"),
            "d": [dt.date(2020, 1, 1 + i % 28) for i in range(rows)],
            "j": [None if i % 3 == 0 else {"a": i, "b": [1, None, "x"], "c": {"z": 1.5}} for i in range(rows)],
            "t": [None if i % 2 else f"text {i}" for i in range(rows)],
            "raw": [bytes([i % 256]) * 3 for i in range(rows)],
        }
    )
    return df


def _hash_by_frame(df: pd.DataFrame, columns: list[sa.Column], strict: bool) -> np.ndarray:
    """The former implementation: every column into one frame, hashed by ``hash_pandas_object``."""
    pks = [c.name for c in columns if c.primary_key]
    parts = {}
    for col in columns:
        s = df[col.name]
        is_json = isinstance(col.type, sa.JSON)
        if is_json or s.dtype == object:
            texts = encode_json_column(s.tolist(), strict and is_json, "t", col.name, df, pks)
            s = pd.Series([_NULL if t is None else t for t in texts], index=df.index, dtype=object)
        parts[col.name] = s
    h = pd.util.hash_pandas_object(pd.DataFrame(parts), index=False).to_numpy()
    return (h >> np.uint64(1)).astype(np.int64)


@pytest.mark.parametrize("rows", [1, 2, 3, 64, 65, 1000])
@pytest.mark.parametrize("strict", [False, True])
def test_hash_equals_hash_pandas_object(rows: int, strict: bool) -> None:
    df = _frame(rows)
    for cols in (SCHEMA, SCHEMA[:2], SCHEMA[:1], [SCHEMA[0], SCHEMA[8]]):
        got = hash_rows(df, cols, strict_json=strict)
        assert got.dtype == np.int64
        assert got.tolist() == _hash_by_frame(df, cols, strict).tolist(), [c.name for c in cols]


def test_hash_of_a_shuffled_index_is_the_same() -> None:
    df = _frame(20)
    shuffled = df.iloc[::-1]
    shuffled.index = range(100, 120)
    assert hash_rows(shuffled, SCHEMA).tolist() == hash_rows(df, SCHEMA).tolist()[::-1]


def _key_hash_by_frame(keys: pd.DataFrame, cols: list[str]) -> np.ndarray:
    """The former ``key_hash``: every key column as text in one frame, hashed by ``hash_pandas_object``."""
    from datapipe_dagster.meta.keyhash import _as_text

    as_text = pd.DataFrame({c: _as_text(keys[c]) for c in cols})
    return (pd.util.hash_pandas_object(as_text, index=False).to_numpy(dtype=np.uint64) >> np.uint64(33)).astype(np.int64)


@pytest.mark.parametrize(
    "column",
    [
        pd.Series(["u1", "u2", "ключ", ""]),
        pd.Series(["u1", "u2", "x", "y"], dtype=object),
        pd.Series(["a", None, "b", "c"], dtype=object),
        pd.Series([1, -2, 3, 2**40], dtype="int64"),
        pd.Series([1, None, 3, 4], dtype="Int64"),
        pd.Series([1.0, 2.0, 3.0, 4.0]),
        pd.Series([1.5, 2.0, np.nan, 4.0]),
        pd.Series([1, "a", 2.5, None], dtype=object),
        pd.Series(pd.to_datetime(["2020-01-01", "2021-01-01", "2022-01-01", "2023-01-01"])),
        pd.Series([True, False, True, True]),
    ],
)
def test_key_hash_equals_the_frame_hash(column: pd.Series) -> None:
    from datapipe_dagster.meta.keyhash import key_hash

    keys = pd.DataFrame({"a": column, "b": pd.Series(["x", "y", "z", "w"]), "c": pd.Series([7, 8, 9, 10])})
    for cols in (["a"], ["a", "b"], ["c", "a"], ["b", "c"]):
        assert key_hash(keys, cols).tolist() == _key_hash_by_frame(keys, cols).tolist(), cols
