"""How a transform reads an input and writes an output, beyond the table's name.

``Input(table, keys={"user_id": "author_id"})`` feeds a transform keyed by ``user_id`` from a table
whose key column is ``author_id`` (datapipe's ``InputSpec(table, keys=...)``). ``Output(table,
cleanup=False)`` writes a table that need not hold the transform keys: its rows are upserted by their
own primary key and never deleted because a key stopped producing them.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from datapipe_dagster.errors import ConfigurationError

if TYPE_CHECKING:
    from datapipe_dagster.compute.datatable import DataTable


@dataclass(frozen=True)
class Input:
    """An input of a BatchTransform, by table name, with optional key aliases.

    Args:
        table: the catalog table.
        keys: ``{transform_key: column}`` for key columns named otherwise in this table, e.g.
            ``{"user_id": "author_id"}``. The column must be in the table's primary key. The function
            receives the table with its own column names (``author_id``); keys given to
            ``process_keys``/``eval`` and the step's key frames use the transform's names (``user_id``).
    """

    table: str
    keys: dict[str, str] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.table, tuple(sorted(self.keys.items()))))


@dataclass(frozen=True)
class Output:
    """An output of a BatchTransform, by table name.

    Args:
        table: the catalog table.
        cleanup: True (default): the output holds the transform-key columns, and rows under a processed
            key that the call no longer returns are deleted. False: rows are only upserted, by the
            output's own primary key, and never deleted by transform key; the table need not hold the
            transform-key columns (e.g. one model per dataset, trained from many keys).
    """

    table: str
    cleanup: bool = True


_Spec = TypeVar("_Spec", "Input", "Output")


def as_input(item: str | Input) -> Input:
    """``item`` as an ``Input`` (a table name is an input without aliases)."""
    return _as_spec(item, Input, "an input")


def as_output(item: str | Output) -> Output:
    """``item`` as an ``Output`` (a table name is an output with cleanup)."""
    return _as_spec(item, Output, "an output")


def _as_spec(item: object, kind: type[_Spec], what: str) -> _Spec:
    if isinstance(item, kind):
        return item
    if isinstance(item, str):
        return kind(item)
    raise ConfigurationError(f"{what} must be a table name or {kind.__name__}(...), got {type(item).__name__}: {item!r}")


def spec_version(inputs: list[Input], outputs: list[Output]) -> list[object]:
    """What of the specs goes into a code version: nothing when every spec is a plain name (so
    pipelines written before specs existed keep their code versions)."""
    aliases = [(i.table, sorted(i.keys.items())) for i in inputs if i.keys]
    kept = [o.table for o in outputs if not o.cleanup]
    return [aliases, kept] if aliases or kept else []


def check_aliases(step: str, dt: DataTable, aliases: dict[str, str]) -> None:
    """Refuse aliases to columns the input lacks, or that are not in its primary key.

    Raises:
        ConfigurationError: naming the step, the table and the column, and what to write instead.
    """
    for key, col in aliases.items():
        if col in dt.primary_keys:
            if key in dt.primary_keys and key != col:
                raise ConfigurationError(
                    f"transform {step!r}: input {dt.name!r} maps transform key {key!r} to column {col!r}, "
                    f"but the table has a key column {key!r} too; map it to one column only"
                )
            continue
        columns = [c.name for c in dt.store.get_schema()]
        if col in columns:
            raise ConfigurationError(
                f"transform {step!r}: input {dt.name!r} maps transform key {key!r} to {col!r}, a data column; "
                f"an alias must name a primary-key column {dt.primary_keys} (the row metadata tracks changes "
                f"by primary key): write the table re-keyed by {col!r} with a BatchTransform first"
            )
        raise ConfigurationError(
            f"transform {step!r}: input {dt.name!r} has no column {col!r} (mapped to transform key {key!r}); "
            f"its primary-key columns are {dt.primary_keys}"
        )


def effective_keys(dt: DataTable, aliases: dict[str, str]) -> list[str]:
    """The input's primary-key columns under the transform's names."""
    back = {col: key for key, col in aliases.items()}
    return [back.get(c, c) for c in dt.primary_keys]


ALL_KEY = "_datapipe_all"
"""The synthetic key column of a transform without key columns (one key: the whole input)."""


def code_version_of(func: Callable[..., Any], *extra: Any) -> str:
    """A short digest of a function's source (or its qualified name if source is unavailable) and ``extra``."""
    try:
        src = inspect.getsource(func)
    except (OSError, TypeError):
        src = getattr(func, "__qualname__", repr(func))
    h = hashlib.sha256(src.encode())
    for e in extra:
        h.update(repr(e).encode())
    return h.hexdigest()[:16]


def default_transform_keys(inputs: list[list[str]], outputs: list[list[str]]) -> list[str]:
    """Primary-key columns common to all outputs and to every input that carries any of them (given the
    primary-key columns of each input and output, inputs' under the transform's names).

    Inputs that share none of the outputs' key columns (e.g. a config table) are passed whole.
    """
    tables = outputs or inputs[:1]
    common = list(tables[0])
    for t in tables[1:]:
        common = [k for k in common if k in t]
    for t in inputs:
        narrowed = [k for k in common if k in t]
        if narrowed:
            common = narrowed
    return common
