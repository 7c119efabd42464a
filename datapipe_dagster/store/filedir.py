"""A folder of files as a table: one file per row, the key columns named in the path pattern.

``TableStoreFiledir("data/images/{image_id}.json", JSONFile(), data_sql_schema=[...])`` stores the row
with ``image_id=7`` in ``data/images/7.json``. Writes are atomic (a temporary file in the same folder,
then ``os.replace``); a delete removes the file; ``read_rows(idx)`` opens only the files of ``idx``.
``list_files`` returns every file's key, size and mtime without opening any, which is what
``UpdateExternalTable`` uses to read only the files that changed.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.errors import ConfigurationError, SchemaError
from datapipe_dagster.store.base import TableStore
from datapipe_dagster.store.file_adapters import BytesFile, FileAdapter, JSONFile, TextFile
from datapipe_dagster.store.fs import TMP_PREFIX, filesystem_of
from datapipe_dagster.store.pattern import PathPattern
from datapipe_dagster.store.records import conform_types, to_records
from datapipe_dagster.store.schema import coerce_frame, empty_frame
from datapipe_dagster.store.schemaless import SchemalessColumns

__all__ = ["BytesFile", "FileAdapter", "JSONFile", "TableStoreFiledir", "TextFile", "reason_of"]
"""The adapters are importable from here too, where datapipe users find them (``datapipe.store.filedir``)."""

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def reason_of(e: SchemaError) -> str:
    """The message of ``e`` without its "table ...; column ...; key ..." prefix (to re-raise with more context)."""
    text = str(e)
    prefix = str(SchemaError(e.table, "", e.column, e.key))
    return text[len(prefix) :] if text.startswith(prefix) else text


class TableStoreFiledir(TableStore):
    """A folder of files, one file per row; the path pattern names the key columns.

    Args:
        path_pattern: e.g. ``"data/images/{image_id}.json"`` or ``"raw/{date}/{event_id}.txt"``; every
            ``{name}`` is a key column and matches part of one path segment. Also: ``*`` (part of one
            segment), ``**/`` (any number of folders) and ``(jpg|png)`` (one of the alternatives; a
            new file gets the first). The pattern may be an fsspec URL (``file://``, ``memory://``,
            ``s3://`` with s3fs installed, ...).
        adapter: ``JSONFile()``, ``TextFile()``, ``BytesFile()``, ``ImageFile()`` or your own ``FileAdapter``.
        data_sql_schema: the columns (key columns may be listed, marked ``primary_key=True``, to give
            them a type; unlisted key columns are strings). Without it a ``JSONFile`` table is
            schemaless (every field of the files is a column); ``TextFile`` and ``BytesFile`` default to
            one ``data`` column.
        name: the table's name in errors (default: the pattern).
        write_pattern: where new rows of a pattern with wildcards are written (a pattern with the same
            key fields and no wildcards, whose paths the path pattern matches); without it such a table
            can update and delete the files it finds but not create new ones.

    Raises:
        ConfigurationError: a pattern without key fields, or columns the adapter cannot hold.
    """

    def __init__(
        self,
        path_pattern: str | os.PathLike[str],
        adapter: FileAdapter,
        data_sql_schema: list[sa.Column] | None = None,
        name: str | None = None,
        write_pattern: str | os.PathLike[str] | None = None,
    ):
        self.path_pattern = str(path_pattern)
        self.adapter = adapter
        self.name = name or self.path_pattern
        self.fs, fs_pattern = filesystem_of(self.path_pattern, self.name)
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
        integer = {c.name for c in key_cols if isinstance(c.type, sa.Integer)}
        self._pattern = PathPattern(fs_pattern, integer)
        self._root = self._pattern.root
        self._write: PathPattern | None = None
        if write_pattern is not None:
            fs2, wp = filesystem_of(str(write_pattern), self.name)
            self._write = PathPattern(wp, integer)
            if self._write.has_wildcards or sorted(self._write.keys) != sorted(keys) or type(fs2) is not type(self.fs):
                raise ConfigurationError(
                    f"table {self.name!r}: write_pattern {str(write_pattern)!r} must name the key fields {keys} "
                    f"on the same filesystem, without wildcards"
                )

    def __repr__(self) -> str:
        return f"TableStoreFiledir({self.path_pattern!r}, {type(self.adapter).__name__}())"

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

    def hash_rows(
        self, df: pd.DataFrame, table: str | None = None, json_texts: dict[str, list[str | None]] | None = None
    ) -> np.ndarray:
        if self._free is not None:
            return self._free.hash_rows(df)
        view = self.adapter.hashable(df, self.data_columns, table or self.name)
        return super().hash_rows(view, table)

    @property
    def root(self) -> str:
        """The folder under which every file of the table lives (the pattern's part before its first
        key or wildcard; a path on the table's filesystem)."""
        return self._root

    def root_exists(self) -> bool:
        return self.fs.isdir(self._root)

    # ------------------------------------------------------------ paths

    def _parts(self, key: dict[str, Any]) -> dict[str, str]:
        key = {k: key[k] for k in self.key_columns}
        parts = {k: _key_text(key[k]) for k in self.key_columns}
        for k, v in parts.items():
            if v in ("", ".", "..") or "/" in v or os.sep in v or "\x00" in v or v.startswith(TMP_PREFIX):
                raise SchemaError(self.name, f"key value {v!r} cannot be a file name", k, key)
        return parts

    def candidates_of(self, key: dict[str, Any]) -> list[str] | None:
        """The paths the row with key ``key`` may have (first: where a new file goes); None when the
        pattern has wildcards (the file is found by listing).

        Raises:
            SchemaError: a key value that cannot be a file name (empty, ``/``, ``..``) or that would not
                parse back to the same key.
        """
        parts = self._parts(key)
        paths = self._pattern.candidates(parts)
        if paths is not None and self._pattern.match(paths[0]) != parts:
            raise SchemaError(
                self.name,
                f"key values do not round-trip through the pattern {self.path_pattern!r}",
                None,
                {k: key[k] for k in self.key_columns},
            )
        return paths

    def path_of(self, key: dict[str, Any]) -> str:
        """The path a new file of the row with key ``key`` gets.

        Raises:
            SchemaError: as ``candidates_of``, or a pattern with wildcards and no ``write_pattern``.
        """
        paths = self.candidates_of(key)
        if paths is not None:
            return paths[0]
        key = {k: key[k] for k in self.key_columns}
        if self._write is not None:
            (path,) = self._write.candidates(self._parts(key)) or [""]
            if self._pattern.match(path) == self._parts(key):
                return path
            raise SchemaError(self.name, f"write_pattern path {path!r} is not matched by the path pattern", None, key)
        raise SchemaError(
            self.name,
            f"path pattern {self.path_pattern!r} has wildcards, so a new row has no file path; "
            f"give write_pattern= (e.g. the pattern with the wildcards filled in)",
            None,
            key,
        )

    def list_files(self) -> pd.DataFrame:
        """Every row's file without opening it: key columns plus ``_path``, ``_size``, ``_mtime_ns``.

        Raises:
            SchemaError: two files with the same key (e.g. ``a/1.json`` and ``b/1.json`` under
                ``*/{id}.json``), naming the key and both paths.
        """
        recs: list[dict[str, Any]] = []
        if self.fs.isdir(self._root):
            seen: dict[tuple[str, ...], str] = {}
            for path, size, mtime in self.fs.walk(self._root):
                parts = self._pattern.match(path)
                if parts is None:
                    continue
                k = tuple(parts[c] for c in self.key_columns)
                if k in seen:
                    raise SchemaError(
                        self.name, f"two files hold the same key: {seen[k]!r} and {path!r}", None, dict(parts)
                    )
                seen[k] = path
                recs.append({**parts, "_path": path, "_size": size, "_mtime_ns": mtime})
        cols = self.key_columns + ["_path", "_size", "_mtime_ns"]
        if not recs:
            return pd.DataFrame({c: pd.Series([], dtype=object) for c in cols})
        df = pd.DataFrame.from_records(recs, columns=cols)
        return self._typed_keys(df)

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

    def _existing_paths(self, keys: list[dict[str, Any]]) -> list[str | None]:
        """The file each key has now (None: no file), by its candidate paths or, with wildcards, a listing."""
        if not keys:
            return []
        if self._pattern.has_wildcards:
            listing = self.list_files()
            where = {tuple(str(r[k]) for k in self.key_columns): r["_path"] for r in to_records(listing)}
            return [where.get(tuple(str(k[c]) for c in self.key_columns)) for k in keys]
        out: list[str | None] = []
        for k in keys:
            paths = self.candidates_of(k) or []
            if len(paths) == 1:
                out.append(paths[0])  # one possible path: opened directly, a missing file is skipped
            else:
                out.append(next((p for p in paths if self.fs.exists(p)), None))
        return out

    # ------------------------------------------------------------ TableStore

    def read_rows(self, idx: pd.DataFrame | None = None, conn: Any = None) -> pd.DataFrame:
        if idx is not None and all(k in idx.columns for k in self.key_columns) and not self._pattern.has_wildcards:
            keys = to_records(idx[self.key_columns].drop_duplicates())
            paths = [(k, p) for k, p in zip(keys, self._existing_paths(keys), strict=True) if p is not None]
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
                values = self._read_file(path, wanted)
            except FileNotFoundError:
                continue
            except (ValueError, UnicodeDecodeError, OSError) as e:
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

    def _read_file(self, path: str, columns: list[str] | None) -> dict[str, Any]:
        if self.fs.local:
            return self.adapter.read(path, columns)
        return self.adapter.read_bytes(self.fs.read_bytes(path), columns)

    def write_rows(self, df: pd.DataFrame, conn: Any = None) -> None:
        if len(df) == 0:
            return
        recs = to_records(df)
        # Every path is found before the first file is written, so a bad key writes nothing.
        existing = self._existing_paths(recs)
        paths = [p if p is not None else self.path_of(r) for r, p in zip(recs, existing, strict=True)]
        for r, path in zip(recs, paths, strict=True):
            values = self._free.data_of(r) if self._free is not None else {c: r.get(c) for c in self.data_columns}
            self.fs.write_bytes(path, self.adapter.dumps(values))

    def delete_rows(self, idx: pd.DataFrame, conn: Any = None) -> None:
        if len(idx) == 0:
            return
        keys = to_records(idx[self.key_columns].drop_duplicates())
        if self._pattern.has_wildcards:
            paths = [[p] for p in self._existing_paths(keys) if p is not None]
        else:
            paths = [self.candidates_of(k) or [] for k in keys]
        for group in paths:
            for path in group:
                try:
                    self.fs.remove(path)
                except FileNotFoundError:
                    pass

    def empty(self) -> pd.DataFrame:
        schema = self.get_schema()
        return conform_types(empty_frame(schema), schema)


def _key_text(v: Any) -> str:
    if hasattr(v, "isoformat"):
        return str(v.isoformat())
    return str(v)
