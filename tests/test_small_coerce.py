"""The shortcuts of validating a few rows (``isna_mask``, no copy of the coerced columns) give what the
pandas calls they replace give, and a validated frame stays apart from the caller's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from datapipe_dagster.errors import SchemaError
from datapipe_dagster.frames import first_duplicate, isna_mask
from datapipe_dagster.store.schema import coerce_frame

SERIES = [
    pd.Series(["a", None, "c"]),
    pd.Series(["a", None], dtype=object),
    pd.Series([1.0, np.nan]),
    pd.Series([1, None], dtype="Int64"),
    pd.Series([True, None], dtype="boolean"),
    pd.Series([1, 2]),
    pd.Series([pd.Timestamp("2024-01-01"), pd.NaT]),
    pd.Series([pd.Timestamp("2024-01-01", tz="UTC"), None]),
    pd.Series([{"a": 1}, None, pd.NA, float("nan")], dtype=object),
    pd.Series(["x", None], dtype="category"),
    pd.Series([], dtype=object),
]


@pytest.mark.parametrize("s", SERIES, ids=lambda s: str(s.dtype))
def test_isna_mask_is_series_isna(s: pd.Series) -> None:
    got = isna_mask(s)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, s.isna().to_numpy())


def test_first_duplicate_of_one_row() -> None:
    assert first_duplicate(pd.DataFrame({"k": ["a"]}), ["k"]) is None
    assert first_duplicate(pd.DataFrame({"k": ["a", "a"]}), ["k"]) == 1


COLS = [
    sa.Column("k", sa.String, primary_key=True),
    sa.Column("n", sa.Integer),
    sa.Column("x", sa.Float, nullable=False),
    sa.Column("j", sa.JSON),
]


def test_small_frame_is_apart_from_the_callers() -> None:
    df = pd.DataFrame({"k": ["a", "b"], "n": [1, 2], "x": [1.5, 2.5], "j": [{"a": 1}, None]}, index=[7, 9])
    out = coerce_frame("t", COLS, df)
    expected = out.copy()
    df.loc[7, "x"] = 99.0
    df.loc[9, "k"] = "z"
    pd.testing.assert_frame_equal(out, expected)
    out.loc[0, "n"] = 5
    assert df.loc[7, "n"] == 1
    assert list(out.index) == [0, 1]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"k": ["a", None], "x": [1.0, 2.0]}, "null value in a primary-key column"),
        ({"k": ["a"], "x": [None]}, "null value in a non-nullable column"),
        ({"k": ["a"], "x": [1.0], "n": ["q"]}, "expected an integer"),
        ({"k": ["a", "a"], "x": [1.0, 2.0]}, "duplicate key in one chunk"),
    ],
)
def test_small_and_large_frames_fail_alike(data: dict, message: str) -> None:
    """The same bad row, alone at the top of a small frame and of a frame past the small size."""
    small = pd.DataFrame(data)
    pad = pd.DataFrame({"k": [f"p{i}" for i in range(100)], "x": 0.0, "n": 0})
    large = pd.concat([small, pad[[c for c in pad.columns if c in small.columns]]], ignore_index=True)
    errors = []
    for df in (small, large):
        with pytest.raises(SchemaError, match=message) as e:
            coerce_frame("t", COLS, df)
        errors.append(str(e.value))
    assert errors[0] == errors[1]


def test_small_and_large_frames_coerce_alike() -> None:
    data = {"k": ["a", "b", "c"], "n": [1, None, 3], "x": [1, 2, 3], "j": [{"a": [1]}, None, "s"]}
    small = coerce_frame("t", COLS, pd.DataFrame(data))
    big = coerce_frame(
        "t", COLS, pd.DataFrame({c: v * 30 for c, v in data.items()}).assign(k=[f"k{i}" for i in range(90)])
    )
    pd.testing.assert_frame_equal(small.drop(columns="k"), big.drop(columns="k").head(3))
    assert small.dtypes.equals(big.dtypes)
