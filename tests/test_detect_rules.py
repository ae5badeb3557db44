"""Each novelty rule fires on a constructed case and stays silent on the baseline itself."""

from __future__ import annotations

import pytest

from sensor.detect.inventory import Inventory, infer_role
from sensor.detect.rules import RULES, RuleEngine
from sensor.features.windows import WindowConfig, iter_windows
from tests.test_features_sitegen import (
    CT_STORE,
    DAY0,
    STUDY_FIND,
    STUDY_MOVE,
    assoc,
    dimse,
    ep,
    flow,
    hl7,
    raw_ep,
    site_events,
)

CFG = WindowConfig(60, 120)
T = DAY0 + 86400 + 11 * 3600  # the day after the baseline, 11:00


@pytest.fixture(scope="module")
def baseline():
    windows = list(iter_windows(site_events(1.0, seed=7), CFG))
    inv = Inventory()
    for w in windows:
        inv.update(w)
    return inv.finalize(), windows


def fire(inv, events):
    eng = RuleEngine(inv)
    out = []
    for w in iter_windows(events, CFG):
        out += [(w.ip, f) for f in eng.check(w)]
    return out


def ids(hits):
    return {(ip, f.rule_id) for ip, f in hits}


def test_inventory_roles_and_keys(baseline):
    inv, _ = baseline
    roles = {ip: d.role for ip, d in inv.devices.items()}
    assert roles["10.20.0.10"] == "pacs" and roles["10.20.0.20"] == "ris"
    assert roles["10.20.1.11"] == roles["10.20.1.12"] == "modality"
    assert roles["10.20.2.11"] == roles["10.20.2.12"] == "workstation"
    assert roles["10.20.0.30"] == "hl7_system"
    assert inv.ae_ips["WS1"] == {"10.20.2.11"} and inv.move_dests["10.20.0.10"] == {"WS1", "WS2"}
    assert ("10.20.1.11", "10.20.0.10", "C-STORE", CT_STORE) in inv.services
    assert inv.hl7_senders[("RIS", "RAD")] == {"10.20.0.20"}
    assert ("tcp", 104) in inv.devices["10.20.0.10"].listen
    again = Inventory.from_dict(inv.to_dict())
    assert again.to_dict() == inv.to_dict()


def test_silent_on_baseline(baseline):
    inv, windows = baseline
    eng = RuleEngine(inv)
    assert [f for w in windows for f in eng.check(w)] == []


def test_new_device_and_ae_spoofing(baseline):
    inv, _ = baseline
    x = raw_ep("10.20.9.9", 40000, "02:00:00:00:09:09")
    hits = fire(inv, [flow(T, 1, x, ep("PACS")), assoc(T, 1, x, ep("PACS"), "WS1", "PACS", sops=(STUDY_FIND,))])
    assert ids(hits) == {("10.20.9.9", "novelty.new_device"), ("10.20.9.9", "novelty.ae_title_spoofing")}
    spoof = next(f for _, f in hits if f.rule_id == "novelty.ae_title_spoofing")
    assert spoof.severity == "high" and spoof.attack == ("T1036",) and "10.20.2.11" in spoof.title


def test_new_ae_title_on_known_device(baseline):
    inv, _ = baseline
    hits = fire(inv, [assoc(T, 1, ep("WS1", 50001), ep("PACS"), "WS1_TEST", "PACS", sops=(STUDY_FIND,))])
    assert ids(hits) == {("10.20.2.11", "novelty.new_ae_title")}


def test_new_peer_pair_and_service(baseline):
    inv, _ = baseline
    c = ep("CT1", 41000)
    hits = fire(inv, [flow(T, 1, c, ep("WS2")),
                      assoc(T, 1, c, ep("WS2"), "CT1", "WS2"),
                      dimse(T + 0.5, c, ep("WS2"), "CT1", "WS2", "C-STORE", CT_STORE, ds=100)])
    got = ids(hits)
    assert ("10.20.1.11", "novelty.new_peer_pair") in got and ("10.20.1.11", "novelty.new_dicom_service") in got
    svc = next(f for _, f in hits if f.rule_id == "novelty.new_dicom_service")
    assert svc.attack == ("T1565.001",) and svc.peers[0][0] == "10.20.2.12"


def test_new_move_destination(baseline):
    inv, _ = baseline
    c = ep("WS2", 52000)
    hits = fire(inv, [dimse(T, c, ep("PACS"), "WS2", "PACS", "C-MOVE", STUDY_MOVE, move_dest="EVIL")])
    assert ids(hits) == {("10.20.2.12", "novelty.new_move_destination")}
    f = hits[0][1]
    assert f.severity == "high" and "EVIL" in f.title and f.attack == ("T1048",)


