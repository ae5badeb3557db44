"""Window features on constructed events: exact counts, attribution policy, registry coverage."""

from __future__ import annotations

import math

import pytest

from sensor.events import Counters, Weird
from sensor.features.extractors import ALL_EXTRACTORS
from sensor.features.registry import FEATURE_NAMES, FEATURES, FLOW_FEATURE_NAMES, apply_transform
from sensor.features.windows import WindowBuilder, WindowConfig, iter_windows, parse_span
from tests.test_features_sitegen import (
    CT_STORE,
    DAY0,
    MWL,
    STUDY_FIND,
    STUDY_MOVE,
    assoc,
    dimse,
    ep,
    flow,
    hl7,
    raw_ep,
)

T = DAY0 + 10 * 3600  # 10:00 UTC, window-aligned for 60 s


def by_dev(windows):
    return {(w.ip, w.start): w for w in windows}


def test_extractors_produce_exactly_the_registry():
    names = [n for x in ALL_EXTRACTORS for n in x.names]
    assert sorted(names) == sorted(FEATURE_NAMES)
    assert len(names) == len(set(names))
    for f in FEATURES:
        assert f.unit and f.description and f.transform in ("log1p", "none")
    assert set(FLOW_FEATURE_NAMES) < set(FEATURE_NAMES)


def test_exact_counts_for_one_window():
    ws1, pacs = ep("WS1", 50001), ep("PACS")
    evs = [
        flow(T + 1, 2, ws1, pacs, (3000, 9000), app="dicom", pk=(10, 20)),
        assoc(T + 1, 2, ws1, pacs, "WS1", "PACS", sops=(STUDY_FIND, STUDY_MOVE)),
        dimse(T + 1.1, ws1, pacs, "WS1", "PACS", "C-FIND", STUDY_FIND, level="STUDY", rsp_ds=700),
        dimse(T + 1.2, ws1, pacs, "WS1", "PACS", "C-FIND", STUDY_FIND, level="PATIENT",
              wildcards=("PatientName",), rsp_ds=300),
        dimse(T + 1.3, ws1, pacs, "WS1", "PACS", "C-MOVE", STUDY_MOVE, level="STUDY", move_dest="WS1",
              sub_ops=(0, 7, 0, 1)),
        dimse(T + 1.4, ws1, pacs, "WS1", "PACS", "C-MOVE", STUDY_MOVE, level="STUDY", move_dest="WS9",
              status="0xA801"),
        dimse(T + 1.5, ws1, pacs, "WS1", "PACS", "C-ECHO", "1.2.840.10008.1.1"),
        # PACS → WS1 store sub-operations (PACS is the requestor of that association)
        dimse(T + 2, ep("PACS", 45000), ep("WS1"), "PACS", "WS1", "C-STORE", CT_STORE, ds=1000),
        dimse(T + 2.1, ep("PACS", 45000), ep("WS1"), "PACS", "WS1", "C-STORE", CT_STORE, ds=500),
        flow(T + 3, 0.1, ep("WS1", 50002), raw_ep("10.20.0.99", 104), (60, 0), state="no_answer"),
        flow(T + 4, 0.1, ep("WS1", 50003), ep("RIS", 4242), (60, 60), state="rejected"),
    ]
    ws = by_dev(iter_windows(evs, WindowConfig(60, 120)))
    f = ws[("10.20.2.11", T)].features
    assert f["flow.conns_out"] == 3 and f["flow.failed_out"] == 2 and f["flow.peers"] == 3
    # distinct (proto, port): 104 twice (PACS, dead host) + 4242
    assert f["flow.dst_ports"] == 2 and f["flow.bytes_out"] == 3000 + 60 + 60 and f["flow.packets_in"] == 20 + 0 + 3
    assert f["dicom.assoc_rq"] == 1 and f["dicom.contexts_proposed"] == 2
    assert f["dimse.c_find_rq"] == 2 and f["dimse.c_move_rq"] == 2 and f["dimse.c_echo_rq"] == 1
    assert f["dimse.query_study"] == 3 and f["dimse.query_patient"] == 1 and f["dimse.wildcard_queries"] == 1
    assert f["dimse.find_result_bytes"] == 1000 and f["dimse.move_destinations"] == 2
    assert f["dimse.retrieved_instances"] == 8 and f["dimse.failures"] == 1
    assert f["dimse.store_recv_bytes"] == 1500 and f["dimse.store_recv_instances"] == 2
    assert f["dimse.c_store_rq"] == 0 and f["dimse.sop_classes"] == 3
    p = ws[("10.20.0.10", T)].features
    assert p["dimse.c_find_served"] == 2 and p["dimse.c_move_served"] == 2 and p["dimse.c_store_rq"] == 2
    assert p["dimse.store_sent_bytes"] == 1500 and p["dicom.assoc_ac"] == 1 and p["flow.conns_in"] == 1
    assert p["flow.listen_ports"] == 1 and p["flow.bytes_out"] == 9000
    # the RIS refused the connection: it spoke (RST), so it has a window; the silent host has none
    assert ws[("10.20.0.20", T)].features["flow.failed_in"] == 1
    assert not any(ip == "10.20.0.99" for ip, _ in ws)
    w = ws[("10.20.2.11", T)]
    assert w.ae_titles == ("WS1",) and w.macs == ("02:00:00:00:02:11",)
    assert ("move_dest", "10.20.0.10", "WS9") in w.obs and ("service", "10.20.0.10", "C-ECHO",
                                                            "1.2.840.10008.1.1") in w.obs
    assert ("listen", "tcp", 104) in ws[("10.20.0.10", T)].obs


