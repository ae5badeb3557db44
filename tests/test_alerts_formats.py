"""Alert wire formats (CEF, LEEF 2.0, JSON, ECS, text) and RFC 5424 message building.

Round trips go through the independent parsers in test_alerts_wire; Hypothesis drives the
escaping with arbitrary text, including every character the formats reserve.
"""

from __future__ import annotations

import io
import json

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from sensor.alerts.formats import (
    CEF_LABELS,
    FORMATTERS,
    ecs_dict,
    format_table,
    get_formatter,
    to_cef,
    to_ecs,
    to_json,
    to_leef,
    to_text,
)
from sensor.alerts.schema import Alert, DeviceRef, Evidence, Peer
from sensor.alerts.syslog import (
    Facility,
    TcpTransport,
    TlsTransport,
    UdpTransport,
    build_message,
    octet_frame,
    pri,
    sd_escape,
    transport_from_url,
    truncate_utf8,
)
from tests.test_alerts_wire import parse_cef, parse_leef, parse_sd, parse_syslog

NASTY = 'C-MOVE to "EV|L" a=b\\c ]x[\r\nline2\t≤ 12'


def sample(title: str = NASTY, **kw) -> Alert:
    base = {
        "rule_id": "novelty.new_move_destination",
        "kind": "novelty",
        "severity": "high",
        "title": title,
        "device": DeviceRef("10.20.2.11", "00:11:22:33:44:55", ("WS2", "WS|2="), "workstation"),
        "peers": (Peer("10.20.0.10", "PACS", 104), Peer("10.20.0.11")),
        "window_start": "2026-03-04T03:11:00Z",
        "window_end": "2026-03-04T03:12:00Z",
        "score": 0.8125,
        "threshold": 0.62,
        "evidence": (Evidence("dimse.c_move_rq", 40, 0, 2), Evidence("peers.new", 1.5)),
        "attack": ("T1005", "T1041"),
        "count": 3,
        "sensor": "sensor-1",
    }
    base.update(kw)
    return Alert(**base)


def check_cef(line: str, a: Alert) -> None:
    hdr, ext = parse_cef(line)
    one_line_title = a.title.replace("\r", " ").replace("\n", " ")
    assert hdr == [
        "CEF:0",
        "radsensor",
        "radsensor",
        hdr[3],
        a.rule_id.replace("\r", " ").replace("\n", " "),
        one_line_title,
        str(a.severity.cef),
    ]
    assert ext["msg"] == a.title  # extension keeps line breaks (escaped)
    assert ext["rt"] == str(int(a.time.timestamp() * 1000))
    assert ext["start"] == str(int(a.window_start.timestamp() * 1000))
    assert ext["end"] == str(int(a.window_end.timestamp() * 1000))
    assert ext["src"] == a.device.ip and ext["cnt"] == str(a.count) and ext["externalId"] == a.id
    if a.device.mac:
        assert ext["smac"] == a.device.mac
    if a.peers:
        assert ext["dst"] == a.peers[0].ip
    labels = {ext[k + "Label"]: ext[k] for k in CEF_LABELS if k + "Label" in ext}
    if a.device.ae_titles and any(a.device.ae_titles):
        assert labels["deviceAETitles"] == ",".join(a.device.ae_titles)
    if a.attack:
        assert labels["attackTechniques"] == ",".join(a.attack)
    if a.score is not None:
        assert float(labels["anomalyScore"]) == a.score
    assert labels["alertKind"] == a.kind.value


def check_leef(line: str, a: Alert) -> None:
    hdr, attrs = parse_leef(line)
    flat = a.title.translate(str.maketrans("\t\r\n", "   "))
    assert hdr[:5] == [
        "LEEF:2.0",
        "radsensor",
        "radsensor",
        hdr[3],
        a.rule_id.replace("\r", " ").replace("\n", " "),
    ]
    assert hdr[5] == "x09"
    if flat:
        assert attrs["name"] == flat
    assert attrs["src"] == a.device.ip and attrs["sev"] == str(a.severity.leef)
    assert attrs["cat"] == a.kind.value and attrs["count"] == str(a.count) and attrs["alertId"] == a.id
    assert attrs["devTimeFormat"] == "yyyy-MM-dd'T'HH:mm:ss.SSSX"
    if a.peers:
        assert attrs["dst"] == a.peers[0].ip
    if a.device.mac:
        assert attrs["srcMAC"] == a.device.mac


def test_cef_fields_and_escaping():
    a = sample()
    line = to_cef(a)
    assert "\n" not in line and "\r" not in line
    check_cef(line, a)
    _, ext = parse_cef(line)
    assert ext["dpt"] == "104" and ext["cs2"] == "PACS" and ext["cs3"] == "workstation"
    assert ext["cs1"] == "WS2,WS|2=" and ext["cn1"] == "812"
    assert ext["cs4"] == "dimse.c_move_rq=40 (p50 0, p99 2); peers.new=1.5"
    assert ext["dvchost"] == "sensor-1" and ext["cat"] == "novelty"
    assert r"EV\|L" in line.split("|rt=")[0]  # header pipe escaped
    assert r"a\=b\\c" in line  # extension '=' and '\' escaped


def test_leef_fields_and_escaping():
    a = sample()
    line = to_leef(a)
    assert "\n" not in line and "\r" not in line
    check_leef(line, a)
    _, attrs = parse_leef(line)
    assert attrs["devTime"] == "2026-03-04T03:12:00.000Z"
    assert attrs["deviceAETitles"] == "WS2,WS|2=" and attrs["attack"] == "T1005,T1041"
    assert attrs["score"] == "0.8125" and attrs["threshold"] == "0.62" and attrs["dstPort"] == "104"


