"""Building compute steps from a pipeline and running them: in full, or along a changelist."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from datapipe_dagster.compute.catalog import Catalog, ComputeStep, Pipeline
from datapipe_dagster.compute.datatable import DataStore
from datapipe_dagster.compute.result import RunSummary, StepResult
from datapipe_dagster.errors import ConfigurationError, DatabaseError, StepDatabaseError, StepFailedError
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


@contextmanager
def step_errors(step: ComputeStep) -> Iterator[None]:
    """Re-raise a database error escaping ``step`` as a StepDatabaseError naming the step and its tables
    (the original error stays the ``__cause__``). Any step runner (``run_steps``, the Dagster assets) can
    wrap its call in this."""
    try:
        yield
    except StepDatabaseError:
        raise
    except (sa.exc.SQLAlchemyError, DatabaseError) as e:
        inputs = [dt.name for dt in getattr(step, "input_dts", [])]
        outputs = [dt.name for dt in getattr(step, "output_dts", [])]
        raise StepDatabaseError(step.name, inputs, outputs, e) from e


def run_step(ds: DataStore, step: ComputeStep, changelist: ChangeList | None = None) -> StepResult:
    """Run one step (in full, or along ``changelist``); database errors name the step (``step_errors``)."""
    with step_errors(step):
        return step.run_full(ds) if changelist is None else step.run_changelist(ds, changelist)


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

    Raises:
        StepDatabaseError: the database failed (connection lost, lock timeout, disk full); names the step
            and its tables. Committed chunks stay; rerun once the database is back.
    """
    summary = RunSummary()
    for step in steps:
        summary.steps.append(run_step(ds, step))
    return _finish(summary, raise_on_error)


def run_steps_changelist(
    ds: DataStore, steps: list[ComputeStep], changelist: ChangeList, raise_on_error: bool = False
) -> RunSummary:
    """Process only what ``changelist`` touches, propagating each step's changes to the next ones."""
    cl = ChangeList()
    cl.extend(changelist)
    summary = RunSummary()
    for step in steps:
        res = run_step(ds, step, cl)
        cl.extend(res.changed)
        summary.steps.append(res)
    return _finish(summary, raise_on_error)
