"""TableStoreParquet: a Parquet file holding a whole table (needs pyarrow: the ``parquet`` extra).

Like the other whole-file stores, a write reads the file, applies the change and rewrites it atomically.
Parquet keeps column types, so integers, floats, booleans, times and bytes round-trip as such; JSON
columns are stored as JSON text.
"""

from __future__ import annotations

import io
import os
from typing import Any

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.errors import ConfigurationError, SchemaError
from datapipe_dagster.store.filetable import FileTableStore


class TableStoreParquet(FileTableStore):
    """A Parquet file holding a whole table.

    Args:
        path: the ``.parquet`` file.
        primary_schema: the key columns.
        data_sql_schema: all the columns (see ``FileTableStore``).
        name: the table's name in errors.

    Raises:
        ConfigurationError: pyarrow is not installed.
    """

    binary_ok = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        primary_schema: list[sa.Column] | None = None,
        data_sql_schema: list[sa.Column] | None = None,
        name: str | None = None,
    ):
        try:
            import pyarrow  # noqa: F401 - only checking that it is there
        except ImportError as e:
            raise ConfigurationError(
                f"TableStoreParquet({os.fspath(path)!r}) needs pyarrow: pip install 'datapipe-dagster[parquet]'"
            ) from e
        super().__init__(path, primary_schema, data_sql_schema, name)

    def _load(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.path):
            return []
        raw = pd.read_parquet(self.path, engine="pyarrow")
        return self._checked_records(raw)

    def _encode(self, df: pd.DataFrame) -> list[dict[str, Any]]:
        recs = super()._encode(df)
        # Times were encoded as ISO text for text formats; Parquet holds them natively.
        for col in self.get_schema():
            if isinstance(col.type, (sa.DateTime, sa.Date)):
                for r, v in zip(recs, df[col.name].tolist(), strict=True):
                    r[col.name] = None if v is None or v is pd.NaT or v != v else v
        return recs

    def _dump(self, records: list[dict[str, Any]]) -> bytes:
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = [c.name for c in self.get_schema()]
        columns = {n: [r[n] for r in records] for n in names}
        try:
            table = pa.table({n: pa.array(v, type=_arrow_type(c.type)) for (n, v), c in zip(columns.items(), self.get_schema(), strict=True)})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise SchemaError(self.name, f"cannot write Parquet file {self.path!r}: {e}") from e
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return buf.getvalue()


def _arrow_type(t: sa.types.TypeEngine) -> Any:
    import pyarrow as pa

    if isinstance(t, sa.Boolean):
        return pa.bool_()
    if isinstance(t, sa.Integer):
        return pa.int64()
    if isinstance(t, (sa.Float, sa.Numeric)):
        return pa.float64()
    if isinstance(t, sa.LargeBinary):
        return pa.binary()
    if isinstance(t, sa.DateTime):
        return pa.timestamp("us")
    if isinstance(t, sa.Date):
        return pa.date32()
    return pa.string()
