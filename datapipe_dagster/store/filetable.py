"""Whole-file tables: a JSON-lines, CSV or Excel file holds every row of a table.

Every write reads the file, applies the change and rewrites it atomically (a temporary file in the same
folder, then ``os.replace``): readers see the old file or the new one, never half of one. These stores
suit small and medium tables (exports, hand-edited spreadsheets); use a SQL table or a folder of files
for big ones.

Values are encoded so that a row read back hashes like the row written: JSON columns as JSON text (CSV,
Excel), dates and times in ISO format. In CSV, an empty cell is a null (an empty string reads back as
null). Binary columns are not supported in these formats.
"""

from __future__ import annotations

import base64
import io
import json
import os
from abc import abstractmethod
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.errors import ConfigurationError, SchemaError
from datapipe_dagster.frames import anti_join, has_key
from datapipe_dagster.store.base import TableStore
from datapipe_dagster.store.filedir import reason_of
from datapipe_dagster.store.fs import atomic_write
from datapipe_dagster.store.records import conform_types, to_records
from datapipe_dagster.store.schema import coerce_frame, empty_frame
from datapipe_dagster.store.schemaless import SchemalessColumns


def merge_schema(
    name: str, primary_schema: list[sa.Column] | None, data_sql_schema: list[sa.Column] | None
) -> list[sa.Column]:
    """Key columns first, then the other columns of ``data_sql_schema`` (which may repeat the keys).

    Raises:
        ConfigurationError: no key column, or a key in ``data_sql_schema`` missing from ``primary_schema``.
    """
    keys = [c._copy() for c in primary_schema or []]
    for c in keys:
        c.primary_key = True
    names = {c.name for c in keys}
    rest = []
    for c in data_sql_schema or []:
        if c.primary_key and c.name not in names:
            if primary_schema:
                raise ConfigurationError(
                    f"table {name!r}: column {c.name!r} is a primary key but not in primary_schema"
                )
            keys.append(c._copy())
            names.add(c.name)
        elif c.name not in names:
            rest.append(c._copy())
    if not keys:
        raise ConfigurationError(
            f"table {name!r}: no key column; give primary_schema or mark columns primary_key=True"
        )
    return keys + rest