_tricky = st.text(alphabet=st.sampled_from(list('|=\\"]\r\n\t ab≤\x00[')) | st.characters(), max_size=40)


@given(title=_tricky, ae=_tricky, role=_tricky)
def test_cef_leef_escaping_property(title, ae, role):
    a = sample(title=title, device=DeviceRef("10.1.1.1", None, (ae,), role or None))
    check_cef(to_cef(a), a)
    check_leef(to_leef(a), a)
    assert "\n" not in to_cef(a) and "\n" not in to_leef(a) and "\n" not in to_text(a)


def test_json_and_ecs():
    a = sample()
    assert Alert.from_dict(json.loads(to_json(a))) == a
    assert "\n" not in to_json(a) and "\n" not in to_ecs(a)
    e = json.loads(to_ecs(a))
    assert e == ecs_dict(a)
    assert e["event"]["kind"] == "alert" and e["event"]["category"] == ["network", "intrusion_detection"]
    assert e["rule"] == {"id": a.rule_id, "name": a.title, "category": "novelty", "ruleset": "radsensor"}
    assert e["source"] == {"ip": "10.20.2.11", "mac": "00-11-22-33-44-55"}
    assert e["destination"] == {"ip": "10.20.0.10", "port": 104}
    assert e["related"]["ip"] == ["10.20.2.11", "10.20.0.10", "10.20.0.11"]
    assert e["threat"] == {"framework": "MITRE ATT&CK", "technique": {"id": ["T1005", "T1041"]}}
    assert e["event"]["risk_score"] == 81.25 and e["observer"]["name"] == "sensor-1"
    assert e["@timestamp"] == "2026-03-04T03:12:00Z" and e["event"]["start"] == "2026-03-04T03:11:00Z"


def test_text_line_and_table():
    a = sample()
    t = to_text(a)
    assert "\n" not in t and t.startswith("2026-03-04T03:12:00Z HIGH novelty.new_move_destination 10.20.2.11")
    assert "-> 10.20.0.10 [PACS] +1" in t and "x3" in t and "dimse.c_move_rq=40 (p50 0, p99 2)" in t
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(format_table([a, sample(title="[bold]x[/]")]))
    out = buf.getvalue()
    assert "novelty.new_move_destination" in out and "[bold]x[/]" in out  # data never read as markup


def test_formatter_table():
    assert set(FORMATTERS) == {"json", "cef", "leef", "ecs", "text"}
    assert get_formatter("cef") is to_cef
    try:
        get_formatter("xml")
    except ValueError as e:
        assert "xml" in str(e)
    else:
        raise AssertionError("unknown format accepted")


# ------------------------------------------------------------------------------------------ RFC 5424


def test_rfc5424_message():
    a = sample()
    raw = build_message(a, to_cef(a), facility=Facility.LOCAL4, procid="42")
    d = parse_syslog(raw.decode())
    assert d["pri"] == pri(20, 3) == 163 and d["version"] == 1
    assert d["hostname"] == "sensor-1" and d["app"] == "radsensor" and d["procid"] == "42"
    assert d["msgid"] == "novelty.new_move_destination"
    assert d["timestamp"].endswith("Z") and len(d["timestamp"]) == len("2026-03-04T03:12:00.000Z")
    assert d["sd"]["radsensor@32473"] == {
        "id": a.id,
        "rule": a.rule_id,
        "kind": "novelty",
        "severity": "high",
        "device": "10.20.2.11",
        "count": "3",
        "score": "0.8125",
        "attack": "T1005,T1041",
    }
    assert d["msg"] == to_cef(a)


def test_rfc5424_header_fields_sanitised():
    a = sample(rule_id="rule with spaces and a very long name beyond thirty-two", sensor="")
    d = parse_syslog(build_message(a, "x", hostname="h o\tst", app_name="").decode())
    assert d["msgid"] == "rule_with_spaces_and_a_very_long"  # PRINTUSASCII, 32 max
    assert d["hostname"] == "h_o_st" and d["app"] == "-"


@given(st.text(max_size=60))
def test_sd_escape_round_trip(value):
    sd, rest = parse_sd(f'[x@32473 k="{sd_escape(value)}"] tail')
    assert sd == {"x@32473": {"k": value}} and rest == "tail"


def test_framing_and_truncation():
    assert octet_frame(b"<14>1 - - - - - - hi") == b"20 <14>1 - - - - - - hi"
    s = "a" * 9 + "≤"  # '≤' is 3 bytes: a cut at 10 or 11 must not split it
    assert truncate_utf8(s.encode(), 10) == b"a" * 9
    assert truncate_utf8(s.encode(), 11) == b"a" * 9
    assert truncate_utf8(s.encode(), 12) == s.encode()


def test_transport_from_url():
    assert isinstance(transport_from_url("udp://127.0.0.1"), UdpTransport)
    t = transport_from_url("tcp://127.0.0.1:1514", timeout=2.0)
    assert isinstance(t, TcpTransport) and (t.port, t.timeout) == (1514, 2.0)
    t = transport_from_url("tls://localhost", verify=True)
    assert isinstance(t, TlsTransport) and t.port == 6514 and t.context.check_hostname
    for bad in ("http://x", "tcp://"):
        try:
            transport_from_url(bad)
        except ValueError:
            pass
        else:
            raise AssertionError(bad)
