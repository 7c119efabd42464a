"""RowTransform: the item-by-item style of seed 000's ``Pipe.process``, on the row-level engine.

``func(row: dict)`` runs once per input row and returns the output row(s). The transform key is the
input's primary key, so a row is recomputed when it changes, its old outputs are replaced (the seed's
*reparse*: a row that now produces fewer outputs loses the others) and a deleted row loses its outputs.

Errors are per row (the seed's error collector): an exception marks that row's key failed, with its
error and traceback, keeps its previous outputs, and the other rows of the chunk go on; the key is
retried on the next run. The seed's flow controls, raised from the function:

- ``SkipRow`` (``PipeContinue``): drop the row without an error (its old outputs are deleted).
- ``PipeBreak``: roll back the current row, keep the rows of the chunk done so far (written and marked
  processed), and stop the step's run; the current row and the rest stay stale for the next run.
- ``PipeError``: roll back the whole chunk (nothing of it is written), mark its keys failed with the
  error, and stop the step's run.

Batch-level hooks (the seed's ``prepare``/``finish``): ``prepare(rows)`` runs once per chunk before the
rows (open a model, filter rows) and ``finish(results)`` once after them (close it). The function and
the hooks receive the run's context by parameter name when they declare it: ``ds`` (the DataStore),
``idx`` (the chunk's keys), ``run_config`` (a dict given to ``process_keys``/``eval``) and ``context``
(a per-chunk namespace shared by ``prepare``, the function and ``finish``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.compute.batch_transform import BatchTransformStep
from datapipe_dagster.compute.catalog import Catalog, ComputeStep, PipelineStep
from datapipe_dagster.compute.chunk_runner import ChunkFailed, WholeInputs
from datapipe_dagster.compute.context import CONTEXT_PARAMS, check_kwargs_clash, context_params
from datapipe_dagster.compute.datatable import DataStore
from datapipe_dagster.compute.result import StepResult, error_text
from datapipe_dagster.compute.spec import code_version_of
from datapipe_dagster.errors import ConfigurationError, DatabaseError, SchemaError, SkipRow
from datapipe_dagster.frames import anti_join
from datapipe_dagster.store.records import to_records

log = logging.getLogger("datapipe_dagster")

__all__ = ["CONTEXT_PARAMS", "PipeBreak", "PipeError", "RowTransform", "RowTransformStep", "context_params"]


class RowError(Exception):
    """A row's function returned something that cannot be an output row."""


class PipeBreak(Exception):  # noqa: N818 - the seed's name for this control-flow signal
    """Raised inside a RowTransform function: roll back the current row, keep the rows done so far in
    the chunk, and leave this row and the rest for the next run (the step's run stops here)."""


class PipeError(Exception):  # noqa: N818 - the seed's name for this control-flow signal
    """Raised inside a RowTransform function (or hook): roll back the whole chunk, mark its keys failed
    with this error, and stop the step's run."""


class _Stop(BaseException):  # noqa: N818 - internal signal: stop the step's run after this chunk
    # A BaseException, so the chunk-splitting ``except Exception`` of BatchTransformStep lets it through.
    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


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
        prepare: ``prepare(rows: list[dict], ...)`` called once per chunk before its rows; it may return
            the list of rows to process (rows it leaves out are skipped like ``SkipRow``) or None to keep
            them all. It raising fails the chunk (``PipeError`` also stops the run).
        finish: ``finish(results: dict[str, list[dict]], ...)`` called once per chunk after its rows,
            with the output rows per output table, before they are written (teardown).

    The function and both hooks also receive ``ds``, ``idx`` (the chunk's keys), ``run_config`` and
    ``context`` (a namespace shared within a chunk) when they declare parameters of those names.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        inputs: list[str],
        outputs: list[str],
        chunk_size: int = 1000,
        name: str | None = None,
        kwargs: dict[str, Any] | None = None,
        prepare: Callable[..., Any] | None = None,
        finish: Callable[..., Any] | None = None,
    ):
        self.name: str = name or str(getattr(func, "__name__", "row_transform"))
        if len(inputs) != 1:
            raise ConfigurationError(
                f"RowTransform {self.name!r}: needs exactly one input table, got {list(inputs)}"
            )
        specs = [x for x in [*inputs, *outputs] if not isinstance(x, str)]
        if specs:
            raise ConfigurationError(
                f"RowTransform {self.name!r}: inputs and outputs are table names, got {specs[0]!r}; key aliases "
                "(Input) and cleanup=False outputs (Output) are BatchTransform's"
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
        self.prepare = prepare
        self.finish = finish
        check_kwargs_clash("RowTransform", self.name, func, self.kwargs, 1)

    @property
    def code_version(self) -> str:
        hooks = [code_version_of(h) for h in (self.prepare, self.finish) if h is not None]
        return code_version_of(self.func, sorted(self.kwargs.items()), self.inputs, self.outputs, *hooks)

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
                prepare=self.prepare,
                finish=self.finish,
            )
        ]


