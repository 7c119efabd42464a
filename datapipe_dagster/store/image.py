"""ImageFile: a folder of images as a table, one ``PIL.Image`` per file (needs Pillow: the ``image`` extra).

``TableStoreFiledir("images/{image_id}.(png|jpg)", ImageFile())`` reads every PNG or JPEG and writes new
ones as PNG. The content hash covers the decoded pixels, mode and size, so re-saving an identical
image changes nothing; a lossy format (JPEG) read back differs from what was written, so prefer a
lossless ``format`` for tables the pipeline writes.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import pandas as pd
import sqlalchemy as sa

from datapipe_dagster.errors import ConfigurationError, SchemaError
from datapipe_dagster.store.file_adapters import FileAdapter, _one_data_column

KIND = "datapipe/kind"
"""``Column.info`` key marking a column's values as images."""


def image_column(name: str = "image") -> sa.Column:
    """A column holding ``PIL.Image`` objects."""
    return sa.Column(name, sa.PickleType, info={KIND: "image"})


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as e:
        raise ConfigurationError(
            "ImageFile needs the Pillow package: pip install 'datapipe-dagster[image]'"
        ) from e
    return Image


class ImageFile(FileAdapter):
    """An image per file; its content is the one column ``image`` (a ``PIL.Image``).

    Args:
        format: the format new files are written in (a Pillow format name), default PNG.
        save_options: extra keyword arguments for ``Image.save`` (e.g. ``{"quality": 95}``).

    Raises:
        ConfigurationError: Pillow is not installed.
    """

    def __init__(self, format: str = "PNG", save_options: dict[str, Any] | None = None):  # noqa: A002 - Pillow's name
        self.image = _pil()
        self.format = format
        self.save_options = save_options or {}
        self.reads = 0

    def default_columns(self) -> list[sa.Column]:
        return [image_column()]

    def check_columns(self, table: str, columns: list[sa.Column]) -> None:
        _one_data_column(table, columns, "ImageFile")

    def loads(self, data: bytes, columns: list[str] | None) -> dict[str, Any]:
        img = self.image.open(io.BytesIO(data))
        img.load()
        return {(columns or ["image"])[0]: img}

    def dumps(self, row: dict[str, Any]) -> bytes:
        img = next(iter(row.values()))
        buf = io.BytesIO()
        img.save(buf, format=self.format, **self.save_options)
        return buf.getvalue()

    def hashable(self, df: pd.DataFrame, columns: list[str], table: str) -> pd.DataFrame:
        col = columns[0]
        out = df.copy()
        digests = []
        for pos, v in enumerate(df[col].tolist()):
            if not isinstance(v, self.image.Image):
                key = {c: df.iloc[pos][c] for c in df.columns if c != col}
                raise SchemaError(table, f"expected a PIL.Image, got {type(v).__name__}", col, key)
            digests.append(f"{v.mode}:{v.size[0]}x{v.size[1]}:{hashlib.sha256(v.tobytes()).hexdigest()}")
        out[col] = pd.Series(digests, index=df.index, dtype=object)
        return out
