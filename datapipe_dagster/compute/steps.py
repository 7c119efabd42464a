"""What a compute step can do, declared: the protocols the runners, the Dagster adapter and the CLI rely on.

A step kind implements ``Step`` and, for each further capability it has, one more protocol:

- ``KeyedStep``: the engine knows its transform keys; stale keys, every key, process given keys,
  failed keys, eval. Dagster partitions it by key buckets and its sensor requests stale partitions.
- ``ScanningStep``: it finds changes by scanning a table it does not own (an external table).
- ``GeneratingStep``: it has no inputs; a run produces its outputs from scratch.

A step with none of these is run whole (``run_full``) by every runner. The protocols are
``runtime_checkable``: callers ask ``isinstance(step, KeyedStep)``, so a new step kind needs no change
to ``datapipe_dagster.dagster`` or the CLI; ``datapipe_dagster.testing.StepConformance`` checks it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Iterable

    import pandas as pd

    from datapipe_dagster.compute.datatable import DataTable
    from datapipe_dagster.compute.evaluate import EvalResult
    from datapipe_dagster.compute.result import StepResult
    from datapipe_dagster.types import ChangeList


@runtime_checkable
class Step(Protocol):
    """A runnable step bound to a DataStore."""

    name: str
    """Unique within a pipeline; names the step's state, asset and sensor."""
    input_dts: list[DataTable]
    """The tables the step reads (a step runs after the steps writing them)."""
    output_dts: list[DataTable]
    """The tables the step writes (its assets)."""
    code_version: str | None
    """Changes when the step's code changes (None: unknown)."""

    def run_full(self) -> StepResult:
        """Process everything that needs work and report what was written."""
        ...

    def run_changelist(self, changelist: ChangeList) -> StepResult:
        """Process what the changes in ``changelist`` make stale; the result's ``changed`` feeds the next step."""
        ...


@runtime_checkable
class KeyedStep(Step, Protocol):
    """A step whose work is divided by transform keys the engine tracks."""

    transform_keys: list[str]
    """The key columns (empty for a step that processes its inputs as one key)."""
    key_cols: list[str]
    """The columns of the key frames the step returns and accepts (``transform_keys``, or one synthetic column)."""

    def get_stale_keys(self, advance_watermark: bool = True, include_failed: bool = True) -> pd.DataFrame:
        """Keys needing work; ``include_failed=False`` counts a failed key only if its inputs changed since."""
        ...

    def get_all_keys(self) -> pd.DataFrame:
        """Every key the step knows (a reparse processes them all)."""
        ...

    def process_keys(self, keys: pd.DataFrame, chunk_size: int | None = None) -> StepResult:
        """Recompute ``keys`` (stale or not), commit their outputs and record each key's outcome."""
        ...

    def failed_keys(self, limit: int | None = None) -> pd.DataFrame:
        """Keys whose last attempt failed, with ``error``, ``traceback`` and ``process_ts``."""
        ...

    def count_failed(self) -> int:
        """How many keys' last attempt failed."""
        ...

    def eval(self, keys: pd.DataFrame) -> EvalResult:  # noqa: A003 - the seed's name
        """What processing ``keys`` would write to each output, writing nothing."""
        ...


@runtime_checkable
class PartitionKeyedStep(KeyedStep, Protocol):
    """A keyed step that lists the keys of some hash buckets without reading the whole key space."""

    def get_partition_keys(self, n: int, buckets: Iterable[int]) -> pd.DataFrame:
        """Every key whose hash falls in ``buckets`` out of ``n`` (``compute.partitioning``), stale ones included."""
        ...


@runtime_checkable
class ScanningStep(Step, Protocol):
    """A step that finds changes by scanning a table written outside the pipeline."""

    @property
    def incremental_scan(self) -> bool:
        """True when a scan reads only what changed (cheap enough for a sensor tick), False when it reads everything."""
        ...

    def scan(self, full: bool | None = None) -> StepResult:
        """Scan the table, record the rows that changed since the last scan; ``full`` forces or forbids a full scan."""
        ...


@runtime_checkable
class GeneratingStep(Step, Protocol):
    """A step without inputs that produces its outputs from scratch on every run."""

    delete_stale: bool
    """Whether a run deletes the output rows it did not produce."""

    def generate(self) -> StepResult:
        """Produce every output row, write what changed, and (``delete_stale``) delete rows not produced."""
        ...


STEP_MEMBERS = ("name", "input_dts", "output_dts", "code_version", "run_full", "run_changelist")
"""The members of ``Step`` (named in the error for an object that lacks some)."""


def is_keyed(step: object) -> bool:
    """Whether the engine computes ``step``'s stale keys (a keyed step that is not a scan)."""
    return isinstance(step, KeyedStep) and not isinstance(step, ScanningStep)
