"""Alert schema radsensor.alert/1: construction, JSON round trip, ids, merging."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensor.alerts.schema import (
    SCHEMA,
    Alert,
    AlertKind,
    AlertMerger,
    DeviceRef,
    Evidence,
    Peer,
    Severity,
    alert_id,
    iso_z,
    to_utc,
)

T0 = datetime(2026, 3, 4, 3, 0, tzinfo=UTC)


def make(i: int = 0, *, rule="rule.x", ip="10.20.2.11", minute: int = 0, **kw) -> Alert:
    ws = T0 + timedelta(minutes=minute)
    base = {
        "rule_id": rule,
        "kind": "rule",
        "severity": "medium",
        "title": f"alert {i}",
        "device": DeviceRef(ip),
        "window_start": ws,
        "window_end": ws + timedelta(minutes=1),
        "score": 0.5,
        "threshold": 0.4,
    }
    base.update(kw)
    return Alert(**base)


def test_design_example_shape():
    a = Alert(
        rule_id="anomaly.c_find_sweep",
        kind="anomaly",
        severity="high",
        title="C-FIND sweep: 2,140 patient-level queries (baseline ≤ 12/min)",
        device=DeviceRef("10.20.2.11", "00:11:22:33:44:55", ["WS2"], "workstation"),
        peers=[Peer("10.20.0.10", "PACS")],
        window_start="2026-03-04T03:11:00Z",
        window_end="2026-03-04T03:12:00Z",
        score=0.81,
        threshold=0.62,
        evidence=[Evidence("dimse.c_find_rq", 2140, 1, 12)],
        attack=["T1005"],
        sensor="host-id",
    )
    d = a.to_dict()
    assert list(d) == [
        "schema",
        "id",
        "time",
        "window_start",
        "window_end",
        "severity",
        "kind",
        "rule_id",
        "title",
        "device",
        "peers",
        "score",
        "threshold",
        "evidence",
        "attack",
        "count",
        "sensor",
    ]
    assert d["schema"] == SCHEMA
    assert d["time"] == "2026-03-04T03:12:00Z"  # defaults to window end
    assert d["device"] == {
        "ip": "10.20.2.11",
        "mac": "00:11:22:33:44:55",
        "ae_titles": ["WS2"],
        "role": "workstation",
    }
    assert d["peers"] == [{"ip": "10.20.0.10", "ae_title": "PACS"}]
    assert d["evidence"] == [
        {"feature": "dimse.c_find_rq", "observed": 2140, "baseline_p50": 1, "baseline_p99": 12}
    ]
    assert Alert.from_dict(json.loads(json.dumps(d))) == a


def test_deterministic_id():
    a, b = make(1), make(2, title="other title")
    assert a.id == b.id == alert_id("rule.x", "10.20.2.11", T0)
    assert make(minute=1).id != a.id and make(ip="10.0.0.1").id != a.id and make(rule="rule.y").id != a.id


def test_times_normalised_to_utc_z():
    plus2 = timezone(timedelta(hours=2))
    a = make(window_start=datetime(2026, 3, 4, 5, 0, tzinfo=plus2), window_end=T0.timestamp() + 60.5)
    assert iso_z(a.window_start) == "2026-03-04T03:00:00Z"
    assert iso_z(a.window_end) == "2026-03-04T03:01:00.500000Z"
    assert to_utc("2026-03-04T03:00:00Z") == T0 == to_utc(datetime(2026, 3, 4, 3, 0))


def test_severity_mappings():
    assert [s.cef for s in Severity] == [1, 3, 5, 8, 10]
    assert [s.syslog for s in Severity] == [6, 5, 4, 3, 2]
    assert all(1 <= s.leef <= 10 for s in Severity)
    assert sorted(Severity, key=lambda s: s.rank) == list(Severity)


@pytest.mark.parametrize(
    "kw",
    [{"attack": ["1005"]}, {"count": 0}, {"rule_id": ""}, {"kind": "bogus"}, {"severity": "urgent"}],
)
def test_invalid_alerts_rejected(kw):
    with pytest.raises(ValueError):
        make(**kw)


def test_from_dict_rejects_other_schema():
    d = make().to_dict()
    d["schema"] = "radsensor.alert/2"
    with pytest.raises(ValueError):
        Alert.from_dict(d)


_txt = st.text(max_size=30)
_num = st.one_of(st.integers(-(10**9), 10**9), st.floats(allow_nan=False, allow_infinity=False))
_dt = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
alerts = st.builds(
    Alert,
    rule_id=st.text(min_size=1, max_size=40),
    kind=st.sampled_from(AlertKind),
    severity=st.sampled_from(Severity),
    title=_txt,
    device=st.builds(
        DeviceRef,
        st.just("10.1.2.3"),
        st.none() | _txt,
        st.lists(_txt, max_size=3).map(tuple),
        st.none() | _txt,
    ),
    window_start=_dt,
    window_end=_dt,
    time=st.none() | _dt,
    peers=st.lists(
        st.builds(Peer, st.just("10.0.0.9"), st.none() | _txt, st.none() | st.integers(0, 65535)), max_size=3
    ).map(tuple),
    score=st.none() | st.floats(0, 1),
    threshold=st.none() | st.floats(0, 1),
    evidence=st.lists(
        st.builds(Evidence, _txt, _num, st.none() | _num, st.none() | _num, st.none() | _txt), max_size=3
    ).map(tuple),
    attack=st.lists(st.from_regex(r"\AT[0-9]{4}(\.[0-9]{3})?\Z"), max_size=3).map(tuple),
    count=st.integers(1, 10**6),
    sensor=_txt,
)


@given(alerts)
def test_json_round_trip_property(a):
    assert Alert.from_dict(json.loads(json.dumps(a.to_dict(), ensure_ascii=False))) == a


# ------------------------------------------------------------------------------------------ merger


def test_offline_merge_one_alert_per_group_with_count():
    m = AlertMerger(span=600)
    out = []
    for minute in range(15):  # minutes 0..9 → group 1 (10 alerts), 10..14 → group 2
        out += m.push(make(minute, minute=minute, peers=[Peer(f"10.0.0.{minute % 3}")], score=minute / 100))
    out += m.push(make(99, ip="10.9.9.9", minute=14))
    out += m.flush()
    by = {(a.device.ip, a.window_start): a for a in out}
    assert len(out) == 3
    g1 = by[("10.20.2.11", T0)]
    assert g1.count == 10 and g1.id == make(minute=0).id
    assert g1.window_end == T0 + timedelta(minutes=10)
    assert g1.score == 0.09 and g1.title == "alert 9"  # representative = worst repeat
    assert [p.ip for p in g1.peers] == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert by[("10.20.2.11", T0 + timedelta(minutes=10))].count == 5
    assert by[("10.9.9.9", T0 + timedelta(minutes=14))].count == 1
    assert m.merged == 9 + 4 and len(m) == 0


def test_merge_keeps_worst_severity_and_unions():
    a = make(0, attack=["T1005"], device=DeviceRef("10.20.2.11", None, ("WS2",)))
    b = make(
        1, minute=1, severity="critical", attack=["T1046"], device=DeviceRef("10.20.2.11", "aa:bb", ("WS3",))
    )
    m = AlertMerger(span=600)
    m.push(a)
    m.push(b)
    (merged,) = m.flush()
    assert merged.severity is Severity.CRITICAL and merged.count == 2
    assert merged.attack == ("T1005", "T1046")
    assert merged.device.ae_titles == ("WS2", "WS3") and merged.device.mac == "aa:bb"


def test_live_merge_emits_first_then_updates():
    m = AlertMerger(span=3600, live=True, update_interval=300)
    first = m.push(make(0, minute=0))
    assert len(first) == 1 and first[0].count == 1
    assert m.push(make(1, minute=1)) == [] and m.push(make(2, minute=2)) == []
    assert m.tick(T0 + timedelta(minutes=3)) == []  # update interval not reached
    (upd,) = m.tick(T0 + timedelta(minutes=6))
    assert upd.id == first[0].id and upd.count == 3
    assert m.tick(T0 + timedelta(minutes=12)) == []  # nothing new since the update
    m.push(make(3, minute=13))
    (final,) = m.tick(T0 + timedelta(minutes=61))  # span over: group closes with its last update
    assert final.count == 4 and len(m) == 0
    assert m.flush() == []
