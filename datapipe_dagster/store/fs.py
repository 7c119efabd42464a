"""Where a file-folder table's files live: the local disk, or any fsspec filesystem (``memory://``,
``s3://``, ...) named by a URL.

Local paths (and ``file://`` URLs) use the operating system directly: atomic writes through a temporary
file and ``os.replace``, listing with ``os.scandir``. Other protocols go through fsspec; a write there is
one ``pipe_file`` call, as atomic as that filesystem makes it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

from datapipe_dagster.errors import ConfigurationError

TMP_PREFIX = ".datapipe-tmp-"


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


class LocalFS:
    """The local disk."""

    protocol = "file"
    local = True

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def write_bytes(self, path: str, content: bytes) -> None:
        atomic_write(path, content)

    def remove(self, path: str) -> None:
        os.unlink(path)

    def walk(self, root: str) -> Iterator[tuple[str, int, int]]:
        """Every file under ``root``: path, size, mtime in ns (temporary files skipped)."""
        stack = [root]
        while stack:
            folder = stack.pop()
            with os.scandir(folder) as it:
                for e in it:
                    if e.name.startswith(TMP_PREFIX):
                        continue
                    path = e.path if folder != "." else e.name
                    if e.is_dir(follow_symlinks=False):
                        stack.append(path)
                        continue
                    st = e.stat()
                    yield path, st.st_size, st.st_mtime_ns


class FsspecFS:
    """Any fsspec filesystem; paths are the filesystem's own (protocol stripped)."""

    local = False

    def __init__(self, fs: Any, protocol: str):
        self.fs = fs
        self.protocol = protocol

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(path))

    def isdir(self, path: str) -> bool:
        return bool(self.fs.isdir(path))

    def read_bytes(self, path: str) -> bytes:
        return bytes(self.fs.cat_file(path))

    def write_bytes(self, path: str, content: bytes) -> None:
        parent = path.rsplit("/", 1)[0]
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        self.fs.pipe_file(path, content)

    def remove(self, path: str) -> None:
        self.fs.rm_file(path)

    def walk(self, root: str) -> Iterator[tuple[str, int, int]]:
        for path, info in self.fs.find(root, detail=True).items():
            if info.get("type") == "directory" or path.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
                continue
            yield path, int(info.get("size") or 0), _mtime_ns(info)


def _mtime_ns(info: dict[str, Any]) -> int:
    """A modification time in ns from an fsspec info record (0 when the filesystem gives none)."""
    for k in ("mtime", "LastModified", "last_modified", "updated", "created"):
        v = info.get(k)
        if v is None:
            continue
        if hasattr(v, "timestamp"):
            return int(v.timestamp() * 1e9)
        try:
            return int(float(v) * 1e9)
        except (TypeError, ValueError):
            continue
    return 0


def filesystem_of(pattern: str, table: str) -> tuple[LocalFS | FsspecFS, str]:
    """The filesystem a pattern names and the pattern's path on it.

    Raises:
        ConfigurationError: a URL whose protocol fsspec does not know (names the table and protocol).
    """
    if "://" not in pattern:
        return LocalFS(), pattern
    protocol, rest = pattern.split("://", 1)
    if protocol == "file":
        return LocalFS(), rest
    try:
        import fsspec

        fs = fsspec.filesystem(protocol)
    except (ImportError, ValueError) as e:
        raise ConfigurationError(
            f"table {table!r}: no fsspec filesystem for {protocol!r} URLs ({e}); install the fsspec "
            f"package that provides it (e.g. s3fs for s3://)"
        ) from e
    return FsspecFS(fs, protocol), fs._strip_protocol(pattern)
