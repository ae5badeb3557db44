"""One direction of a TCP connection, turned back into in-order bytes for an analyzer.

The cursor tolerates what real mirror ports deliver: retransmissions (dropped, or the new tail
delivered), overlapping segments, reordering within a bounded window (out-of-order segments are
held, copied, up to ``max_hold_bytes``/``max_hold_segments``), gaps (reported to the analyzer as
``gap(length)`` once the hold window is exceeded or the flow ends) and captures that start inside
a connection (the first segment seen sets the cursor).

In-order payload is handed on as the frame's own ``memoryview``: nothing is copied on the common
path, so a C-STORE's pixel data crosses this layer for the price of one call per segment.
"""

from __future__ import annotations

from typing import Callable

SEQ_MOD = 1 << 32
SEQ_HALF = 1 << 31

DEFAULT_MAX_HOLD_BYTES = 512 * 1024
DEFAULT_MAX_HOLD_SEGMENTS = 256


class TcpStream:
    """In-order delivery of one TCP direction to ``deliver(ts, data)`` / ``gap(ts, length)``."""

    __slots__ = ("next_seq", "held", "held_bytes", "max_hold_bytes", "max_hold_segments",
                 "deliver", "report_gap", "retransmitted", "gaps", "gap_bytes", "delivered")

    def __init__(self, deliver: Callable, report_gap: Callable,
                 max_hold_bytes: int = DEFAULT_MAX_HOLD_BYTES,
                 max_hold_segments: int = DEFAULT_MAX_HOLD_SEGMENTS) -> None:
        self.next_seq: int | None = None
        self.held: dict[int, tuple[float, bytes]] = {}
        self.held_bytes = 0
        self.max_hold_bytes = max_hold_bytes
        self.max_hold_segments = max_hold_segments
        self.deliver = deliver
        self.report_gap = report_gap
        self.retransmitted = 0
        self.gaps = 0
        self.gap_bytes = 0
        self.delivered = 0

    def syn(self, seq: int) -> None:
        """A SYN fixes the initial sequence number; data starts one after it."""
        if self.next_seq is None:
            self.next_seq = (seq + 1) % SEQ_MOD

    def segment(self, ts: float, seq: int, data, missing: int = 0) -> None:
        """Offer one segment's payload (``missing`` trailing bytes were not captured)."""
        n = len(data)
        nxt = self.next_seq
        if nxt is None:
            nxt = self.next_seq = seq
        rel = (seq - nxt) % SEQ_MOD
        if rel == 0:
            self._push(ts, data, n, missing)
            if self.held:
                self._drain()
            return
        if rel >= SEQ_HALF:
            # Starts before the cursor: a retransmission, maybe carrying some new bytes.
            behind = SEQ_MOD - rel
            if behind >= n + missing:
                self.retransmitted += 1
                return
            if behind >= n:
                # Only the uncaptured tail is new.
                self._skip(ts, n + missing - behind)
                if self.held:
                    self._drain()
                return
            self._push(ts, data[behind:], n - behind, missing)
            if self.held:
                self._drain()
            return
        # Ahead of the cursor: hold a copy until the hole fills or the window overflows.
        if seq in self.held:
            self.retransmitted += 1
            return
        self.held[seq] = (ts, bytes(data), missing)  # type: ignore[assignment]
        self.held_bytes += n
        if self.held_bytes > self.max_hold_bytes or len(self.held) > self.max_hold_segments:
            self._give_up_hole(ts)

    def flush(self, ts: float) -> None:
        """End of flow: whatever is still held is delivered behind explicit gaps."""
        while self.held:
            self._give_up_hole(ts)

    # -- internals ---------------------------------------------------------------------------
    def _push(self, ts: float, data, n: int, missing: int) -> None:
        if n:
            self.deliver(ts, data)
            self.delivered += n
        self.next_seq = (self.next_seq + n) % SEQ_MOD
        if missing:
            self._skip(ts, missing)

    def _skip(self, ts: float, length: int) -> None:
        self.gaps += 1
        self.gap_bytes += length
        self.report_gap(ts, length)
        self.next_seq = (self.next_seq + length) % SEQ_MOD

    def _drain(self) -> None:
        held = self.held
        while held:
            nxt = self.next_seq
            item = held.pop(nxt, None)
            if item is None:
                # A held segment may overlap the cursor rather than start on it.
                for seq in list(held):
                    rel = (seq - nxt) % SEQ_MOD
                    if rel >= SEQ_HALF:
                        ts, data, missing = held.pop(seq)
                        self.held_bytes -= len(data)
                        behind = SEQ_MOD - rel
                        if behind < len(data):
                            self._push(ts, memoryview(data)[behind:], len(data) - behind, missing)
                        else:
                            self.retransmitted += 1
                        break
                else:
                    return
                continue
            ts, data, missing = item
            self.held_bytes -= len(data)
            self._push(ts, memoryview(data), len(data), missing)

    def _give_up_hole(self, ts: float) -> None:
        """The bytes before the lowest held segment are not coming: report the gap, move on."""
        nxt = self.next_seq
        lowest = min(self.held, key=lambda s: (s - nxt) % SEQ_MOD)
        hole = (lowest - nxt) % SEQ_MOD
        if hole and hole < SEQ_HALF:
            self._skip(ts, hole)
        self._drain()
