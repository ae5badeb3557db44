"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol): ``<SB=0x0B> message <EB=0x1C><CR=0x0D>``.

One ``MllpDeframer`` serves one TCP direction. It accepts in-order byte chunks of any size and
hands complete messages to a callback, without ever buffering more than ``max_frame`` bytes:

* bytes between frames that are not CR/LF are *garbage*: counted (``hl7.garbage_bytes``), one
  ``hl7.garbage`` weird per run;
* a frame longer than ``max_frame`` is dropped (weird ``hl7.oversize_frame``); everything up to the
  next start block is discarded and counted (``hl7.discarded_bytes``);
* a start block inside a frame means the previous frame lost its end: weird ``hl7.unterminated_frame``;
* an end block not followed by CR is tolerated (weird ``hl7.bad_trailer``).

Raw framing: some interfaces send HL7 over TCP without MLLP. If the *first* bytes of a direction
(after optional CR/LF) are ``MSH`` + field separator + component separator, the direction is read
as raw: a message ends where the next segment starting with ``MSH`` begins, or at gap/close.
A start block later in a raw stream switches the direction to MLLP. Raw messages are therefore
reported one message late (or at close); that is inherent to unframed HL7.

Example::

    >>> out = []
    >>> d = MllpDeframer(lambda ts, m, f: out.append((m, f)), lambda *a: None, lambda *a: None)
    >>> d.feed(1.0, b"\\x0bMSH|^~\\\\&|A\\r\\x1c"); d.feed(1.0, b"\\r")
    >>> out
    [(b'MSH|^~\\\\&|A\\r', 'mllp')]
