"""Building compute steps from a pipeline and running them: in full, or along a changelist."""

from __future__ import annotations

import logging
from collections import Counter

from datapipe_dagster.compute.catalog import Catalog, ComputeStep, Pipeline
from datapipe_dagster.compute.datatable import DataStore
from datapipe_dagster.compute.result import RunSummary
from datapipe_dagster.errors import ConfigurationError, StepFailedError
from datapipe_dagster.types import ChangeList

log = logging.getLogger("datapipe_dagster")


def build_compute(ds: DataStore, catalog: Catalog, pipeline: Pipeline) -> list[ComputeStep]:
    """Bind every step of ``pipeline`` to ``ds`` and ``catalog``. Opens no connection.

    Raises:
        ConfigurationError: two steps with the same name, or a step naming an unknown table.
    """
    steps: list[ComputeStep] = []
    for decl in pipeline.steps:
        steps.extend(decl.build_compute(ds, catalog))
    seen: set[str] = set()
    for s in steps:
        if s.name in seen:
            raise ConfigurationError(f"two steps are named {s.name!r}; give one of them name=...")
        seen.add(s.name)
    writers = Counter(dt.name for s in steps for dt in s.output_dts)
    for s in steps:
        s.shared_outputs = frozenset(dt.name for dt in s.output_dts if writers[dt.name] > 1)
    return steps


def _finish(summary: RunSummary, raise_on_error: bool) -> RunSummary:
    if not summary.ok:
        log.warning("run finished with failed keys:\n%s", summary)
        if raise_on_error:
            raise StepFailedError(summary)
    return summary


def run_steps(ds: DataStore, steps: list[ComputeStep], raise_on_error: bool = False) -> RunSummary:
    """Run every step on its stale keys, in order (so changes propagate down chains in one call).

    Returns a RunSummary naming the failed keys; with ``raise_on_error`` a StepFailedError carrying it is
    raised at the end instead (after every step ran).
    """
    summary = RunSummary()
    for step in steps:
        summary.steps.append(step.run_full(ds))
    return _finish(summary, raise_on_error)


def run_steps_changelist(
    ds: DataStore, steps: list[ComputeStep], changelist: ChangeList, raise_on_error: bool = False
) -> RunSummary:
    """Process only what ``changelist`` touches, propagating each step's changes to the next ones."""
    cl = ChangeList()
    cl.extend(changelist)
    summary = RunSummary()
    for step in steps:
        res = step.run_changelist(ds, cl)
        cl.extend(res.changed)
        summary.steps.append(res)
    return _finish(summary, raise_on_error)
