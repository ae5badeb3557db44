"""DIMSE command sets (PS3.7 §9.3, §10.3, Annex E): implicit VR little endian, group 0000.

A command set is small (about 100-200 bytes) and appears once per message, so it is decoded into
a small slots object. Data sets are never handled here.

``parse_command`` is the compiled decoder of ``sensor._fast`` when that is in use (``COMPILED``
here says so; ``RADSENSOR_FAST=0`` turns it off), else ``_parse_command_py``, its reference: both
give the same Command for every input (tests/test_command_fast.py).

Example::

    >>> import struct
    >>> el = lambda e, v: struct.pack("<HHI", 0, e, len(v)) + v
    >>> c = parse_command(el(0x0100, b"\\x30\\x00") + el(0x0110, b"\\x07\\x00") + el(0x0800, b"\\x01\\x01"))
    >>> c.name, c.is_response, c.message_id, c.has_dataset
    ('C-ECHO', False, 7, False)
"""

from __future__ import annotations

import operator
import struct
import warnings

from sensor import _fast

# Implicit VR LE element header: group(2) element(2) length(4)
ELEMENT_HEADER = struct.Struct("<HHI")
LE_U16 = struct.Struct("<H")
LE_U32 = struct.Struct("<I")

MAX_COMMAND_LEN = 1 << 16

COMMAND_NAMES: dict[int, str] = {
    0x0001: "C-STORE",
    0x0010: "C-GET",
    0x0020: "C-FIND",
    0x0021: "C-MOVE",
    0x0030: "C-ECHO",
    0x0100: "N-EVENT-REPORT",
    0x0110: "N-GET",
    0x0120: "N-SET",
    0x0130: "N-ACTION",
    0x0140: "N-CREATE",
    0x0150: "N-DELETE",
    0x0FFF: "C-CANCEL",
}
RESPONSE_BIT = 0x8000
NO_DATASET = 0x0101
PENDING = frozenset((0xFF00, 0xFF01))
# Requests whose data set is a query/retrieve identifier worth looking into.
IDENTIFIER_COMMANDS = frozenset(("C-FIND", "C-MOVE", "C-GET"))

# Elements we keep: element number (group 0000) → slot in Command.__slots__ order below. The first
# _N_TEXT slots hold UI/AE text, the rest US values. One dict lookup per element, no per-element
# objects: command sets arrive once per DIMSE message, ~100k/s on bulk C-STORE traffic.
_SLOTS = (
    "affected_sop_class",
    "requested_sop_class",
    "move_destination",
    "command_field",
    "message_id",
    "responded_id",
    "priority",
    "dataset_type",
    "status",
    "remaining",
    "completed",
    "failed",
    "warning",
)
_ELEMENTS = (0x0002, 0x0003, 0x0600, 0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900, 0x1020, 0x1021,
             0x1022, 0x1023)
_SLOT_OF: dict[int, int] = dict(zip(_ELEMENTS, range(len(_SLOTS))))
_N_TEXT = 3
_NONE = (None,) * len(_SLOTS)


def _names(field: int) -> tuple[str, str, bool]:
    """(name, counting key, is response) of a command field."""
    base = field & ~RESPONSE_BIT
    name = COMMAND_NAMES.get(base) or "0x%04X" % base
    is_response = bool(field & RESPONSE_BIT)
    return name, name + ("-RSP" if is_response else "-RQ"), is_response


# The known command fields, precomputed; unknown ones are derived on demand (never cached, so
# hostile input cannot grow a table).
_KNOWN: dict[int, tuple[str, str, bool]] = {
    f: _names(f) for base in COMMAND_NAMES for f in (base, base | RESPONSE_BIT)
}
# Public name of that table, for the analyzer's per-message lookup (no method call): a miss means
# an unknown field (or none), for which ``Command.names()`` is the answer.
KNOWN_NAMES = _KNOWN


class Command:
    """The decoded fields of one command set (absent elements stay None)."""

    __slots__ = (*_SLOTS, "error")

    def __init__(self) -> None:
        (
            self.affected_sop_class,
            self.requested_sop_class,
            self.move_destination,
            self.command_field,
            self.message_id,
            self.responded_id,
            self.priority,
            self.dataset_type,
            self.status,
            self.remaining,
            self.completed,
            self.failed,
            self.warning,
        ) = _NONE
        self.error: str | None = None

    def names(self) -> tuple[str, str, bool] | None:
        """(name, key, is_response) at once, or None without a command field."""
        field = self.command_field
        if field is None:
            return None
        return _KNOWN.get(field) or _names(field)

    @property
    def base(self) -> int | None:
        return None if self.command_field is None else self.command_field & ~RESPONSE_BIT

    @property
    def is_response(self) -> bool:
        return self.command_field is not None and bool(self.command_field & RESPONSE_BIT)

    @property
    def name(self) -> str:
        """Command name without -RQ/-RSP; unknown fields as "0x%04X"."""
        names = self.names()
        return "UNKNOWN" if names is None else names[0]

    @property
    def key(self) -> str:
        """Counting key: "C-STORE-RQ", "C-FIND-RSP"..."""
        names = self.names()
        return "UNKNOWN-RQ" if names is None else names[1]

    @property
    def has_dataset(self) -> bool:
        # Absent (0000,0800) is malformed; assume a data set may follow so lengths still add up.
        return self.dataset_type != NO_DATASET

    @property
    def sop_class(self) -> str | None:
        return self.affected_sop_class or self.requested_sop_class

    @property
    def sub_ops(self) -> tuple[int, int, int, int] | None:
        vals = (self.remaining, self.completed, self.failed, self.warning)
        if all(v is None for v in vals):
            return None
        return tuple(v or 0 for v in vals)  # type: ignore[return-value]


