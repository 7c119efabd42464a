"""BatchGenerate: a generator of DataFrames fills tables (a data source: an API, a file dump, a crawl).

Each yielded chunk is validated and written in its own transaction, so memory follows the chunk size.
Rows that did not change keep their update time, so nothing downstream recomputes. When the generator
finishes and ``delete_stale`` is set, rows of the outputs that the run did not produce are deleted. A
generator that raises midway keeps what it wrote and deletes nothing (a partial run must not look like
a source that lost its rows); the error is reported in the step result.

A generator runs in full runs (``run_steps``, a Dagster materialization) only; a changelist run leaves
it alone, since nothing upstream of a source can change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd

from datapipe_dagster.compute.catalog import Catalog, ComputeStep, PipelineStep
from datapipe_dagster.compute.datatable import DataStore, DataTable
from datapipe_dagster.compute.result import OutputStats, StepResult, failed_frame
from datapipe_dagster.compute.spec import code_version_of
from datapipe_dagster.errors import ConfigurationError
from datapipe_dagster.frames import anti_join
from datapipe_dagster.types import ChangeList


class BatchGenerate(PipelineStep):
    """A generator function whose chunks fill ``outputs``.

    Args:
        func: ``func(**kwargs)`` yielding DataFrames (one output) or tuples of DataFrames (one per output,
            None for "nothing for this output in this chunk").
        outputs: output table names.
        delete_stale: after a complete run, delete the output rows the run did not produce.
        name: step name (default: the function's name).
        kwargs: keyword arguments for ``func``.
    """

    def __init__(
        self,
        func: Callable[..., Iterator[Any]],
        outputs: list[str],
        delete_stale: bool = True,
        name: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ):
        self.name: str = name or str(getattr(func, "__name__", "generate"))
        if not outputs:
            raise ConfigurationError(f"BatchGenerate {self.name!r}: needs at least one output table")
        self.func = func
        self.outputs = list(outputs)
        self.delete_stale = delete_stale
        self.kwargs = kwargs or {}

    @property
    def code_version(self) -> str:
        return code_version_of(self.func, sorted(self.kwargs.items()), self.outputs, self.delete_stale)

    def build_compute(self, ds: DataStore, catalog: Catalog) -> list[ComputeStep]:
        return [
            BatchGenerateStep(
                name=self.name,
                func=self.func,
                output_dts=[catalog.get_datatable(ds, n) for n in self.outputs],
                delete_stale=self.delete_stale,
                kwargs=self.kwargs,
                code_version=self.code_version,
            )
        ]


class BatchGenerateStep(ComputeStep):
    """A BatchGenerate bound to a DataStore."""

    def __init__(
        self,
        name: str,
        func: Callable[..., Iterator[Any]],
        output_dts: list[DataTable],
        delete_stale: bool = True,
        kwargs: dict[str, Any] | None = None,
        code_version: str | None = None,
    ):
        self.name = name
        self.func = func
        self.code_version = code_version or code_version_of(func)
        self.input_dts: list[DataTable] = []
        self.output_dts = output_dts
        self.delete_stale = delete_stale
        self.kwargs = kwargs or {}

    def __repr__(self) -> str:
        return f"BatchGenerateStep({self.name!r}, outputs={[d.name for d in self.output_dts]})"

    def _chunk_frames(self, item: Any) -> list[pd.DataFrame]:
        n = len(self.output_dts)
        if isinstance(item, pd.DataFrame):
            item = (item,)
        if not isinstance(item, (tuple, list)) or len(item) != n:
            raise ConfigurationError(
                f"generator {self.name!r} yielded {type(item).__name__}; expected "
                f"{'a DataFrame' if n == 1 else f'a tuple of {n} DataFrames'} for outputs {[d.name for d in self.output_dts]}"
            )
        frames = []
        for dt, df in zip(self.output_dts, item, strict=True):
            if df is None:
                df = dt.store.empty()
            if not isinstance(df, pd.DataFrame):
                raise ConfigurationError(
                    f"generator {self.name!r}: chunk for {dt.name!r} is {type(df).__name__}, not a DataFrame"
                )
            frames.append(dt.store.validate(df))
        return frames

    def run_full(self) -> StepResult:
        """Generate (``generate``)."""
        return self.generate()

    def generate(self) -> StepResult:
        """Run the generator to the end, writing each chunk; then delete rows not produced (delete_stale)."""
        started = time.perf_counter()
        for dt in self.output_dts:
            dt.ensure_ready()
        result = StepResult(self.name, outputs={dt.name: OutputStats() for dt in self.output_dts})
        # Keys only, concatenated once at the end (not per chunk, which would be quadratic).
        produced: dict[str, list[pd.DataFrame]] = {dt.name: [] for dt in self.output_dts}
        now = time.time()
        meta_conn = self.output_dts[0].ds.meta_dbconn
        try:
            for item in self.func(**self.kwargs):
                frames = self._chunk_frames(item)
                with meta_conn.begin_write() as conn:
                    stats = [
                        dt.write(conn, df, now=now, validated=True)
                        for dt, df in zip(self.output_dts, frames, strict=True)
                    ]
                for dt, df, st in zip(self.output_dts, frames, stats, strict=True):
                    produced[dt.name].append(df[dt.primary_keys])
                    result.add_write(dt.name, dt.primary_keys, st)
                result.rows_read += sum(len(f) for f in frames)
        except Exception as e:  # noqa: BLE001 - a source failing is reported, the rest of the run goes on
            result.add_failed(failed_frame(pd.DataFrame(index=range(1)), e))
        else:
            if self.delete_stale:
                self._delete_unproduced(produced, result, now)
        result.keys_processed = sum(sum(len(f) for f in v) for v in produced.values())
        result.elapsed = time.perf_counter() - started
        return result

    def _delete_unproduced(
        self, produced: dict[str, list[pd.DataFrame]], result: StepResult, now: float
    ) -> None:
        meta_conn = self.output_dts[0].ds.meta_dbconn
        with meta_conn.begin_write() as conn:
            for dt in self.output_dts:
                alive = dt.meta.get_metadata(conn)[dt.primary_keys]
                frames = [f for f in produced[dt.name] if len(f)]
                seen = pd.concat(frames, ignore_index=True) if frames else None
                if seen is not None:
                    alive = anti_join(alive, seen, dt.primary_keys)
                if len(alive):
                    st = dt.write(
                        conn,
                        dt.store.empty(),
                        processed_idx=alive.reset_index(drop=True),
                        now=now,
                        validated=True,
                    )
                    result.add_write(dt.name, dt.primary_keys, st)

    def run_changelist(self, changelist: ChangeList) -> StepResult:
        """Nothing: a source has no inputs, so no change in a changelist can make it stale."""
        return StepResult(self.name)
