"""Feature extractors: ``on_event`` accumulates into a device window, ``finalize`` names the numbers.

Extractors are stateless; the per-device, per-window state lives in :class:`Accumulator`, so one
instance of each serves every window. ``EXTRACTORS`` is the one explicit table (STYLE 5: no
registration by import side effect). Every name an extractor returns must be in the registry; the
test suite checks that the extractors together produce exactly ``FEATURE_NAMES``.

Sides: an event touches two devices. ``side`` says which one this window belongs to:
``"client"``/``"server"`` for flows, associations and DIMSE (association requestor/acceptor),
``"src"``/``"dst"`` for HL7, ``"any"`` for weirds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar, Protocol
from zoneinfo import ZoneInfo

from sensor.events import DicomAssociation, DimseMessage, FlowRecord, Hl7Message, Weird
from sensor.features.registry import DIMSE_COUNTED, HL7_TYPES, NAK_CODES, QUERY_LEVELS

_TWO_PI = 2.0 * math.pi
_FAIL_STATES = frozenset({"rejected", "no_answer"})


@dataclass(slots=True)
class Accumulator:
    """Everything one device's window collects. Sets are bounded by the builder's caps."""

    ip: str
    start: float
    end: float
    counts: dict[str, float] = field(default_factory=dict)
    sets: dict[str, set] = field(default_factory=dict)
    macs: set[str] = field(default_factory=set)
    ae_titles: set[str] = field(default_factory=set)
    # Novelty observations (key tuple → first time seen in this window); see windows.py.
    obs: dict[tuple, float] = field(default_factory=dict)
    # peer ip → [events, bytes]; peer ip → AE title (for alert context)
    peer_activity: dict[str, list[float]] = field(default_factory=dict)
    peer_ae: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, n: float = 1.0) -> None:
        self.counts[name] = self.counts.get(name, 0.0) + n

    def put(self, name: str, value: object) -> None:
        s = self.sets.get(name)
        if s is None:
            s = self.sets[name] = set()
        s.add(value)

    def n(self, name: str) -> float:
        s = self.sets.get(name)
        return float(len(s)) if s else 0.0


@dataclass(frozen=True, slots=True)
class WindowContext:
    """Read-only context for ``finalize``: the site's time zone and the device's peer memory."""

    tz: ZoneInfo
    known_peers: frozenset[str] | set[str] = frozenset()


class Extractor(Protocol):
    names: tuple[str, ...]

    def on_event(self, acc: Accumulator, event: object, side: str) -> None: ...

    def finalize(self, acc: Accumulator, ctx: WindowContext) -> dict[str, float]: ...


def _counts(acc: Accumulator, names: tuple[str, ...]) -> dict[str, float]:
    c = acc.counts
    return {n: c.get(n, 0.0) for n in names}


class FlowExtractor:
    """L3/L4 volume, fan-out and failures. Volumes come pre-split by the builder (time share)."""

    names = ("flow.bytes_out", "flow.bytes_in", "flow.packets_out", "flow.packets_in", "flow.conns_out",
             "flow.conns_in", "flow.peers", "flow.new_peers", "flow.dst_ports", "flow.listen_ports",
             "flow.failed_out", "flow.failed_in", "flow.resets", "flow.udp_flows")
    _counted = ("flow.bytes_out", "flow.bytes_in", "flow.packets_out", "flow.packets_in", "flow.conns_out",
                "flow.conns_in", "flow.failed_out", "flow.failed_in", "flow.resets", "flow.udp_flows")

    def on_event(self, acc: Accumulator, ev: FlowRecord, side: str) -> None:
        # Connection-level facts only; byte/packet volumes are added by the builder per time share.
        if side == "client":
            acc.add("flow.conns_out")
            acc.put("peers", ev.server.ip)
            acc.put("dst_ports", (ev.proto, ev.server.port))
            if ev.tcp_state in _FAIL_STATES:
                acc.add("flow.failed_out")
        else:
            acc.add("flow.conns_in")
            acc.put("peers", ev.client.ip)
            if ev.tcp_state == "rejected":
                acc.add("flow.failed_in")
            elif ev.handshake or ev.proto != "tcp":
                acc.put("listen_ports", (ev.proto, ev.server.port))
        if ev.rst:
            acc.add("flow.resets")
        if ev.proto == "udp":
            acc.add("flow.udp_flows")

    def finalize(self, acc: Accumulator, ctx: WindowContext) -> dict[str, float]:
        out = _counts(acc, self._counted)
        peers = acc.sets.get("peers") or set()
        out["flow.peers"] = float(len(peers))
        out["flow.new_peers"] = float(len(peers - ctx.known_peers)) if ctx.known_peers else float(len(peers))
        out["flow.dst_ports"] = acc.n("dst_ports")
        out["flow.listen_ports"] = acc.n("listen_ports")
        return out


class DicomExtractor:
    names = ("dicom.assoc_rq", "dicom.assoc_ac", "dicom.rejected", "dicom.rejects_sent", "dicom.aborts",
             "dicom.peer_aes", "dicom.contexts_proposed", "dicom.sop_classes", "dicom.decode_errors")
    _counted = ("dicom.assoc_rq", "dicom.assoc_ac", "dicom.rejected", "dicom.rejects_sent", "dicom.aborts",
                "dicom.contexts_proposed", "dicom.decode_errors")

    def on_event(self, acc: Accumulator, ev: DicomAssociation, side: str) -> None:
        rejected = ev.result == "rejected"
        if side == "client":
            acc.add("dicom.assoc_rq")
            acc.add("dicom.contexts_proposed", len(ev.contexts))
            if rejected:
                acc.add("dicom.rejected")
            if ev.called_ae:
                acc.put("peer_aes", ev.called_ae)
        else:
            if ev.result == "accepted" or ev.result == "aborted":
                acc.add("dicom.assoc_ac")
            if rejected:
                acc.add("dicom.rejects_sent")
            if ev.calling_ae:
                acc.put("peer_aes", ev.calling_ae)
        if ev.result == "aborted" or ev.abort is not None:
            acc.add("dicom.aborts")
        acc.add("dicom.decode_errors", ev.decode_errors)
        for sop in ev.sop_classes:
            acc.put("assoc_sops", sop)

    def finalize(self, acc: Accumulator, ctx: WindowContext) -> dict[str, float]:
        out = _counts(acc, self._counted)
        out["dicom.peer_aes"] = acc.n("peer_aes")
        out["dicom.sop_classes"] = acc.n("assoc_sops")
        return out


def _is_failure(status: str | None) -> bool:
    """PS3.7 C: 0000 success, FF00/FF01 pending, FE00 cancel, Bxxx/0001/0107/0116 warning; rest fail."""
    if not status:
        return False
    s = status[2:].upper() if status[:2].lower() == "0x" else status.upper()
    if s in ("0000", "FF00", "FF01", "FE00", "0001", "0107", "0116"):
        return False
    return not s.startswith("B")


class DimseExtractor:
    names = tuple(f"dimse.{v}_rq" for v in DIMSE_COUNTED.values()) + (
        "dimse.n_rq", "dimse.other_rq", "dimse.c_store_served", "dimse.c_find_served", "dimse.c_move_served",
        "dimse.c_get_served", "dimse.failures", *(f"dimse.query_{v}" for v in QUERY_LEVELS.values()),
        "dimse.wildcard_queries", "dimse.find_result_bytes", "dimse.move_destinations",
        "dimse.retrieved_instances", "dimse.store_sent_bytes", "dimse.store_recv_bytes",
        "dimse.store_recv_instances", "dimse.sop_classes")
    _served: ClassVar[dict[str, str]] = {"C-STORE": "dimse.c_store_served", "C-FIND": "dimse.c_find_served",
               "C-MOVE": "dimse.c_move_served", "C-GET": "dimse.c_get_served"}

    def on_event(self, acc: Accumulator, ev: DimseMessage, side: str) -> None:
        # The requester is the association requestor unless the acceptor issued the request
        # (C-GET sub-operation C-STOREs, N-EVENT-REPORTs).
        requester_side = "client" if ev.requested_by == "requestor" else "server"
        cmd = ev.command
        if side == requester_side:
            key = DIMSE_COUNTED.get(cmd)
            if key is not None:
                acc.add(f"dimse.{key}_rq")
            elif cmd.startswith("N-"):
                acc.add("dimse.n_rq")
            else:
                acc.add("dimse.other_rq")
            if _is_failure(ev.status):
                acc.add("dimse.failures")
            if ev.query_level:
                lvl = QUERY_LEVELS.get(ev.query_level.upper())
                if lvl:
                    acc.add(f"dimse.query_{lvl}")
            if ev.wildcard_keys:
                acc.add("dimse.wildcard_queries")
            if cmd == "C-FIND":
                acc.add("dimse.find_result_bytes", ev.response_dataset_bytes)
            if cmd == "C-MOVE" and ev.move_destination:
                acc.put("move_dests", ev.move_destination)
            if cmd in ("C-MOVE", "C-GET") and ev.sub_ops is not None:
                acc.add("dimse.retrieved_instances", ev.sub_ops[1] + ev.sub_ops[3])
            if cmd == "C-STORE":
                acc.add("dimse.store_sent_bytes", ev.dataset_bytes)
            if ev.sop_class:
                acc.put("dimse_sops", ev.sop_class)
        else:
            served = self._served.get(cmd)
            if served is not None:
                acc.add(served)
            if cmd == "C-STORE":
                acc.add("dimse.store_recv_bytes", ev.dataset_bytes)
                acc.add("dimse.store_recv_instances")

    def finalize(self, acc: Accumulator, ctx: WindowContext) -> dict[str, float]:
        out = _counts(acc, self.names)
        out["dimse.move_destinations"] = acc.n("move_dests")
        out["dimse.sop_classes"] = acc.n("dimse_sops")
        return out


class Hl7Extractor:
    names = ("hl7.msgs_out", "hl7.msgs_in", "hl7.bytes_out", *(f"hl7.type_{t.lower()}" for t in HL7_TYPES),
             "hl7.type_other", "hl7.naks", "hl7.senders")
    _types: ClassVar[dict[str, str]] = {t: f"hl7.type_{t.lower()}" for t in HL7_TYPES}

    def on_event(self, acc: Accumulator, ev: Hl7Message, side: str) -> None:
        if side == "src":
            acc.add("hl7.msgs_out")
            acc.add("hl7.bytes_out", ev.size)
            acc.add(self._types.get((ev.message_type or "").upper(), "hl7.type_other"))
            acc.put("hl7_senders", (ev.sending_app, ev.sending_facility))
        else:
            acc.add("hl7.msgs_in")
        if ev.ack_code and ev.ack_code.upper() in NAK_CODES:
            acc.add("hl7.naks")

    def finalize(self, acc: Accumulator, ctx: WindowContext) -> dict[str, float]:
        out = _counts(acc, self.names)
        out["hl7.senders"] = acc.n("hl7_senders")
        return out


class WeirdExtractor:
    names = ("weird.count",)

    def on_event(self, acc: Accumulator, ev: Weird, side: str) -> None:
        acc.add("weird.count")

    def finalize(self, acc: Accumulator, ctx: WindowContext) -> dict[str, float]:
        return _counts(acc, self.names)


class TimeExtractor:
    """Time of day/week of the window's start, in the site's zone (local shifts, not UTC)."""

    names = ("time.hour_sin", "time.hour_cos", "time.dow_sin", "time.dow_cos", "time.weekend")

    def on_event(self, acc: Accumulator, ev: object, side: str) -> None:
        return None

    def finalize(self, acc: Accumulator, ctx: WindowContext) -> dict[str, float]:
        return time_features(acc.start, ctx.tz)


def time_features(ts: float, tz: ZoneInfo) -> dict[str, float]:
    """>>> round(time_features(0.0, ZoneInfo("UTC"))["time.hour_cos"], 3)
    1.0
    """
    local = datetime.fromtimestamp(ts, tz=UTC).astimezone(tz)
    hour = local.hour + local.minute / 60.0 + local.second / 3600.0
    dow = local.weekday() + hour / 24.0
    return {
        "time.hour_sin": math.sin(_TWO_PI * hour / 24.0),
        "time.hour_cos": math.cos(_TWO_PI * hour / 24.0),
        "time.dow_sin": math.sin(_TWO_PI * dow / 7.0),
        "time.dow_cos": math.cos(_TWO_PI * dow / 7.0),
        "time.weekend": 1.0 if local.weekday() >= 5 else 0.0,
    }


# The one table: event type → extractors that consume it; ALL_EXTRACTORS finalise every window.
_FLOW, _DICOM, _DIMSE, _HL7, _WEIRD, _TIME = (FlowExtractor(), DicomExtractor(), DimseExtractor(),
                                              Hl7Extractor(), WeirdExtractor(), TimeExtractor())
EXTRACTORS: dict[type, tuple[Extractor, ...]] = {
    FlowRecord: (_FLOW,),
    DicomAssociation: (_DICOM,),
    DimseMessage: (_DIMSE,),
    Hl7Message: (_HL7,),
    Weird: (_WEIRD,),
}
ALL_EXTRACTORS: tuple[Extractor, ...] = (_FLOW, _DICOM, _DIMSE, _HL7, _WEIRD, _TIME)
