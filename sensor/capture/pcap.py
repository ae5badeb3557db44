"""Classic libpcap files: 24-byte file header, then 16-byte record headers + frame bytes.

Magic ``a1b2c3d4`` (microsecond) or ``a1b23c4d`` (nanosecond), written in either byte order.
This is the hot path: records are parsed with one precompiled ``unpack_from`` each and frames are
``memoryview`` slices of a multi-MiB block, so there is one read() per block, not per packet.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Protocol

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


def read_records(stats: Stats, stream: BlockStream, buf: bytes, order: str, units: int, snaplen: int,
                 linktype: int, source: str, batch_size: int,
                 read_size: int = READ_SIZE) -> Iterator[PacketBatch]:
    """Yield batches from ``buf`` (starting after the file header) and the rest of ``stream``."""
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