def test_hl7_counts_and_naks():
    ris, ie = ep("RIS", 30001), ep("HL7IE")
    evs = [hl7(T + 1, ris, ie, "ADT", "A08", "RIS", "RAD"), hl7(T + 2, ris, ie, "ORM", "O01", "RIS", "RAD"),
           hl7(T + 3, ris, ie, "ZZZ", "Z01", "RIS", "RAD"), hl7(T + 4, ie, ris, "ACK", "A08", "IE", "HOSP", ack="AE"),
           hl7(T + 5, ie, ris, "ACK", "O01", "IE", "HOSP", ack="AA")]
    ws = by_dev(iter_windows(evs, WindowConfig(60, 0)))
    r = ws[("10.20.0.20", T)].features
    assert (r["hl7.msgs_out"], r["hl7.msgs_in"], r["hl7.type_adt"], r["hl7.type_orm"], r["hl7.type_other"]) == (
        3, 2, 1, 1, 1)
    assert r["hl7.naks"] == 1 and r["hl7.senders"] == 1 and r["hl7.bytes_out"] == 1800
    i = ws[("10.20.0.30", T)].features
    assert i["hl7.type_ack"] == 2 and i["hl7.naks"] == 1
    assert ("hl7_sender", "RIS", "RAD") in ws[("10.20.0.20", T)].obs


def test_flow_volume_split_by_time_share_and_counts_at_start():
    evs = [flow(T + 30, 90, ep("CT1", 40000), ep("PACS"), (9000, 900), pk=(90, 9))]  # 30 s, 60 s: 1/3, 2/3
    ws = by_dev(iter_windows(evs, WindowConfig(60, 300)))
    a, b = ws[("10.20.1.11", T)].features, ws[("10.20.1.11", T + 60)].features
    assert a["flow.bytes_out"] == pytest.approx(3000) and b["flow.bytes_out"] == pytest.approx(6000)
    assert a["flow.conns_out"] == 1 and b["flow.conns_out"] == 0
    assert ws[("10.20.0.10", T + 60)].features["flow.bytes_in"] == pytest.approx(6000)


