"""Real pynetdicom SCU↔SCP traffic over loopback, captured with tcpdump, decoded, asserted exactly.

Expected values come from what the scenarios did (tests/realstack/dicom_scenarios.py): data-set
sizes are pydicom encodings of the data sets sent, message ids are the ones chosen, statuses are
what the peer answered. The acceptor's own DIMSE log cross-checks those expectations first.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import pytest

from sensor.events import Counters, DicomAssociation, DimseMessage, FlowRecord, Weird
from sensor.pipeline import iter_events
from tests.realstack import craft
from tests.realstack import dicom_scenarios as ds
from tests.realstack.oracle import tcp_conversations
from tests.realstack.runs import dicom_run, ipv6_run

pytestmark = pytest.mark.realstack

ASSOC_KEYS = ("calling_ae", "called_ae", "result", "released", "reject", "abort", "contexts",
              "abstract_syntaxes", "req_impl_uid", "req_impl_version", "acc_impl_uid", "acc_impl_version",
              "max_pdu", "dimse", "statuses", "sop_classes", "move_destinations", "query_levels",
              "wildcard_keys", "dataset_bytes")


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    r = dicom_run(tmp_path_factory.mktemp("realstack"))
    assert r["dropped"] == 0, r.get("tcpdump")
    return r


def decode(path, counters=None):
    return list(iter_events([path], counters=counters))


@pytest.fixture(scope="session")
def events(run):
    return decode(run["pcap"])


def by_type(events, cls):
    return [e for e in events if isinstance(e, cls)]


def assoc_by_calling(events):
    out = {}
    for a in by_type(events, DicomAssociation):
        assert a.calling_ae not in out, f"two associations from {a.calling_ae}"
        out[a.calling_ae] = a
    return out


def expected_assoc(exp):
    e = {k: exp[k] for k in ASSOC_KEYS if k != "abstract_syntaxes"}
    e["abstract_syntaxes"] = exp["abstract_syntaxes"]
    return e


def decoded_assoc(a: DicomAssociation):
    d = a.to_dict()
    return {k: d[k] for k in ASSOC_KEYS}


# ---- the expectations themselves are right ---------------------------------------------------


def test_expectations_match_the_acceptor_log(run):
    """What the scenarios predict equals what pynetdicom's acceptors logged on the wire."""
    wire = run["expected"]["wire"]
    for calling, exp in run["expected"]["associations"].items():
        msgs = [m for m in wire if m["calling_ae"] == calling]
        dimse = Counter()
        for m in msgs:
            name = ds_name(m["command_field"])
            dimse[name] += 1
        assert dict(dimse) == exp["dimse"], calling
        assert sum(m["dataset_len"] for m in msgs) == exp["dataset_bytes"], calling
        statuses = Counter("0x{:04X}".format(m["status"]) for m in msgs if m["status"] is not None)
        assert dict(statuses) == exp["statuses"], calling
        if exp["result"] != "rejected":
            logged = run["expected"]["wire_assocs"][calling]
            assert logged["max_pdu"] == exp["max_pdu"], calling
            assert [logged["req_impl_uid"], logged["req_impl_version"], logged["acc_impl_uid"],
                    logged["acc_impl_version"]] == [exp["req_impl_uid"], exp["req_impl_version"],
                                                     exp["acc_impl_uid"], exp["acc_impl_version"]]


def ds_name(cf: int) -> str:
    from tests.realstack.oracle import COMMAND_NAMES
    return COMMAND_NAMES[cf & 0x7FFF] + ("-RSP" if cf & 0x8000 else "-RQ")


# ---- associations ----------------------------------------------------------------------------


def test_every_association_is_reported_once(run, events):
    assert sorted(assoc_by_calling(events)) == sorted(run["expected"]["associations"])


@pytest.mark.parametrize("calling", ["ECHOSCU", "STORESCU", "FINDSCU", "MOVESCU", "RADSCP", "GETSCU",
                                     "COMMITSCU", "REJECTSCU", "ABORTSCU"])
