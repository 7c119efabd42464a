"""RowTransform: the item-by-item style of seed 000's ``Pipe.process``, on the row-level engine.

``func(row: dict)`` runs once per input row and returns the output row(s). The transform key is the
input's primary key, so a row is recomputed when it changes, its old outputs are replaced (the seed's
*reparse*: a row that now produces fewer outputs loses the others) and a deleted row loses its outputs.

Errors are per row (the seed's error collector): an exception marks that row's key failed, with its
error and traceback, keeps its previous outputs, and the other rows of the chunk go on; the key is
retried on the next run. Raising ``SkipRow`` drops the row without an error (``PipeContinue``).
"""

from __future__ import annotations

import traceback as tb
from collections.abc import Callable
from typing import Any

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.compute.batch_transform import (
    BatchTransformStep,
    ChunkFailed,
    WholeInputs,
    code_version_of,
)
from datapipe_dagster.compute.catalog import Catalog, ComputeStep, PipelineStep
from datapipe_dagster.compute.datatable import DataStore
from datapipe_dagster.compute.result import StepResult
from datapipe_dagster.errors import ConfigurationError, DatabaseError, SchemaError, SkipRow
from datapipe_dagster.store.schema import to_records


class RowError(Exception):
    """A row's function returned something that cannot be an output row."""


class RowTransform(PipelineStep):
    """A function applied to every changed row of one input table.

    Args:
        func: ``func(row: dict, **kwargs)`` returning, for one output, a dict, a list of dicts or None;
            for several outputs, a dict ``{output_name: dict | list | None}`` or a tuple with one item
            per output. Output rows may omit the input's key columns (they are filled in); raise
            ``SkipRow`` to drop the row.
        inputs: exactly one input table name.
        outputs: output table names; each must have the input's key columns in its primary key.
        chunk_size: rows per write transaction.
        name: step name (default: the function's name).
        kwargs: extra keyword arguments for ``func``.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        inputs: list[str],
        outputs: list[str],
        chunk_size: int = 1000,
        name: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ):
        self.name = name or getattr(func, "__name__", "row_transform")
        if len(inputs) != 1:
            raise ConfigurationError(
                f"RowTransform {self.name!r}: needs exactly one input table, got {list(inputs)}"
            )
        if not outputs:
            raise ConfigurationError(f"RowTransform {self.name!r}: needs at least one output table")
        if chunk_size < 1:
            raise ConfigurationError(f"RowTransform {self.name!r}: chunk_size must be >= 1")
        self.func = func
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.chunk_size = chunk_size
        self.kwargs = kwargs or {}

    @property
    def code_version(self) -> str:
        return code_version_of(self.func, sorted(self.kwargs.items()), self.inputs, self.outputs)

    def build_compute(self, ds: DataStore, catalog: Catalog) -> list[ComputeStep]:
        inp = catalog.get_datatable(ds, self.inputs[0])
        return [
            RowTransformStep(
                ds,
                name=self.name,
                func=self.func,
                input_dts=[inp],
                output_dts=[catalog.get_datatable(ds, n) for n in self.outputs],
                transform_keys=inp.primary_keys,
                chunk_size=self.chunk_size,
                kwargs=self.kwargs,
                code_version=self.code_version,
            )
        ]


class RowTransformStep(BatchTransformStep):
    """A RowTransform bound to a DataStore: BatchTransform's stale keys, chunks and cleanup, per-row errors."""

    def _rows_of(self, row: dict[str, Any]) -> list[list[dict[str, Any]]]:
        """Call the function on one row; its output rows per output table."""
        res = self.func(dict(row), **self.kwargs)
        names = [dt.name for dt in self.output_dts]
        if len(names) == 1:
            per_output: list[Any] = [res]
        elif isinstance(res, dict):
            unknown = [k for k in res if k not in names]
            if unknown:
                raise RowError(f"returned rows for {unknown[0]!r}, which is not an output (outputs: {names})")
            per_output = [res.get(n) for n in names]
        elif isinstance(res, tuple) and len(res) == len(names):
            per_output = list(res)
        elif res is None:
            per_output = [None] * len(names)
        else:
            raise RowError(
                f"returned {type(res).__name__}; with outputs {names} return a dict by output name or a tuple of {len(names)}"
            )
        out = []
        for name, item in zip(names, per_output, strict=True):
            rows = [] if item is None else [item] if isinstance(item, dict) else item
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise RowError(
                    f"output {name!r}: expected a dict, a list of dicts or None, got {type(item).__name__}"
                )
            filled = []
            for r in rows:
                r = dict(r)
                for k in self.transform_keys:
                    if k in r and r[k] != row[k]:
                        raise RowError(
                            f"output {name!r}: key column {k!r} is {r[k]!r}, but the input row's is {row[k]!r}"
                        )
                    r[k] = row[k]
                filled.append(r)
            out.append(filled)
        return out

    def _try_chunk(self, keys: pd.DataFrame, result: StepResult, whole: WholeInputs) -> None:
        tk = self.transform_keys
        with self.ds.meta_dbconn.connect() as rconn:
            read_seq = self.ds.seq.current(rconn)
            df = self.input_dts[0].read(rconn, keys[tk])
        produced: dict[tuple[Any, ...], list[list[dict[str, Any]]]] = {}
        failed: dict[tuple[Any, ...], tuple[str, str]] = {}
        try:
            for row in to_records(df):
                key = tuple(row[k] for k in tk)
                try:
                    produced[key] = self._rows_of(row)
                except SkipRow:
                    continue
                except Exception as e:  # noqa: BLE001 - user code: record this row, go on with the others
                    failed[key] = (
                        f"{type(e).__name__}: {e}",
                        "".join(tb.format_exception(type(e), e, e.__traceback__)),
                    )
            outs = self._validated(produced, failed)
        except Exception as e:  # noqa: BLE001 - not attributable to one row: split the chunk
            raise ChunkFailed(e, read_seq) from e
        failed_df = pd.DataFrame(
            [
                {**dict(zip(tk, key, strict=True)), "error": err, "traceback": trace}
                for key, (err, trace) in failed.items()
            ],
            columns=tk + ["error", "traceback"],
        )
        try:
            commit = self._commit(keys, outs, read_seq, failed_df)
        except (sa.exc.OperationalError, sa.exc.InterfaceError, DatabaseError):
            raise
        except Exception as e:  # noqa: BLE001
            raise ChunkFailed(e, read_seq) from e
        result.rows_read += len(df)
        self._count(result, commit)

    def _validated(
        self,
        produced: dict[tuple[Any, ...], list[list[dict[str, Any]]]],
        failed: dict[tuple[Any, ...], tuple[str, str]],
    ) -> list[pd.DataFrame]:
        """The output frames, validated; a row whose outputs do not fit an output's schema is moved to
        ``failed`` (found by the key the SchemaError names) and the rest are validated again."""
        tk = self.transform_keys
        while True:
            try:
                outs = []
                for i, dt in enumerate(self.output_dts):
                    recs = [r for rows in produced.values() for r in rows[i]]
                    outs.append(
                        dt.store.validate(pd.DataFrame.from_records(recs)) if recs else dt.store.empty()
                    )
                return outs
            except SchemaError as e:
                key = tuple(e.key.get(k) for k in tk) if e.key and all(k in e.key for k in tk) else None
                if key is None or key not in produced:
                    raise  # not attributable to one row: the chunk is split to isolate it
                del produced[key]
                failed[key] = (
                    f"{type(e).__name__}: {e}",
                    "".join(tb.format_exception(type(e), e, e.__traceback__)),
                )
