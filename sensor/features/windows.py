"""Per-device fixed windows over an event stream that arrives only roughly in time order.

Flows and associations are emitted when they *end*, so an event can arrive after later events.
Each event is bucketed by its own start time (``FlowRecord``/``DicomAssociation`` by ``ts_start``,
``DimseMessage``/``Hl7Message``/``Weird`` by ``ts``). A window ``[s, s+span)`` is finalised once the
stream time passes ``s + span + lateness`` (a watermark: :meth:`WindowBuilder.advance`).

Attribution policy (chosen so that batch and live runs over the same events give the same windows):

* **Flow volumes** (bytes, packets) are split across the windows the flow spans, by time share.
  Shares belonging to windows already finalised are dropped and counted in
  ``windows.late_flow_bytes`` — a day-long MLLP link would otherwise dump a day of volume into one
  window; its messages are still counted, on time, by the HL7 features.
* **Everything else** (connection counts, peers, ports, associations, DIMSE, HL7, observations)
  goes to the window of the event's start; if that window is already finalised, to the earliest
  still-open window (``windows.late_events``). Nothing is dropped silently.

A device is an IP address inside the site's networks (``local_nets``, default the private, CGNAT,
link-local and ULA ranges); outside addresses (internet servers, cloud) are peers, never devices,
so the rules can say "a CT talks to the internet" instead of "a new device 203.0.113.9". A window is only opened for a side that *said something*: a flow's
server counts only if it sent packets back, so a scan of 254 dead addresses yields one busy
scanner window, not 254 "new devices".

Each window also records *observations*: the keys novelty rules and the baseline inventory use
(AE titles claimed, peers answered, services, move destinations, HL7 senders, listening ports,
implementation fingerprints), with the first time seen. Inventory and rules read the same keys,
so training and detection cannot drift apart.

Example::

    >>> b = WindowBuilder(WindowConfig(span=60, lateness=60))
    >>> b.add(some_event)                       # doctest: +SKIP
    >>> finished = b.advance(now=stream_time)   # doctest: +SKIP
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from sensor.events import Counters, DicomAssociation, DimseMessage, FlowRecord, Hl7Message, Weird
from sensor.features.extractors import ALL_EXTRACTORS, EXTRACTORS, Accumulator, WindowContext
from sensor.features.registry import FEATURE_NAMES

_FAIL_STATES = frozenset({"rejected", "no_answer"})
# Bounds that keep a hostile stream (scans, AE guessing) from growing a window without limit.
MAX_OBS_PER_WINDOW = 1024
MAX_PEERS_PER_WINDOW = 4096
MAX_KNOWN_PEERS_PER_DEVICE = 4096
TOP_PEERS = 8  # peers kept on a finished window, for alert context


DEFAULT_LOCAL_NETS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
                      "fc00::/7", "fe80::/10")


@dataclass(frozen=True, slots=True)
class WindowConfig:
    span: float = 60.0  # seconds
    lateness: float = 120.0  # seconds a window stays open after its end (flows/associations end late)
    tz: str = "UTC"  # IANA zone of the site, for time-of-day/week features
    local_nets: tuple[str, ...] = DEFAULT_LOCAL_NETS  # addresses that are site devices

    def __post_init__(self) -> None:
        if self.span <= 0 or self.lateness < 0:
            raise ValueError("window span must be > 0 and lateness >= 0")
        ZoneInfo(self.tz)  # fail early on an unknown zone
        for n in self.local_nets:
            ipaddress.ip_network(n, strict=False)


class LocalNets:
    """Membership test for the site's networks, cached per address (bounded)."""

    def __init__(self, nets: tuple[str, ...] = DEFAULT_LOCAL_NETS, cache: int = 65536) -> None:
        self._nets = [ipaddress.ip_network(n, strict=False) for n in nets]
        self._cache: dict[str, bool] = {}
        self._max = cache

    def __call__(self, ip: str) -> bool:
        v = self._cache.get(ip)
        if v is None:
            try:
                a = ipaddress.ip_address(ip)
                v = any(a in n for n in self._nets if n.version == a.version)
            except ValueError:
                v = False
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[ip] = v
        return v


