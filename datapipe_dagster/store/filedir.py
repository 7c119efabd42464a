"""A folder of files as a table: one file per row, the key columns named in the path pattern.

``TableStoreFiledir("data/images/{image_id}.json", JSONFile(), data_sql_schema=[...])`` stores the row
with ``image_id=7`` in ``data/images/7.json``. Writes are atomic (a temporary file in the same folder,
then ``os.replace``); a delete removes the file; ``read_rows(idx)`` opens only the files of ``idx``.
``list_files`` returns every file's key, size and mtime without opening any, which is what
``UpdateExternalTable`` uses to read only the files that changed.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.errors import ConfigurationError, SchemaError
from datapipe_dagster.store.base import TableStore
from datapipe_dagster.store.schema import coerce_frame, conform_types, empty_frame, to_records
from datapipe_dagster.store.schemaless import SchemalessColumns

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
TMP_PREFIX = ".datapipe-tmp-"


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
        """The row's non-key values from the file at ``path`` (every field when ``columns`` is None)."""
        values = self._read(path, columns)
        self.reads += 1
        return values

    @abstractmethod
    def _read(self, path: str, columns: list[str] | None) -> dict[str, Any]: ...

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

    def _read(self, path: str, columns: list[str]) -> dict[str, Any]:
        with open(path, encoding=self.encoding) as f:
            obj = json.load(f)
        if not isinstance(obj, dict):
            raise SchemaError(path, f"expected a JSON object in the file, got {type(obj).__name__}")
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

    def _read(self, path: str, columns: list[str]) -> dict[str, Any]:
        with open(path, encoding=self.encoding, newline="") as f:
            return {columns[0]: f.read()}

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

    def _read(self, path: str, columns: list[str]) -> dict[str, Any]:
        with open(path, "rb") as f:
            return {columns[0]: f.read()}

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


def reason_of(e: SchemaError) -> str:
    """The message of ``e`` without its "table ...; column ...; key ..." prefix (to re-raise with more context)."""
    text = str(e)
    prefix = str(SchemaError(e.table, "", e.column, e.key))
    return text[len(prefix) :] if text.startswith(prefix) else text


