"""What every capture source hands out: batches of frames with one link type, and its one error type."""

from __future__ import annotations

from dataclasses import dataclass


class CaptureError(Exception):
    """The input cannot be read as a capture at all (one line, no traceback needed)."""


@dataclass(slots=True)
class PacketBatch:
    """Up to ``batch_size`` captured frames, all of one link type, in capture order.

    ``ts`` are epoch seconds; ``frames`` are the captured bytes (``memoryview`` slices of a read
    block for file sources: valid as long as the batch is referenced, never mutated);
    ``wirelen`` is each frame's original length on the wire (> ``len(frame)`` when snapped).

    Example::

        >>> b = PacketBatch(1, [1.5], [b"\\x00" * 60], [60], "x.pcap")
        >>> len(b), b.linktype
        (1, 1)
    """

    linktype: int
    ts: list[float]
    frames: list[memoryview | bytes]
    wirelen: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.ts)

    def captured_bytes(self) -> int:
        return sum(len(f) for f in self.frames)

    def last_ts(self) -> float:
        return self.ts[-1]
