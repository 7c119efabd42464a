"""File adapters: how the bytes of one file become a row of a ``TableStoreFiledir`` and back
(``JSONFile``, ``TextFile``, ``BytesFile``; ``store.image.ImageFile`` too)."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.errors import ConfigurationError


class FileAdapter(ABC):
    """How one file holds one row's non-key columns.

    Attributes:
        reads: files this adapter has opened for reading (lets tests and benchmarks prove a scan read
            no unchanged file).
    """

    reads: int = 0
    schemaless_ok: bool = False
    """Whether the adapter can hold any fields, so a store without data_sql_schema is schemaless."""

    def default_columns(self) -> list[sa.Column] | None:
        """Data columns when the store is given none (None: the store must be given a schema)."""
        return None

    def check_columns(self, table: str, columns: list[sa.Column]) -> None:
        """Raise ConfigurationError when this adapter cannot hold ``columns`` (any columns by default)."""
        return None

    def read(self, path: str, columns: list[str] | None) -> dict[str, Any]:
        """The row's non-key values from the local file at ``path`` (every field when ``columns`` is None)."""
        values = self._read(path, columns)
        self.reads += 1
        return values

    def read_bytes(self, data: bytes, columns: list[str] | None) -> dict[str, Any]:
        """The row's non-key values from a file's content (files on an fsspec filesystem)."""
        values = self.loads(data, columns)
        self.reads += 1
        return values

    def _read(self, path: str, columns: list[str] | None) -> dict[str, Any]:
        with open(path, "rb") as f:
            return self.loads(f.read(), columns)

    def loads(self, data: bytes, columns: list[str] | None) -> dict[str, Any]:
        """The row's non-key values from a file's content (override this, or ``_read`` for local files only)."""
        raise NotImplementedError(
            f"{type(self).__name__} reads local files only; implement loads(data, columns) to read from URLs"
        )

    def hashable(self, df: pd.DataFrame, columns: list[str], table: str) -> pd.DataFrame:
        """``df`` with values the content hash can serialise (e.g. an image as a digest of its pixels)."""
        return df

    @abstractmethod
    def dumps(self, row: dict[str, Any]) -> bytes:
        """The file content for ``row`` (non-key columns only)."""


class JSONFile(FileAdapter):
    """A JSON object per file; its top-level fields are the columns.

    With a ``data_sql_schema`` the store reads the declared fields (others are ignored); without one the
    store is schemaless and every field is a column, its value kept as the file holds it.
    """

    schemaless_ok = True

    def __init__(self, indent: int | None = None, encoding: str = "utf-8"):
        self.indent = indent
        self.encoding = encoding
        self.reads = 0

    def check_columns(self, table: str, columns: list[sa.Column]) -> None:
        for c in columns:
            if isinstance(c.type, sa.LargeBinary):
                raise ConfigurationError(
                    f"table {table!r}: column {c.name!r} is binary; JSONFile cannot hold bytes (use BytesFile)"
                )

    def loads(self, data: bytes, columns: list[str] | None) -> dict[str, Any]:
        obj = json.loads(data.decode(self.encoding))
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object in the file, got {type(obj).__name__}")
        if columns is None:
            return obj
        return {c: obj.get(c) for c in columns}

    def dumps(self, row: dict[str, Any]) -> bytes:
        return json.dumps(row, indent=self.indent, ensure_ascii=False, default=_json_default).encode(
            self.encoding
        )


class TextFile(FileAdapter):
    """A text file; its content is the one column ``data``."""

    def __init__(self, encoding: str = "utf-8"):
        self.encoding = encoding
        self.reads = 0

    def default_columns(self) -> list[sa.Column]:
        return [sa.Column("data", sa.Text)]

    def check_columns(self, table: str, columns: list[sa.Column]) -> None:
        _one_data_column(table, columns, "TextFile")

    def loads(self, data: bytes, columns: list[str] | None) -> dict[str, Any]:
        return {(columns or ["data"])[0]: data.decode(self.encoding)}

    def dumps(self, row: dict[str, Any]) -> bytes:
        value = next(iter(row.values()))
        return b"" if value is None else str(value).encode(self.encoding)


class BytesFile(FileAdapter):
    """A binary file; its content is the one column ``data`` (bytes)."""

    def __init__(self) -> None:
        self.reads = 0

    def default_columns(self) -> list[sa.Column]:
        return [sa.Column("data", sa.LargeBinary)]

    def check_columns(self, table: str, columns: list[sa.Column]) -> None:
        _one_data_column(table, columns, "BytesFile")

    def loads(self, data: bytes, columns: list[str] | None) -> dict[str, Any]:
        return {(columns or ["data"])[0]: data}

    def dumps(self, row: dict[str, Any]) -> bytes:
        value = next(iter(row.values()))
        return b"" if value is None else bytes(value)


def _one_data_column(table: str, columns: list[sa.Column], adapter: str) -> None:
    if len(columns) != 1:
        raise ConfigurationError(
            f"table {table!r}: {adapter} holds exactly one data column, got {[c.name for c in columns]}"
        )


def _json_default(v: Any) -> Any:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")