_ELEMENT_UNPACK = ELEMENT_HEADER.unpack_from
_U16_UNPACK = LE_U16.unpack_from
_U32_UNPACK = LE_U32.unpack_from
_BAD = "bad_command_element"
_NEW = Command.__new__
_index = operator.index


def _bytes_view(buf) -> memoryview:
    """Any bytes-like object as a flat view of its bytes in C order (what the C helper reads)."""
    mv = memoryview(buf)
    try:
        return mv.cast("B")
    except (TypeError, ValueError):  # not C-contiguous, or an exotic item format: copy
        return memoryview(mv.tobytes())


def _parse_command_py(buf: bytes | bytearray | memoryview, offset: int = 0, length: int | None = None) -> Command:
    """Decode the command set ``buf[offset:offset + length]`` (by default all of ``buf``).

    Never raises on the bytes' content: ``Command.error`` names what was wrong, if anything.
    ValueError if ``offset``/``length`` lie outside ``buf``, TypeError if it is not bytes-like.
    This is the pure-Python ``parse_command`` and the reference semantics of the compiled one
    (``sensor._fast._fastpath.parse_command``), which must give the same result for every input.
    """
    if type(buf) is not bytes and type(buf) is not bytearray:
        buf = _bytes_view(buf)
        copy = True
    else:
        copy = False
    size = len(buf)
    offset = _index(offset)
    if not 0 <= offset <= size:
        raise ValueError("offset outside the buffer")
    if length is None:
        length = size - offset
    else:
        length = _index(length)
        if not 0 <= length <= size - offset:
            raise ValueError("length outside the buffer")
    if copy:  # bytes to slice and decode from
        buf = buf[offset : offset + length].tobytes()
        offset = 0
    vals = list(_NONE)
    error = None
    off, end = offset, offset + length
    last = end - 8  # last offset where an element header fits
    unpack = _ELEMENT_UNPACK
    slot_of = _SLOT_OF.get
    while off <= last:
        group, elem, vlen = unpack(buf, off)
        off += 8
        if group != 0 or vlen > end - off:
            error = _BAD
            break
        i = slot_of(elem)
        if i is not None:
            if i >= _N_TEXT:
                if vlen == 2:
                    vals[i] = _U16_UNPACK(buf, off)[0]
                elif vlen == 4:  # some peers send UL for US-typed fields; tolerate it
                    vals[i] = _U32_UNPACK(buf, off)[0] & 0xFFFF
                else:
                    error = _BAD
            else:  # UI/AE text, at most 64 bytes kept
                vals[i] = buf[off : off + (vlen if vlen < 64 else 64)].decode("ascii", "replace").rstrip(" \x00")
        off += vlen
    if off != end and error is None:
        error = _BAD
    cmd = _NEW(Command)
    (
        cmd.affected_sop_class,
        cmd.requested_sop_class,
        cmd.move_destination,
        cmd.command_field,
        cmd.message_id,
        cmd.responded_id,
        cmd.priority,
        cmd.dataset_type,
        cmd.status,
        cmd.remaining,
        cmd.completed,
        cmd.failed,
        cmd.warning,
    ) = vals
    if vals[3] is None and error is None:
        error = "no_command_field"
    cmd.error = error
    return cmd


def _select():
    """The compiled parse_command when the C helper is in use (``RADSENSOR_FAST=0`` says no), else
    the reference. The C one fills Command instances by slot, so it is handed the class here; it
    refuses (and the reference is used) if this module's element table is not the one it was built with."""
    if _fast.COMPILED and hasattr(_fast.impl, "parse_command"):
        try:
            _fast.impl.command_type(Command, Command.__slots__, _ELEMENTS, _N_TEXT)
        except (TypeError, ValueError) as exc:
            warnings.warn(f"compiled parse_command not used: {exc}", RuntimeWarning, stacklevel=2)
        else:
            return _fast.impl.parse_command, True
    return _parse_command_py, False


parse_command, COMPILED = _select()
