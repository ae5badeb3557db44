"""DICOM upper-layer PDUs (PS3.8 §9.3): header table, sanity limits, item walking, resync scan.

Everything here works on ``bytes``/``bytearray``/``memoryview`` with precompiled structs and never
raises on hostile input: callers get ``None``/``False`` or an error name to count.

Example::

    >>> PDU_HEADER.unpack_from(b"\\x05\\x00\\x00\\x00\\x00\\x04")
    (5, 0, 4)
    >>> PDU_NAMES[5]
    'A-RELEASE-RQ'
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator

# type(1) reserved(1) length(4, big endian)
PDU_HEADER = struct.Struct(">BBI")
# PDV item: length(4, BE, counts ctx id + control + data) context id(1) control header(1)
PDV_HEADER = struct.Struct(">IBB")
# Variable item header inside A-ASSOCIATE-RQ/AC: type(1) reserved(1) length(2, BE)
ITEM_HEADER = struct.Struct(">BBH")
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")

PDU_HEADER_LEN = 6
PDV_HEADER_LEN = 6
ITEM_HEADER_LEN = 4

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

PDU_NAMES: dict[int, str] = {
    A_ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
    A_ASSOCIATE_AC: "A-ASSOCIATE-AC",
    A_ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
    P_DATA_TF: "P-DATA-TF",
    A_RELEASE_RQ: "A-RELEASE-RQ",
    A_RELEASE_RP: "A-RELEASE-RP",
    A_ABORT: "A-ABORT",
}

# Fixed part of A-ASSOCIATE-RQ/AC after the PDU header: version(2) reserved(2) called(16)
# calling(16) reserved(32). Anything shorter cannot be an association PDU.
ASSOC_FIXED_LEN = 68
# Upper bound for an A-ASSOCIATE-RQ/AC. Real ones are a few KiB even with 128 contexts.
MAX_ASSOC_LEN = 1 << 20
# Upper bound for a P-DATA-TF we are willing to walk. Max PDU 0 means "unlimited" in PS3.8, but
# real peers send far less; anything beyond this is treated as garbage and resynchronised.
MAX_PDATA_LEN = 1 << 26
# Smallest sane P-DATA-TF: one PDV header (4-byte length + context id + control).
MIN_PDATA_LEN = PDV_HEADER_LEN

# PDU types whose length is fixed at 4 by the standard.
FIXED4 = frozenset((A_ASSOCIATE_RJ, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT))


def header_error(pdu_type: int, reserved: int, length: int) -> str | None:
    """Why a PDU header is implausible, or None if it is fine.

    >>> header_error(4, 0, 16390) is None, header_error(9, 0, 4)
    (True, 'bad_pdu_type')
    """
    if pdu_type not in PDU_NAMES:
        return "bad_pdu_type"
    if reserved != 0:
        return "bad_pdu_reserved"
    if pdu_type == P_DATA_TF:
        if length < MIN_PDATA_LEN or length > MAX_PDATA_LEN:
            return "bad_pdu_length"
    elif pdu_type in FIXED4:
        if length != 4:
            return "bad_pdu_length"
    elif length < ASSOC_FIXED_LEN or length > MAX_ASSOC_LEN:
        return "bad_pdu_length"
    return None


def pdv_ok(length: int, ctx_id: int, control: int, room: int) -> bool:
    """A PDV header that fits in ``room`` remaining PDU bytes, with an odd context id."""
    return 2 <= length <= room - 4 and ctx_id & 1 == 1 and control <= 3


def iter_items(buf: bytes | memoryview, off: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Yield (item type, value offset, value length) for variable items in ``buf[off:end]``.

    An item whose length overruns ``end`` is yielded as type -1 (value offset = its header
    offset) and ends the walk: the caller counts it as ``item_overrun``.

    >>> list(iter_items(b"\\x10\\x00\\x00\\x02ab\\x20\\x00\\x00\\x09", 0, 10))
    [(16, 4, 2), (-1, 6, 9)]
    """
    unpack = ITEM_HEADER.unpack_from
    while off + ITEM_HEADER_LEN <= end:
        itype, _, ilen = unpack(buf, off)
        voff = off + ITEM_HEADER_LEN
        if voff + ilen > end:
            yield -1, off, ilen
            return
        yield itype, voff, ilen
        off = voff + ilen
    if off != end:
        yield -1, off, end - off


