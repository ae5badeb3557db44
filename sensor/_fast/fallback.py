"""Pure-Python reference of ``sensor._fast._fastpath`` (same API, same results, slower).

The compiled FastTable counts the packets of registered flows without calling Python; this
reference registers nothing, so every IP packet goes to ``FlowTable._one`` in capture order —
which is, by definition, the behaviour the compiled loop must reproduce (tests/test_fastpath*.py).
"""

from __future__ import annotations

import struct

from sensor.decode import l2l4 as _l2l4

_REC = {False: struct.Struct("=IIII"), True: struct.Struct(">IIII" if struct.pack("=I", 1)[0] else "<IIII")}


def scan_pcap(buf, pos: int, swapped: bool, limit: int, max_records: int) -> tuple[int, int, int, int]:
    """Walk classic-pcap record headers in ``buf`` from ``pos``.

    Returns ``(pos, count, captured_bytes, status)``: ``count`` complete records end at ``pos``;
    status 0 = ``max_records`` found, 1 = the next record is not complete in ``buf``, 2 = the record
    at ``pos`` claims more than ``limit`` captured bytes (corrupt).

    >>> scan_pcap(b"\\x00" * 16, 0, False, 100, 10)
    (16, 1, 0, 1)
    """
    unpack = _REC[bool(swapped)].unpack_from
    blen = len(buf)
    n = nbytes = 0
    status = 0
    while n < max_records:
        if blen - pos < 16:
            status = 1
            break
        incl = unpack(buf, pos)[2]
        if incl > limit:
            status = 2
            break
        if incl > blen - pos - 16:
            status = 1
            break
        pos += 16 + incl
        nbytes += incl
        n += 1
    return pos, n, nbytes, status


def parse_pcap(buf, start: int, count: int, swapped: bool, units: float) -> tuple[list, list, list]:
    """``count`` records from ``start`` as (timestamps, frame memoryviews, wire lengths)."""
    unpack = _REC[bool(swapped)].unpack_from
    units = int(units)
    mv = memoryview(buf)
    ts: list[float] = []
    frames: list = []
    wire: list[int] = []
    pos = start
    for _ in range(count):
        if pos + 16 > len(buf):
            raise ValueError("pcap record outside the buffer")
        sec, frac, incl, orig = unpack(buf, pos)
        if pos + 16 + incl > len(buf):
            raise ValueError("pcap record outside the buffer")
        ts.append(sec + frac / units)
        frames.append(mv[pos + 16:pos + 16 + incl])
        wire.append(orig)
        pos += 16 + incl
    return ts, frames, wire


def pcap_ts(buf, start: int, count: int, swapped: bool, units: float) -> list[float]:
    """Only the timestamps of ``parse_pcap``."""
    return parse_pcap(buf, start, count, swapped, units)[0]


def decode(linktype: int, ts, frames, bad: dict) -> list[tuple]:
    """``decode_batch`` with the reasons counted into ``bad`` (no "decode." prefix)."""
    return _l2l4.decode_batch_py(linktype, ts, frames, bad)


class FastTable:
    """Reference driver: decode, then every IP packet to ``FlowTable._one`` in order."""

    def __init__(self, table) -> None:
        self._one = table._one

    def process_pcap(self, buf, start: int, count: int, swapped: bool, units: float, linktype: int,
                     bad: dict) -> tuple[int, int, float, float, float]:
        ts, frames, wire = parse_pcap(buf, start, count, swapped, units)
        ip, last_ip = self.process_frames(linktype, ts, frames, bad)
        return (ip, sum(wire), ts[0] if ts else 0.0, ts[-1] if ts else 0.0,
                last_ip if last_ip is not None else 0.0)

    def process_frames(self, linktype: int, ts, frames, bad: dict) -> tuple[int, float | None]:
        packets = decode(linktype, ts, frames, bad)
        one = self._one
        for p in packets:
            one(p)
        return len(packets), (packets[-1][0] if packets else None)

    def track(self, flow) -> None:
        """Nothing is registered here: Python keeps every flow current itself."""

    def release(self, flow) -> None:
        flow.fast = -2

    def merge_all(self) -> None:
        """Nothing to write back."""

    def stats(self) -> dict:
        return {"flows": 0, "fast_packets": 0, "delivered_packets": 0, "slow_packets": 0}

    def __len__(self) -> int:
        return 0
