"""DIMSE command sets (PS3.7 §9.3, §10.3, Annex E): implicit VR little endian, group 0000.

A command set is small (about 100-200 bytes) and appears once per message, so it is decoded into
a small slots object. Data sets are never handled here.

Example::

    >>> import struct
    >>> el = lambda e, v: struct.pack("<HHI", 0, e, len(v)) + v
    >>> c = parse_command(el(0x0100, b"\\x30\\x00") + el(0x0110, b"\\x07\\x00") + el(0x0800, b"\\x01\\x01"))
    >>> c.name, c.is_response, c.message_id, c.has_dataset
    ('C-ECHO', False, 7, False)
"""

from __future__ import annotations

import struct

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

# Elements we keep: element number (group 0000) → attribute of Command and how to read it.
_UID, _US, _AE = 0, 1, 2
_FIELDS: dict[int, tuple[str, int]] = {
    0x0002: ("affected_sop_class", _UID),
    0x0003: ("requested_sop_class", _UID),
    0x0100: ("command_field", _US),
    0x0110: ("message_id", _US),
    0x0120: ("responded_id", _US),
    0x0600: ("move_destination", _AE),
    0x0700: ("priority", _US),
    0x0800: ("dataset_type", _US),
    0x0900: ("status", _US),
    0x1020: ("remaining", _US),
    0x1021: ("completed", _US),
    0x1022: ("failed", _US),
    0x1023: ("warning", _US),
}


class Command:
    """The decoded fields of one command set (absent elements stay None)."""

    __slots__ = (
        "affected_sop_class",
        "command_field",
        "completed",
        "dataset_type",
        "error",
        "failed",
        "message_id",
        "move_destination",
        "priority",
        "remaining",
        "requested_sop_class",
        "responded_id",
        "status",
        "warning",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, None)

    @property
    def base(self) -> int | None:
        return None if self.command_field is None else self.command_field & ~RESPONSE_BIT

    @property
    def is_response(self) -> bool:
        return self.command_field is not None and bool(self.command_field & RESPONSE_BIT)

    @property
    def name(self) -> str:
        """Command name without -RQ/-RSP; unknown fields as "0x%04X"."""
        base = self.base
        if base is None:
            return "UNKNOWN"
        return COMMAND_NAMES.get(base) or "0x%04X" % base

    @property
    def key(self) -> str:
        """Counting key: "C-STORE-RQ", "C-FIND-RSP"..."""
        return self.name + ("-RSP" if self.is_response else "-RQ")

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


def _text(raw: bytes) -> str:
    return raw[:64].decode("ascii", "replace").rstrip(" \x00")


def parse_command(buf: bytes | bytearray) -> Command:
    """Decode a command set. Never raises; ``Command.error`` names what was wrong, if anything."""
    cmd = Command()
    off, end = 0, len(buf)
    unpack = ELEMENT_HEADER.unpack_from
    fields = _FIELDS
    while off + 8 <= end:
        group, elem, length = unpack(buf, off)
        off += 8
        if group != 0 or length > end - off:
            cmd.error = "bad_command_element"
            break
        spec = fields.get(elem)
        if spec is not None:
            name, kind = spec
            if kind == _US:
                if length == 2:
                    setattr(cmd, name, LE_U16.unpack_from(buf, off)[0])
                elif length == 4:  # some peers send UL for US-typed fields; tolerate it
                    setattr(cmd, name, LE_U32.unpack_from(buf, off)[0] & 0xFFFF)
                else:
                    cmd.error = "bad_command_element"
            else:
                setattr(cmd, name, _text(bytes(buf[off : off + length])))
        off += length
    if off != end and cmd.error is None:
        cmd.error = "bad_command_element"
    if cmd.command_field is None and cmd.error is None:
        cmd.error = "no_command_field"
    return cmd
