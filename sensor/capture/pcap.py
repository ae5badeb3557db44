"""Classic libpcap files: 24-byte file header, then 16-byte record headers + frame bytes.

Magic ``a1b2c3d4`` (microsecond) or ``a1b23c4d`` (nanosecond), written in either byte order.
This is the hot path: records are parsed with one precompiled ``unpack_from`` each and frames are
``memoryview`` slices of a multi-MiB block, so there is one read() per block, not per packet.

With the compiled helper (``sensor._fast``) records are not even sliced: a batch is a ``PcapBlock``,
the read block plus where its records start and how many there are. The pipeline hands the block
to the compiled loop as it is; ``ts``/``frames``/``wirelen`` are built only if someone asks. Such a
batch never spans two read blocks, so a batch can end early (``len`` < batch size) at a block edge.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator
from typing import Protocol

from sensor import _fast
from sensor.capture.batch import PacketBatch
from sensor.capture.stream import READ_SIZE, BlockStream

FILE_HEADER_LEN = 24
RECORD_HEADER_LEN = 16
# magic(4) version_major(2) version_minor(2) thiszone(4) sigfigs(4) snaplen(4) linktype(4)
_FILE_HDR = {"<": struct.Struct("<IHHiIII"), ">": struct.Struct(">IHHiIII")}
# ts_sec(4) ts_frac(4) incl_len(4) orig_len(4)
_REC_HDR = {"<": struct.Struct("<IIII"), ">": struct.Struct(">IIII")}

# First four bytes on disk → (byte order, fraction units per second).
MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}

STANDARD_MAX_CAPLEN = 262_144  # libpcap/Wireshark's largest ordinary snaplen
HARD_MAX_CAPLEN = 16 << 20  # never believe a record larger than this, whatever the header says
_LT_MASK = 0x03FF_FFFF  # upper bits of the linktype field carry FCS-length flags (LT_LINKTYPE)


class Stats(Protocol):
    records: int
    bytes: int
    truncated: int

    def warn(self, message: str) -> None: ...


def parse_header(head: bytes) -> tuple[str, int, int, int] | None:
    """(byte order, fraction units/s, snaplen, linktype) of a classic pcap header, or None."""
    magic = MAGICS.get(bytes(head[:4]))
    if magic is None or len(head) < FILE_HEADER_LEN:
        return None
    order, units = magic
    _, _, _, _, _, snaplen, linktype = _FILE_HDR[order].unpack_from(head, 0)
    return order, units, snaplen, linktype & _LT_MASK


def max_caplen(snaplen: int) -> int:
    return max(STANDARD_MAX_CAPLEN, min(snaplen, HARD_MAX_CAPLEN))


class PcapBlock(PacketBatch):
    """A batch of ``count`` complete records lying in ``block`` from offset ``start``.

    ``swapped``: the file's byte order is not the host's. ``ts``, ``frames`` and ``wirelen`` are
    built on first access (the compiled pipeline never asks). ``nbytes``: captured bytes.

    >>> hdr = struct.pack("=IIII", 5, 500_000, 3, 60)
    >>> b = PcapBlock(1, hdr + b"abc", 0, 1, False, 1_000_000, "x.pcap", 3)
    >>> len(b), b.ts, [bytes(f) for f in b.frames], b.wirelen
    (1, [5.5], [b'abc'], [60])
    """

    __slots__ = ("block", "start", "count", "swapped", "units", "nbytes", "_cols", "_ts")

    def __init__(self, linktype: int, block: bytes, start: int, count: int, swapped: bool, units: int,
                 source: str, nbytes: int) -> None:
        self.linktype = linktype
        self.source = source
        self.block = block
        self.start = start
        self.count = count
        self.swapped = swapped
        self.units = units
        self.nbytes = nbytes
        self._cols: tuple[list, list, list] | None = None
        self._ts: list[float] | None = None

    def _columns(self) -> tuple[list, list, list]:
        if self._cols is None:
            cols = _fast.impl.parse_pcap(self.block, self.start, self.count, self.swapped, float(self.units))
            if self._ts is not None:  # one list object per batch, whichever was asked first
                cols = (self._ts, cols[1], cols[2])
            self._cols = cols
        return self._cols

    @property
    def ts(self) -> list[float]:  # type: ignore[override]
        # Sources read only the timestamps (file ordering): no frame objects for that.
        if self._cols is not None:
            return self._cols[0]
        if self._ts is None:
            self._ts = _fast.impl.pcap_ts(self.block, self.start, self.count, self.swapped, float(self.units))
        return self._ts

    @property
    def frames(self) -> list:  # type: ignore[override]
        return self._columns()[1]

    @property
    def wirelen(self) -> list[int]:  # type: ignore[override]
        return self._columns()[2]

    def captured_bytes(self) -> int:
        return self.nbytes

    def __len__(self) -> int:
        return self.count


def read_records(stats: Stats, stream: BlockStream, buf: bytes, order: str, units: int, snaplen: int,
                 linktype: int, source: str, batch_size: int,
                 read_size: int = READ_SIZE) -> Iterator[PacketBatch]:
    """Yield batches from ``buf`` (starting after the file header) and the rest of ``stream``."""
    if _fast.COMPILED:
        yield from _read_blocks(stats, stream, buf, order, units, snaplen, linktype, source, batch_size,
                                read_size)
        return
    unpack = _REC_HDR[order].unpack_from
    limit = max_caplen(snaplen)
    mv = memoryview(buf)
    pos, blen = FILE_HEADER_LEN, len(buf)
    ts: list[float] = []
    frames: list = []
    wire: list[int] = []
    # Bound methods as locals: this loop runs once per packet.
    ts_add, fr_add, wl_add = ts.append, frames.append, wire.append
    n = 0
    nbytes = 0
    while True:
        if blen - pos < RECORD_HEADER_LEN:
            buf, mv, pos, blen = _refill(stream, buf, pos, RECORD_HEADER_LEN, read_size)
            if blen < RECORD_HEADER_LEN:
                if blen:
                    stats.truncated += 1
                    stats.warn(f"truncated: file ends inside a record header ({blen} of 16 bytes)")
                break
        sec, frac, incl, orig = unpack(buf, pos)
        start = pos + RECORD_HEADER_LEN
        end = start + incl
        if end > blen:
            if incl > limit:  # checked before reading on: a bogus caplen must not size a read
                stats.truncated += 1
                stats.warn(f"corrupt record after {stats.records + n} packets: caplen {incl} > {limit}; stopped")
                break
            buf, mv, pos, blen = _refill(stream, buf, pos, RECORD_HEADER_LEN + incl, read_size)
            start = pos + RECORD_HEADER_LEN
            end = start + incl
            if end > blen:
                stats.truncated += 1
                stats.warn(f"truncated: file ends inside a record ({blen - RECORD_HEADER_LEN} of {incl} bytes)")
                break
        elif incl > limit:
            stats.truncated += 1
            stats.warn(f"corrupt record after {stats.records + n} packets: caplen {incl} > {limit}; stopped")
            break
        ts_add(sec + frac / units)
        fr_add(mv[start:end])
        wl_add(orig)
        nbytes += incl
        pos = end
        n += 1
        if n == batch_size:
            stats.records += n
            stats.bytes += nbytes
            yield PacketBatch(linktype, ts, frames, wire, source)
            ts, frames, wire = [], [], []
            ts_add, fr_add, wl_add = ts.append, frames.append, wire.append
            n = nbytes = 0
    if stream.error:
        stats.warn(stream.error)
        if not stats.truncated:
            stats.truncated += 1
    if n:
        stats.records += n
        stats.bytes += nbytes
        yield PacketBatch(linktype, ts, frames, wire, source)


def _read_blocks(stats: Stats, stream: BlockStream, buf: bytes, order: str, units: int, snaplen: int,
                 linktype: int, source: str, batch_size: int,
                 read_size: int = READ_SIZE) -> Iterator[PcapBlock]:
    """``read_records`` for the compiled path: records are found by ``scan_pcap``, not sliced.

    Same counters and warnings, word for word, as the per-record loop.
    """
    scan = _fast.impl.scan_pcap
    unpack = _REC_HDR[order].unpack_from
    swapped = (order == ">") == (sys.byteorder == "little")
    limit = max_caplen(snaplen)
    pos = FILE_HEADER_LEN
    while True:
        end, n, nbytes, status = scan(buf, pos, swapped, limit, batch_size)
        if n:
            stats.records += n
            stats.bytes += nbytes
            yield PcapBlock(linktype, buf, pos, n, swapped, units, source, nbytes)
            pos = end
        if status == 0:
            continue
        if status == 2:
            incl = unpack(buf, pos)[2]
            stats.truncated += 1
            stats.warn(f"corrupt record after {stats.records} packets: caplen {incl} > {limit}; stopped")
            break
        # The next record is not complete in this block. It alone is completed in a small buffer
        # of its own; the next block is used as read (no copy of megabytes per block).
        tail = buf[pos:]
        more = stream.read(read_size)
        if not more:
            if len(tail) >= RECORD_HEADER_LEN:
                incl = unpack(tail, 0)[2]
                stats.truncated += 1
                stats.warn(f"truncated: file ends inside a record ({len(tail) - RECORD_HEADER_LEN} of {incl} bytes)")
            elif tail:
                stats.truncated += 1
                stats.warn(f"truncated: file ends inside a record header ({len(tail)} of 16 bytes)")
            break
        take = _straddle(tail, more, unpack, limit)
        if take < 0:  # short read or a corrupt header: scan the joined bytes, as the slow loop does
            buf, pos = tail + more, 0
            continue
        if take:
            rec = tail + more[:take]
            stats.records += 1
            stats.bytes += len(rec) - RECORD_HEADER_LEN
            yield PcapBlock(linktype, rec, 0, 1, swapped, units, source, len(rec) - RECORD_HEADER_LEN)
        buf, pos = more, take
    if stream.error:
        stats.warn(stream.error)
        if not stats.truncated:
            stats.truncated += 1


def _straddle(tail: bytes, more: bytes, unpack, limit: int) -> int:
    """Bytes of ``more`` that complete the record starting in ``tail`` (0: ``tail`` is empty).

    -1 when ``more`` is too short or the header announces a corrupt length (the caller then scans
    ``tail + more``, which reports it exactly like the per-record loop).
    """
    if not tail:
        return 0
    have = len(tail)
    if have < RECORD_HEADER_LEN:
        if len(more) < RECORD_HEADER_LEN - have:
            return -1
        incl = unpack(tail + more[:RECORD_HEADER_LEN - have], 0)[2]
    else:
        incl = unpack(tail, 0)[2]
    take = RECORD_HEADER_LEN + incl - have
    if incl > limit or take > len(more):
        return -1
    return take


def _refill(stream: BlockStream, buf: bytes, pos: int, need: int,
            read_size: int = READ_SIZE) -> tuple[bytes, memoryview, int, int]:
    """New block = unread tail of the old one + reads until ``need`` bytes are there (or the end).

    Slices handed out earlier keep the old block alive; it is never modified.
    """
    tail = buf[pos:]
    parts = [tail]
    have = len(tail)
    while have < need:
        more = stream.read(max(read_size, need - have))
        if not more:
            break
        parts.append(more)
        have += len(more)
    buf = b"".join(parts) if len(parts) > 1 else tail
    return buf, memoryview(buf), 0, len(buf)