def atomic_write(path: str, content: bytes) -> None:
    """Write ``content`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f"{TMP_PREFIX}{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class TableStoreFiledir(TableStore):
    """A folder of files, one file per row; the path pattern names the key columns.

    Args:
        path_pattern: e.g. ``"data/images/{image_id}.json"`` or ``"raw/{date}/{event_id}.txt"``; every
            ``{name}`` is a key column and matches one path segment (or part of one).
        adapter: ``JSONFile()``, ``TextFile()``, ``BytesFile()`` or your own ``FileAdapter``.
        data_sql_schema: the columns (key columns may be listed, marked ``primary_key=True``, to give
            them a type; unlisted key columns are strings). Required for ``JSONFile``; ``TextFile`` and
            ``BytesFile`` default to one ``data`` column.
        name: the table's name in errors (default: the pattern).

    Raises:
        ConfigurationError: a pattern without key fields, or columns the adapter cannot hold.
    """

    def __init__(
        self,
        path_pattern: str | os.PathLike[str],
        adapter: FileAdapter,
        data_sql_schema: list[sa.Column] | None = None,
        name: str | None = None,
    ):
        self.path_pattern = str(path_pattern)
        self.adapter = adapter
        self.name = name or self.path_pattern
        keys = _FIELD.findall(self.path_pattern)
        if not keys:
            raise ConfigurationError(
                f"table {self.name!r}: path pattern {self.path_pattern!r} names no key column like {{id}}"
            )
        if len(set(keys)) != len(keys):
            raise ConfigurationError(
                f"table {self.name!r}: path pattern {self.path_pattern!r} repeats a key column"
            )
        given = {c.name: c for c in data_sql_schema or []}
        for c in given.values():
            if c.primary_key and c.name not in keys:
                raise ConfigurationError(
                    f"table {self.name!r}: column {c.name!r} is a primary key but not in the path pattern"
                )
        key_cols = [sa.Column(k, given[k].type if k in given else sa.String, primary_key=True) for k in keys]
        data_cols = [c._copy() for c in (data_sql_schema or []) if c.name not in keys]
        self._free: SchemalessColumns | None = None
        if not data_cols:
            default = adapter.default_columns()
            if default is None and adapter.schemaless_ok:
                # No schema: the columns are whatever the files hold (learned as files are read).
                self._free = SchemalessColumns(self.name, key_cols)
                self.schemaless = True
                default = []
            elif default is None:
                raise ConfigurationError(
                    f"table {self.name!r}: {type(adapter).__name__} needs data_sql_schema listing the file's columns"
                )
            data_cols = default
        adapter.check_columns(self.name, data_cols)
        self.key_columns = keys
        self._data_columns = [c.name for c in data_cols]
        self._schema = key_cols + data_cols
        self._regex = self._compile(self.path_pattern, {c.name: c for c in key_cols})
        self._root = self._static_root(self.path_pattern)

    def __repr__(self) -> str:
        return f"TableStoreFiledir({self.path_pattern!r}, {type(self.adapter).__name__}())"

    @staticmethod
    def _compile(pattern: str, key_cols: dict[str, sa.Column]) -> re.Pattern[str]:
        # An integer key matches canonical digits only: "readme.json" or "007.json" next to "7.json" are
        # foreign files, not bad rows (and every listed file is found again by its key's path).
        out, pos = [], 0
        for m in _FIELD.finditer(pattern):
            out.append(re.escape(pattern[pos : m.start()]))
            integer = isinstance(key_cols[m.group(1)].type, sa.Integer)
            out.append(f"(?P<{m.group(1)}>{'-?(?:0|[1-9][0-9]*)' if integer else '[^/]+?'})")
            pos = m.end()
        out.append(re.escape(pattern[pos:]))
        return re.compile("".join(out) + r"\Z")

    @staticmethod
    def _static_root(pattern: str) -> str:
        head = pattern[: _FIELD.search(pattern).start()]  # type: ignore[union-attr]
        return head.rsplit("/", 1)[0] if "/" in head else "."

    def get_schema(self) -> list[sa.Column]:
        return self._free.schema() if self._free is not None else self._schema

    @property
    def data_columns(self) -> list[str]:
        """The non-key columns (for a schemaless store: those seen so far)."""
        return list(self._free.data_names) if self._free is not None else self._data_columns

    def validate(self, df: pd.DataFrame) -> pd.DataFrame:
        if self._free is not None:
            return self._free.validate(df)
        return super().validate(df)

    def hash_rows(self, df: pd.DataFrame, table: str | None = None) -> np.ndarray:
        if self._free is not None:
            return self._free.hash_rows(df)
        return super().hash_rows(df, table)

    @property
    def root(self) -> str:
        """The folder under which every file of the table lives (the pattern's part before its first key)."""
        return self._root

    # ------------------------------------------------------------ paths

    def path_of(self, key: dict[str, Any]) -> str:
        """The file path of the row with key ``key``.

        Raises:
            SchemaError: a key value that cannot be a file name (empty, ``/``, ``..``) or that would not
                parse back to the same key.
        """
        key = {k: key[k] for k in self.key_columns}
        parts = {k: _key_text(key[k]) for k in self.key_columns}
        for k, v in parts.items():
            if v in ("", ".", "..") or "/" in v or os.sep in v or "\x00" in v or v.startswith(TMP_PREFIX):
                raise SchemaError(self.name, f"key value {v!r} cannot be a file name", k, key)
        path = self.path_pattern.format(**parts)
        m = self._regex.match(path)
        if m is None or m.groupdict() != parts:
            raise SchemaError(
                self.name,
                f"key values do not round-trip through the pattern {self.path_pattern!r}",
                None,
                key,
            )
        return path

    def list_files(self) -> pd.DataFrame:
        """Every row's file without opening it: key columns plus ``_path``, ``_size``, ``_mtime_ns``."""
        recs: list[dict[str, Any]] = []
        root = self._root
        if os.path.isdir(root):
            self._walk(root, recs)
        cols = self.key_columns + ["_path", "_size", "_mtime_ns"]
        if not recs:
            return pd.DataFrame({c: pd.Series([], dtype=object) for c in cols})
        df = pd.DataFrame.from_records(recs, columns=cols)
        return self._typed_keys(df)

    def _walk(self, folder: str, out: list[dict[str, Any]]) -> None:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith(TMP_PREFIX):
                    continue
                path = e.path if folder != "." else e.name
                if e.is_dir(follow_symlinks=False):
                    self._walk(path, out)
                    continue
                m = self._regex.match(path)
                if m is None:
                    continue
                st = e.stat()
                rec: dict[str, Any] = m.groupdict()
                rec["_path"], rec["_size"], rec["_mtime_ns"] = path, st.st_size, st.st_mtime_ns
                out.append(rec)

    def _typed_keys(self, df: pd.DataFrame) -> pd.DataFrame:
        keys = self.get_primary_schema()
        try:
            typed = coerce_frame(self.name, keys, df[self.key_columns])
        except SchemaError as e:
            raise SchemaError(
                self.name,
                f"a file name under {self._root!r} does not parse to the key type: {reason_of(e)}",
                e.column,
                e.key,
            ) from e
        for k in self.key_columns:
            df[k] = typed[k].to_numpy()
        return conform_types(df, keys)

    # ------------------------------------------------------------ TableStore

    def read_rows(self, idx: pd.DataFrame | None = None, conn: Any = None) -> pd.DataFrame:
        if idx is not None and all(k in idx.columns for k in self.key_columns):
            keys = to_records(idx[self.key_columns].drop_duplicates())
            paths = [(k, self.path_of(k)) for k in keys]
        else:
            listing = self.list_files()
            if idx is not None:
                sub = [c for c in idx.columns if c in self.key_columns]
                listing = (
                    listing.merge(idx[sub].drop_duplicates(), on=sub, how="inner")
                    if sub
                    else listing.iloc[0:0]
                )
            paths = [(r, r["_path"]) for r in to_records(listing)]
        rows = []
        wanted = None if self._free is not None else self.data_columns
        for key, path in paths:
            try:
                values = self.adapter.read(path, wanted)
            except FileNotFoundError:
                continue
            except (ValueError, UnicodeDecodeError) as e:
                raise SchemaError(
                    self.name, f"cannot read file {path!r}: {e}", None, {k: key[k] for k in self.key_columns}
                ) from e
            if self._free is not None:
                values = {k: v for k, v in values.items() if k not in self.key_columns}
            rows.append({**{k: key[k] for k in self.key_columns}, **values})
        if not rows:
            return self.empty()
        if self._free is not None:
            return self._free.from_records(rows)
        return coerce_frame(
            self.name, self._schema, pd.DataFrame.from_records(rows, columns=[c.name for c in self._schema])
        )

    def write_rows(self, df: pd.DataFrame, conn: Any = None) -> None:
        if len(df) == 0:
            return
        recs = to_records(df)
        # Every path is checked before the first file is written, so a bad key writes nothing.
        paths = [self.path_of(r) for r in recs]
        for r, path in zip(recs, paths, strict=True):
            values = self._free.data_of(r) if self._free is not None else {c: r.get(c) for c in self.data_columns}
            atomic_write(path, self.adapter.dumps(values))

    def delete_rows(self, idx: pd.DataFrame, conn: Any = None) -> None:
        if len(idx) == 0:
            return
        for key in to_records(idx[self.key_columns].drop_duplicates()):
            try:
                os.unlink(self.path_of(key))
            except FileNotFoundError:
                pass

    def empty(self) -> pd.DataFrame:
        schema = self.get_schema()
        return conform_types(empty_frame(schema), schema)


def _key_text(v: Any) -> str:
    if hasattr(v, "isoformat"):
        return str(v.isoformat())
    return str(v)
