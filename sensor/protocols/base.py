"""The contract between the flow layer and the protocol analyzers.

The flow layer (``sensor.flows``) reassembles each TCP direction and calls an analyzer with
in-order bytes. An analyzer never sees packets, only byte chunks in stream order:

* ``data(from_client, ts, chunk)``  - the next in-order bytes of one direction. ``chunk`` is a
  ``memoryview`` that is only valid during the call: copy what you keep (headers, command sets),
  skip the rest by length (data-set fragments, pixel data) without copying.
* ``gap(from_client, ts, length)``  - ``length`` bytes of that direction were never captured.
  The analyzer must resynchronise on the next valid PDU/frame header.
* ``close(ts, reason)``             - the flow ended: "fin", "rst", "timeout", "evicted", "eof".
  Emit whatever records are still open (an association that never released, say).

Optional fast path: an analyzer may expose ``skip_credit``, a two-item list indexed by
``from_client``: how many upcoming bytes of that direction it would discard unseen (a data-set
fragment's body). The flow layer may then consume in-order segments that fit in the credit by
decrementing it, without calling ``data``; the analyzer settles the difference on its next call
(``data``/``gap``/``close``). This keeps Python to once per PDU, not once per segment, on bulk
C-STORE traffic.

Analyzers emit events through ``ctx.emit`` and count anomalies through ``ctx.weird`` (which both
counts and, rate-limited, emits a ``Weird`` event). They must never raise: a hostile byte stream
gives counted weirds, not exceptions (STYLE 3: "need more bytes" is not "bad bytes").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from sensor.events import Counters, Endpoint, Event, Weird

# Per flow, at most this many Weird events are emitted; the counters keep counting after that.
MAX_WEIRD_EVENTS_PER_FLOW = 20


@dataclass(slots=True)
class FlowContext:
    """What an analyzer knows about the flow it serves. Built once per flow."""

    client: Endpoint  # the side that sent the SYN (or, mid-stream, the best guess)
    server: Endpoint
    emit: Callable[[Event], None]
    counters: Counters
    mid_stream: bool = False  # no SYN seen: the capture started inside the connection
    # Set by an analyzer of a mid-stream flow that learnt from the protocol that the flow layer's
    # guess was wrong (the side it calls server is the one that opened the session).
    requestor_is_server: bool = False
    weird_emitted: int = 0

    def weird(self, ts: float, name: str, detail: str = "") -> None:
        self.counters.add("weird." + name)
        if self.weird_emitted < MAX_WEIRD_EVENTS_PER_FLOW:
            self.weird_emitted += 1
            self.emit(Weird(ts, name, self.client, self.server, detail))


class StreamAnalyzer(Protocol):
    app: str  # "dicom" | "hl7"

    def data(self, from_client: bool, ts: float, chunk: memoryview) -> None: ...

    def gap(self, from_client: bool, ts: float, length: int) -> None: ...

    def close(self, ts: float, reason: str) -> None: ...
