"""Large-block byte input from a plain or gzip-compressed file (detected by magic, not extension).

Readers pull multi-MiB blocks and slice records out of them, so the number of read() calls is
independent of the number of packets. A damaged gzip member ends the stream with a warning instead
of an exception: everything decoded before the damage is still delivered.
"""

from __future__ import annotations

import gzip
import zlib
from typing import BinaryIO

READ_SIZE = 4 << 20  # 4 MiB per read: a few hundred to tens of thousands of records
GZIP_MAGIC = b"\x1f\x8b"


class BlockStream:
    """Sequential reader; ``read(n)`` returns up to ``n`` bytes, ``b""`` at the end (or on damage)."""

    __slots__ = ("_f", "_raw", "compressed", "error", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self.error: str | None = None  # set when the stream ended because of damage
        self._raw: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by close()
        magic = self._raw.read(2)
        self._raw.seek(0)
        self.compressed = magic == GZIP_MAGIC
        # gzip.GzipFile decompresses incrementally: memory stays bounded whatever the file size.
        self._f: BinaryIO = gzip.GzipFile(fileobj=self._raw, mode="rb") if self.compressed else self._raw

    def read(self, n: int) -> bytes:
        if self.error is not None:
            return b""
        try:
            return self._f.read(n)
        except (EOFError, OSError, zlib.error) as exc:  # truncated or corrupt gzip, I/O error
            self.error = _describe(exc, self.compressed)
            return b""

    def close(self) -> None:
        try:
            if self._f is not self._raw:
                self._f.close()
        finally:
            self._raw.close()


def _describe(exc: Exception, compressed: bool) -> str:
    if isinstance(exc, EOFError):
        return "gzip stream ends early (truncated .gz)"
    if compressed and isinstance(exc, (zlib.error, gzip.BadGzipFile)):
        return "corrupt gzip data"
    return f"read error ({type(exc).__name__}: {getattr(exc, 'strerror', None) or 'I/O'})"
