"""A ChangeList fed keys built on first use (``LazyKeys``, what a small write appends) reads as one fed
the frames themselves, and builds nothing while a run only asks whether anything changed."""

from __future__ import annotations

import pandas as pd

from datapipe_dagster.types import ChangeList, LazyKeys


def _lists(frames: list[pd.DataFrame], built: list[int]) -> tuple[ChangeList, ChangeList]:
    def lazy(f: pd.DataFrame) -> LazyKeys:
        def build() -> pd.DataFrame:
            built.append(len(f))
            return f

        return LazyKeys(len(f), list(f.columns), build)

    eager, lazy_cl = ChangeList(), ChangeList()
    for f in frames:
        eager.append("t", f)
        lazy_cl.append("t", lazy(f))
    return eager, lazy_cl


def test_lazy_keys_read_as_frames() -> None:
    frames = [
        pd.DataFrame({"k": pd.Series([], dtype=str)}),
        pd.DataFrame({"k": ["a"]}),
        pd.DataFrame({"k": ["b", "a"]}),
    ]
    built: list[int] = []
    eager, lazy = _lists(frames, built)
    assert lazy.empty() == eager.empty() is False
    assert built == []
    outer_e, outer_l = ChangeList(), ChangeList()
    outer_e.extend(eager)
    outer_l.extend(lazy)
    assert built == []
    pd.testing.assert_frame_equal(outer_l.head("t", 1), outer_e.head("t", 1))
    pd.testing.assert_frame_equal(outer_l.changes["t"], outer_e.changes["t"])
    pd.testing.assert_frame_equal(lazy.changes["t"], eager.changes["t"])
    assert repr(lazy) == repr(eager)


def test_only_empty_lazy_keys() -> None:
    built: list[int] = []
    eager, lazy = _lists(
        [pd.DataFrame({"k": pd.Series([], dtype=str), "j": pd.Series([], dtype=int)})], built
    )
    assert lazy.empty() and eager.empty()
    pd.testing.assert_frame_equal(lazy.get("t"), eager.get("t"))
    assert list(lazy.get("t").columns) == ["k", "j"]
    outer_e, outer_l = ChangeList(), ChangeList()
    outer_e.extend(eager)
    outer_l.extend(lazy)
    pd.testing.assert_frame_equal(outer_l.get("t"), outer_e.get("t"))
    assert built == []  # an empty part's frame is never needed


def test_small_result_changes_as_built_now() -> None:
    from datapipe_dagster.compute.result import StepResult
    from datapipe_dagster.compute.small_result import SmallResult
    from datapipe_dagster.frames import columns_of

    df = pd.DataFrame({"a": ["x", "y", "z"], "b": [1, 2, 3], "v": [0.5, 1.5, 2.5]})
    gone = pd.DataFrame({"a": ["q"], "b": [9]})
    for new, changed, deleted in [
        ([0], [2], gone),
        ([], [], gone.iloc[:0]),
        ([1], [], gone.iloc[:0]),
        ([], [0, 1], gone),
    ]:
        w = SmallResult(df, ["a", "b"], new, changed, deleted)
        res = StepResult("s")
        res.add_write("t", ["a", "b"], w)
        expected = columns_of(SmallResult(df, ["a", "b"], new, changed, deleted).changed_idx(), ["a", "b"])
        got = res.changed_keys("t")
        if len(expected):
            pd.testing.assert_frame_equal(got, expected.drop_duplicates().reset_index(drop=True))
        else:
            assert len(got) == 0 and list(got.columns) == ["a", "b"]