class RowTransformStep(BatchTransformStep):
    """A RowTransform bound to a DataStore: BatchTransform's stale keys, chunks and cleanup, per-row errors."""

    def __init__(
        self,
        *args: Any,
        prepare: Callable[..., Any] | None = None,
        finish: Callable[..., Any] | None = None,
        **kw: Any,
    ):
        super().__init__(*args, **kw)
        self.prepare = prepare
        self.finish = finish
        # One data argument each: the row, the chunk's rows, the chunk's results.
        self._hook_ctx = {
            "func": context_params(self.func, 1),
            "prepare": context_params(prepare, 1),
            "finish": context_params(finish, 1),
        }

    def _rows_of(
        self, row: dict[str, Any], ctx_args: dict[str, Any] | None = None
    ) -> list[list[dict[str, Any]]]:
        """Call the function on one row (``ctx_args``: the context parameters it asks for); its output rows
        per output table."""
        res = self.func(dict(row), **self.kwargs, **(ctx_args or {}))
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

    def _process_chunks(self, keys: pd.DataFrame, size: int, result: StepResult, whole: WholeInputs) -> None:
        try:
            super()._process_chunks(keys, size, result, whole)
        except _Stop as stop:
            self._stopped = True
            log.warning("step %s stopped: %s; the keys not reached stay stale for the next run", self.name, stop.reason)

    def _chunk_failed(self, keys: pd.DataFrame, failure: ChunkFailed, result: StepResult, whole: WholeInputs) -> None:
        if isinstance(failure.error, PipeError):
            # Abort: nothing of the chunk is written; its keys are failed (retried next run).
            self._mark_failed(keys, failure.error, failure.read_seq, result)
            raise _Stop(f"PipeError: {failure.error}") from None
        if isinstance(failure.error, PipeBreak):
            # Raised by a hook, outside any row: nothing of the chunk is done.
            raise _Stop(f"PipeBreak: {failure.error}") from None
        super()._chunk_failed(keys, failure, result, whole)

    def _read_rows(self, keys: pd.DataFrame) -> tuple[int, pd.DataFrame]:
        """The chunk's input rows and the write sequence they are current to (read before them)."""
        with self.ds.meta_dbconn.connect() as rconn:
            read_seq = self.ds.seq.current(rconn)
            return read_seq, self.input_dts[0].read(rconn, keys[self.transform_keys])

    def _compute(
        self, keys: pd.DataFrame, df: pd.DataFrame
    ) -> tuple[list[pd.DataFrame], pd.DataFrame, dict[tuple[Any, ...], tuple[str, str]], str | None]:
        """Run the function over the chunk ``keys`` (input rows ``df``) without writing.

        Returns the validated output frames, the keys processed (to mark done and to clean outputs
        under), the failed keys with their errors, and the ``PipeBreak`` message if one stopped the chunk.
        """
        tk = self.transform_keys
        shared = SimpleNamespace()  # the chunk's ``context``, one for the hooks and every row
        ctx = {which: self.context_args(names, keys, shared) for which, names in self._hook_ctx.items()}
        rows = to_records(df)
        if self.prepare is not None:
            kept = self.prepare(rows, **ctx["prepare"])
            if kept is not None:
                rows = list(kept)
        produced: dict[tuple[Any, ...], list[list[dict[str, Any]]]] = {}
        failed: dict[tuple[Any, ...], tuple[str, str]] = {}
        broke: str | None = None
        reached: list[tuple[Any, ...]] = []
        try:
            for row in rows:
                key = tuple(row[k] for k in tk)
                try:
                    produced[key] = self._rows_of(row, ctx["func"])
                except SkipRow:
                    pass
                except (PipeBreak, PipeError):
                    raise
                except Exception as e:  # noqa: BLE001 - user code: record this row, go on with the others
                    failed[key] = error_text(e)
                reached.append(key)
        except PipeBreak as e:
            broke = str(e) or "PipeBreak"
        finally:
            if self.finish is not None:
                names = [dt.name for dt in self.output_dts]
                results = {n: [r for out in produced.values() for r in out[i]] for i, n in enumerate(names)}
                self.finish(results, **ctx["finish"])
        outs = self._validated(produced, failed)
        ok_keys = keys[tk]
        if broke is not None:
            # Only the rows reached before the break are done; the rest stay stale.
            done = pd.DataFrame([dict(zip(tk, k, strict=True)) for k in reached], columns=tk)
            ok_keys = ok_keys.merge(done.drop_duplicates(), on=tk, how="inner") if len(done) else ok_keys.iloc[0:0]
        if failed:
            ok_keys = anti_join(ok_keys, pd.DataFrame([dict(zip(tk, k, strict=True)) for k in failed], columns=tk), tk)
        return outs, ok_keys.reset_index(drop=True), failed, broke

    def _try_chunk(self, keys: pd.DataFrame, result: StepResult, whole: WholeInputs) -> None:
        tk = self.transform_keys
        read_seq, df = self._read_rows(keys)
        try:
            outs, ok_keys, failed, broke = self._compute(keys, df)
        except Exception as e:  # noqa: BLE001 - not attributable to one row (or a PipeError): see _chunk_failed
            raise ChunkFailed(e, read_seq) from e
        failed_df = pd.DataFrame(
            [
                {**dict(zip(tk, key, strict=True)), "error": err, "traceback": trace}
                for key, (err, trace) in failed.items()
            ],
            columns=tk + ["error", "traceback"],
        )
        # After a PipeBreak only the rows reached are committed: processed ones and failed ones.
        reached = pd.concat([ok_keys[tk], failed_df[tk]], ignore_index=True)
        try:
            commit = self._commit(reached, outs, read_seq, failed_df)
        except (sa.exc.OperationalError, sa.exc.InterfaceError, DatabaseError):
            raise  # the database, not the rows: the run stops and a rerun redoes the chunk
        except Exception as e:  # noqa: BLE001
            raise ChunkFailed(e, read_seq) from e
        result.rows_read += len(df)
        self._count(result, commit)
        if broke is not None:
            raise _Stop(f"PipeBreak: {broke}")

    def eval(self, keys: pd.DataFrame, run_config: dict[str, Any] | None = None):  # noqa: A003, ANN201
        """As ``BatchTransformStep.eval``, row by row: a failing row is reported in ``failed`` (its
        outputs are left as they are); ``prepare``/``finish`` run as in a chunk; ``PipeError`` is raised."""
        from datapipe_dagster.compute.evaluate import EvalResult, check_keys_frame, diff_output, typed_keys

        keys = typed_keys(self.name, self.key_schema(), check_keys_frame(self.name, keys))
        _ = self.meta
        self.run_config = dict(run_config or {})
        _, df = self._read_rows(keys)
        outs, ok_keys, failed, _ = self._compute(keys, df)
        result = EvalResult(self.name, keys)
        tk = self.transform_keys
        result.failed = pd.DataFrame(
            [{**dict(zip(tk, k, strict=True)), "error": err, "traceback": tr} for k, (err, tr) in failed.items()],
            columns=tk + ["error", "traceback"],
        )
        with self.ds.meta_dbconn.connect() as conn:
            for dt, df in zip(self.output_dts, outs, strict=True):
                result.outputs[dt.name] = diff_output(dt, conn, df, ok_keys)
        return result

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
                failed[key] = error_text(e)
