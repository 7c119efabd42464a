"""One error hierarchy for the library: every error names what it is about and suggests the fix."""

from __future__ import annotations

from typing import Any

from datapipe_dagster.frames import plain as _plain


class DatapipeError(Exception):
    """Base class of every error raised by datapipe_dagster.

    Every error carries structured fields besides its message, so code that catches it (or receives it
    from another process: errors cross process boundaries in Dagster and Celery, and pickle round trips
    keep the fields) need not parse text. A field that does not apply is None.

    Attributes:
        table: the table the error is about.
        column: the column the error is about.
        key: the primary key of the offending row (a dict column -> value).
        reason: what is wrong, without the table/column/key prefix.
    """

    table: str | None = None
    column: str | None = None
    key: dict[str, Any] | None = None
    reason: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's default pickling calls ``cls(*self.args)``, which breaks every subclass whose
        # constructor takes other arguments than its message; rebuild without calling __init__.
        return (_rebuild_error, (type(self), self.args, dict(self.__dict__)))


def _rebuild_error(cls: type[DatapipeError], args: tuple[Any, ...], state: dict[str, Any]) -> DatapipeError:
    err = cls.__new__(cls, *args)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class ConfigurationError(DatapipeError):
    """A catalog, pipeline or step is declared in a way that cannot work."""


class UnknownTableError(ConfigurationError, KeyError):
    """A table name that the catalog does not hold."""

    def __init__(self, name: str, known: list[str]):
        self.name = name
        self.known = sorted(known)
        self.table = name
        self.reason = "unknown table"
        super().__init__(name)

    def __str__(self) -> str:
        known = ", ".join(self.known) or "(the catalog is empty)"
        return f"unknown table {self.name!r}; the catalog holds: {known}"


class SchemaError(DatapipeError, ValueError):
    """Data that does not fit a table's schema. Nothing was written.

    Attributes:
        table: the table the data was meant for.
        column: the offending column, if one.
        key: the primary key of the offending row, if one (a dict column -> value).
        reason: ``message``, what is wrong and what to do.
    """

    table: str

    def __init__(self, table: str, message: str, column: str | None = None, key: dict[str, Any] | None = None):
        self.table = table
        self.column = column
        self.key = None if key is None else {k: _plain(v) for k, v in key.items()}  # plain Python values
        self.reason = message
        parts = [f"table {table!r}"]
        if column is not None:
            parts.append(f"column {column!r}")
        if self.key is not None:
            parts.append("key " + ", ".join(f"{k}={v!r}" for k, v in self.key.items()))
        super().__init__(f"{'; '.join(parts)}: {message}")


class StepFailedError(DatapipeError):
    """Raised by ``run_steps(..., raise_on_error=True)`` when keys failed; carries the run summary."""

    def __init__(self, summary: Any):
        self.summary = summary
        super().__init__(str(summary))


class DatabaseError(DatapipeError):
    """The database failed (a lock wait timed out, the disk is full, the connection was lost).

    Nothing half-written stays: the transaction that failed was rolled back. The driver's error is the
    ``__cause__``.
    """


def _names(tables: list[str]) -> str:
    return ", ".join(repr(t) for t in tables) or "none"


def _tables_text(tables: list[str]) -> str:
    return ", ".join(repr(t) for t in tables) if tables else "(any: the whole database is locked)"


class LockTimeoutError(DatabaseError):
    """A statement waited longer than ``DBConn(lock_timeout=...)`` for a lock another session holds."""

    def __init__(self, tables: list[str], backend: str, timeout: float | None, detail: str):
        self.tables = tables
        waited = f"more than {timeout:g} s" if timeout is not None else "too long"
        if backend == "postgresql":
            how = (
                "another session holds it (often one left 'idle in transaction'). Find it with "
                "SELECT pid, state, xact_start, query FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' "
                "OR wait_event_type = 'Lock'; end it with SELECT pg_terminate_backend(pid), or raise "
                "DBConn(lock_timeout=...)"
            )
        else:
            how = (
                "another process holds the SQLite write lock (a long write or a stuck process): stop it, "
                "or raise DBConn(lock_timeout=...)"
            )
        super().__init__(f"table {_tables_text(tables)}: a write waited {waited} for a lock; {how}. ({detail.strip()})")


class StorageFullError(DatabaseError):
    """The database could not write: its disk (or quota) is full."""

    def __init__(self, tables: list[str], backend: str, detail: str, statement: str = ""):
        self.tables = tables
        where = f"table {_names(tables)}: the" if tables else "The"
        at = f" (at {statement.split()[0].upper()})" if not tables and statement.strip() else ""
        super().__init__(
            f"{where} {backend} database is out of disk space{at}; nothing of this write was kept. "
            f"Free space and rerun. ({detail.strip()})"
        )


class StepDatabaseError(DatabaseError):
    """A database error while a step ran; names the step and its tables."""

    def __init__(self, step: str, inputs: list[str], outputs: list[str], cause: BaseException):
        self.step = step
        self.inputs = inputs
        self.outputs = outputs
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(
            f"step {step!r} (inputs {_names(inputs)} -> outputs {_names(outputs)}) stopped on a "
            f"database error: {type(cause).__name__}: {first}. Chunks committed before it are kept, the one "
            f"in progress was rolled back; fix the database and run again (its keys are still stale)."
        )


class SkipRow(Exception):  # noqa: N818 - a control-flow signal, named as users read it
    """Raised inside a RowTransform function to drop the row without recording an error."""
