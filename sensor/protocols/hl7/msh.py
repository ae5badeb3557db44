"""MSH and MSA field extraction from one HL7 v2 message; every other segment is only counted.

What is kept (and why it is safe): MSH-3..6 (applications and facilities: system names, not
people), MSH-9 (message type), MSH-10 (control id: a message identifier), MSH-11 (processing id),
MSH-12 (version), MSA-1 (acknowledgment code) and MSA-2 (acknowledged control id). No value of PID,
NK1, OBX, NTE or any other segment is read; their ids are counted.

Choices, stated once:

* MSH-1 is the field separator and the first character of MSH-2 the component separator (never
  assumed to be ``|`` and ``^``).
* MSH-3..6 are kept whole as sent (an HD like ``RIS^1.2.3^ISO`` stays ``RIS^1.2.3^ISO``): the
  universal id tells two "RIS" senders apart. Every kept value is cut to ``MAX_VALUE`` characters
  and control characters become ``?``.
* MSH-11 and MSH-12 keep component 1 only (``P`` of ``P^T``; ``2.5.1`` of ``2.5.1^...``), MSH-9 is
  kept as sent (``msh_type``) and split into type, event and structure.
* A segment id is valid when it is three characters ``A-Z0-9`` followed by the field separator or
  the end of the segment; anything else is counted as ``?``. At most ``MAX_SEGMENT_TYPES`` distinct
  ids are kept per message; further new ids are counted as ``?`` (bounded output on hostile input).
* Segments end with CR; LF and CRLF are tolerated. Batch envelopes (FHS/BHS) before the MSH are fine:
  the first MSH segment is used.

Example::

    >>> h = parse_message(b"MSH|^~\\\\&|RIS|H1|PACS|H1|20240101||ORM^O01^ORM_O01|42|P|2.5\\rPID|||X\\r")
    >>> (h.message_type, h.event, h.sending_app, h.control_id, h.segment_types, h.problem)
    ('ORM', 'O01', 'RIS', '42', {'MSH': 1, 'PID': 1}, None)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_VALUE = 64  # characters kept of any MSH/MSA value
MAX_SEGMENT_TYPES = 64  # distinct segment ids kept per message

_SEGMENT_ID = re.compile(rb"[A-Z0-9]{3}")
_SEGMENT_SPLIT = re.compile(rb"\r\n|\r|\n")
# Control characters (and DEL) become "?": values end up in logs and syslog lines.
_CONTROL = bytes(range(0x20)) + b"\x7f"
_CLEAN = bytes.maketrans(_CONTROL, b"?" * len(_CONTROL))


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """The PHI-free control fields of one message; ``problem`` names what was malformed, if anything."""

    msh_type: str | None = None
    message_type: str | None = None
    event: str | None = None
    structure: str | None = None
    sending_app: str | None = None
    sending_facility: str | None = None
    receiving_app: str | None = None
    receiving_facility: str | None = None
    control_id: str | None = None
    processing_id: str | None = None
    version: str | None = None
    ack_code: str | None = None
    acked_control_id: str | None = None
    segment_types: dict[str, int] | None = None
    problem: str | None = None  # e.g. "no MSH segment", "missing MSH-9" (protocol words only)


def _text(raw: bytes) -> str | None:
    """A kept value: bounded, printable, None when empty."""
    if not raw:
        return None
    raw = raw[: MAX_VALUE * 4].translate(_CLEAN)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # never fails: every byte maps to a character
    return text[:MAX_VALUE] or None


def _is_separator(b: int) -> bool:
    return 0x20 < b < 0x7F and not (0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A)


def count_segments(segments: list[bytes], fs: int) -> dict[str, int]:
    """Counts of segment ids; invalid ids (and ids beyond the distinct cap) count as "?"."""
    counts: dict[str, int] = {}
    for seg in segments:
        if not seg:
            continue
        sid = seg[:3]
        if _SEGMENT_ID.fullmatch(sid) and (len(seg) == 3 or seg[3] == fs):
            key = sid.decode("ascii")
            if key not in counts and len(counts) >= MAX_SEGMENT_TYPES:
                key = "?"
        else:
            key = "?"
        counts[key] = counts.get(key, 0) + 1
    return counts


def parse_message(message: bytes) -> MessageHeader:
    """Extract MSH/MSA control fields and segment counts. Never raises; see ``problem``."""
    segments = _SEGMENT_SPLIT.split(message)
    msh = next((s for s in segments if s[:3] == b"MSH"), None)
    if msh is None:
        return MessageHeader(segment_types=count_segments(segments, 0x7C), problem="no MSH segment")
    if len(msh) < 4 or not _is_separator(msh[3]):
        return MessageHeader(segment_types=count_segments(segments, 0x7C), problem="bad MSH-1 field separator")
    fs = msh[3]
    counts = count_segments(segments, fs)
    fields = msh.split(bytes((fs,)))
    # fields[0] is "MSH" and fields[1] is MSH-2 (MSH-1 is the separator itself): MSH-n = fields[n-1].
    msh_n = lambda n: fields[n - 1] if len(fields) >= n else b""
    problem = None
    enc = fields[1] if len(fields) > 1 else b""
    if enc and _is_separator(enc[0]) and enc[0] != fs:
        cs = enc[:1]
    else:
        cs = b"^"  # the standard default, so that MSH-9 still splits
        problem = "bad MSH-2 encoding characters"
    msh9 = msh_n(9)
    parts = msh9.split(cs) if msh9 else []
    part = lambda i: _text(parts[i]) if len(parts) > i else None
    if not msh9 and problem is None:
        problem = "missing MSH-9" if len(fields) >= 9 else f"short MSH ({len(fields)} fields)"
    ack_code = acked = None
    msa = next((s for s in segments if s[:3] == b"MSA" and (len(s) == 3 or s[3] == fs)), None)
    if msa is not None:
        msa_fields = msa.split(bytes((fs,)))
        ack_code = _text(msa_fields[1]) if len(msa_fields) > 1 else None
        acked = _text(msa_fields[2]) if len(msa_fields) > 2 else None
    return MessageHeader(
        msh_type=_text(msh9),
        message_type=part(0),
        event=part(1),
        structure=part(2),
        sending_app=_text(msh_n(3)),
        sending_facility=_text(msh_n(4)),
        receiving_app=_text(msh_n(5)),
        receiving_facility=_text(msh_n(6)),
        control_id=_text(msh_n(10)),
        processing_id=_text(msh_n(11).split(cs, 1)[0]),
        version=_text(msh_n(12).split(cs, 1)[0]),
        ack_code=ack_code,
        acked_control_id=acked,
        segment_types=counts,
        problem=problem,
    )
