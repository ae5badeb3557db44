"""The ``hl7`` package's MLLPClient against an ACK-ing listener on loopback, captured and decoded.

Every Hl7Message field is compared with what was sent (bytes recorded by the scenario, fields
split out by tests/realstack/hl7_scenarios.expected_fields), in both directions.
"""

from __future__ import annotations

import json

import pytest

from sensor.events import FlowRecord, Hl7Message, Weird
from sensor.pipeline import iter_events
from tests.realstack import craft
from tests.realstack import hl7_scenarios as hs
from tests.realstack.runs import hl7_run
from tests.test_realstack_dicom import check_flows

pytestmark = pytest.mark.realstack

FIELDS = ("message_type", "event", "structure", "msh_type", "sending_app", "sending_facility", "receiving_app",
          "receiving_facility", "control_id", "processing_id", "version", "ack_code", "acked_control_id",
          "segment_types", "size", "framing")


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    r = hl7_run(tmp_path_factory.mktemp("realstack_hl7"))
    assert r["dropped"] == 0
    return r


@pytest.fixture(scope="session")
def events(run):
    return list(iter_events([run["pcap"]]))


def expected_messages(run):
    """(src port, dst port, fields) for every message both ways, in send order."""
    port = run["sent"]["port"]
    out = []
    for x in run["sent"]["exchanges"]:
        out.append((x["client_port"], port, hs.expected_fields(x["request"])))
        out.append((port, x["client_port"], hs.expected_fields(x["reply"])))
    return out


def msg_fields(m: Hl7Message):
    d = m.to_dict()
    return {k: d[k] for k in FIELDS}


def test_sent_mix(run):
    types = [hs.expected_fields(x["request"])["msh_type"] for x in run["sent"]["exchanges"]]
    assert {"ADT^A04^ADT_A01", "ADT^A08^ADT_A01", "ORM^O01", "ORU^R01^ORU_R01"} <= set(types)
    acks = [hs.expected_fields(x["reply"])["ack_code"] for x in run["sent"]["exchanges"]]
    assert sorted(set(acks)) == ["AA", "AE", "AR"]


def test_every_message_exact(run, events):
    got = [m for m in events if isinstance(m, Hl7Message)]
    exp = expected_messages(run)
    assert len(got) == len(exp)
    got_sorted = sorted(got, key=lambda m: (m.ts, m.src.port))
    for m, (sp, dp, fields) in zip(got_sorted, exp):
        assert (m.src.port, m.dst.port) == (sp, dp), fields["control_id"]
        assert m.src.ip == run["host"] and m.dst.ip == run["host"]
        assert msg_fields(m) == fields, fields["control_id"]


def test_ack_codes_pair_with_requests(events):
    msgs = [m for m in events if isinstance(m, Hl7Message)]
    sent = {m.control_id: m for m in msgs if m.ack_code is None}
    for ack in (m for m in msgs if m.ack_code is not None):
        req = sent[ack.acked_control_id]
        assert ack.dst == req.src and ack.src == req.dst and ack.ts >= req.ts
        assert ack.ack_code == hs.ack_code_for(req.control_id)


def test_flows(run, events):
    check_flows(events, run["pcap"], run["host"], expect_app="hl7")
    assert len([f for f in events if isinstance(f, FlowRecord)]) == len(hs.CONNECTIONS)


def test_no_phi_in_any_event(events):
    blob = "\n".join(json.dumps(e.to_dict()) for e in events)
    for s in hs.CANARY_STRINGS + ("19700101", "CANARY ST", "lesion"):
        assert s not in blob


def test_no_weirds(events):
    assert [e for e in events if isinstance(e, Weird)] == []


def test_mllp_frames_split_and_merged(run, tmp_path):
    """Byte-at-a-time segments and all of one direction in one segment give the same messages."""
    base = sorted((m.src.port, m.control_id, json.dumps(msg_fields(m), sort_keys=True))
                  for m in run_events(run["pcap"]))
    for name, reseg in (("bytes", lambda t: craft.resegment(t, 7)), ("merged", craft.coalesce)):
        out = tmp_path / f"{name}.pcap"
        for n, ((c, s), turns) in enumerate(craft.tcp_conversations(run["pcap"]).items()):
            craft.write_conversation(out, reseg(turns), c, s, t0=1_700_000_000.0 + n, append=n > 0)
        got = sorted((m.src.port, m.control_id, json.dumps(msg_fields(m), sort_keys=True))
                     for m in run_events(out))
        assert got == base, name


def run_events(path):
    return [e for e in iter_events([path]) if isinstance(e, Hl7Message)]
