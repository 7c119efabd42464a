"""One error hierarchy for the library: every error names what it is about and suggests the fix."""

from __future__ import annotations

from typing import Any


class DatapipeError(Exception):
    """Base class of every error raised by datapipe_dagster."""


class ConfigurationError(DatapipeError):
    """A catalog, pipeline or step is declared in a way that cannot work."""


class UnknownTableError(ConfigurationError, KeyError):
    """A table name that the catalog does not hold."""

    def __init__(self, name: str, known: list[str]):
        self.name = name
        self.known = sorted(known)
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
    """

    def __init__(self, table: str, message: str, column: str | None = None, key: dict[str, Any] | None = None):
        self.table = table
        self.column = column
        self.key = key
        parts = [f"table {table!r}"]
        if column is not None:
            parts.append(f"column {column!r}")
        if key is not None:
            parts.append("key " + ", ".join(f"{k}={_plain(v)!r}" for k, v in key.items()))
        super().__init__(f"{'; '.join(parts)}: {message}")


def _plain(v: Any) -> Any:
    """A value as a user wrote it: numpy scalars as Python values, NaN/NA as None."""
    if hasattr(v, "item") and callable(v.item):
        try:
            v = v.item()
        except (ValueError, TypeError):
            pass
    try:
        if v != v:  # NaN
            return None
    except (TypeError, ValueError):
        pass
    return None if v is not None and type(v).__name__ in ("NAType", "NaTType") else v


class StepFailedError(DatapipeError):
    """Raised by ``run_steps(..., raise_on_error=True)`` when keys failed; carries the run summary."""

    def __init__(self, summary: Any):
        self.summary = summary
        super().__init__(str(summary))


class SkipRow(Exception):  # noqa: N818 - a control-flow signal, named as users read it
    """Raised inside a RowTransform function to drop the row without recording an error."""
