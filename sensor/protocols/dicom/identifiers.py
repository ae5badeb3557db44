"""C-FIND/C-MOVE/C-GET identifiers (PS3.4 Annex C): query level and which keys are wildcards.

The identifier bytes are walked by a small, bounded, non-raising walker (explicit or implicit VR
little endian, nested sequences to a fixed depth). Nothing is kept but the Query/Retrieve Level
(an enumerated CS value such as "STUDY") and the *keywords* of elements whose value contains '*'
or '?'. Values themselves (names, IDs, dates) are never stored or returned.

Example::

    >>> import struct
    >>> el = lambda g, e, vr, v: struct.pack("<HH2sH", g, e, vr, len(v)) + v
    >>> ds = el(0x0008, 0x0052, b"CS", b"STUDY ") + el(0x0010, 0x0010, b"PN", b"DOE*")
    >>> scan_identifier(ds, explicit=True)
    ('STUDY', ('PatientName',), None)
"""

from __future__ import annotations

import re
import struct

try:  # pydicom's data dictionary gives keyword and VR per tag; it is optional at run time.
    from pydicom.datadict import DicomDictionary as _DICT
except ImportError:  # pragma: no cover - without it keys are reported as "(gggg,eeee)"
    _DICT = {}

TAG_VR = struct.Struct("<HH2s")  # explicit: group element VR
LE_U16 = struct.Struct("<H")
LE_U32 = struct.Struct("<I")
IMPLICIT_HEADER = struct.Struct("<HHI")  # implicit (and item/delimiter) header

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

MAX_IDENTIFIER_LEN = 1 << 16
MAX_DEPTH = 8
MAX_ELEMENTS = 4096
UNDEFINED = 0xFFFFFFFF

QUERY_LEVEL_TAG = 0x00080052
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD

# VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT SV UV".split())
_ALL_VRS = _LONG_VRS | frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
# VRs where '*' and '?' are wildcards in matching keys (PS3.4 C.2.2.2.4).
_WILDCARD_VRS = frozenset(("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"))
_LEVEL_RE = re.compile(r"[A-Z0-9_ ]{1,16}")


def keyword(tag: int) -> str:
    """Keyword for a tag, or "(gggg,eeee)" when the dictionary has none (private, repeaters).

    >>> keyword(0x00100010), keyword(0x00091001)
    ('PatientName', '(0009,1001)')
    """
    entry = _DICT.get(tag)
    if entry and entry[4]:
        return entry[4]
    return "(%04X,%04X)" % (tag >> 16, tag & 0xFFFF)


def dictionary_vr(tag: int) -> str | None:
    entry = _DICT.get(tag)
    return entry[0] if entry else None


def is_explicit(transfer_syntax: str | None, buf: bytes | bytearray) -> bool | None:
    """Explicit VR LE? None when the syntax cannot be walked here (deflated, big endian).

    Unknown syntax (capture started mid-association): guess from the first element's VR bytes.
    """
    if transfer_syntax == IMPLICIT_VR_LE:
        return False
    if transfer_syntax in (DEFLATED, EXPLICIT_VR_BE):
        return None
    if transfer_syntax is None:
        return len(buf) >= 6 and bytes(buf[4:6]) in _ALL_VRS
    return True


