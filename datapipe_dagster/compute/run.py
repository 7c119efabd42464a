"""Building compute steps from a pipeline and running them: in full, or along a changelist."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from datapipe_dagster.compute.catalog import Catalog, ComputeStep, Pipeline
from datapipe_dagster.compute.datatable import DataStore
from datapipe_dagster.compute.order import dependency_groups, derive_names
from datapipe_dagster.compute.result import RunSummary, StepResult
from datapipe_dagster.compute.steps import STEP_MEMBERS, Step
from datapipe_dagster.errors import (
    ConfigurationError,
    DatabaseError,
    DatapipeError,
    StepDatabaseError,
    StepFailedError,
)
from datapipe_dagster.types import ChangeList

log = logging.getLogger("datapipe_dagster")

MAX_PASSES = 100
"""Default bound on the passes over a cycle of steps (``run_steps``, ``run_steps_changelist``)."""


class NoFixedPointError(DatapipeError):
    """Steps that feed each other in a cycle still changed rows after the maximum number of passes."""

    def __init__(self, steps: list[str], passes: int, summary: RunSummary):
        self.steps = steps
        self.passes = passes
        self.summary = summary
        super().__init__(
            f"steps {steps} still changed rows after {passes} passes over their cycle; make the cycle "
            f"converge (e.g. clip values, return unchanged rows unchanged) or raise max_passes"
        )


def _default_named(decl: object) -> bool:
    """Whether a declaration's name is its function's (the user gave none, or gave that same name)."""
    func = getattr(decl, "func", None)
    return func is not None and getattr(decl, "name", None) == getattr(func, "__name__", None)


def build_compute(ds: DataStore, catalog: Catalog, pipeline: Pipeline) -> list[ComputeStep]:
    """Bind every step of ``pipeline`` to ``ds`` and ``catalog``. Opens no connection.

    Raises:
        ConfigurationError: two steps with the same name, a step naming an unknown table, or a
            declaration building something that is not a ``Step``.
    """
    steps: list[ComputeStep] = []
    explicit: list[bool] = []
    for decl in pipeline.steps:
        built = decl.build_compute(ds, catalog)
        for s in built:
            if not isinstance(s, Step):
                missing = [m for m in STEP_MEMBERS if not hasattr(s, m)]
                raise ConfigurationError(
                    f"{type(decl).__name__}.build_compute returned {type(s).__name__}, which lacks {missing} "
                    "of the Step protocol (datapipe_dagster.compute.steps.Step)"
                )
        steps.extend(built)
        explicit.extend([not _default_named(decl)] * len(built))
    # Two steps from one function: the later ones get names derived from their tables (stable).
    derive_names(steps, explicit)
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
        return step.run_full() if changelist is None else step.run_changelist(changelist)


def _finish(summary: RunSummary, raise_on_error: bool) -> RunSummary:
    if not summary.ok:
        log.warning("run finished with failed keys:\n%s", summary)
        if raise_on_error:
            raise StepFailedError(summary)
    return summary


def _record(summary: RunSummary, res: StepResult) -> None:
    """Add a step's result to the summary, merging passes of the same step into one entry."""
    for s in summary.steps:
        if s.name == res.name:
            s.merge(res)
            return
    summary.steps.append(res)


def run_steps(
    ds: DataStore, steps: list[ComputeStep], raise_on_error: bool = False, max_passes: int = MAX_PASSES
) -> RunSummary:
    """Run every step on its stale keys, in dependency order (a step runs after the steps writing its
    inputs, whatever the pipeline's order), so changes propagate down chains in one call. Steps that
    feed each other in a cycle are repeated until a pass changes nothing.

    Returns a RunSummary naming the failed keys (one entry per step, passes merged); with
    ``raise_on_error`` a StepFailedError carrying it is raised at the end instead (after every step ran).

    Raises:
        NoFixedPointError: a cycle still changed rows after ``max_passes`` passes (names its steps).
        StepDatabaseError: the database failed (connection lost, lock timeout, disk full); names the step
            and its tables. Committed chunks stay; rerun once the database is back.
    """
    summary = RunSummary()
    for group in dependency_groups(steps):
        for n in range(max_passes):
            changed = False
            for step in group.steps:
                res = run_step(ds, step)
                _record(summary, res)
                changed = changed or not res.changed.empty()
            if not group.cyclic or not changed:
                break
            if n == max_passes - 1:
                raise NoFixedPointError([s.name for s in group.steps], max_passes, summary)
    return _finish(summary, raise_on_error)


def run_steps_changelist(
    ds: DataStore,
    steps: list[ComputeStep],
    changelist: ChangeList,
    raise_on_error: bool = False,
    max_passes: int = MAX_PASSES,
) -> RunSummary:
    """Process only what ``changelist`` touches, in dependency order, feeding each step's changes to the
    steps after it; a cycle of steps is repeated on its own changes until a pass changes nothing.

    Raises:
        NoFixedPointError: a cycle still changed rows after ``max_passes`` passes (names its steps).
    """
    cl = ChangeList()
    cl.extend(changelist)
    summary = RunSummary()
    for group in dependency_groups(steps):
        if not group.cyclic:
            for step in group.steps:
                res = run_step(ds, step, cl)
                cl.extend(res.changed)
                _record(summary, res)
            continue
        pending = cl  # the first pass sees every change so far; later passes the cycle's own changes
        for n in range(max_passes):
            produced = ChangeList()
            for step in group.steps:
                view = ChangeList()
                view.extend(pending)
                view.extend(produced)
                res = run_step(ds, step, view)
                produced.extend(res.changed)
                _record(summary, res)
            cl.extend(produced)
            if produced.empty():
                break
            if n == max_passes - 1:
                raise NoFixedPointError([s.name for s in group.steps], max_passes, summary)
            pending = produced
    return _finish(summary, raise_on_error)
