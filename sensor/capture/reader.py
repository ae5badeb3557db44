"""One capture file → batches: format sniffing (pcap, pcapng, gzip of either) and the reader object.

Errors are split the way an operator needs them: a file that cannot be a capture at all (not
pcap/pcapng, empty, unsupported link type) raises ``CaptureError`` *before* any packet is produced;
damage later in the file (truncation, corrupt records or blocks, bad gzip) ends the reader with a
line in ``warnings`` and everything decoded so far delivered. Nothing here loops without reading
and no allocation exceeds one block plus one bounded record.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Self

from sensor.capture import linktypes, pcap, pcapng
from sensor.capture.batch import CaptureError, PacketBatch
from sensor.capture.stream import READ_SIZE, BlockStream

DEFAULT_BATCH = 4096


class CaptureReader:
    """Iterator of ``PacketBatch`` over one file, with counters and warnings.

    Attributes: ``path``, ``format`` ("pcap" | "pcapng"), ``compressed`` (gzip), ``linktype``
    (of the first interface / the file header), ``records``, ``bytes`` (captured bytes handed out),
    ``truncated`` (damage incidents), ``warnings`` (one line each, prefixed with the path).

    Example::

        >>> r = open_capture("pcaps/sample.pcap")            # doctest: +SKIP
        >>> sum(len(b) for b in r), r.warnings               # doctest: +SKIP
        (1234, [])
    """

    def __init__(self, path: str | os.PathLike, batch_size: int = DEFAULT_BATCH, read_size: int = READ_SIZE):
        self.path = os.fspath(path)
        self.source = self.path
        self.batch_size = max(1, int(batch_size))
        self.records = 0
        self.bytes = 0
        self.truncated = 0
        self.warnings: list[str] = []
        self.format = ""
        self.linktype: int | None = None
        if os.path.isdir(self.path):
            raise CaptureError(f"{self.path}: is a directory (use open_captures)")
        try:
            stream = BlockStream(self.path)
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot open ({exc.strerror or type(exc).__name__})") from None
        self.compressed = stream.compressed
        self._stream = stream
        try:
            self._gen = self._start(stream, read_size)
        except BaseException:
            stream.close()
            raise

    def warn(self, message: str) -> None:
        self.warnings.append(f"{self.path}: {message}")

    def _start(self, stream: BlockStream, read_size: int) -> Iterator[PacketBatch]:
        first = stream.read(max(read_size, 64))  # room for any file header
        what = "gzip-compressed file" if self.compressed else "file"
        if not first:
            why = stream.error or "empty"
            raise CaptureError(f"{self.path}: {what} is not a pcap or pcapng capture ({why})")
        if first[:4] in pcap.MAGICS:
            header = pcap.parse_header(first)
            if header is None:
                raise CaptureError(f"{self.path}: pcap file header truncated ({len(first)} bytes)")
            order, units, snaplen, raw_lt = header
            if not linktypes.is_supported(raw_lt):
                raise linktypes.unsupported_error(self.path, raw_lt)
            self.format = "pcap"
            self.linktype = linktypes.normalise(raw_lt)
            gen = pcap.read_records(self, stream, first, order, units, snaplen, self.linktype, self.source,
                                    self.batch_size, read_size)
        elif first[:4] == pcapng.SHB_MAGIC:
            order = pcapng.section_order(first)
            if order is None:
                raise CaptureError(f"{self.path}: pcapng section header without a valid byte-order magic")
            pcapng.check_linktypes(self.path, first, order)
            lts = [lt for lt in pcapng.prescan_linktypes(first, order) if linktypes.is_supported(lt)]
            self.format = "pcapng"
            self.linktype = linktypes.normalise(lts[0]) if lts else None
            gen = pcapng.read_blocks(self, stream, first, order, self.source, self.batch_size, read_size)
        else:
            raise CaptureError(f"{self.path}: {what} is not a pcap or pcapng capture "
                               f"(starts with {first[:4].hex()})")
        return self._run(gen, stream)

    def _run(self, gen: Iterator[PacketBatch], stream: BlockStream) -> Iterator[PacketBatch]:
        try:
            yield from gen
        finally:
            stream.close()

    def __iter__(self) -> CaptureReader:
        return self

    def __next__(self) -> PacketBatch:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()  # type: ignore[attr-defined]
        self._stream.close()  # also when iteration never started (the generator's finally never ran)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_capture(path: str | os.PathLike, batch_size: int = DEFAULT_BATCH) -> CaptureReader:
    """Open one pcap/pcapng file (optionally gzip-compressed) and return an iterator of batches.

    Raises ``CaptureError`` (one line) at once when the file is not a readable capture.
    """
    return CaptureReader(path, batch_size)


def is_capture_file(path: str) -> bool:
    """True when the content (not the name) says pcap, pcapng or gzip-compressed pcap/pcapng."""
    try:
        stream = BlockStream(path)
    except OSError:
        return False
    try:
        head = stream.read(4)
    finally:
        stream.close()
    return head in pcap.MAGICS or head == pcapng.SHB_MAGIC
