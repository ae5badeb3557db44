"""pcapng files: a sequence of blocks ``type(4) total_length(4) body total_length(4)``.

Handled: Section Header (either byte order; a new section resets the interfaces), Interface
Description (link type, snaplen, ``if_tsresol``, ``if_tsoffset``), Enhanced Packet, Simple Packet
(snaplen of interface 0, no timestamp: the previous packet's time is reused) and the obsolete
Packet block. Every other block (name resolution, statistics, decryption secrets, custom…) is
skipped by length. Interfaces with a link type the decoder does not know are skipped with one
warning each; a batch never mixes link types.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from sensor.capture import linktypes
from sensor.capture.batch import PacketBatch
from sensor.capture.pcap import Stats, _refill
from sensor.capture.stream import READ_SIZE, BlockStream

SHB = 0x0A0D0D0A
IDB = 0x00000001
OPB = 0x00000002  # obsolete Packet Block
SPB = 0x00000003
EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
SHB_MAGIC = b"\x0a\x0d\x0d\x0a"

MAX_BLOCK = (16 << 20) + (64 << 10)  # larger blocks are corrupt (Wireshark's limit is similar)

OPT_ENDOFOPT = 0
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14

_BLOCK_HDR = {o: struct.Struct(o + "II") for o in "<>"}  # type, total length
_U32 = {o: struct.Struct(o + "I") for o in "<>"}
_IDB = {o: struct.Struct(o + "HHI") for o in "<>"}  # linktype, reserved, snaplen
_EPB = {o: struct.Struct(o + "IIIII") for o in "<>"}  # interface, ts high, ts low, caplen, origlen
# block type, total length, then the EPB fields: one unpack per packet on the fast path
_EPB_FAST = {o: struct.Struct(o + "IIIIIII") for o in "<>"}
_OPB = {o: struct.Struct(o + "HHIIII") for o in "<>"}  # interface, drops, ts high, ts low, caplen, len
_OPT = {o: struct.Struct(o + "HH") for o in "<>"}  # option code, length
_I64 = {o: struct.Struct(o + "q") for o in "<>"}

# One interface: (linktype or None when unsupported, ticks per second, offset seconds, snaplen)
Interface = tuple[int | None, int, int, int]


def section_order(head: bytes) -> str | None:
    """Byte order of a Section Header Block starting at ``head[0]``, or None if it is not one."""
    if bytes(head[:4]) != SHB_MAGIC or len(head) < 12:
        return None
    bom = bytes(head[8:12])
    if bom == b"\x4d\x3c\x2b\x1a":
        return "<"
    if bom == b"\x1a\x2b\x3c\x4d":
        return ">"
    return None


def parse_idb(buf: bytes, pos: int, blen: int, order: str) -> tuple[int, int, int, int]:
    """(raw linktype, snaplen, ticks per second, offset seconds) of an IDB at ``pos``."""
    linktype, _, snaplen = _IDB[order].unpack_from(buf, pos + 8)
    units, offset = 1_000_000, 0
    opt = _OPT[order]
    p, end = pos + 16, pos + blen - 4
    while p + 4 <= end:
        code, length = opt.unpack_from(buf, p)
        if code == OPT_ENDOFOPT:
            break
        value = p + 4
        if value + length > end:
            break
        if code == OPT_IF_TSRESOL and length >= 1:
            r = buf[value]
            exp = r & 0x7F
            # MSB clear: 10^-exp seconds; set: 2^-exp. Exponents beyond 2^-63/10^-18 are nonsense.
            if r & 0x80:
                units = 1 << min(exp, 63)
            else:
                units = 10 ** min(exp, 18)
        elif code == OPT_IF_TSOFFSET and length >= 8:
            offset = _I64[order].unpack_from(buf, value)[0]
        p = value + ((length + 3) & ~3)
    return linktype, snaplen, units, offset


def prescan_linktypes(buf: bytes, order: str) -> list[int]:
    """Raw link types of the IDBs that precede the first packet in ``buf`` (the file's first block)."""
    found: list[int] = []
    hdr = _BLOCK_HDR[order]
    pos, n = 0, len(buf)
    while pos + 12 <= n:
        btype, blen = hdr.unpack_from(buf, pos)
        if pos and btype == SHB:
            break
        if blen < 12 or blen % 4 or blen > MAX_BLOCK or pos + blen > n:
            break
        if btype in (EPB, SPB, OPB):
            break
        if btype == IDB and blen >= 20:
            found.append(parse_idb(buf, pos, blen, order)[0])
        pos += blen
    return found


def check_linktypes(source: str, buf: bytes, order: str) -> None:
    """Raise CaptureError when every interface declared up front has an unsupported link type."""
    found = prescan_linktypes(buf, order)
    if found and not any(linktypes.is_supported(lt) for lt in found):
        raise linktypes.unsupported_error(source, found[0])


def read_blocks(stats: Stats, stream: BlockStream, buf: bytes, order: str, source: str, batch_size: int,
                read_size: int = READ_SIZE) -> Iterator[PacketBatch]:
    """Yield batches from ``buf`` (starting at the first SHB) and the rest of ``stream``."""
    hdr = _BLOCK_HDR[order].unpack_from
    u32 = _U32[order].unpack_from
    epb = _EPB[order].unpack_from
    fast = _EPB_FAST[order].unpack_from
    ifaces: list[Interface] = []
    warned: set[int] = set()
    mv = memoryview(buf)
    pos, blen_buf = 0, len(buf)
    ts: list[float] = []
    frames: list = []
    wire: list[int] = []
    ts_add, fr_add, wl_add = ts.append, frames.append, wire.append  # bound once per batch, not per packet
    cur_lt = -1
    last_ts = 0.0
    nbytes = 0
    skipped = 0

    def corrupt(why: str) -> None:
        stats.truncated += 1
        stats.warn(f"corrupt block after {stats.records + len(ts)} packets: {why}; stopped")

    while True:
        # Fast path: a whole, well-formed EPB in the buffer (nearly every block of a real file).
        if blen_buf - pos >= 28:
            btype, blen, ifid, hi, lo, caplen, origlen = fast(buf, pos)
            fast_ok = (btype == EPB and caplen + 32 <= blen <= blen_buf - pos and not blen & 3
                       and ifid < len(ifaces) and u32(buf, pos + blen - 4)[0] == blen)
        else:
            fast_ok = False
        if fast_ok:
            lt, units, offset, _ = ifaces[ifid]
            last_ts = ((hi << 32) | lo) / units + offset if offset else ((hi << 32) | lo) / units
            data = pos + 28
        else:
            if blen_buf - pos < 12:
                buf, mv, pos, blen_buf = _refill(stream, buf, pos, 12, read_size)
                if blen_buf < 12:
                    if blen_buf:
                        stats.truncated += 1
                        stats.warn(f"truncated: file ends inside a block header ({blen_buf} bytes)")
                    break
            btype, blen = hdr(buf, pos)
            if btype == SHB:
                # The byte order may change at every section: read it before trusting the length.
                new_order = section_order(buf[pos:pos + 12])
                if new_order is None:
                    corrupt("section header without byte-order magic")
                    break
                if new_order != order:
                    order = new_order
                    hdr, u32, epb = _BLOCK_HDR[order].unpack_from, _U32[order].unpack_from, _EPB[order].unpack_from
                    fast = _EPB_FAST[order].unpack_from
                    btype, blen = hdr(buf, pos)
                ifaces = []
            if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                corrupt(f"block type 0x{btype:08x} with length {blen}")
                break
            if blen > blen_buf - pos:
                buf, mv, pos, blen_buf = _refill(stream, buf, pos, blen, read_size)
                if blen > blen_buf:
                    stats.truncated += 1
                    stats.warn(f"truncated: file ends inside a block ({blen_buf} of {blen} bytes)")
                    break
            if u32(buf, pos + blen - 4)[0] != blen:
                corrupt(f"block type 0x{btype:08x}: trailing length differs")
                break
            if btype == EPB:
                if blen < 32:
                    corrupt(f"enhanced packet block of length {blen}")
                    break
                ifid, hi, lo, caplen, origlen = epb(buf, pos + 8)
                if ifid >= len(ifaces):
                    corrupt(f"packet on undeclared interface {ifid}")
                    break
                lt, units, offset, _ = ifaces[ifid]
                data = pos + 28
                if caplen > blen - 32:
                    corrupt(f"caplen {caplen} exceeds its block")
                    break
                last_ts = ((hi << 32) | lo) / units + offset if offset else ((hi << 32) | lo) / units
            elif btype == SPB:
                if not ifaces:
                    corrupt("simple packet block before any interface")
                    break
                lt, _, _, snaplen = ifaces[0]
                origlen = u32(buf, pos + 8)[0]
                caplen = min(origlen, blen - 16, snaplen or origlen)
                data = pos + 12
            elif btype == OPB:
                if blen < 32:
                    corrupt(f"packet block of length {blen}")
                    break
                ifid, _, hi, lo, caplen, origlen = _OPB[order].unpack_from(buf, pos + 8)
                if ifid >= len(ifaces) or caplen > blen - 32:
                    corrupt("bad obsolete packet block")
                    break
                lt, units, offset, _ = ifaces[ifid]
                data = pos + 28
                last_ts = ((hi << 32) | lo) / units + offset
            else:
                if btype == IDB:
                    if blen < 20:
                        corrupt(f"interface description block of length {blen}")
                        break
                    raw_lt, snaplen, units, offset = parse_idb(buf, pos, blen, order)
                    if linktypes.is_supported(raw_lt):
                        ifaces.append((linktypes.normalise(raw_lt), units, offset, snaplen))
                    else:
                        ifaces.append((None, units, offset, snaplen))
                        if raw_lt not in warned:
                            warned.add(raw_lt)
                            stats.warn(f"interface {len(ifaces) - 1}: {linktypes.describe(raw_lt)} not supported; "
                                       "its packets are skipped")
                pos += blen
                continue
        pos += blen
        if lt is None:
            skipped += 1
            continue
        if lt != cur_lt:
            if ts:
                stats.records += len(ts)
                stats.bytes += nbytes
                yield PacketBatch(cur_lt, ts, frames, wire, source)
                ts, frames, wire = [], [], []
                ts_add, fr_add, wl_add = ts.append, frames.append, wire.append
                nbytes = 0
            cur_lt = lt
        ts_add(last_ts)
        fr_add(mv[data:data + caplen])
        wl_add(origlen)
        nbytes += caplen
        if len(ts) == batch_size:
            stats.records += batch_size
            stats.bytes += nbytes
            yield PacketBatch(cur_lt, ts, frames, wire, source)
            ts, frames, wire = [], [], []
            ts_add, fr_add, wl_add = ts.append, frames.append, wire.append
            nbytes = 0
    if skipped:
        stats.warn(f"{skipped} packets on interfaces with unsupported link types skipped")
    if stream.error:
        stats.warn(stream.error)
        if not stats.truncated:
            stats.truncated += 1
    if ts:
        stats.records += len(ts)
        stats.bytes += nbytes
        yield PacketBatch(cur_lt, ts, frames, wire, source)