def test_reject_burst_fires_above_baseline_only(baseline):
    inv, _ = baseline
    few = [assoc(T + i, 0.1, ep("WS1", 50100 + i), ep("PACS"), "WS1", "PACS", result="rejected") for i in range(3)]
    assert fire(inv, few) == []
    many = [assoc(T + i, 0.1, ep("WS1", 50100 + i), ep("PACS"), f"GUESS{i}", "PACS", result="rejected")
            for i in range(12)]
    hits = fire(inv, many)
    assert ids(hits) == {("10.20.2.11", "rule.reject_abort_burst")}
    assert hits[0][1].evidence[0][:2] == ("dicom.rejected", 12.0) and hits[0][1].attack == ("T1110",)


def test_query_sweep_above_the_devices_own_baseline(baseline):
    inv, _ = baseline
    base = inv.devices["10.20.2.11"].maxima.get("dimse.wildcard_queries", 0.0)
    c = ep("WS1", 50700)
    # as many wildcard STUDY queries in a minute as the baseline's worst minute: silent
    usual = [dimse(T + i, c, ep("PACS"), "WS1", "PACS", "C-FIND", STUDY_FIND, level="STUDY",
                   wildcards=("PatientName",)) for i in range(int(base))]
    assert not [h for h in fire(inv, usual) if h[1].rule_id == "rule.query_sweep"]
    # a harvest: "A*", "B*", ... at PATIENT level, well above it
    n = int(max(2 * base, base + 3)) + 1
    sweep = [dimse(T + i, c, ep("PACS"), "WS1", "PACS", "C-FIND", STUDY_FIND, level="PATIENT",
                   wildcards=("PatientName",)) for i in range(n)]
    hits = [h for h in fire(inv, sweep) if h[1].rule_id == "rule.query_sweep"]
    assert [ip for ip, _ in hits] == ["10.20.2.11"]
    ev = {e[0]: e[1] for e in hits[0][1].evidence}
    assert ev["dimse.wildcard_queries"] == n and ev["dimse.query_patient"] == n
    assert hits[0][1].attack == ("T1119",) and hits[0][1].peers[0][0] == "10.20.0.10"


def test_hl7_unknown_sender_and_known_app_from_new_ip(baseline):
    inv, _ = baseline
    hits = fire(inv, [hl7(T, ep("WS1", 50500), ep("HL7IE"), "ORU", "R01", "EVILAPP", "X"),
                      hl7(T + 1, ep("MR1", 50501), ep("HL7IE"), "ADT", "A08", "RIS", "RAD")])
    assert ids(hits) == {("10.20.2.11", "novelty.hl7_unknown_sender"), ("10.20.1.12", "novelty.hl7_unknown_sender")}
    titles = {ip: f.title for ip, f in hits}
    assert "unknown sender" in titles["10.20.2.11"] and "new IP" in titles["10.20.1.12"]


def test_new_listening_port(baseline):
    inv, _ = baseline
    hits = fire(inv, [flow(T, 1, ep("PACS", 50000), ep("WS1", 4444))])
    assert ("10.20.2.11", "novelty.new_listening_port") in ids(hits)
    f = next(f for ip, f in hits if f.rule_id == "novelty.new_listening_port")
    assert "tcp/4444" in f.title and f.attack == ("T1571",)


def test_new_implementation_and_fire_once(baseline):
    inv, _ = baseline
    evs = [assoc(T + 60 * i, 1, ep("CT1", 41000 + i), ep("PACS"), "CT1", "PACS", impl="1.2.3.4", version="EVIL_1")
           for i in range(3)]
    hits = fire(inv, evs)
    # the helper gives both sides the new implementation: once per device, not once per window
    assert sorted((ip, f.rule_id) for ip, f in hits) == [("10.20.0.10", "novelty.new_implementation"),
                                                        ("10.20.1.11", "novelty.new_implementation")]


def test_rule_table_complete():
    assert len({r.id for r in RULES}) == len(RULES) == 11
    for r in RULES:
        assert r.severity in ("low", "medium", "high") and r.description


def test_role_inference_order():
    from sensor.detect.inventory import DeviceRecord

    assert infer_role(DeviceRecord("x", totals={"hl7.msgs_out": 3})) == "hl7_system"
    assert infer_role(DeviceRecord("x", totals={"dimse.c_find_rq": 3})) == "workstation"
    assert infer_role(DeviceRecord("x")) == "host"
