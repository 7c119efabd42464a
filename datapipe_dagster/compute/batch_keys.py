"""A BatchTransform bound to a DataStore, as far as its keys go: the transform keys and their checks,
the transform-state table, and the key sets (stale, all, of a partition, failed, touched by a changelist)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.compute.catalog import ComputeStep
from datapipe_dagster.compute.context import context_params
from datapipe_dagster.compute.datatable import DataStore, DataTable
from datapipe_dagster.compute.key_sets import all_keys_query, keys_matching
from datapipe_dagster.compute.partitioning import bucket_ranges, key_buckets
from datapipe_dagster.compute.spec import (
    ALL_KEY,
    check_aliases,
    code_version_of,
    default_transform_keys,
    effective_keys,
)
from datapipe_dagster.compute.stale import (
    InputRole,
    classify_inputs,
    factor_indexes,
    output_roles,
    stale_keys_query,
)
from datapipe_dagster.errors import ConfigurationError
from datapipe_dagster.meta.tables import TransformMetaTable
from datapipe_dagster.store.sql import AnalyzeOnGrowth
from datapipe_dagster.types import ChangeList


class KeyedBatchStep(ComputeStep):
    """The keys of a BatchTransformStep: what they are, and which of them need processing.

    ``BatchTransformStep`` adds the chunk runner (``compute.chunk_runner``) and the commit
    (``compute.chunk_commit``) on top of this class.
    """

    def __init__(
        self,
        ds: DataStore,
        name: str,
        func: Callable[..., Any],
        input_dts: list[DataTable],
        output_dts: list[DataTable],
        transform_keys: list[str] | None = None,
        chunk_size: int = 1000,
        kwargs: dict[str, Any] | None = None,
        code_version: str | None = None,
        input_aliases: list[dict[str, str]] | None = None,
        no_cleanup: Iterable[str] = (),
    ):
        self.ds = ds
        self.name = name
        self.func = func
        self.input_dts = input_dts
        self.output_dts = output_dts
        self.chunk_size = chunk_size
        self.kwargs = kwargs or {}
        self.code_version = code_version or code_version_of(func)
        self.input_aliases = [dict(a) for a in input_aliases] if input_aliases else [{} for _ in input_dts]
        self.no_cleanup = frozenset(no_cleanup)
        """Outputs whose rows are only upserted (``Output(name, cleanup=False)``), never deleted by key."""
        for dt, al in zip(input_dts, self.input_aliases, strict=True):
            check_aliases(name, dt, al)
        if transform_keys is not None:
            keys = list(transform_keys)
        else:
            keys = default_transform_keys(
                [effective_keys(dt, al) for dt, al in zip(input_dts, self.input_aliases, strict=True)],
                [dt.primary_keys for dt in output_dts if dt.name not in self.no_cleanup],
            )
        self.roles = classify_inputs(input_dts, keys, self.input_aliases)
        self._check_keys(keys)
        self.transform_keys = keys
        self.keyless = not keys
        self.key_cols = keys or [ALL_KEY]
        self.cross = any(r.kind == "factor" for r in self.roles)
        """No input holds every key column: the keys are the join of the inputs' key values."""
        self.run_config: dict[str, Any] = {}
        self._ctx_names = context_params(func, len(input_dts))
        self._tmeta: TransformMetaTable | None = None
        self._stopped = False  # the last process_keys stopped before its last chunk
        self._statistics = AnalyzeOnGrowth()  # of the state table: a key per key processed

    def _check_keys(self, keys: list[str]) -> None:
        where = f"transform {self.name!r}"
        for key, al in ((k, a) for a in self.input_aliases for k in a):
            if key not in keys:
                raise ConfigurationError(
                    f"{where}: an input maps {key!r} to {al[key]!r}, but {key!r} is not a transform key {keys}; "
                    "set transform_keys or drop the alias"
                )
        if keys:
            carried = {k for r in self.roles for k in r.shared}
            missing_in = [k for k in keys if k not in carried]
            if missing_in:
                raise ConfigurationError(
                    f"{where}: no input has transform key column {missing_in[0]!r} in its primary key "
                    f"(inputs: {', '.join(f'{d.name}{d.primary_keys}' for d in self.input_dts)}); "
                    "add it to an input's key, map it with Input(table, keys={...}), or set transform_keys"
                )
            for dt in self.output_dts:
                missing = [k for k in keys if k not in dt.primary_keys]
                if missing and dt.name not in self.no_cleanup:
                    raise ConfigurationError(
                        f"{where}: output table {dt.name!r} lacks transform key column {missing[0]!r} in its "
                        f"primary key {dt.primary_keys}; add it, set transform_keys, or declare the output "
                        f"Output({dt.name!r}, cleanup=False) to upsert its rows by their own key and never "
                        "delete them by transform key"
                    )

    def key_schema(self) -> list[sa.Column]:
        if self.keyless:
            return [sa.Column(ALL_KEY, sa.Integer, primary_key=True)]
        cols = []
        for k in self.transform_keys:
            for role in self.roles:
                col = next(
                    (c for c in role.dt.primary_schema if k in role.shared and c.name == role.col(k)), None
                )
                if col is not None:
                    cols.append(sa.Column(k, col.type, primary_key=True))
                    break
        return cols

    @property
    def meta(self) -> TransformMetaTable:
        if self._tmeta is None:
            for dt in self.input_dts + self.output_dts:
                dt.ensure_ready()
            self._tmeta = self.ds.transform_meta(
                self.name, self.key_schema(), factor_indexes(self.roles, self.transform_keys)
            )
            with self.ds.meta_dbconn.begin_write() as conn:
                # Watermarks without processed keys mean the transform state was reset: start over.
                if conn.execute(sa.select(self._tmeta.table).limit(1)).first() is None:
                    self.ds.watermarks.reset(conn, self.name)
        return self._tmeta

    def __repr__(self) -> str:
        return f"BatchTransformStep({self.name!r}, keys={self.transform_keys})"

    # ------------------------------------------------------------------ key sets

    def get_stale_keys(self, advance_watermark: bool = True, include_failed: bool = True) -> pd.DataFrame:
        """Keys needing processing (found by indexed SQL); advances the input watermarks past what is
        known to be processed. ``include_failed=False``: a failed key counts only when an input row of
        it changed after its failed attempt."""
        if self.keyless:
            return self._keyless_stale(include_failed)
        stale, marks, new_marks, _ = self._stale(include_failed)
        if advance_watermark:
            self._advance(marks, new_marks)
        return stale

    def _scan_roles(self) -> list[InputRole]:
        """The inputs, and the outputs this step alone writes (swept for keys it never processed)."""
        return self.roles + output_roles(self._swept_outputs(), self.transform_keys)

    def _swept_outputs(self) -> list[DataTable]:
        """Outputs whose rows under keys never processed are deleted: those this step alone writes, with
        cleanup (an ``Output(cleanup=False)`` keeps every row)."""
        return [dt for dt in self.output_dts if dt.name not in self.shared_outputs and dt.name not in self.no_cleanup]

    def _stale(
        self, include_failed: bool = True, read: sa.Connection | None = None
    ) -> tuple[pd.DataFrame, dict[str, int], dict[str, int], int]:
        """Stale keys, the watermarks read, the watermarks they may advance to, and the sequence value
        read before the query (on the read connection ``read``, left open, when given)."""
        tmeta = self.meta
        with nullcontext(read) if read is not None else self.ds.meta_dbconn.connect() as conn:
            current, marks = self.ds.watermarks.get_with_current(conn, self.name)
            stale, new_marks = stale_keys_query(
                conn, self._scan_roles(), tmeta, self.transform_keys, marks, current, include_failed
            )
        return self._typed(stale), marks, new_marks, current

    def _advance(self, marks: dict[str, int], new_marks: dict[str, int]) -> None:
        # Skip the write transaction when no watermark would move (the common idle case).
        if any(v > marks.get(t, -1) for t, v in new_marks.items()):
            with self.ds.meta_dbconn.begin_write() as conn:
                self.ds.watermarks.advance(conn, self.name, new_marks)

    def _keyless_stale(self, include_failed: bool = True) -> pd.DataFrame:
        t = self.meta.table
        with self.ds.meta_dbconn.connect() as conn:
            row = conn.execute(sa.select(t.c.processed_seq, t.c.is_success)).first()
            top = max((dt.meta.max_seq(conn) for dt in self.input_dts), default=0)
            # Never run, no input, but outputs left by someone else: one run deletes them.
            orphans = row is None and top == 0 and any(dt.meta.max_seq(conn) > 0 for dt in self._swept_outputs())
        failed = row is not None and not row[1] and include_failed
        stale = row is None and (top > 0 or orphans) or row is not None and (failed or top > row[0])
        return pd.DataFrame({ALL_KEY: [0] if stale else []}, dtype="int64")

    def get_all_keys(self) -> pd.DataFrame:
        """Every key the transform knows (for a reparse)."""
        tmeta = self.meta
        if self.keyless:
            return pd.DataFrame({ALL_KEY: [0]}, dtype="int64")
        with self.ds.meta_dbconn.connect() as conn:
            return self._typed(all_keys_query(conn, self._scan_roles(), tmeta, self.transform_keys))

    def get_partition_keys(self, n: int, buckets: Iterable[int]) -> pd.DataFrame:
        """Every key of hash ``buckets`` out of ``n`` (``compute.partitioning``), for a reparse of those
        partitions: the keys in the transform state whose hash lies in the buckets' ranges (an index range
        scan, proportional to the partitions) and the stale keys of those buckets (new keys included).

        Equal to ``get_all_keys()`` restricted to ``buckets``, without listing the whole key space.
        """
        if self.keyless:
            return self.get_all_keys()
        wanted = sorted(set(buckets))
        tmeta = self.meta
        with self.ds.meta_dbconn.connect() as conn:
            recorded = tmeta.keys_in_hash_ranges(conn, bucket_ranges(wanted, n))
        stale = self.get_stale_keys(advance_watermark=False)
        stale = stale.loc[np.isin(key_buckets(stale, self.transform_keys, n), wanted)]
        both = pd.concat([self._typed(recorded), stale], ignore_index=True).drop_duplicates()
        return self._typed(both)

    def failed_keys(self, limit: int | None = None) -> pd.DataFrame:
        """Keys whose last attempt failed, with ``error``, ``traceback`` and ``process_ts``."""
        tmeta = self.meta
        with self.ds.meta_dbconn.connect() as conn:
            return tmeta.failed(conn, limit)

    def count_failed(self) -> int:
        tmeta = self.meta
        with self.ds.meta_dbconn.connect() as conn:
            return tmeta.count_failed(conn)

    def _typed(self, keys: pd.DataFrame) -> pd.DataFrame:
        from datapipe_dagster.store.records import conform_types

        return conform_types(keys.reset_index(drop=True), self.key_schema())

    def keys_for_changes(self, changelist: ChangeList) -> pd.DataFrame | None:
        """Transform keys affected by ``changelist`` (None when it touches no input)."""
        frames: list[pd.DataFrame] = []
        for role in self.roles:
            idx = changelist.get(role.dt.name)
            if idx is None or len(idx) == 0:
                continue
            if self.keyless or role.kind == "keyless":
                return self.get_stale_keys(advance_watermark=False) if not self.keyless else pd.DataFrame({ALL_KEY: [0]})
            idx = role.to_key_names(idx)
            if role.kind == "full":
                frames.append(idx[self.transform_keys])
            else:
                with self.ds.meta_dbconn.connect() as conn:
                    frames.append(
                        keys_matching(
                            conn, self.roles, self.meta, self.transform_keys, idx[role.shared], role
                        )
                    )
        if not frames:
            return None
        return self._typed(pd.concat(frames, ignore_index=True).drop_duplicates())