def test_watermark_and_late_events():
    c = Counters()
    b = WindowBuilder(WindowConfig(60, 60), c)
    b.add(dimse(T + 5, ep("WS1"), ep("PACS"), "WS1", "PACS", "C-ECHO", None))
    assert b.advance(T + 100) == []  # T window ends T+60, + 60 lateness
    done = b.advance(T + 121)
    assert {w.ip for w in done} == {"10.20.2.11", "10.20.0.10"} and all(w.start == T for w in done)
    # an association that started in the finished window arrives late → earliest open window
    b.add(assoc(T + 10, 200, ep("WS1", 50010), ep("PACS"), "WS1", "PACS"))
    late = by_dev(b.flush())
    assert c.get("windows.late_events") == 2
    assert late[("10.20.2.11", T + 60)].features["dicom.assoc_rq"] == 1


def test_new_peers_uses_memory_and_seed():
    evs = [flow(T + 1, 1, ep("WS1", 50001), ep("PACS")), flow(T + 61, 1, ep("WS1", 50002), ep("PACS")),
           flow(T + 62, 1, ep("WS1", 50003), ep("RIS"))]
    ws = by_dev(iter_windows(evs, WindowConfig(60, 0)))
    assert ws[("10.20.2.11", T)].features["flow.new_peers"] == 1
    assert ws[("10.20.2.11", T + 60)].features["flow.new_peers"] == 1  # RIS only
    b = WindowBuilder(WindowConfig(60, 0), known_peers={"10.20.2.11": {"10.20.0.10", "10.20.0.20"}})
    for e in evs:
        b.add(e)
    assert all(w.features["flow.new_peers"] == 0 for w in b.flush() if w.ip == "10.20.2.11")


def test_time_features_follow_site_zone():
    ev = [dimse(T + 5, ep("WS1"), ep("PACS"), "WS1", "PACS", "C-ECHO", None)]
    utc = iter_windows(ev, WindowConfig(60, 0, "UTC")).__next__().features
    ny = iter_windows(ev, WindowConfig(60, 0, "America/New_York")).__next__().features
    assert utc["time.hour_sin"] == pytest.approx(math.sin(2 * math.pi * 10 / 24))
    assert ny["time.hour_sin"] == pytest.approx(math.sin(2 * math.pi * 5 / 24))  # EST, UTC-5 in early March
    assert utc["time.weekend"] == 0.0


def test_weird_counted_for_both_sides_and_mwl_observation():
    evs = [Weird(T + 1, "dicom.bad_pdu_type", ep("CT1"), ep("RIS"), "type=9"),
           dimse(T + 2, ep("CT1"), ep("RIS"), "CT1", "RIS", "C-FIND", MWL)]
    ws = by_dev(iter_windows(evs, WindowConfig(60, 0)))
    assert ws[("10.20.1.11", T)].features["weird.count"] == 1 and ws[("10.20.0.20", T)].features["weird.count"] == 1
    assert ("service", "10.20.0.20", "C-FIND", MWL) in ws[("10.20.1.11", T)].obs


def test_transform_and_span_parsing():
    X = apply_transform([[math.e - 1, 0.5]], ("flow.bytes_out", "time.hour_sin"))
    assert X.tolist() == [[pytest.approx(1.0), 0.5]]
    assert parse_span("2m") == 120 and parse_span("1h") == 3600
    with pytest.raises(ValueError):
        parse_span("soon")
    from zoneinfo import ZoneInfoNotFoundError

    with pytest.raises(ZoneInfoNotFoundError):
        WindowConfig(60, 0, "Mars/Olympus")


def test_outside_addresses_are_peers_not_devices():
    evs = [flow(T + 1, 1, ep("CT1", 40000), raw_ep("203.0.113.66", 443), (500, 900)),
           flow(T + 2, 1, raw_ep("198.51.100.7", 5555), ep("PACS"), (60, 60), state="rejected")]
    ws = by_dev(iter_windows(evs, WindowConfig(60, 0)))
    assert set(ws) == {("10.20.1.11", T), ("10.20.0.10", T)}
    assert ("peer", "203.0.113.66") in ws[("10.20.1.11", T)].obs
    custom = by_dev(iter_windows(evs, WindowConfig(60, 0, local_nets=("203.0.113.0/24", "10.0.0.0/8"))))
    assert ("203.0.113.66", T) in custom