# --- Resynchronisation ---------------------------------------------------------------------

FOUND, NEED_MORE, NOT_FOUND = 0, 1, 2
# A PDU type byte followed by the reserved zero byte.
_CANDIDATE_RE = re.compile(rb"[\x01-\x07]\x00")
# How far ahead of a P-DATA candidate we will look for its second PDV header.
RESYNC_LOOKAHEAD = 1 << 16


def check_candidate(buf: bytes | bytearray | memoryview, i: int) -> int:
    """Is there a plausible PDU header at ``buf[i]``? FOUND, NEED_MORE (undecided) or NOT_FOUND.

    P-DATA-TF: sane length, first PDV header fits with odd context id and control 0..3, and either
    the PDV fills the PDU exactly or the next PDV header checks out too. Fixed-length PDUs: length 4
    and plausible field values. A-ASSOCIATE-RQ/AC: sane length, protocol version 1, printable AEs.
    """
    n = len(buf) - i
    if n < PDU_HEADER_LEN:
        return NEED_MORE
    t, r, length = PDU_HEADER.unpack_from(buf, i)
    if header_error(t, r, length) is not None:
        return NOT_FOUND
    if t == P_DATA_TF:
        if n < 12:
            return NEED_MORE
        plen, ctx, ctrl = PDV_HEADER.unpack_from(buf, i + 6)
        if not pdv_ok(plen, ctx, ctrl, length):
            return NOT_FOUND
        if plen == length - 4:
            return FOUND
        # Several PDVs in this PDU: the next PDV header must be sane as well.
        nxt = i + 10 + plen
        if nxt + 6 > len(buf):
            return NEED_MORE if plen < RESYNC_LOOKAHEAD else NOT_FOUND
        plen2, ctx2, ctrl2 = PDV_HEADER.unpack_from(buf, nxt)
        return FOUND if pdv_ok(plen2, ctx2, ctrl2, length - 4 - plen) else NOT_FOUND
    if t in FIXED4:
        if n < 10:
            return NEED_MORE
        a, b, c, d = buf[i + 6], buf[i + 7], buf[i + 8], buf[i + 9]
        if t == A_ASSOCIATE_RJ:
            ok = a == 0 and b in (1, 2) and 1 <= c <= 3 and d <= 7
        elif t == A_ABORT:
            ok = a == 0 and b == 0 and c in (0, 1, 2) and d <= 6
        else:
            ok = a == 0 and b == 0 and c == 0 and d == 0
        return FOUND if ok else NOT_FOUND
    # A-ASSOCIATE-RQ / -AC
    if n < 6 + 36:
        return NEED_MORE
    if U16.unpack_from(buf, i + 6)[0] != 1:
        return NOT_FOUND
    aes = bytes(buf[i + 10 : i + 42])
    return FOUND if all(0x20 <= ch < 0x7F for ch in aes) else NOT_FOUND


def scan_for_pdu(buf: bytes | bytearray, start: int = 0) -> tuple[int, int]:
    r"""Scan ``buf`` from ``start`` for the first plausible PDU header.

    Returns (FOUND, offset), (NEED_MORE, offset of the first undecided candidate) or
    (NOT_FOUND, offset from which bytes must be kept: a trailing PDU type byte could still start a
    header). Candidates (a PDU type byte followed by the zero reserved byte) are found by a
    compiled regex, so Python only runs at candidate positions, never per byte.

    >>> scan_for_pdu(b"\xff\xff\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
    (0, 2)
    """
    n = len(buf)
    search = _CANDIDATE_RE.search
    m = search(buf, start)
    while m is not None:
        i = m.start()
        verdict = check_candidate(buf, i)
        if verdict != NOT_FOUND:
            return verdict, i
        m = search(buf, i + 1)
    return NOT_FOUND, max(start, n - 1)
