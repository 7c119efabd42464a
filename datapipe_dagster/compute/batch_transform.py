"""BatchTransform: a pandas function from N input tables to M output tables, run per transform key.

The declaration (``BatchTransform``) and its bound step (``BatchTransformStep``), which is built in layers:
``compute.batch_keys`` (keys and key sets), ``compute.chunk_commit`` (a chunk's transaction),
``compute.chunk_runner`` (chunks, calls, failures); this module adds ``eval``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from datapipe_dagster.compute.catalog import Catalog, ComputeStep, PipelineStep
from datapipe_dagster.compute.chunk_runner import ChunkRunner, WholeInputs
from datapipe_dagster.compute.context import check_kwargs_clash
from datapipe_dagster.compute.datatable import DataStore
from datapipe_dagster.compute.spec import (
    Input,
    Output,
    as_input,
    as_output,
    code_version_of,
    spec_version,
)
from datapipe_dagster.errors import ConfigurationError


class BatchTransform(PipelineStep):
    """A pandas function from ``inputs`` to ``outputs``, recomputed only for stale transform keys.

    Args:
        func: ``func(df_in_1, ..., df_in_N, **kwargs)`` returning one DataFrame or a tuple, one per output.
            It receives *all* input rows of a batch of keys, in the order they were last written, and
            ``ds``, ``idx`` (the batch's keys), ``run_config`` and ``context`` when it declares parameters
            of those names after its inputs (``compute.context``).
        inputs: input table names, or ``Input(name, keys={transform_key: column})`` for an input whose
            key column is named otherwise.
        outputs: output table names, or ``Output(name, cleanup=False)`` for an output whose rows are only
            upserted (it need not hold the transform keys).
        transform_keys: key columns; default: the primary-key columns common to all inputs and outputs.
            When no input holds them all, the keys are the join of the key values the inputs hold (a
            cross product where they share no column).
        chunk_size: keys per call (bounds memory).
        name: step name (default: the function's name).
        kwargs: extra keyword arguments for ``func``.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        inputs: list[str | Input],
        outputs: list[str | Output],
        transform_keys: list[str] | None = None,
        chunk_size: int = 1000,
        name: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ):
        if not inputs:
            raise ConfigurationError(f"BatchTransform {name or func.__name__!r}: needs at least one input")
        if chunk_size < 1:
            raise ConfigurationError(f"BatchTransform {name or func.__name__!r}: chunk_size must be >= 1")
        self.func = func
        self.input_specs = [as_input(i) for i in inputs]
        self.output_specs = [as_output(o) for o in outputs]
        self.inputs = [i.table for i in self.input_specs]
        self.outputs = [o.table for o in self.output_specs]
        self.transform_keys = transform_keys
        self.chunk_size = chunk_size
        self.name: str = name or str(getattr(func, "__name__", "transform"))
        self.kwargs = kwargs or {}
        check_kwargs_clash("BatchTransform", self.name, func, self.kwargs, len(self.inputs))

    @property
    def code_version(self) -> str:
        specs = spec_version(self.input_specs, self.output_specs)
        return code_version_of(
            self.func, sorted(self.kwargs.items()), self.inputs, self.outputs, self.transform_keys, *specs
        )

    def build_compute(self, ds: DataStore, catalog: Catalog) -> list[ComputeStep]:
        return [
            BatchTransformStep(
                ds,
                name=self.name,
                func=self.func,
                input_dts=[catalog.get_datatable(ds, n) for n in self.inputs],
                output_dts=[catalog.get_datatable(ds, n) for n in self.outputs],
                transform_keys=self.transform_keys,
                chunk_size=self.chunk_size,
                kwargs=self.kwargs,
                code_version=self.code_version,
                input_aliases=[dict(i.keys) for i in self.input_specs],
                no_cleanup={o.table for o in self.output_specs if not o.cleanup},
            )
        ]


class BatchTransformStep(ChunkRunner):
    """A BatchTransform bound to a DataStore: finds stale keys and processes them in chunks."""

    def eval(self, keys: pd.DataFrame, run_config: dict[str, Any] | None = None):  # noqa: A003, ANN201 - the seed's name
        """Run the function on the current inputs of ``keys`` and return what a run would write to each
        output (rows inserted, updated and deleted), writing nothing and leaving the step's state alone.
        ``run_config`` reaches a function that declares it. Returns an ``EvalResult``.

        An exception in the function is raised as it is (eval is for looking at one key closely).

        Raises:
            ConfigurationError: ``keys`` lacks a transform key column, or the step has no keys.
        """
        from datapipe_dagster.compute.evaluate import EvalResult, check_keys_frame, diff_output, typed_keys

        keys = typed_keys(self.name, self.key_schema(), check_keys_frame(self.name, keys))
        _ = self.meta
        self.run_config = dict(run_config or {})
        with self.ds.meta_dbconn.connect() as conn:
            dfs = self._read_inputs(conn, keys, WholeInputs(), self.ds.seq.current(conn))
            keyed = [d for d, r in zip(dfs, self.roles, strict=True) if not (self.keyless or r.kind == "keyless")]
            nothing = all(len(d) == 0 for d in (dfs if self.keyless else keyed)) and bool(keyed or self.keyless)
            outs = [dt.store.empty() for dt in self.output_dts] if nothing else self._call(dfs, keys)
            result = EvalResult(self.name, keys)
            for dt, df in zip(self.output_dts, outs, strict=True):
                result.outputs[dt.name] = diff_output(dt, conn, df, self._cleanup_scope(conn, dt, keys))
        return result