"""

from __future__ import annotations

from collections.abc import Callable

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CR = 0x0D
WHITESPACE = b"\r\n"  # tolerated between frames and before the first one (common sender habit)

DEFAULT_MAX_FRAME = 1 << 20  # 1 MiB: far above real ADT/ORM/ORU sizes, bounds memory per direction

# States of one direction.
_FRESH = 0  # nothing but CR/LF seen yet: MLLP or raw still undecided
_BETWEEN = 1  # outside a frame, looking for a start block
_IN_FRAME = 2  # inside an MLLP frame, looking for the end block
_DISCARD = 3  # dropping an oversize or damaged frame until the next start block
_RAW = 4  # unframed HL7: messages split at "MSH" segment starts

_RAW_PROBE_LEN = 5  # "MSH" + field separator + component separator

OnFrame = Callable[[float, bytes, str], None]  # (ts of first byte, message, "mllp" | "raw")
OnWeird = Callable[[float, str, str], None]  # (ts, name, detail)
OnCount = Callable[[str, int], None]


def raw_msh_verdict(head: bytes) -> bool | None:
    """Does ``head`` start like an unframed HL7 message? None while fewer than 5 bytes agree."""
    n = min(len(head), _RAW_PROBE_LEN)
    if head[: min(n, 3)] != b"MSH"[: min(n, 3)]:
        return False
    for i in (3, 4):
        if n > i and not _is_separator(head[i]):
            return False
    return True if n >= _RAW_PROBE_LEN else None


def _is_separator(b: int) -> bool:
    # Separators are printable, not alphanumeric, never CR/LF or an MLLP block byte.
    return 0x20 < b < 0x7F and not (0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A)


class MllpDeframer:
    """Incremental MLLP (and raw) deframer for one direction. Never raises on any input."""

    __slots__ = (
        "_after_eb",
        "_buf",
        "_count",
        "_garbage_run",
        "_on_frame",
        "_on_weird",
        "_raw_drop",
        "_raw_scan",
        "_state",
        "_ts",
        "max_frame",
    )

    def __init__(self, on_frame: OnFrame, on_weird: OnWeird, count: OnCount,
                 max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max(16, int(max_frame))
        self._on_frame = on_frame
        self._on_weird = on_weird
        self._count = count
        self._state = _FRESH
        self._buf = bytearray()
        self._ts = 0.0
        self._after_eb = False  # last byte was an end block: a CR is expected next
        self._raw_scan = 0  # raw mode: offset in _buf from which to look for the next "MSH"
        self._raw_drop = False  # raw mode: dropping an oversize message until the next "MSH"
        self._garbage_run = False  # inside a run of garbage between frames (one weird per run)

    # -- public -------------------------------------------------------------------------------

    def feed(self, ts: float, data: bytes) -> None:
        """Consume the next in-order bytes of this direction."""
        pos, n = 0, len(data)
        while pos < n:
            if self._after_eb:
                self._after_eb = False
                if data[pos] == CR:
                    pos += 1
                    continue
                self._on_weird(ts, "hl7.bad_trailer", "")
            state = self._state
            if state == _IN_FRAME:
                pos = self._in_frame(ts, data, pos, n)
            elif state == _BETWEEN:
                pos = self._between(ts, data, pos, n)
            elif state == _DISCARD:
                i = data.find(START_BLOCK, pos)
                stop = n if i < 0 else i
                self._count("hl7.discarded_bytes", stop - pos)
                pos = stop
                if i >= 0:
                    self._state = _BETWEEN
            elif state == _RAW:
                pos = self._raw(ts, data, pos, n)
            else:
                data, pos, n = self._fresh(ts, data, pos, n)

    def gap(self, ts: float, length: int) -> None:
        """``length`` bytes were never captured: drop the partial frame, resync at the next 0x0B."""
        self._after_eb = False
        if self._state == _RAW:
            # Resynchronise on the next "MSH" segment: raw streams have no start block.
            if self._buf.strip(WHITESPACE) and not self._raw_drop:
                self._on_weird(ts, "hl7.gap_in_frame", f"lost={length}")
            self._buf = bytearray()
            self._raw_drop = True
            self._raw_scan = 0
            return
        if self._state == _IN_FRAME:
            self._on_weird(ts, "hl7.gap_in_frame", f"lost={length}")
        elif self._state == _FRESH and self._buf:
            self._count("hl7.garbage_bytes", len(self._buf))
        self._buf = bytearray()
        # After a gap we are somewhere unknown: the bytes up to the next start block are not
        # "garbage sent by the peer", so they are counted as discarded, not as garbage.
        self._state = _DISCARD

    def close(self, ts: float) -> None:
        """End of stream: a raw message is complete now; an open MLLP frame is not."""
        if self._state == _RAW:
            self._flush_raw(ts)
        elif self._state == _IN_FRAME:
            self._on_weird(ts, "hl7.unterminated_frame", f"size={len(self._buf)}")
        elif self._state == _FRESH and self._buf:
            self._count("hl7.garbage_bytes", len(self._buf))
        self._buf = bytearray()
        self._state = _DISCARD

    # -- states -------------------------------------------------------------------------------

    def _fresh(self, ts: float, data: bytes, pos: int, n: int) -> tuple[bytes, int, int]:
        if not self._buf:
            rest = data[pos:].lstrip(WHITESPACE)
            pos = n - len(rest)
            if pos >= n:
                return data, pos, n
            if data[pos] == START_BLOCK[0]:
                self._state = _BETWEEN
                return data, pos, n
            self._ts = ts
        take = min(_RAW_PROBE_LEN - len(self._buf), n - pos)
        self._buf += data[pos:pos + take]
        pos += take
        verdict = raw_msh_verdict(bytes(self._buf))
        if verdict is None:
            return data, pos, n
        head, self._buf = bytes(self._buf), bytearray()
        if verdict:
            self._state = _RAW
            self._buf += head
            return data, pos, n
        # Not raw HL7: re-read the probe bytes as ordinary between-frame bytes (they may hold 0x0B).
        self._state = _BETWEEN
        data = head + data[pos:]
        return data, 0, len(data)

    def _between(self, ts: float, data: bytes, pos: int, n: int) -> int:
        i = data.find(START_BLOCK, pos)
        stop = n if i < 0 else i
        if stop > pos:
            seg = data[pos:stop]
            junk = len(seg) - seg.count(b"\r") - seg.count(b"\n")
            if junk:
                self._count("hl7.garbage_bytes", junk)
                if not self._garbage_run:  # one weird per run of garbage, whatever the chunking
                    self._garbage_run = True
                    self._on_weird(ts, "hl7.garbage", "")
        if i < 0:
            return n
        self._garbage_run = False
        self._state = _IN_FRAME
        self._ts = ts
        self._buf = bytearray()
        return i + 1

    def _in_frame(self, ts: float, data: bytes, pos: int, n: int) -> int:
        e = data.find(END_BLOCK, pos)
        s = data.find(START_BLOCK, pos, n if e < 0 else e)
        stop = n if e < 0 else e
        if s >= 0:
            stop = s
        if len(self._buf) + (stop - pos) > self.max_frame:
            # Checked before anything else so that the verdict does not depend on chunking.
            self._on_weird(ts, "hl7.oversize_frame", f"limit={self.max_frame}")
            self._count("hl7.discarded_bytes", len(self._buf))
            self._buf = bytearray()
            self._state = _DISCARD
            return pos
        if s >= 0:
            # A new frame starts before this one ended: the sender (or the capture) lost the end.
            self._on_weird(ts, "hl7.unterminated_frame", f"size={len(self._buf) + s - pos}")
            self._ts = ts
            self._buf = bytearray()
            return s + 1
        self._buf += data[pos:stop]
        if e < 0:
            return n
        message, self._buf = bytes(self._buf), bytearray()
        self._state = _BETWEEN
        self._after_eb = True
        self._on_frame(self._ts, message, "mllp")
        return e + 1

    def _raw(self, ts: float, data: bytes, pos: int, n: int) -> int:
        i = data.find(START_BLOCK, pos)
        stop = n if i < 0 else i
        self._buf += data[pos:stop]  # at most one chunk beyond max_frame: the chunk is in memory anyway
        self._split_raw(ts)
        if i >= 0:  # the peer switched to MLLP framing
            self._flush_raw(ts)
            self._state = _BETWEEN
            return i
        return n

    # -- raw helpers --------------------------------------------------------------------------

    def _split_raw(self, ts: float) -> None:
        buf = self._buf
        start = max(1, self._raw_scan)
        while True:
            k = _next_msh(buf, 0 if self._raw_drop else start)
            if k < 0:
                break
            message = bytes(buf[:k])
            del buf[:k]
            first_ts, self._ts = self._ts, ts
            if self._raw_drop:
                self._raw_drop = False
                self._count("hl7.discarded_bytes", len(message))
            elif len(message) > self.max_frame:
                self._oversize_raw(ts, len(message))
            elif message.strip(WHITESPACE):
                self._on_frame(first_ts, message, "raw")
            start = 1
        if self._raw_drop or len(buf) > self.max_frame:
            # Keep only what could be the start of "\rMSH"; count the rest as discarded.
            if not self._raw_drop:
                self._raw_drop = True
                self._on_weird(ts, "hl7.oversize_frame", f"limit={self.max_frame}")
            self._count("hl7.discarded_bytes", max(0, len(buf) - 3))
            del buf[:-3]
        # "\rMS" at the very end could still become "\rMSH": rescan those bytes next time.
        self._raw_scan = max(1, len(buf) - 3)

    def _oversize_raw(self, ts: float, size: int) -> None:
        self._on_weird(ts, "hl7.oversize_frame", f"limit={self.max_frame}")
        self._count("hl7.discarded_bytes", size)

    def _flush_raw(self, ts: float) -> None:
        if self._raw_drop:
            self._count("hl7.discarded_bytes", len(self._buf))
        elif len(self._buf) > self.max_frame:
            self._oversize_raw(ts, len(self._buf))
        elif self._buf.strip(WHITESPACE):
            self._on_frame(self._ts, bytes(self._buf), "raw")
        self._buf = bytearray()
        self._raw_scan = 0
        self._raw_drop = False


def _next_msh(buf: bytearray, start: int) -> int:
    """Offset of the next segment that starts with "MSH" (just after a CR or LF), or -1."""
    best = -1
    for sep in (b"\rMSH", b"\nMSH"):
        k = buf.find(sep, max(0, start - 1))
        if k >= 0 and (best < 0 or k + 1 < best):
            best = k + 1
    return best