@dataclass(slots=True)
class DeviceWindow:
    """One finished device window: feature values by registry name, plus context for alerts."""

    ip: str
    start: float
    end: float
    features: dict[str, float]
    macs: tuple[str, ...] = ()
    ae_titles: tuple[str, ...] = ()
    obs: dict[tuple, float] = field(default_factory=dict)
    peers: tuple[tuple[str, str | None], ...] = ()  # (peer ip, peer AE title), busiest first
    peer_ips: frozenset[str] = frozenset()  # every flow peer (for the inventory's peer memory)


def parse_span(text: str | float) -> float:
    """``"60s"``, ``"5m"``, ``"1h"``, ``"90"`` → seconds.

    >>> parse_span("5m"), parse_span("90"), parse_span(30)
    (300.0, 90.0, 30.0)
    """
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        t = text.strip().lower()
        mult = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}.get(t[-1:], None)
        try:
            value = float(t[:-1]) * mult if mult is not None else float(t)
        except ValueError:
            raise ValueError(f"not a duration: {text!r} (use e.g. 60s, 5m, 1h)") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"duration must be positive: {text!r}")
    return value


class WindowBuilder:
    """Accumulate events into per-device windows; finish them by watermark.

    Memory is bounded by (active devices) × (open windows: ``(span + lateness) / span + 1``), plus a
    capped peer memory per device for the ``flow.new_peers`` feature.
    """

    def __init__(self, config: WindowConfig = WindowConfig(), counters: Counters | None = None,
                 known_peers: dict[str, Iterable[str]] | None = None) -> None:
        self.config = config
        self.counters = counters if counters is not None else Counters()
        self._ctx_tz = ZoneInfo(config.tz)
        self.is_local = LocalNets(config.local_nets)
        self._open: dict[tuple[float, str], Accumulator] = {}
        self._closed_before = -math.inf  # every window starting before this is finished
        self._known_peers: dict[str, set[str]] = {ip: set(p) for ip, p in (known_peers or {}).items()}
        self.stream_time = -math.inf

    # -- input
    def add(self, event: object) -> None:
        """Attribute one event to the windows of the devices it involves."""
        kind = type(event)
        extractors = EXTRACTORS.get(kind)
        if extractors is None:
            self.counters.add("windows.unknown_event")
            return
        if kind is FlowRecord:
            self._add_flow(event, extractors)  # type: ignore[arg-type]
        elif kind is DicomAssociation:
            self._add_association(event, extractors)  # type: ignore[arg-type]
        elif kind is DimseMessage:
            self._add_dimse(event, extractors)  # type: ignore[arg-type]
        elif kind is Hl7Message:
            self._add_hl7(event, extractors)  # type: ignore[arg-type]
        else:
            self._add_weird(event, extractors)  # type: ignore[arg-type]
        self.counters.add("windows.events")

    def _acc(self, ip: str, ts: float) -> Accumulator:
        span = self.config.span
        if ts < self._closed_before:
            self.counters.add("windows.late_events")
            ts = self._closed_before
        start = math.floor(ts / span) * span
        key = (start, ip)
        acc = self._open.get(key)
        if acc is None:
            acc = self._open[key] = Accumulator(ip, start, start + span)
        return acc

    @staticmethod
    def _observe(acc: Accumulator, key: tuple, ts: float) -> None:
        if key in acc.obs:
            return
        if len(acc.obs) < MAX_OBS_PER_WINDOW:
            acc.obs[key] = ts

    @staticmethod
    def _peer(acc: Accumulator, ip: str, nbytes: float, ae: str | None = None) -> None:
        act = acc.peer_activity.get(ip)
        if act is None:
            if len(acc.peer_activity) >= MAX_PEERS_PER_WINDOW:
                return
            act = acc.peer_activity[ip] = [0.0, 0.0]
        act[0] += 1
        act[1] += nbytes
        if ae:
            acc.peer_ae[ip] = ae

    def _add_flow(self, ev: FlowRecord, extractors) -> None:
        answered = ev.packets[1] > 0
        sides = [("client", ev.client, ev.server)]
        if answered:
            sides.append(("server", ev.server, ev.client))
        for side, me, other in sides:
            if not self.is_local(me.ip):
                continue
            acc = self._acc(me.ip, ev.ts_start)
            for x in extractors:
                x.on_event(acc, ev, side)
            if me.mac:
                acc.macs.add(me.mac)
            self._peer(acc, other.ip, ev.bytes[0] + ev.bytes[1])
            if side == "client":
                if answered and ev.tcp_state not in _FAIL_STATES:
                    self._observe(acc, ("peer", ev.server.ip), ev.ts_start)
            elif ev.handshake or (ev.proto != "tcp" and ev.tcp_state is None):
                self._observe(acc, ("listen", ev.proto, ev.server.port), ev.ts_start)
        self._split_volume(ev, answered)

    def _split_volume(self, ev: FlowRecord, answered: bool) -> None:
        """Bytes/packets by time share over the windows the flow spans (only still-open ones)."""
        span = self.config.span
        t0, t1 = ev.ts_start, max(ev.ts_end, ev.ts_start)
        dur = t1 - t0
        first = math.floor(t0 / span) * span
        shares: list[tuple[float, float]] = []
        if dur <= 0:
            shares.append((first, 1.0))
        else:
            s = first
            while s < t1:
                overlap = min(t1, s + span) - max(t0, s)
                if overlap > 0:
                    shares.append((s, overlap / dur))
                s += span
        b_out, b_in = ev.bytes
        p_out, p_in = ev.packets
        client_local, server_local = self.is_local(ev.client.ip), self.is_local(ev.server.ip)
        for s, frac in shares:
            if s < self._closed_before:
                self.counters.add("windows.late_flow_bytes", int((b_out + b_in) * frac))
                continue
            if client_local:
                c = self._open.get((s, ev.client.ip)) or self._acc(ev.client.ip, s)
                c.add("flow.bytes_out", b_out * frac)
                c.add("flow.bytes_in", b_in * frac)
                c.add("flow.packets_out", p_out * frac)
                c.add("flow.packets_in", p_in * frac)
            if answered and server_local:
                v = self._open.get((s, ev.server.ip)) or self._acc(ev.server.ip, s)
                v.add("flow.bytes_out", b_in * frac)
                v.add("flow.bytes_in", b_out * frac)
                v.add("flow.packets_out", p_in * frac)
                v.add("flow.packets_in", p_out * frac)

    def _add_association(self, ev: DicomAssociation, extractors) -> None:
        sides = [("client", ev.client, ev.called_ae)]
        if ev.result != "no_response":
            sides.append(("server", ev.server, ev.calling_ae))
        claimed = ev.result not in ("rejected", "no_response")
        for side, me, peer_ae in sides:
            if not self.is_local(me.ip):
                continue
            acc = self._acc(me.ip, ev.ts_start)
            for x in extractors:
                x.on_event(acc, ev, side)
            if me.mac:
                acc.macs.add(me.mac)
            other = ev.server if side == "client" else ev.client
            self._peer(acc, other.ip, 0.0, peer_ae)
            own_ae = ev.calling_ae if side == "client" else ev.called_ae
            if own_ae and claimed:
                acc.ae_titles.add(own_ae)
                self._observe(acc, ("ae", own_ae), ev.ts_start)
            if side == "client":
                if ev.req_impl_uid or ev.req_impl_version:
                    self._observe(acc, ("impl", "scu", ev.req_impl_uid, ev.req_impl_version), ev.ts_start)
            elif ev.acc_impl_uid or ev.acc_impl_version:
                self._observe(acc, ("impl", "scp", ev.acc_impl_uid, ev.acc_impl_version), ev.ts_start)

    def _add_dimse(self, ev: DimseMessage, extractors) -> None:
        by_requestor = ev.requested_by == "requestor"
        for side, me in (("client", ev.client), ("server", ev.server)):
            if not self.is_local(me.ip):
                continue
            acc = self._acc(me.ip, ev.ts)
            for x in extractors:
                x.on_event(acc, ev, side)
            if me.mac:
                acc.macs.add(me.mac)
            other, other_ae = (ev.server, ev.called_ae) if side == "client" else (ev.client, ev.calling_ae)
            self._peer(acc, other.ip, ev.dataset_bytes + ev.response_dataset_bytes, other_ae)
            if (side == "client") == by_requestor:
                self._observe(acc, ("service", other.ip, ev.command, ev.sop_class), ev.ts)
                if ev.command == "C-MOVE" and ev.move_destination:
                    self._observe(acc, ("move_dest", other.ip, ev.move_destination), ev.ts)

    def _add_hl7(self, ev: Hl7Message, extractors) -> None:
        for side, me, other in (("src", ev.src, ev.dst), ("dst", ev.dst, ev.src)):
            if not self.is_local(me.ip):
                continue
            acc = self._acc(me.ip, ev.ts)
            for x in extractors:
                x.on_event(acc, ev, side)
            if me.mac:
                acc.macs.add(me.mac)
            self._peer(acc, other.ip, ev.size)
            if side == "src":
                self._observe(acc, ("hl7_sender", ev.sending_app, ev.sending_facility), ev.ts)

    def _add_weird(self, ev: Weird, extractors) -> None:
        seen: set[str] = set()
        for ep in (ev.client, ev.server):
            if ep is None or ep.ip in seen or not self.is_local(ep.ip):
                continue
            seen.add(ep.ip)
            acc = self._acc(ep.ip, ev.ts)
            for x in extractors:
                x.on_event(acc, ev, "any")

    # -- output
    def advance(self, now: float) -> list[DeviceWindow]:
        """Move the watermark to stream time ``now``; return windows finished by it, in time order."""
        self.stream_time = max(self.stream_time, now)
        span = self.config.span
        boundary = math.floor((now - self.config.lateness) / span) * span
        if boundary <= self._closed_before:
            return []
        self._closed_before = boundary
        done = sorted(k for k in self._open if k[0] < boundary)
        return [self._finish(self._open.pop(k)) for k in done]

    def flush(self) -> list[DeviceWindow]:
        """Finish every open window (end of input)."""
        done = sorted(self._open)
        out = [self._finish(self._open.pop(k)) for k in done]
        if done:
            self._closed_before = max(self._closed_before, done[-1][0] + self.config.span)
        return out

    def open_windows(self) -> int:
        return len(self._open)

    def _finish(self, acc: Accumulator) -> DeviceWindow:
        known = self._known_peers.get(acc.ip)
        ctx = WindowContext(self._ctx_tz, known if known is not None else frozenset())
        values: dict[str, float] = {}
        for x in ALL_EXTRACTORS:
            values.update(x.finalize(acc, ctx))
        peers = acc.sets.get("peers")
        if peers:
            mem = self._known_peers.setdefault(acc.ip, set())
            for p in peers:
                if len(mem) >= MAX_KNOWN_PEERS_PER_DEVICE:
                    break
                mem.add(p)
        busiest = sorted(acc.peer_activity.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))[:TOP_PEERS]
        self.counters.add("windows.finished")
        return DeviceWindow(
            ip=acc.ip, start=acc.start, end=acc.end,
            features={n: float(values.get(n, 0.0)) for n in FEATURE_NAMES},
            macs=tuple(sorted(acc.macs)), ae_titles=tuple(sorted(acc.ae_titles)), obs=acc.obs,
            peers=tuple((ip, acc.peer_ae.get(ip)) for ip, _ in busiest),
            peer_ips=frozenset(peers) if peers else frozenset(),
        )


def iter_windows(events: Iterable[object], config: WindowConfig = WindowConfig(),
                 counters: Counters | None = None) -> Iterator[DeviceWindow]:
    """Batch helper: windows of an event stream, advancing the watermark on event time.

    Stream time is the latest *end* time seen (events are emitted when they end).
    """
    b = WindowBuilder(config, counters)
    for ev in events:
        b.add(ev)
        yield from b.advance(event_end_time(ev))
    yield from b.flush()


def event_end_time(ev: object) -> float:
    """The stream time an event's arrival proves: its end (or response) time."""
    t = getattr(ev, "ts_end", None)
    if t is None:
        t = getattr(ev, "ts_response", None) or ev.ts
    return float(t)