class _Walk:
    __slots__ = ("buf", "elements", "error", "explicit", "keys", "level")

    def __init__(self, buf: bytes, explicit: bool) -> None:
        self.buf = buf
        self.explicit = explicit
        self.level: str | None = None
        self.keys: list[str] = []
        self.elements = 0
        self.error: str | None = None

    def fail(self, reason: str) -> int:
        if self.error is None:
            self.error = reason
        return -1

    def dataset(self, off: int, end: int, depth: int, prefix: str, until_item_end: bool) -> int:
        """Walk elements in buf[off:end]; return the offset after the data set, or -1."""
        buf = self.buf
        while off < end:
            self.elements += 1
            if self.elements > MAX_ELEMENTS:
                return self.fail("identifier_too_many_elements")
            if off + 8 > end:
                return self.fail("identifier_truncated")
            group, elem = LE_U16.unpack_from(buf, off)[0], LE_U16.unpack_from(buf, off + 2)[0]
            tag = group << 16 | elem
            if group == 0xFFFE:
                if tag == ITEM_END and until_item_end:
                    return off + 8
                return self.fail("identifier_unexpected_delimiter")
            if self.explicit:
                vr_b = bytes(buf[off + 4 : off + 6])
                if vr_b not in _ALL_VRS:
                    return self.fail("identifier_bad_vr")
                vr: str | None = vr_b.decode()
                if vr_b in _LONG_VRS:
                    if off + 12 > end:
                        return self.fail("identifier_truncated")
                    length = LE_U32.unpack_from(buf, off + 8)[0]
                    off += 12
                else:
                    length = LE_U16.unpack_from(buf, off + 6)[0]
                    off += 8
            else:
                length = LE_U32.unpack_from(buf, off + 4)[0]
                vr = dictionary_vr(tag)
                off += 8
            if length == UNDEFINED or vr == "SQ":
                # PS3.5 §6.2.2: UN of undefined length holds implicit VR LE items.
                saved = self.explicit
                if vr == "UN":
                    self.explicit = False
                off = self.sequence(off, end, length, depth, prefix + keyword(tag) + ".")
                self.explicit = saved
                if off < 0:
                    return -1
                continue
            if length > end - off:
                return self.fail("identifier_truncated")
            if tag == QUERY_LEVEL_TAG and depth == 0:
                level = bytes(buf[off : off + length]).decode("ascii", "replace").strip(" \x00")
                self.level = level if _LEVEL_RE.fullmatch(level) else "INVALID"
            elif vr in _WILDCARD_VRS and length:
                value = buf[off : off + length]
                if b"*" in value or b"?" in value:
                    self.keys.append(prefix + keyword(tag))
            off += length
        if until_item_end:
            return self.fail("identifier_truncated")
        return off

    def sequence(self, off: int, end: int, length: int, depth: int, prefix: str) -> int:
        if depth >= MAX_DEPTH:
            return self.fail("identifier_too_deep")
        if length != UNDEFINED:
            if length > end - off:
                return self.fail("identifier_truncated")
            seq_end, undefined = off + length, False
        else:
            seq_end, undefined = end, True
        buf = self.buf
        while off < seq_end:
            if off + 8 > seq_end:
                return self.fail("identifier_truncated")
            group, elem, ilen = IMPLICIT_HEADER.unpack_from(buf, off)
            tag = group << 16 | elem
            off += 8
            if tag == SEQ_END and undefined:
                return off
            if tag != ITEM:
                return self.fail("identifier_bad_item")
            if ilen == UNDEFINED:
                off = self.dataset(off, seq_end, depth + 1, prefix, True)
            else:
                if ilen > seq_end - off:
                    return self.fail("identifier_truncated")
                if self.dataset(off, off + ilen, depth + 1, prefix, False) < 0:
                    return -1
                off += ilen
            if off < 0:
                return -1
        if undefined:
            return self.fail("identifier_truncated")
        return off


def scan_identifier(buf: bytes | bytearray, explicit: bool) -> tuple[str | None, tuple[str, ...], str | None]:
    """Return (query level, wildcard keyword names, error name or None). Never raises.

    What was decoded before an error is still returned: a truncated identifier may still tell
    its level.
    """
    walk = _Walk(bytes(buf), explicit)
    try:
        walk.dataset(0, len(walk.buf), 0, "", False)
    except (struct.error, IndexError, RecursionError):  # defence in depth: bounds are checked above
        walk.fail("identifier_internal")
    return walk.level, tuple(walk.keys), walk.error
