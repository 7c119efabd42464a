"""``StepConformance``: the tests every step kind, built-in or yours, must pass (and ``StepCase``, its fixture)."""


from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from datapipe_dagster.compute.datatable import DataStore, DataTable
from datapipe_dagster.compute.result import StepResult
from datapipe_dagster.compute.steps import GeneratingStep, KeyedStep, ScanningStep, Step, is_keyed
from datapipe_dagster.testing.samples import _skip, canonical
from datapipe_dagster.types import ChangeList


@dataclass
class StepCase:
    """A step under test and the data it works on.

    Attributes:
        ds: the DataStore the step is bound to.
        step: the step, as ``build_compute`` returned it.
        seed: puts the first data in place (input rows, the scanned table's rows, the generator's source);
            a full run afterwards must write at least one output row.
        change: changes some of that data after a full run, so the step has work again; returns the
            changelist of the input rows it wrote (an empty one for a step without inputs).
    """

    ds: DataStore
    step: Step
    seed: Callable[[], None]
    change: Callable[[], ChangeList]


def written(result: StepResult) -> int:
    """Output rows a step run inserted, updated or deleted."""
    return sum(o.inserted + o.updated + o.deleted for o in result.outputs.values())


def outputs_snapshot(step: Step) -> dict[str, list[dict[str, Any]]]:
    """Every output table's rows, comparable across runs (see ``canonical``)."""
    return {dt.name: canonical(dt.store, dt.get_data()) for dt in step.output_dts}


def key_set(keys: pd.DataFrame, cols: list[str]) -> set[tuple[str, ...]]:
    """Keys as a set of tuples of strings (independent of order and dtypes)."""
    return {tuple(str(v) for v in row) for row in keys[cols].itertuples(index=False)}


class StepConformance:
    """Tests every step kind must pass. Subclasses provide the fixture ``step_case`` (a ``StepCase``)."""

    def test_declares_a_step(self, step_case: StepCase) -> None:
        step = step_case.step
        assert isinstance(step, Step), f"{step!r} lacks a member of the Step protocol"
        assert isinstance(step.name, str) and step.name
        assert all(isinstance(d, DataTable) for d in [*step.input_dts, *step.output_dts])
        assert step.code_version is None or isinstance(step.code_version, str)
        if isinstance(step, KeyedStep):
            assert set(step.transform_keys) <= set(step.key_cols)
            for d in step.output_dts:
                assert set(step.transform_keys) <= set(d.primary_keys), (d.name, step.transform_keys)
        if isinstance(step, (ScanningStep, GeneratingStep)):
            assert not step.input_dts, "a scanning or generating step has no inputs"

    def test_full_run_writes_then_settles(self, step_case: StepCase) -> None:
        step = step_case.step
        step_case.seed()
        first = step.run_full()
        assert first.name == step.name and first.keys_failed == 0, first
        assert written(first) > 0, "the seeded data must produce output rows"
        for name, _stats in first.outputs.items():
            assert name in {d.name for d in step.output_dts}, f"result names {name!r}, not an output"
        assert sum(len(first.changed_keys(d.name)) for d in step.output_dts) > 0, "changed keys feed the next step"
        before = outputs_snapshot(step)
        second = step.run_full()
        assert written(second) == 0, f"a second full run must write nothing: {second}"
        assert outputs_snapshot(step) == before

    def test_empty_changelist_writes_nothing(self, step_case: StepCase) -> None:
        step = step_case.step
        step_case.seed()
        step.run_full()
        before = outputs_snapshot(step)
        res = step.run_changelist(ChangeList())
        assert res.name == step.name and written(res) == 0
        assert outputs_snapshot(step) == before

    def test_change_reaches_the_outputs(self, step_case: StepCase) -> None:
        step = step_case.step
        step_case.seed()
        step.run_full()
        before = outputs_snapshot(step)
        changes = step_case.change()
        res = step.run_changelist(changes) if step.input_dts else step.run_full()
        assert written(res) > 0 and res.keys_failed == 0, res
        assert outputs_snapshot(step) != before
        assert written(step.run_full()) == 0, "the change was fully processed"

    def test_keyed_stale_all_and_reparse(self, step_case: StepCase) -> None:
        step = step_case.step
        if not (isinstance(step, KeyedStep) and is_keyed(step)):
            _skip(f"{type(step).__name__} is not a keyed step")
            return
        step_case.seed()
        stale = step.get_stale_keys()
        assert len(stale) > 0 and set(step.key_cols) <= set(stale.columns)
        every = step.get_all_keys()
        assert key_set(stale, step.key_cols) <= key_set(every, step.key_cols)
        step.run_full()
        assert len(step.get_stale_keys()) == 0
        assert step.count_failed() == 0
        failed = step.failed_keys()
        assert len(failed) == 0 and {"error", "traceback"} <= set(failed.columns)
        before = outputs_snapshot(step)
        every = step.get_all_keys()
        reparse = step.process_keys(every)
        assert reparse.keys_processed == len(every) and written(reparse) == 0, reparse
        assert outputs_snapshot(step) == before and len(step.get_stale_keys()) == 0

    def test_keyed_eval_writes_nothing(self, step_case: StepCase) -> None:
        step = step_case.step
        if not (isinstance(step, KeyedStep) and is_keyed(step) and step.transform_keys):
            _skip(f"{type(step).__name__} is not a step with transform keys")
            return
        step_case.seed()
        step.run_full()
        step_case.change()
        stale = step.get_stale_keys(advance_watermark=False)
        assert len(stale) > 0
        before = outputs_snapshot(step)
        result = step.eval(stale[step.key_cols])
        assert set(result.outputs) == {d.name for d in step.output_dts}
        assert outputs_snapshot(step) == before
        assert key_set(step.get_stale_keys(advance_watermark=False), step.key_cols) == key_set(stale, step.key_cols)

    def test_scan_records_changes_once(self, step_case: StepCase) -> None:
        step = step_case.step
        if not isinstance(step, ScanningStep):
            _skip(f"{type(step).__name__} is not a scanning step")
            return
        assert isinstance(step.incremental_scan, bool)
        step_case.seed()
        assert written(step.scan()) > 0
        assert written(step.scan()) == 0
        step_case.change()
        assert written(step.scan()) > 0

    def test_generate_writes_only_changes(self, step_case: StepCase) -> None:
        step = step_case.step
        if not isinstance(step, GeneratingStep):
            _skip(f"{type(step).__name__} is not a generating step")
            return
        step_case.seed()
        assert written(step.generate()) > 0
        assert written(step.generate()) == 0
        step_case.change()
        assert written(step.generate()) > 0
