"""The bounded bidirectional flow table.

Every IP packet lands in a flow keyed by (proto, endpoints); the first packet's sender is the
client unless a SYN/SYN-ACK says otherwise. TCP flows keep one ``TcpStream`` per direction and,
once the payload is recognised by content (``sensor.protocols.dispatch``), one analyzer. Flows
end on RST, after both FINs (with a short linger so the last ACK does not start a ghost flow), on
idle timeout, on eviction when the table is full, or at the end of input; each end emits one
``FlowRecord`` and closes the analyzer. Every eviction is counted.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Callable

from sensor.decode.l2l4 import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    P_DPORT,
    P_DST,
    P_FLAGS,
    P_FRAME,
    P_IPLEN,
    P_MACOFF,
    P_MISSING,
    P_PAYLOAD,
    P_PROTO,
    P_SEQ,
    P_SPORT,
    P_SRC,
    P_TS,
    P_VLAN,
)
from sensor.events import Counters, Endpoint, Event, FlowRecord
from sensor.flows.stream import TcpStream
from sensor.protocols import dispatch
from sensor.protocols.base import FlowContext

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_FLAG_LETTERS = ((SYN, "S"), (ACK, "A"), (FIN, "F"), (PSH, "P"), (RST, "R"), (URG, "U"))

# A flow that is not recognised within this many payload segments (per flow) stops being probed.
MAX_PROBE_SEGMENTS = 32
# Bytes held (copied) per flow while it is not yet recognised.
MAX_PROBE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class FlowConfig:
    tcp_idle: float = 300.0  # DICOM associations idle for minutes between studies are normal
    udp_idle: float = 60.0
    closed_linger: float = 2.0
    max_flows: int = 262_144
    sweep_every: float = 5.0  # seconds of capture time between idle sweeps
    max_hold_bytes: int = 512 * 1024
    max_hold_segments: int = 256
    fast_skip: bool = True  # consume opaque data-set segments by skip credit (off: every byte is fed)


def _ip_str(addr) -> str:
    if isinstance(addr, int):
        return socket.inet_ntoa(addr.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, addr)


def _mac_str(frame, off: int) -> str | None:
    if off < 0:
        return None
    return bytes(frame[off:off + 6]).hex(":")


class Flow:
    """Mutable per-flow state; becomes a frozen FlowRecord when it ends."""

    __slots__ = ("key", "proto", "client", "server", "ts_start", "ts_last", "packets", "bytes",
                 "payload", "flags", "syn", "synack", "handshake", "rst", "fins", "closed_at",
                 "streams", "app", "analyzer", "probe_buf", "probe_segments", "ctx", "vlan",
                 "mid_stream", "c_mac", "s_mac", "credit", "isn", "fast")

    def __init__(self, key, proto: int, ts: float) -> None:
        self.key = key
        self.proto = proto
        self.ts_start = ts
        self.ts_last = ts
        self.packets = [0, 0]
        self.bytes = [0, 0]
        self.payload = [0, 0]
        self.flags = 0
        self.syn = self.synack = self.handshake = self.rst = False
        self.fins = 0
        self.closed_at: float | None = None
        self.streams: list[TcpStream] | None = None
        self.app: str | None = None
        self.analyzer = None
        self.probe_buf: list | None = None
        self.probe_segments = 0
        self.ctx: FlowContext | None = None
        self.vlan = 0
        self.mid_stream = False
        self.credit: list[int] | None = None  # the analyzer's skip credit, by from_client
        self.fast = -1  # compiled FastTable entry (-1: none, -2: ended, never again)
        self.isn: list[int | None] | None = None


class FlowTable:
    """Feed it decoded packet tuples; it emits FlowRecords and drives the analyzers."""

    def __init__(self, emit: Callable[[Event], None], counters: Counters,
                 config: FlowConfig = FlowConfig()) -> None:
        self.emit = emit
        self.counters = counters
        self.config = config
        self.flows: dict[tuple, Flow] = {}
        self.now = 0.0
        self._next_sweep = 0.0
        self.fast = None  # a sensor._fast FastTable counting for us (attach_fast), or None

    # -- the per-packet path -------------------------------------------------------------------
    def process(self, packets: list[tuple]) -> None:
        """Feed decoded Packet tuples (``decode_batch``) in capture order."""
        one = self._one
        for p in packets:
            one(p)
        if packets:
            self.now = max(self.now, packets[-1][P_TS])

    def attach_fast(self, fast) -> None:
        """Let a compiled ``sensor._fast`` FastTable count registered flows' packets on our behalf.

        It calls ``_one`` for every packet it does not count itself, writes its counts back into a
        Flow before Python sees that flow again (``release`` at the end, ``merge_all`` before a
        sweep) and reads the flow's state after every ``_one``. Attributes it reads and writes:
        Flow.fast/key/closed_at/handshake/syn/synack/app/credit/streams/packets/bytes/payload/
        flags/ts_last, TcpStream.next_seq/held/delivered, FlowTable._next_sweep.
        """
        self.fast = fast

    def _one(self, p: tuple) -> Flow:
        """One packet; returns the flow it went to (the compiled loop re-reads that flow's state)."""
        if p[P_TS] >= self._next_sweep:
            self.now = p[P_TS]
            self._sweep(p[P_TS])
        flows = self.flows
        proto = p[P_PROTO]
        src, sport, dst, dport = p[P_SRC], p[P_SPORT], p[P_DST], p[P_DPORT]
        key = (proto, src, sport, dst, dport)
        flow = flows.get(key)
        if flow is not None:
            to_server = True
        else:
            flow = flows.get((proto, dst, dport, src, sport))
            if flow is None:
                flow = self._new_flow(p, key)
                to_server = flow.key == key
            else:
                to_server = False
        if flow.closed_at is not None and p[P_FLAGS] & SYN and not p[P_FLAGS] & ACK:
            # Port reuse: a fresh SYN on a closed flow starts a new connection.
            self._end(flow, flow.ts_last, "rst" if flow.rst else "fin")
            flow = self._new_flow(p, key)
            to_server = True
        ts = p[P_TS]
        d = 0 if to_server else 1
        flow.ts_last = ts
        flow.packets[d] += 1
        flow.bytes[d] += p[P_IPLEN]
        payload = p[P_PAYLOAD]
        if proto == IPPROTO_TCP:
            credit = flow.credit
            if credit is not None and payload is not None and not p[P_FLAGS] & 0x07:
                # Fast path (protocols/base.py): an in-order segment that lies inside opaque
                # data-set bytes is consumed by sequence arithmetic, without a call.
                n = len(payload)
                fc = 1 - d
                if n <= credit[fc] and not p[P_MISSING]:
                    stream = flow.streams[d]
                    if p[P_SEQ] == stream.next_seq and not stream.held:
                        credit[fc] -= n
                        stream.next_seq = (stream.next_seq + n) & 0xFFFFFFFF
                        stream.delivered += n
                        flow.payload[d] += n
                        flow.flags |= p[P_FLAGS]
                        return flow
            self._tcp(flow, p, d, ts, payload)
        elif payload is not None:
            flow.payload[d] += len(payload)
        return flow

    def _new_flow(self, p: tuple, key: tuple) -> Flow:
        flows = self.flows
        if len(flows) >= self.config.max_flows:
            # Evict the oldest-created flow: O(1) with dict order, and counted.
            oldest = next(iter(flows.values()))
            self.counters.add("flows.evicted")
            if oldest.fast >= 0:
                self.fast.release(oldest)  # its latest packet time first (the compiled side's counts)
            self._end(oldest, oldest.ts_last, "evicted")
        flags = p[P_FLAGS]
        proto = p[P_PROTO]
        if (proto == IPPROTO_TCP and flags & SYN and flags & ACK) or \
                (not flags & SYN and _looks_like_server_port(p[P_SPORT], p[P_DPORT])):
            # The first packet seen came from the server: a SYN-ACK, or - when the capture began
            # inside the conversation - it was sent from a service port to a client port.
            key = (proto, p[P_DST], p[P_DPORT], p[P_SRC], p[P_SPORT])
            flow = Flow(key, proto, p[P_TS])
            flow.c_mac = _mac_str(p[P_FRAME], p[P_MACOFF])
            flow.s_mac = _mac_str(p[P_FRAME], p[P_MACOFF] + 6) if p[P_MACOFF] >= 0 else None
        else:
            flow = Flow(key, proto, p[P_TS])
            # Ethernet: destination MAC first, then source.
            off = p[P_MACOFF]
            flow.c_mac = _mac_str(p[P_FRAME], off + 6) if off >= 0 else None
            flow.s_mac = _mac_str(p[P_FRAME], off) if off >= 0 else None
        flow.vlan = p[P_VLAN]
        if proto == IPPROTO_TCP:
            flow.mid_stream = not (flags & SYN)
        flows[flow.key] = flow
        self.counters.add("flows.created")
        return flow

    def _tcp(self, flow: Flow, p: tuple, d: int, ts: float, payload) -> None:
        flags = p[P_FLAGS]
        flow.flags |= flags
        if flags & (SYN | FIN | RST):
            if flags & SYN:
                if flags & ACK:
                    flow.synack = True
                else:
                    flow.syn = True
                # Streams are built on the first payload byte; a SYN only fixes the ISN, so a
                # scan's thousands of SYN-only flows cost no stream objects.
                if flow.streams is None:
                    if flow.isn is None:
                        flow.isn = [None, None]
                    flow.isn[d] = p[P_SEQ]
                else:
                    flow.streams[d].syn(p[P_SEQ])
            if flags & RST:
                # Linger instead of ending now, so a repeated RST does not start a ghost flow.
                flow.rst = True
                if flow.closed_at is None:
                    flow.closed_at = ts
            if flags & FIN:
                flow.fins |= 1 << d
                if flow.fins == 3 and flow.closed_at is None:
                    flow.closed_at = ts
        elif not flow.handshake and flow.syn and flow.synack and flags & ACK and d == 0:
            flow.handshake = True
        if payload is not None:
            n = len(payload)
            flow.payload[d] += n + p[P_MISSING]
            if flow.app is not False:
                if flow.streams is None:
                    flow.streams = self._make_streams(flow)
                    if flow.isn is not None:
                        for i, isn in enumerate(flow.isn):
                            if isn is not None:
                                flow.streams[i].syn(isn)
                flow.streams[d].segment(ts, p[P_SEQ], payload, p[P_MISSING])

    def _make_streams(self, flow: Flow) -> list[TcpStream]:
        c = self.config
        return [
            TcpStream(lambda ts, data: self._data(flow, True, ts, data),
                      lambda ts, n: self._gap(flow, True, ts, n), c.max_hold_bytes, c.max_hold_segments),
            TcpStream(lambda ts, data: self._data(flow, False, ts, data),
                      lambda ts, n: self._gap(flow, False, ts, n), c.max_hold_bytes, c.max_hold_segments),
        ]

    # -- analyzer attachment -------------------------------------------------------------------
    def _data(self, flow: Flow, from_client: bool, ts: float, data) -> None:
        analyzer = flow.analyzer
        if analyzer is not None:
            analyzer.data(from_client, ts, data)
            return
        if flow.app is False:
            return
        # Not yet recognised. Each direction is probed on its first bytes; a flow is given up only
        # when both directions said no: a fuzzed A-ASSOCIATE-RQ is recognised by the PACS's
        # A-ABORT answer, and the garbage before it is then replayed to the analyzer (and counted).
        probe = flow.probe_buf
        if probe is None:
            probe = flow.probe_buf = [bytearray(), bytearray(), [], [None, None], 0]
        bufs, pending, verdicts = probe[:2], probe[2], probe[3]
        idx = 1 if from_client else 0
        if flow.mid_stream:
            # Mid-stream only the segment that matches is replayed (the analyzer resynchronises
            # inside it), so nothing older is kept.
            pending.clear()
            probe[4] = 0
        pending.append((from_client, ts, bytes(data)))
        probe[4] += len(data)
        flow.probe_segments += 1
        if verdicts[idx] is None:
            buf = bufs[idx]
            if len(buf) < dispatch.PROBE_LIMIT:
                buf += data[:dispatch.PROBE_LIMIT - len(buf)]
            verdict = dispatch.recognise(bytes(buf), from_client)
            if verdict is False and flow.mid_stream and flow.probe_segments < MAX_PROBE_SEGMENTS:
                # Mid-stream capture: look for a PDU/frame start inside this segment, else try the
                # next segment.
                buf.clear()
                verdict = dispatch.recognise_inside(data)
            if verdict is False:
                verdicts[idx] = False
            elif verdict is not None:
                app, factory = verdict
                self._attach(flow, app, factory, from_client)
                return
        if (verdicts[0] is False and verdicts[1] is False) or probe[4] > MAX_PROBE_BYTES \
                or flow.probe_segments >= MAX_PROBE_SEGMENTS:
            flow.app = False
            flow.probe_buf = None

    def _attach(self, flow: Flow, app: str, factory, from_client: bool) -> None:
        client, server = self._endpoints(flow)
        flow.ctx = FlowContext(client, server, self.emit, self.counters, mid_stream=flow.mid_stream)
        flow.app = app
        self.counters.add(f"flows.app.{app}")
        try:
            flow.analyzer = factory(flow.ctx)
        except Exception:  # an analyzer constructor must not take the sensor down
            self.counters.add(f"analyzer.{app}.init_error")
            flow.app = False
            return
        if self.config.fast_skip:
            flow.credit = getattr(flow.analyzer, "skip_credit", None)
        pending = flow.probe_buf[2] if flow.probe_buf else []
        flow.probe_buf = None
        if flow.mid_stream:
            # Replay only from the segment that matched; earlier bytes were mid-PDU.
            pending = pending[-1:]
        for fc, ts, data in pending:
            flow.analyzer.data(fc, ts, memoryview(data))

    def _gap(self, flow: Flow, from_client: bool, ts: float, length: int) -> None:
        self.counters.add("tcp.gap_bytes", length)
        if flow.analyzer is not None:
            flow.analyzer.gap(from_client, ts, length)

    def _endpoints(self, flow: Flow) -> tuple[Endpoint, Endpoint]:
        _, cip, cport, sip, sport = flow.key
        return (Endpoint(_ip_str(cip), cport, flow.c_mac), Endpoint(_ip_str(sip), sport, flow.s_mac))

    # -- ending flows ---------------------------------------------------------------------------
    def _sweep(self, now: float) -> None:
        if self.fast is not None:
            self.fast.merge_all()  # idle times need every flow's latest packet
        c = self.config
        self._next_sweep = now + c.sweep_every
        expired = []
        for flow in self.flows.values():
            if flow.closed_at is not None:
                if now - flow.ts_last >= c.closed_linger:
                    expired.append((flow, "rst" if flow.rst else "fin"))
            elif now - flow.ts_last >= (c.tcp_idle if flow.proto == IPPROTO_TCP else c.udp_idle):
                expired.append((flow, "timeout"))
        for flow, reason in expired:
            self._end(flow, flow.ts_last, reason)

    def advance(self, now: float) -> None:
        """Let the clock move without packets (live capture on a quiet link)."""
        if now > self.now:
            self.now = now
        if now >= self._next_sweep:
            self._sweep(now)

    def finish(self) -> None:
        if self.fast is not None:
            self.fast.merge_all()  # ts_last of every flow is read below
        for flow in list(self.flows.values()):
            reason = ("rst" if flow.rst else "fin") if flow.closed_at is not None else "eof"
            self._end(flow, flow.ts_last, reason)

    def _end(self, flow: Flow, ts: float, reason: str) -> None:
        if flow.fast >= 0:
            self.fast.release(flow)  # the compiled side's counts first; it forgets the flow
        if self.flows.get(flow.key) is flow:
            del self.flows[flow.key]
        if flow.streams is not None:
            for stream in flow.streams:
                stream.flush(ts)
                if stream.retransmitted:
                    self.counters.add("tcp.retransmitted", stream.retransmitted)
        if flow.analyzer is not None:
            try:
                flow.analyzer.close(ts, reason)
            except Exception:
                self.counters.add(f"analyzer.{flow.app}.close_error")
        client, server = self._endpoints(flow)
        packets, nbytes, payload = tuple(flow.packets), tuple(flow.bytes), tuple(flow.payload)
        if flow.mid_stream and flow.ctx is not None and flow.ctx.requestor_is_server:
            # The analyzer learnt who opened the session; only mid-stream guesses are corrected.
            client, server = server, client
            packets, nbytes, payload = packets[::-1], nbytes[::-1], payload[::-1]
        self.emit(FlowRecord(
            ts_start=flow.ts_start, ts_end=flow.ts_last, proto=_proto_name(flow.proto),
            client=client, server=server, packets=packets, bytes=nbytes,
            payload_bytes=payload,
            tcp_state=_tcp_state(flow) if flow.proto == IPPROTO_TCP else None,
            tcp_flags="".join(ch for bit, ch in _FLAG_LETTERS if flow.flags & bit),
            handshake=flow.handshake, rst=flow.rst, app=flow.app or None, close_reason=reason,
            vlan=(flow.vlan,) if flow.vlan else (),
        ))
        self.counters.add("flows.ended")


# Ports that identify the server side of a conversation seen without its SYN: imaging and HL7
# services (DESIGN §4) and the background services of a hospital LAN. Below 1024 counts too.
SERVICE_PORTS = frozenset((104, 11112, 4242, 2761, 2762, 2575, 2576, 2577, 6661, 6662, 8080, 8443,
                           3389, 5900, 1433, 3306, 5432))


def _looks_like_server_port(sport: int, dport: int) -> bool:
    """True when ``sport`` is a service port and ``dport`` is not (no SYN seen to tell)."""
    s_service = sport in SERVICE_PORTS or 0 < sport < 1024
    d_service = dport in SERVICE_PORTS or 0 < dport < 1024
    return s_service and not d_service


def _proto_name(proto: int) -> str:
    return {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_ICMP: "icmp",
            IPPROTO_ICMPV6: "ipv6-icmp"}.get(proto, f"other:{proto}")


def _tcp_state(flow: Flow) -> str:
    if flow.handshake or (flow.synack and (flow.payload[0] or flow.payload[1])):
        return "reset" if flow.rst and flow.fins != 3 else "established"
    if flow.syn and flow.rst and not flow.synack:
        return "rejected"
    if flow.syn and not flow.synack:
        return "no_answer"
    if flow.rst:
        return "reset"
    return "open"