def test_association_fields_exact(run, events, calling):
    exp = run["expected"]["associations"][calling]
    got = assoc_by_calling(events)[calling]
    assert decoded_assoc(got) == expected_assoc(exp)
    # Union of proposed transfer syntaxes, in order of first proposal.
    ts = []
    for cx in exp["contexts"]:
        ts += [t for t in cx["transfer_syntaxes"] if t not in ts]
    assert list(got.transfer_syntaxes) == ts
    assert got.application_context == "1.2.840.10008.3.1.1.1"
    assert got.decode_errors == 0
    assert got.ts_end >= got.ts_start
    assert got.mid_stream is False
    port = run["ports"][1] if calling == "RADSCP" else run["ports"][0]
    assert got.server.port == port and got.server.ip == run["host"]


def test_role_selection_of_c_get(run, events):
    got = assoc_by_calling(events)["GETSCU"]
    assert [list(r) for r in got.roles] == run["expected"]["associations"]["GETSCU"]["roles"]


def test_pdv_fragmentation_happened_and_was_counted(run, events):
    """6 × 128 KiB over a 32 KiB max PDU: every image is cut into several data PDVs."""
    a = assoc_by_calling(events)["STORESCU"]
    per_image = -(-ds.encoded_len(ds.STUDY[0], ds.ExplicitVRLittleEndian) // (ds.SCP_MAX_PDU - 6))
    assert per_image >= 4
    # Each message = 1 command PDV + data PDVs (requests) ; responses = 1 command PDV each.
    assert a.pdv_fragments == ds.N_IMAGES * (1 + per_image) + ds.N_IMAGES
    assert a.pdu_counts["P-DATA-TF"] == a.pdv_fragments  # pynetdicom sends one PDV per PDU


# ---- DIMSE operations ------------------------------------------------------------------------


def test_dimse_messages_paired_exactly(run, events):
    dimse = by_type(events, DimseMessage)
    index = {}
    for m in dimse:
        key = (m.calling_ae, m.message_id, m.command, m.requested_by)
        assert key not in index, key
        index[key] = m
    n = 0
    for calling, exp in run["expected"]["associations"].items():
        for rec in exp["messages"]:
            key = (calling, rec["message_id"], rec["command"], rec["requested_by"])
            assert key in index, key
            m = index.pop(key)
            n += 1
            assert m.sop_class == rec["sop_class"], key
            assert m.status == rec["status"], key
            assert m.pending == rec["pending"], key
            assert m.dataset_bytes == rec["dataset_bytes"], key
            assert m.response_dataset_bytes == rec["response_dataset_bytes"], key
            assert m.move_destination == rec.get("move_destination"), key
            assert m.query_level == rec.get("query_level"), key
            assert sorted(m.wildcard_keys) == sorted(rec.get("wildcard_keys", [])), key
            if "sub_ops" in rec:
                assert tuple(m.sub_ops) == rec["sub_ops"], key
            assert m.latency is not None and m.latency >= 0 and m.ts_response >= m.ts, key
            assert m.called_ae == exp["called_ae"], key
    assert not index, f"unexpected DIMSE messages: {list(index)}"
    assert n == sum(len(e["messages"]) for e in run["expected"]["associations"].values())


def test_c_find_pending_equals_matches(run, events):
    finds = sorted((m for m in by_type(events, DimseMessage) if m.command == "C-FIND"), key=lambda m: m.message_id)
    assert [(m.query_level, m.pending, m.status) for m in finds] == [
        ("PATIENT", len(ds.PATIENT_MATCHES), "0x0000"), ("STUDY", len(ds.STUDY_MATCHES), "0x0000")]


def test_c_get_sub_operations_come_from_the_acceptor(events):
    stores = [m for m in by_type(events, DimseMessage) if m.calling_ae == "GETSCU" and m.command == "C-STORE"]
    assert len(stores) == ds.GET_SUBOPS
    assert {m.requested_by for m in stores} == {"acceptor"}


# ---- flows -----------------------------------------------------------------------------------


def check_flows(events, pcap, host, expect_app="dicom"):
    conv = tcp_conversations(pcap)
    flows = by_type(events, FlowRecord)
    assert len(flows) == len(conv)
    for f in flows:
        key = (f.client.ip, f.client.port, f.server.ip, f.server.port)
        rkey = (f.server.ip, f.server.port, f.client.ip, f.client.port)
        if key in conv:
            c = conv[key]
            frames, ipb = c["frames"], c["ip_bytes"]
        else:
            c = conv[rkey]
            frames, ipb = c["frames"][::-1], c["ip_bytes"][::-1]
        assert list(f.packets) == frames, key
        assert list(f.bytes) == ipb, key
        assert f.proto == "tcp" and f.handshake is True and f.tcp_state == "established", key
        assert f.app == expect_app and f.client.ip == host, key
        assert f.close_reason == "fin" and not f.rst, key


def test_flows_agree_with_tshark_conversations(run, events):
    check_flows(events, run["pcap"], run["host"])


def test_association_bytes_equal_flow_payload(events):
    flows = {(f.client.port, f.server.port): f for f in by_type(events, FlowRecord)}
    for a in by_type(events, DicomAssociation):
        assert list(a.bytes) == list(flows[(a.client.port, a.server.port)].payload_bytes)


# ---- PHI -------------------------------------------------------------------------------------


def test_no_phi_in_any_event(events):
    blob = "\n".join(json.dumps(e.to_dict()) for e in events)
    for s in ds.CANARY_STRINGS + ("QQCAN", "CHEST"):
        assert s not in blob


def test_no_weirds_on_clean_traffic(events):
    assert by_type(events, Weird) == []


# ---- edge cases (issue 2, item 9) --------------------------------------------------------------


def _conv(run, calling):
    """The (client, server) and segments of one scenario's connection in the real capture."""
    events = decode(run["pcap"])
    a = assoc_by_calling(events)[calling]
    key = ((a.client.ip, a.client.port), (a.server.ip, a.server.port))
    return key, craft.tcp_conversations(run["pcap"])[key]


def _core(a: DicomAssociation):
    d = decoded_assoc(a)
    return d


def test_one_pdu_over_many_segments(run, tmp_path):
    (client, server), turns = _conv(run, "STORESCU")
    out = tmp_path / "mss100.pcap"
    craft.write_conversation(out, craft.resegment(turns, 100), client, server)
    got = assoc_by_calling(decode(out))["STORESCU"]
    assert _core(got) == expected_assoc(run["expected"]["associations"]["STORESCU"])


def test_many_pdus_in_one_segment(run, tmp_path):
    (client, server), turns = _conv(run, "FINDSCU")
    merged = craft.coalesce(turns)
    assert len(merged) < len(turns)
    out = tmp_path / "coalesced.pcap"
    craft.write_conversation(out, merged, client, server)
    got = assoc_by_calling(decode(out))["FINDSCU"]
    assert _core(got) == expected_assoc(run["expected"]["associations"]["FINDSCU"])
    (client, server), turns = _conv(run, "STORESCU")
    merged = craft.coalesce(turns, limit=60000)
    out = tmp_path / "coalesced_store.pcap"
    craft.write_conversation(out, merged, client, server)
    got = assoc_by_calling(decode(out))["STORESCU"]
    assert _core(got) == expected_assoc(run["expected"]["associations"]["STORESCU"])


def _pdata_pdus(primitive_msg, context_id: int, max_pdu: int) -> list[bytes]:
    from pynetdicom.pdu import P_DATA_TF
    out = []
    for prim in primitive_msg.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(prim)
        out.append(pdu.encode())
    return out


def test_command_set_split_over_two_pdus(run, tmp_path):
    """A C-ECHO-RQ and -RSP whose command sets are each cut into two PDVs in two P-DATA-TF PDUs."""
    from pynetdicom.dimse_messages import C_ECHO_RQ, C_ECHO_RSP
    from pynetdicom.dimse_primitives import C_ECHO

    (client, server), turns = _conv(run, "ECHOSCU")
    rq_assoc, ac_assoc = turns[0], turns[1]
    assert rq_assoc[1][0] == 1 and ac_assoc[1][0] == 2
    release = [t for t in turns if t[1][0] in (5, 6)]

    req = C_ECHO()
    req.MessageID = 4242
    req.AffectedSOPClassUID = ds.Verification
    msg = C_ECHO_RQ()
    msg.primitive_to_message(req)
    rq_pdus = _pdata_pdus(msg, 1, 50)
    rsp = C_ECHO()
    rsp.MessageIDBeingRespondedTo = 4242
    rsp.AffectedSOPClassUID = ds.Verification
    rsp.Status = 0x0000
    msg = C_ECHO_RSP()
    msg.primitive_to_message(rsp)
    rsp_pdus = _pdata_pdus(msg, 1, 50)
    assert len(rq_pdus) == 2 and len(rsp_pdus) == 2
    # First PDV: command, not last (0x01); second: command, last (0x03).
    assert [p[11] for p in rq_pdus] == [0x01, 0x03]

    turns2 = [rq_assoc, ac_assoc] + [(True, p) for p in rq_pdus] + [(False, p) for p in rsp_pdus] + release
    out = tmp_path / "split_command.pcap"
    craft.write_conversation(out, turns2, client, server)
    evs = decode(out)
    a = assoc_by_calling(evs)["ECHOSCU"]
    assert a.dimse == {"C-ECHO-RQ": 1, "C-ECHO-RSP": 1}
    assert a.statuses == {"0x0000": 1}
    assert a.pdv_fragments == 4 and a.pdu_counts["P-DATA-TF"] == 4
    assert a.decode_errors == 0 and a.released
    (m,) = by_type(evs, DimseMessage)
    assert (m.command, m.message_id, m.status, m.sop_class) == ("C-ECHO", 4242, "0x0000", ds.Verification)


def _command_packets(pcap, client_port):
    """Indices of client→server packets that start with a P-DATA-TF carrying a last command PDV."""
    import dpkt
    idx = []
    for i, (_, buf, _) in enumerate(craft._frames(pcap)):
        tcp = dpkt.ethernet.Ethernet(buf).data.data
        if isinstance(tcp, dpkt.tcp.TCP) and tcp.sport == client_port:
            data = bytes(tcp.data)
            if len(data) >= 12 and data[0] == 4 and data[11] & 3 == 3:
                idx.append(i)
    return idx


def test_mid_association_start(run, tmp_path):
    """Drop everything before the 3rd C-STORE request: 4 stores decoded, flagged mid-stream."""
    events = decode(run["pcap"])
    a = assoc_by_calling(events)["STORESCU"]
    cmd = _command_packets(run["pcap"], a.client.port)
    assert len(cmd) == ds.N_IMAGES
    out = tmp_path / "mid.pcap"
    craft.drop_first(run["pcap"], out, cmd[2])
    evs = decode(out)
    store = [x for x in by_type(evs, DicomAssociation) if x.client.port == a.client.port]
    assert len(store) == 1
    s = store[0]
    assert s.mid_stream is True
    assert s.calling_ae is None and s.called_ae is None
    assert s.dimse == {"C-STORE-RQ": 4, "C-STORE-RSP": 4}
    assert s.statuses == {"0x0000": 4}
    assert s.released is True
    msgs = sorted(m.message_id for m in by_type(evs, DimseMessage)
                  if m.client.port == a.client.port and m.command == "C-STORE")
    assert msgs == [103, 104, 105, 106]
    # Data sets are skipped by length without the negotiated syntax: sizes still exact.
    assert s.dataset_bytes == 4 * ds.encoded_len(ds.STUDY[0], ds.ExplicitVRLittleEndian)
    # Later associations in the same file are untouched.
    later = assoc_by_calling(evs)
    for calling in ("FINDSCU", "GETSCU", "ABORTSCU"):
        assert decoded_assoc(later[calling]) == expected_assoc(run["expected"]["associations"][calling])


def _segments(pcap):
    import dpkt
    for i, (_, buf, _) in enumerate(craft._frames(pcap)):
        tcp = dpkt.ethernet.Ethernet(buf).data.data
        if isinstance(tcp, dpkt.tcp.TCP):
            yield i, tcp.sport, tcp.dport, bytes(tcp.data)


def test_mid_association_start_inside_a_data_set(run, tmp_path):
    """Capture begins with the acceptor's bare ACK, then a requestor segment starting inside a PDV.

    The decoder must resynchronise on the next PDU header, and the C-STORE-RQs that follow show
    who the requestor is: client/server stay SCU/SCP (events.py: client = association requestor).
    """
    events = decode(run["pcap"])
    a = assoc_by_calling(events)["STORESCU"]
    cmd = _command_packets(run["pcap"], a.client.port)
    segs = list(_segments(run["pcap"]))
    # First requestor data segment after the 3rd command that does not start with a PDU header.
    j = next(i for i, sp, _, d in segs if i > cmd[2] and sp == a.client.port and d and d[0] != 4)
    # Any earlier pure ACK from the acceptor, kept as the very first packet of the capture.
    k = max(i for i, sp, dp, d in segs if i < j and sp == a.server.port and dp == a.client.port and not d)
    out = tmp_path / "mid2.pcap"
    craft.drop_first(run["pcap"], out, j, frozenset({k}))
    later_cmds = [i for i in cmd if i > j]
    counters = Counters()
    evs = decode(out, counters)
    ports = {a.client.port, a.server.port}
    (s,) = [x for x in by_type(evs, DicomAssociation) if {x.client.port, x.server.port} == ports]
    (f,) = [x for x in by_type(evs, FlowRecord) if {x.client.port, x.server.port} == ports]
    assert (s.client.port, s.server.port) == (a.client.port, a.server.port), "requestor/acceptor swapped"
    assert (f.client.port, f.server.port) == (a.client.port, a.server.port), "flow client/server swapped"
    assert s.mid_stream is True
    assert s.dimse.get("C-STORE-RQ") == len(later_cmds)
    paired = sorted(m.message_id for m in by_type(evs, DimseMessage)
                    if {m.client.port, m.server.port} == ports and m.status == "0x0000" and m.ts_response)
    assert paired[-len(later_cmds):] == list(range(107 - len(later_cmds), 107))


def test_vlan(run, tmp_path):
    out = tmp_path / "vlan.pcap"
    craft.add_vlan(run["pcap"], out, 42)
    evs = decode(out)
    got = assoc_by_calling(evs)
    for calling, exp in run["expected"]["associations"].items():
        assert decoded_assoc(got[calling]) == expected_assoc(exp), calling
    flows = by_type(evs, FlowRecord)
    assert flows and all(tuple(f.vlan) == (42,) for f in flows)
    assert len(by_type(evs, DimseMessage)) == len(by_type(decode(run["pcap"]), DimseMessage))


def test_pcapng(run, tmp_path):
    out = tmp_path / "dicom.pcapng"
    craft.to_pcapng(run["pcap"], out)
    assert out.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    a = [e.to_dict() for e in decode(run["pcap"])]
    b = [e.to_dict() for e in decode(out)]
    assert a == b


def _record_offsets(path: Path) -> list[tuple[int, int]]:
    data = path.read_bytes()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    off, out = 24, []
    while off + 16 <= len(data):
        incl = struct.unpack_from(endian + "I", data, off + 8)[0]
        out.append((off, incl))
        off += 16 + incl
    return out


def test_truncated_file(run, tmp_path):
    """Cut inside a record in the middle of the STORE association: events so far + a warning."""
    recs = _record_offsets(run["pcap"])
    big = [i for i, (_, n) in enumerate(recs) if n > 10000]
    cut_at = big[len(big) // 2]
    off, incl = recs[cut_at]
    out = tmp_path / "cut.pcap"
    out.write_bytes(run["pcap"].read_bytes()[:off + 16 + incl // 2])
    counters = Counters()
    evs = decode(out, counters)  # must not raise
    full = [e.to_dict() for e in decode(run["pcap"])]
    assert counters.get("capture.warnings") >= 1 or any("truncat" in k for k in counters.values)
    # Every association that ended before the cut is reported exactly as in the full file.
    cut_ts = min(e.ts_start for e in by_type(evs, DicomAssociation) if e.result == "incomplete") \
        if any(e.result == "incomplete" for e in by_type(evs, DicomAssociation)) else None
    got = [e.to_dict() for e in by_type(evs, DicomAssociation) if e.result != "incomplete"]
    assert got and all(g in full for g in got)
    assert cut_ts is not None, "the association cut in the middle must be reported as incomplete"


def test_ipv6(tmp_path_factory):
    r = ipv6_run(tmp_path_factory.mktemp("realstack6"))
    evs = decode(r["pcap"])
    got = assoc_by_calling(evs)
    assert sorted(got) == ["ECHOSCU", "STORESCU"]
    for calling in got:
        exp = r["expected"]["associations"][calling]
        assert decoded_assoc(got[calling]) == expected_assoc(exp)
        assert got[calling].client.ip == "::1" and got[calling].server.ip == "::1"
    check_flows(evs, r["pcap"], "::1")
