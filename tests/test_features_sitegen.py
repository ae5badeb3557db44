"""A small synthetic imaging site as typed events (shared by the features/detect/train tests).

Devices: PACS, RIS (worklist SCP + HL7 sender), HL7 interface engine, two modalities (worklist
C-FIND, C-STORE to PACS, MPPS), two workstations (C-FIND/C-MOVE to PACS, PACS C-STOREs back).
Deterministic for a seed; day shift busier than night. Events are emitted in *end-time* order, as
the pipeline emits them. Plus builders for the single events tests need.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

from sensor.events import (
    DicomAssociation,
    DimseMessage,
    Endpoint,
    FlowRecord,
    Hl7Message,
    PresentationContext,
)

CT_STORE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORE = "1.2.840.10008.5.1.4.1.1.4"
MWL = "1.2.840.10008.5.1.4.31"
MPPS = "1.2.840.10008.3.1.2.3.3"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
IMPL = "1.2.826.0.1.3680043.9.3811.2.0.0"

DEVICES = {
    "PACS": ("10.20.0.10", 104, "02:00:00:00:00:10"),
    "RIS": ("10.20.0.20", 104, "02:00:00:00:00:20"),
    "HL7IE": ("10.20.0.30", 2575, "02:00:00:00:00:30"),
    "CT1": ("10.20.1.11", 104, "02:00:00:00:01:11"),
    "MR1": ("10.20.1.12", 104, "02:00:00:00:01:12"),
    "WS1": ("10.20.2.11", 11112, "02:00:00:00:02:11"),
    "WS2": ("10.20.2.12", 11112, "02:00:00:00:02:12"),
}
DAY0 = datetime(2026, 3, 2, tzinfo=UTC).timestamp()  # a Monday


def ep(name: str, port: int | None = None) -> Endpoint:
    ip, listen, mac = DEVICES[name]
    return Endpoint(ip, listen if port is None else port, mac)


def raw_ep(ip: str, port: int, mac: str | None = None) -> Endpoint:
    return Endpoint(ip, port, mac)


def flow(ts: float, dur: float, c: Endpoint, s: Endpoint, b=(1000, 1000), *, state="established",
         proto="tcp", app=None, pk=None) -> FlowRecord:
    answered = state not in ("no_answer",)
    pkts = pk if pk is not None else (max(1, b[0] // 1000 + 3), (max(1, b[1] // 1000 + 3) if answered else 0))
    return FlowRecord(ts, ts + dur, proto, c, s, pkts, b if answered else (b[0], 0), b, state if proto == "tcp" else None,
                      "SAFP" if state == "established" else ("SR" if state == "rejected" else "S"),
                      state == "established", state == "rejected", app, "fin")


def assoc(ts: float, dur: float, c: Endpoint, s: Endpoint, calling: str, called: str, *, result="accepted",
          sops=(CT_STORE,), dimse=None, impl=IMPL, version="SITE_1", moves=None, reject=None) -> DicomAssociation:
    ctx = tuple(PresentationContext(2 * i + 1, sop, ("1.2.840.10008.1.2",), 0 if result == "accepted" else None)
                for i, sop in enumerate(sops))
    return DicomAssociation(
        ts, ts + dur, c, s, calling, called, result, result == "accepted",
        reject if reject is not None else ({"result": 1, "source": 1, "reason": 7} if result == "rejected" else None),
        {"source": 0, "reason": 0} if result == "aborted" else None,
        "1.2.840.10008.3.1.1.1", tuple(sops), ("1.2.840.10008.1.2",), ctx, impl, version,
        impl if result == "accepted" else None, version if result == "accepted" else None, (16384, 16384), None, (),
        None, {"P-DATA-TF": 2}, dict(dimse or {}), {"0x0000": 1}, {s_: 1 for s_ in sops}, dict(moves or {}), {}, {},
        (1000, 1000), 0, 2, 0)


def dimse(ts: float, c: Endpoint, s: Endpoint, calling: str, called: str, command: str, sop: str | None, *,
          status="0x0000", move_dest=None, level=None, wildcards=(), ds=0, rsp_ds=0, sub_ops=None,
          requested_by="requestor", latency=0.05) -> DimseMessage:
    return DimseMessage(ts, ts + latency, c, s, calling, called, command, requested_by, sop, 1, 0, move_dest,
                        status, 0, latency, ds, rsp_ds, level, tuple(wildcards), sub_ops)


def hl7(ts: float, src: Endpoint, dst: Endpoint, mtype: str, event: str, app: str, fac: str, *, ack=None,
        size=600) -> Hl7Message:
    return Hl7Message(ts, src, dst, mtype, event, None, f"{mtype}^{event}", app, fac, "IE", "HOSP", "CTRL123",
                      "P", "2.5", ack, "CTRL122" if ack else None, {"MSH": 1, "PID": 1}, size, "mllp")


def _busy(ts: float) -> float:
    hour = ((ts - DAY0) % 86400) / 3600
    return 1.0 if 7 <= hour < 19 else 0.15


def site_events(days: float = 1.0, seed: int = 1, start: float = DAY0) -> list:
    """Normal traffic for ``days`` days, sorted by end time (pipeline emission order)."""
    rng = random.Random(seed)
    evs: list[tuple[float, object]] = []

    def add(*items) -> None:
        for it in items:
            evs.append((getattr(it, "ts_end", None) or getattr(it, "ts_response", None) or it.ts, it))

    end = start + days * 86400
    # Modalities: an exam every ~12 min by day (~60 min at night): worklist, MPPS, images to PACS.
    for mod, sop in (("CT1", CT_STORE), ("MR1", MR_STORE)):
        t = start + rng.uniform(0, 600)
        while t < end:
            c = ep(mod, 40000 + rng.randrange(20000))
            add(flow(t, 0.5, c, ep("RIS"), (800, 2400), app="dicom"),
                assoc(t, 0.5, c, ep("RIS"), mod, "RIS", sops=(MWL,)),
                dimse(t + 0.1, c, ep("RIS"), mod, "RIS", "C-FIND", MWL, level=None, rsp_ds=rng.randint(500, 3000)))
            t2 = t + 60 + rng.uniform(0, 120)
            n = rng.randint(50, 300)
            c2 = ep(mod, 40000 + rng.randrange(20000))
            add(flow(t2, n * 0.05, c2, ep("PACS"), (n * 520_000, 40_000 + n * 200), app="dicom"),
                assoc(t2, n * 0.05, c2, ep("PACS"), mod, "PACS", sops=(sop, MPPS)),
                dimse(t2 + 0.05, c2, ep("PACS"), mod, "PACS", "N-CREATE", MPPS))
            for k in range(n):
                add(dimse(t2 + 0.1 + k * 0.05, c2, ep("PACS"), mod, "PACS", "C-STORE", sop, ds=520_000))
            t += rng.expovariate(_busy(t) / 720)
    # Workstations: study queries and retrievals by day.
    for ws in ("WS1", "WS2"):
        t = start + rng.uniform(0, 900)
        while t < end:
            c = ep(ws, 50000 + rng.randrange(10000))
            nq = rng.randint(1, 4)
            add(flow(t, 2, c, ep("PACS"), (2000, 4000 * nq), app="dicom"),
                assoc(t, 2, c, ep("PACS"), ws, "PACS", sops=(STUDY_FIND, STUDY_MOVE)))
            for k in range(nq):
                add(dimse(t + 0.2 + k * 0.3, c, ep("PACS"), ws, "PACS", "C-FIND", STUDY_FIND, level="STUDY",
                          rsp_ds=rng.randint(300, 4000)))
            n = rng.randint(20, 200)
            add(dimse(t + 1.5, c, ep("PACS"), ws, "PACS", "C-MOVE", STUDY_MOVE, level="STUDY", move_dest=ws,
                      sub_ops=(0, n, 0, 0), latency=n * 0.04))
            p = ep("PACS", 45000 + rng.randrange(10000))
            add(flow(t + 1.6, n * 0.04, p, ep(ws), (n * 500_000, 20_000), app="dicom"),
                assoc(t + 1.6, n * 0.04, p, ep(ws), "PACS", ws, sops=(CT_STORE, MR_STORE)))
            for k in range(n):
                add(dimse(t + 1.7 + k * 0.04, p, ep(ws), "PACS", ws, "C-STORE", CT_STORE, ds=500_000))
            t += rng.expovariate(_busy(t) / 1500) + 30
    # RIS → HL7 interface engine: orders and ADTs, ACKed.
    t = start + rng.uniform(0, 120)
    while t < end:
        c = ep("RIS", 30000 + rng.randrange(1000))
        mt, evt = rng.choice((("ADT", "A08"), ("ORM", "O01"), ("ADT", "A01")))
        add(flow(t, 0.2, c, ep("HL7IE"), (700, 150), app="hl7"),
            hl7(t, c, ep("HL7IE"), mt, evt, "RIS", "RAD"),
            hl7(t + 0.1, ep("HL7IE"), c, "ACK", evt, "IE", "HOSP", ack="AA", size=120))
        t += rng.expovariate(_busy(t) / 240)
    # Everyone: a DNS lookup now and then (UDP to the site resolver, which is not a DICOM device).
    for name in DEVICES:
        t = start + rng.uniform(0, 600)
        while t < end:
            add(flow(t, 0.01, ep(name, 30000 + rng.randrange(30000)), raw_ep("10.20.0.2", 53), (80, 120),
                     proto="udp"))
            t += rng.expovariate(1 / 600)
    evs.sort(key=lambda p: p[0])
    return [e for _, e in evs]


def test_site_is_deterministic_and_ordered():
    a, b = site_events(0.1, seed=3), site_events(0.1, seed=3)
    assert a == b and len(a) > 100
    ends = [getattr(e, "ts_end", None) or getattr(e, "ts_response", None) or e.ts for e in a]
    assert ends == sorted(ends)
