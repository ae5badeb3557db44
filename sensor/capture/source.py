"""Several capture files and directories read as one time-ordered stream of batches.

Ordering: files are sorted by the timestamp of their first packet (ties and empty files by path),
then read one after another. Packets of files that overlap in time are *not* interleaved; the
overlap is reported once in ``warnings`` (the flow table tolerates modest disorder; a k-way merge
would cost a batch-level heap and mixed-source batches for a case rotating captures do not have).

A directory is expanded recursively to the files whose *content* is pcap, pcapng or gzip of
either; other files are skipped and counted in ``warnings``. Explicitly named files must be
captures (``CaptureError`` otherwise). Every file is opened once up front to read its first
timestamp, so bad input is reported before any packet is produced.

A live source (libpcap) will offer the same face: iterate for ``PacketBatch``; read ``warnings``,
``records``, ``bytes``, ``truncated``; ``linktype`` of the latest batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator

from sensor.capture.batch import CaptureError, PacketBatch
from sensor.capture.reader import DEFAULT_BATCH, CaptureReader, is_capture_file

_PROBE_READ = 256 << 10  # the first-timestamp probe needs only the start of each file


def expand_paths(paths: Iterable[str | os.PathLike]) -> tuple[list[str], list[str]]:
    """(capture files, warnings): directories walked in sorted order, files kept as given."""
    files: list[str] = []
    warnings: list[str] = []
    for p in paths:
        p = os.fspath(p)
        if not os.path.isdir(p):
            if not os.path.exists(p):
                raise CaptureError(f"{p}: no such file or directory")
            files.append(p)
            continue
        skipped = 0
        for root, dirs, names in os.walk(p):
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(root, name)
                if os.path.isfile(full) and is_capture_file(full):
                    files.append(full)
                else:
                    skipped += 1
        if skipped:
            warnings.append(f"{p}: {skipped} non-capture files skipped")
    return files, warnings


def first_timestamp(path: str) -> float:
    """Time of the first packet, +inf for a capture without packets. Raises CaptureError."""
    reader = CaptureReader(path, batch_size=1, read_size=_PROBE_READ)
    try:
        batch = next(reader, None)
        return batch.ts[0] if batch is not None else math.inf
    finally:
        reader.close()


class CaptureSource:
    """Time-ordered batches from files and directories, with merged counters and warnings.

    Example::

        >>> src = open_captures(["pcaps/"])                     # doctest: +SKIP
        >>> for batch in src: decode(batch.linktype, batch)     # doctest: +SKIP
        >>> src.records, src.warnings                           # doctest: +SKIP
    """

    def __init__(self, paths: Iterable[str | os.PathLike], batch_size: int = DEFAULT_BATCH) -> None:
        self.batch_size = batch_size
        files, self.warnings = expand_paths(paths)
        if not files:
            raise CaptureError("no capture files found")
        starts = [(first_timestamp(f), f) for f in files]
        starts.sort()
        self.files: list[str] = [f for _, f in starts]
        self._starts = [t for t, _ in starts]
        self.records = 0
        self.bytes = 0
        self.truncated = 0
        self.linktype: int | None = None
        self.source: str | None = None  # file being read
        self._gen = self._run()

    def _run(self) -> Iterator[PacketBatch]:
        prev_end, prev_file = -math.inf, ""
        for start, path in zip(self._starts, self.files):
            if start < prev_end:
                self.warnings.append(f"{path}: starts {prev_end - start:.3f}s before the end of {prev_file}; "
                                     "files overlap in time and are read one after the other")
            reader = CaptureReader(path, self.batch_size)
            self.source = path
            base_records, base_bytes = self.records, self.bytes
            try:
                for batch in reader:
                    # The reader counts per batch; mirror its totals (no per-packet work here).
                    self.linktype = batch.linktype
                    self.records = base_records + reader.records
                    self.bytes = base_bytes + reader.bytes
                    if batch.ts:
                        prev_end = max(prev_end, batch.ts[-1])
                    yield batch
            finally:
                reader.close()
                self.records = base_records + reader.records
                self.bytes = base_bytes + reader.bytes
                self.truncated += reader.truncated
                self.warnings.extend(reader.warnings)
            prev_file = path

    def __iter__(self) -> CaptureSource:
        return self

    def __next__(self) -> PacketBatch:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()  # type: ignore[attr-defined]


def open_captures(paths: Iterable[str | os.PathLike], batch_size: int = DEFAULT_BATCH) -> CaptureSource:
    """Read several files and/or directories as one time-ordered iterator of ``PacketBatch``."""
    return CaptureSource(paths, batch_size)