class FileTableStore(TableStore):
    """Base of the whole-file stores: read everything, change in memory, rewrite atomically.

    Args:
        path: the file.
        primary_schema: the key columns (SQLAlchemy ``Column``s).
        data_sql_schema: all the columns (keys may be repeated, marked ``primary_key=True``); without
            it the table has only its key columns.
        name: the table's name in errors (default: the file name).
    """

    binary_ok = False
    """Whether the format can hold LargeBinary columns."""
    json_as_text = True
    """Whether JSON columns are stored as JSON text in a cell (CSV, Excel) rather than nested (JSON lines)."""
    schemaless_ok = False
    """Whether the format is schemaless without ``data_sql_schema`` (JSON lines: any fields, kept as-is)."""
    default_keys: list[sa.Column] | None = None
    """The key columns of a schemaless table given no ``primary_schema``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        primary_schema: list[sa.Column] | None = None,
        data_sql_schema: list[sa.Column] | None = None,
        name: str | None = None,
    ):
        self.path = os.fspath(path)
        self.name = name or os.path.basename(self.path)
        self._free: SchemalessColumns | None = None
        if data_sql_schema is None and self.schemaless_ok:
            primary_schema = primary_schema or [c._copy() for c in self.default_keys or []]
        self._schema = merge_schema(self.name, primary_schema, data_sql_schema)
        if data_sql_schema is None and self.schemaless_ok:
            # No schema: the fields are whatever the file's rows hold (learned as the file is read).
            self._free = SchemalessColumns(self.name, self._schema)
            self.schemaless = True
        for c in self._schema:
            if isinstance(c.type, sa.LargeBinary) and not self.binary_ok:
                raise ConfigurationError(
                    f"table {self.name!r}: column {c.name!r} is binary, which {type(self).__name__} cannot hold"
                )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    def get_schema(self) -> list[sa.Column]:
        return self._free.schema() if self._free is not None else self._schema

    def empty(self) -> pd.DataFrame:
        schema = self.get_schema()
        return conform_types(empty_frame(schema), schema)

    def validate(self, df: pd.DataFrame) -> pd.DataFrame:
        if self._free is not None:
            return self._free.validate(df)
        return super().validate(df)

    def hash_rows(
        self, df: pd.DataFrame, table: str | None = None, json_texts: dict[str, list[str | None]] | None = None
    ) -> np.ndarray:
        if self._free is not None:
            return self._free.hash_rows(df)
        return super().hash_rows(df, table)

    # ------------------------------------------------------------ format hooks

    @abstractmethod
    def _load(self) -> list[dict[str, Any]]:
        """The file's rows as dicts of encoded values (missing file: no rows)."""

    @abstractmethod
    def _dump(self, records: list[dict[str, Any]]) -> bytes:
        """File content for ``records`` (dicts of encoded values, schema column order)."""

    def _checked_records(self, raw: pd.DataFrame) -> list[dict[str, Any]]:
        """Rows read by a tabular reader; a column the schema lacks is a SchemaError naming the file."""
        names = [c.name for c in self._schema]
        unknown = [c for c in raw.columns if c not in names]
        if unknown:
            raise SchemaError(self.name, f"file {self.path!r} has a column not in the schema", str(unknown[0]))
        return to_records(raw)

    # ------------------------------------------------------------ encoding

    def _encode(self, df: pd.DataFrame) -> list[dict[str, Any]]:
        if self._free is not None:
            # Keys as in a schema'd file; other fields as they are, nulls left out.
            return [
                {**{k: _iso(r[k]) for k in self.primary_keys}, **self._free.data_of(r)} for r in to_records(df)
            ]
        recs = to_records(df[[c.name for c in self._schema]])
        for col in self._schema:
            if isinstance(col.type, sa.JSON) and self.json_as_text:
                for r in recs:
                    if r[col.name] is not None:
                        r[col.name] = json.dumps(r[col.name], sort_keys=True)
            elif isinstance(col.type, (sa.DateTime, sa.Date)):
                for r in recs:
                    if r[col.name] is not None:
                        r[col.name] = r[col.name].isoformat()
        return recs

    def _decode(self, recs: list[dict[str, Any]]) -> pd.DataFrame:
        names = [c.name for c in self._schema]
        if not recs:
            return self.empty()
        if self._free is not None:
            try:
                return self._free.from_records(recs)
            except SchemaError as e:
                raise SchemaError(
                    self.name, f"file {self.path!r} does not fit the keys: {reason_of(e)}", e.column, e.key
                ) from e
        df = pd.DataFrame.from_records(recs, columns=names)
        for col in self._schema:
            s = df[col.name].astype(object).where(df[col.name].notna(), None)
            if isinstance(col.type, sa.JSON) and self.json_as_text:
                s = s.map(lambda v: json.loads(v) if isinstance(v, str) else v)
            elif isinstance(col.type, sa.Boolean):
                s = s.map(
                    lambda v: (
                        {"true": True, "false": False, "1": True, "0": False}.get(v.lower(), v)
                        if isinstance(v, str)
                        else v
                    )
                )
            elif isinstance(col.type, sa.String):
                s = s.map(lambda v: v if v is None or isinstance(v, str) else _plain_text(v))
            df[col.name] = s
        try:
            # Keys first, so an error in another column names the row by its typed key.
            keys = coerce_frame(self.name, self.get_primary_schema(), df[self.primary_keys])
            for k in self.primary_keys:
                df[k] = keys[k].to_numpy()
            return coerce_frame(self.name, self._schema, df)
        except SchemaError as e:
            raise SchemaError(
                self.name, f"file {self.path!r} does not fit the schema: {reason_of(e)}", e.column, e.key
            ) from e

    # ------------------------------------------------------------ TableStore

    def read_rows(self, idx: pd.DataFrame | None = None, conn: Any = None) -> pd.DataFrame:
        df = self._decode(self._load())
        if idx is None:
            return df
        sub = [c for c in idx.columns if c in self.primary_keys]
        if not sub or len(df) == 0:
            return df.iloc[0:0].reset_index(drop=True)
        keys = coerce_frame(self.name, [c for c in self._schema if c.name in sub], idx[sub]).drop_duplicates()
        return conform_types(df.merge(keys, on=sub, how="inner"), self._schema)

    def write_rows(self, df: pd.DataFrame, conn: Any = None) -> None:
        if len(df) == 0:
            return
        current = self._decode(self._load())
        pks = self.primary_keys
        if len(current):
            current = anti_join(current, df, pks)
        if self._free is not None:
            df = self._free.validate(df)  # every column seen so far, in the same order as ``current``
            current = current.reindex(columns=list(df.columns))
        frames = [f for f in (current, df[[c.name for c in self.get_schema()]]) if len(f)]
        self._save(pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0])

    def delete_rows(self, idx: pd.DataFrame, conn: Any = None) -> None:
        if len(idx) == 0 or not os.path.exists(self.path):
            return
        current = self._decode(self._load())
        pks = self.primary_keys
        gone = coerce_frame(self.name, self.get_primary_schema(), idx[pks])
        keep = ~has_key(current, gone, pks)
        if not keep.all():
            self._save(current.loc[keep])

    def _save(self, df: pd.DataFrame) -> None:
        atomic_write(self.path, self._dump(self._encode(df)))


