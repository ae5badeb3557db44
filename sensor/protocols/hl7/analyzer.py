"""HL7 v2 stream analyzer: MLLP (or raw) frames → ``Hl7Message`` events.

Recognition (``looks_like_hl7``) is by content: an MLLP start block followed by ``MSH`` (stray
CR/LF before the start block are allowed), or, for unframed senders, ``MSH`` + field separator +
component separator at the very start of the direction (``framing="raw"``).

Each direction has its own ``MllpDeframer``; each complete message is parsed by
``msh.parse_message`` and emitted as one ``Hl7Message`` whose ``ts`` is the time of the chunk that
carried its first byte. Malformed headers give a ``hl7.bad_msh`` weird and the message is still
emitted (with the fields that could be read) so that volume features stay honest.

Example::

    >>> from sensor.events import Counters, Endpoint
    >>> from sensor.protocols.base import FlowContext
    >>> out = []
    >>> ctx = FlowContext(Endpoint("10.0.0.1", 40000), Endpoint("10.0.0.2", 2575), out.append, Counters())
    >>> a = Hl7Analyzer(ctx)
    >>> a.data(True, 1.0, memoryview(b"\\x0bMSH|^~\\\\&|RIS|H|LIS|H|2024||ADT^A08|7|P|2.5\\r\\x1c\\r"))
    >>> out[0].message_type, out[0].event, out[0].src.port
    ('ADT', 'A08', 40000)
"""

from __future__ import annotations

from sensor.events import Hl7Message
from sensor.protocols.base import FlowContext
from sensor.protocols.hl7.mllp import DEFAULT_MAX_FRAME, START_BLOCK, MllpDeframer, raw_msh_verdict
from sensor.protocols.hl7.msh import parse_message

_MSH = b"MSH"


def looks_like_hl7(first: bytes, from_client: bool) -> bool | None:
    """True for ``[CR/LF]* 0x0B "MSH"`` or a raw ``MSH|^`` start; None while too few bytes decide."""
    head = bytes(first).lstrip(b"\r\n")
    if not head:
        return None
    if head[0] == START_BLOCK[0]:
        body = head[1:4]
        if body != _MSH[: len(body)]:
            return False
        return True if len(body) == 3 else None
    return raw_msh_verdict(head[:5])


class Hl7Analyzer:
    """One TCP connection carrying HL7 v2. Never raises on any byte stream."""

    app = "hl7"
    __slots__ = ("_ctx", "_dirs")

    def __init__(self, ctx: FlowContext, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._ctx = ctx
        # Index 1 = client → server, index 0 = server → client.
        self._dirs = (self._deframer(False, max_frame), self._deframer(True, max_frame))

    def _deframer(self, from_client: bool, max_frame: int) -> MllpDeframer:
        def on_frame(ts: float, message: bytes, framing: str) -> None:
            self._message(from_client, ts, message, framing)

        return MllpDeframer(on_frame, self._ctx.weird, self._ctx.counters.add, max_frame)

    def data(self, from_client: bool, ts: float, chunk: memoryview) -> None:
        # One copy per chunk so that bytes.find can scan it; HL7 volumes make this cheap.
        self._dirs[from_client].feed(ts, bytes(chunk))

    def gap(self, from_client: bool, ts: float, length: int) -> None:
        self._dirs[from_client].gap(ts, length)

    def close(self, ts: float, reason: str) -> None:
        for d in self._dirs:
            d.close(ts)

    def _message(self, from_client: bool, ts: float, message: bytes, framing: str) -> None:
        ctx = self._ctx
        if not message.strip(b"\r\n \t"):
            ctx.weird(ts, "hl7.empty_frame")
            return
        h = parse_message(message)
        if h.problem is not None:
            ctx.weird(ts, "hl7.bad_msh", h.problem)
        ctx.counters.add("hl7.messages")
        src, dst = (ctx.client, ctx.server) if from_client else (ctx.server, ctx.client)
        ctx.emit(Hl7Message(
            ts=ts, src=src, dst=dst,
            message_type=h.message_type, event=h.event, structure=h.structure, msh_type=h.msh_type,
            sending_app=h.sending_app, sending_facility=h.sending_facility,
            receiving_app=h.receiving_app, receiving_facility=h.receiving_facility,
            control_id=h.control_id, processing_id=h.processing_id, version=h.version,
            ack_code=h.ack_code, acked_control_id=h.acked_control_id,
            segment_types=h.segment_types or {}, size=len(message), framing=framing,
        ))