def _iso(v: Any) -> Any:
    return v.isoformat() if hasattr(v, "isoformat") else v


def _plain_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


class TableStoreJsonLine(FileTableStore):
    """A JSON-lines file (one JSON object per line) holding a whole table.

    Without ``data_sql_schema`` the table is schemaless: every field of the lines is a column, its value
    kept as the file holds it (as in epoch8 datapipe). With one, a field it does not declare is a
    SchemaError naming it (as in CSV and Excel).

    Args:
        path: the ``.jsonl`` file.
        primary_schema: the key columns (default for a schemaless table: one string column ``id``).
        data_sql_schema: all the columns (optional; see above).
        name: the table's name in errors.
    """

    binary_ok = True
    json_as_text = False
    schemaless_ok = True
    default_keys = [sa.Column("id", sa.String, primary_key=True)]

    def _encode(self, df: pd.DataFrame) -> list[dict[str, Any]]:
        recs = super()._encode(df)
        for col in self._schema:
            if isinstance(col.type, sa.LargeBinary):
                for r in recs:
                    if r[col.name] is not None:
                        r[col.name] = base64.b64encode(r[col.name]).decode("ascii")
        return recs

    def _decode(self, recs: list[dict[str, Any]]) -> pd.DataFrame:
        if self._free is None:
            # As CSV and Excel do: a field the declared schema lacks is an error, not silently dropped.
            names = {c.name for c in self._schema}
            for r in recs:
                unknown = [f for f in r if f not in names]
                if unknown:
                    key = {k: r.get(k) for k in self.primary_keys}
                    raise SchemaError(
                        self.name,
                        f"file {self.path!r} has a field not in the schema; declare it in data_sql_schema, "
                        "or give no data_sql_schema to keep every field",
                        unknown[0],
                        key,
                    )
        for col in self._schema:
            if isinstance(col.type, sa.LargeBinary):
                for r in recs:
                    if isinstance(r.get(col.name), str):
                        r[col.name] = base64.b64decode(r[col.name])
        return super()._decode(recs)

    def _load(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.path):
            return []
        out = []
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SchemaError(self.name, f"file {self.path!r} line {n} is not JSON: {e}") from e
                if not isinstance(obj, dict):
                    raise SchemaError(self.name, f"file {self.path!r} line {n} is not a JSON object")
                out.append(obj)
        return out

    def _dump(self, records: list[dict[str, Any]]) -> bytes:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


class TableStoreCSV(FileTableStore):
    """A CSV file (header row, comma-separated) holding a whole table.

    Args:
        path: the ``.csv`` file.
        primary_schema: the key columns.
        data_sql_schema: all the columns (optional; see ``FileTableStore``).
        name: the table's name in errors.
    """

    def _load(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            return []
        raw = pd.read_csv(self.path, dtype=str, keep_default_na=False, na_values=[""])
        return self._checked_records(raw)

    def _dump(self, records: list[dict[str, Any]]) -> bytes:
        names = [c.name for c in self._schema]
        buf = io.StringIO()
        pd.DataFrame.from_records(records, columns=names).to_csv(buf, index=False)
        return buf.getvalue().encode("utf-8")


class TableStoreExcel(FileTableStore):
    """An Excel workbook (``.xlsx``; the first sheet, or ``sheet_name``) holding a whole table.

    Needs ``openpyxl`` (``pip install openpyxl``).

    Args:
        path: the ``.xlsx`` file.
        primary_schema: the key columns.
        data_sql_schema: all the columns (optional; see ``FileTableStore``).
        name: the table's name in errors.
        sheet_name: the sheet holding the table.

    Raises:
        ConfigurationError: openpyxl is not installed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        primary_schema: list[sa.Column] | None = None,
        data_sql_schema: list[sa.Column] | None = None,
        name: str | None = None,
        sheet_name: str = "data",
    ):
        try:
            import openpyxl  # noqa: F401 - only checking that it is there
        except ImportError as e:
            raise ConfigurationError(
                f"TableStoreExcel({os.fspath(path)!r}) needs the openpyxl package: pip install openpyxl"
            ) from e
        super().__init__(path, primary_schema, data_sql_schema, name)
        self.sheet_name = sheet_name

    def _load(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.path):
            return []
        raw = pd.read_excel(self.path, sheet_name=self.sheet_name, dtype=object, engine="openpyxl")
        return self._checked_records(raw)

    def _dump(self, records: list[dict[str, Any]]) -> bytes:
        names = [c.name for c in self._schema]
        buf = io.BytesIO()
        pd.DataFrame.from_records(records, columns=names).to_excel(
            buf, index=False, sheet_name=self.sheet_name, engine="openpyxl"
        )
        return buf.getvalue()
