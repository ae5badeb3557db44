"""Interoperability: traffic between two other real DICOM implementations, dcmtk and Orthanc.

Orthanc (the PACS) and a dcmtk ``storescp`` (the C-MOVE destination) run as children of this
module, on 127.0.0.1 with free ports and a temporary config. The dcmtk SCUs then do, one
association each: C-ECHO, C-STORE of three synthetic studies (six instances, one of 2 MiB and one
8-frame), C-FIND at PATIENT and STUDY level with wildcards, C-MOVE of a study to ``storescp`` (the
sub-operations run on Orthanc's own second association), C-GET of a study, an association with a
wrong called AE title (rejected by Orthanc), and one aborted association. tcpdump records the two
DICOM ports only.

The capture is decoded with radsensor and checked field by field against what the tools were asked
to do and what the peers report (exit status, files received, Orthanc's REST statistics), then
against tshark (the oracle of test_oracle.py), and finally the pure-Python reference decoder
(``RADSENSOR_FAST=0``) must write the same event logs as the compiled one.

No skip when a tool is missing: CI installs dcmtk and orthanc (.ci/run), so absence is a failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from sensor.events import DicomAssociation, DimseMessage, FlowRecord, Weird
from sensor.pipeline import iter_events
from tests.realstack import craft, oracle
from tests.realstack import stacks as st
from tests.realstack.capture import Capture
from tests.test_oracle import compare_capture

pytestmark = pytest.mark.realstack

ROOT = Path(__file__).resolve().parents[1]
PACS_AET, DEST_AET = "ORTHANC_T", "STORESCP_T"

VERIFICATION = "1.2.840.10008.1.1"
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
IMPLICIT, EXPLICIT, BIG = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"
DCMTK_MAX_PDU = 16384  # dcmtk's default receive limit; Orthanc's "MaximumPduLength" default too
# dcmtk fragments data sets into PDVs of at most max PDU - 12 bytes ("Max Send PDV: 16372" in its
# log: room for the PDU header and the PDV header, 6 bytes each).
DCMTK_MAX_PDV = DCMTK_MAX_PDU - 12
SUCCESS, PENDING = "0x0000", "0xFF00"


# ---- the run -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tools():
    return st.require_tools()


@pytest.fixture(scope="module")
def stack(tools, tmp_path_factory):
    """storescp and Orthanc, started once for the module and stopped by PID at the end."""
    base = tmp_path_factory.mktemp("interop_stack")
    scp = st.StoreScp(base / "storescp_in", DEST_AET, binary=tools["storescp"])
    pacs = st.Orthanc(base / "orthanc", PACS_AET, {DEST_AET: scp.port}, binary=tools["Orthanc"])
    try:
        scp.start()
        pacs.start()
        yield pacs, scp
    finally:
        pacs.stop()
        scp.stop()


@pytest.fixture(scope="module")
def run(stack, tools, tmp_path_factory):
    pacs, scp = stack
    base = tmp_path_factory.mktemp("interop_run")
    studies = st.make_studies(base / "files")
    pcap = base / "interop.pcap"
    with Capture(pcap, [pacs.dicom_port, scp.port], host=st.HOST) as cap:
        steps = st.run_traffic(pacs, scp, studies, base / "getscu_out")
    return {
        "pcap": pcap, "steps": steps, "studies": studies, "pacs": pacs, "scp": scp,
        "dropped": cap.dropped_by_kernel, "tcpdump": cap.stderr_lines,
        "received_by_scp": scp.received(), "received_by_getscu": sorted((base / "getscu_out").iterdir()),
        "orthanc_stats": st.orthanc_statistics(pacs),
        "versions": {"dcmtk": st.tool_version([tools["echoscu"]]), "orthanc": st.tool_version([tools["Orthanc"]])},
    }


@pytest.fixture(scope="module")
def events(run):
    return list(iter_events([run["pcap"]]))


def by_type(events, cls):
    return [e for e in events if isinstance(e, cls)]


def assocs(events) -> dict[str, DicomAssociation]:
    out = {}
    for a in by_type(events, DicomAssociation):
        assert a.calling_ae not in out, f"two associations from {a.calling_ae}"
        out[a.calling_ae] = a
    return out


def messages(events, calling) -> list[DimseMessage]:
    return sorted((m for m in by_type(events, DimseMessage) if m.calling_ae == calling),
                  key=lambda m: (m.ts, m.message_id))


def identifier_len(keys) -> int:
    """Explicit VR LE length of the identifier dcmtk builds from ``-k`` keys (pydicom's encoding)."""
    from pydicom.dataset import Dataset
    from pynetdicom.dsutils import encode

    ds = Dataset()
    for k in keys:
        name, _, value = k.partition("=")
        setattr(ds, name, value)
    data = encode(ds, False, True)
    assert data is not None
    return len(data)


def dcmtk_impl(version_line: str) -> tuple[str, str]:
    """dcmtk's implementation class UID and version name, derived from ``echoscu --version``.

    dcmuid.h: OFFIS_IMPLEMENTATION_CLASS_UID = "1.2.276.0.7230010.3.0." + version, and
    OFFIS_DTK_IMPLEMENTATION_VERSION_NAME = "OFFIS_DCMTK_" + version without dots.
    """
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", version_line)
    assert m, version_line
    return "1.2.276.0.7230010.3.0." + ".".join(m.groups()), "OFFIS_DCMTK_" + "".join(m.groups())


# ---- the run itself is what it should be ---------------------------------------------------------


def test_stack_versions(run):
    assert "v3.6." in run["versions"]["dcmtk"], run["versions"]
    assert re.search(r"Orthanc 1\.\d+\.\d+$", run["versions"]["orthanc"]), run["versions"]


def test_every_step_did_what_it_was_asked(run):
    steps = run["steps"]
    for calling, res in steps.items():
        if calling == st.REJECT:
            assert res.returncode != 0
            assert "Called AE Title Not Recognized" in res.stderr, res.stderr
        else:
            assert res.returncode == 0, (calling, res.stderr[-500:])
    assert run["dropped"] == 0, run["tcpdump"]
    # What the peers themselves report.
    n_instances = sum(len(s.files) for s in run["studies"])
    assert int(run["orthanc_stats"]["CountInstances"]) == n_instances
    assert int(run["orthanc_stats"]["CountStudies"]) == len(run["studies"])
    assert len(run["received_by_scp"]) == len(run["studies"][0].files)
    assert len(run["received_by_getscu"]) == len(run["studies"][1].files)
    assert "Find Response: 3 (Pending)" in steps[st.FIND_PATIENT].stderr
    assert "Find Response: 2 (Pending)" in steps[st.FIND_STUDY].stderr
    assert "Find Response: 3 " not in steps[st.FIND_STUDY].stderr


# ---- associations --------------------------------------------------------------------------------


def test_every_association_is_reported_once(events):
    assert sorted(assocs(events)) == sorted([st.ECHO, st.STORE, st.FIND_PATIENT, st.FIND_STUDY, st.MOVE,
                                              PACS_AET, st.GET, st.REJECT, st.ABORT])


def _expected(run, events):
    s1, s2, s3 = run["studies"]
    # Identifier bytes: the request's from the -k keys; C-FIND match data sets as decoded (their
    # sum per association is checked against tshark in test_tshark_agrees).
    rsp = {m.calling_ae: m.response_dataset_bytes for m in by_type(events, DimseMessage) if m.command == "C-FIND"}
    ds = {p: st.dataset_len(p) for s in run["studies"] for p in s.files}
    released = {"A-ASSOCIATE-RQ": 1, "A-ASSOCIATE-AC": 1, "A-RELEASE-RQ": 1, "A-RELEASE-RP": 1}
    store_sops = Counter(sop for s in run["studies"] for sop in s.sop_classes)
    store_pdvs = sum(2 + -(-ds[p] // DCMTK_MAX_PDV) for s in run["studies"] for p in s.files)
    get_pdvs = 1 + 3 + sum(1 + -(-ds[p] // DCMTK_MAX_PDV) for p in s2.files) + 1
    base = {"called_ae": PACS_AET, "result": "accepted", "released": True, "reject": None, "abort": None,
            "max_pdu": (DCMTK_MAX_PDU, DCMTK_MAX_PDU), "user_identity_type": None, "move_destinations": {},
            "query_levels": {}, "wildcard_keys": {}, "dataset_bytes": 0, "decode_errors": 0, "mid_stream": False}
    return {
        st.ECHO: base | {"pdu_counts": released | {"P-DATA-TF": 2}, "dimse": {"C-ECHO-RQ": 1, "C-ECHO-RSP": 1},
                         "statuses": {SUCCESS: 1}, "sop_classes": {VERIFICATION: 1}},
        st.STORE: base | {"pdu_counts": released | {"P-DATA-TF": store_pdvs},
                          "dimse": {"C-STORE-RQ": len(ds), "C-STORE-RSP": len(ds)},
                          "statuses": {SUCCESS: len(ds)}, "sop_classes": dict(store_sops),
                          "dataset_bytes": sum(ds.values())},
        st.FIND_PATIENT: base | {"dimse": {"C-FIND-RQ": 1, "C-FIND-RSP": 4}, "statuses": {PENDING: 3, SUCCESS: 1},
                                 "sop_classes": {PATIENT_FIND: 1}, "query_levels": {"PATIENT": 1},
                                 "wildcard_keys": {"PatientName": 1},
                                 "dataset_bytes": identifier_len(st.FIND_PATIENT_KEYS) + rsp[st.FIND_PATIENT]},
        st.FIND_STUDY: base | {"dimse": {"C-FIND-RQ": 1, "C-FIND-RSP": 3}, "statuses": {PENDING: 2, SUCCESS: 1},
                               "sop_classes": {STUDY_FIND: 1}, "query_levels": {"STUDY": 1},
                               "wildcard_keys": {"PatientName": 1, "StudyDescription": 1},
                               "dataset_bytes": identifier_len(st.FIND_STUDY_KEYS) + rsp[st.FIND_STUDY]},
        st.MOVE: base | {"sop_classes": {STUDY_MOVE: 1}, "move_destinations": {DEST_AET: 1},
                         "query_levels": {"STUDY": 1}, "dataset_bytes": identifier_len(st.retrieve_keys(s1))},
        PACS_AET: base | {"called_ae": DEST_AET, "pdu_counts": released | {"P-DATA-TF": 3 * len(s1.files)},
                          "dimse": {"C-STORE-RQ": len(s1.files), "C-STORE-RSP": len(s1.files)},
                          "statuses": {SUCCESS: len(s1.files)}, "sop_classes": Counter(s1.sop_classes),
                          "dataset_bytes": sum(ds[p] for p in s1.files)},
        st.GET: base | {"pdu_counts": released | {"P-DATA-TF": get_pdvs},
                        "dimse": {"C-GET-RQ": 1, "C-GET-RSP": 2, "C-STORE-RQ": 1, "C-STORE-RSP": 1},
                        "statuses": {PENDING: 1, SUCCESS: 2},
                        "sop_classes": {STUDY_GET: 1, **Counter(s2.sop_classes)}, "query_levels": {"STUDY": 1},
                        "dataset_bytes": identifier_len(st.retrieve_keys(s2)) + sum(ds[p] for p in s2.files)},
        st.REJECT: base | {"called_ae": st.WRONG_CALLED_AE, "result": "rejected", "released": False,
                           "reject": {"result": 1, "source": 1, "reason": 7},  # permanent, service user, called AE
                           "max_pdu": (DCMTK_MAX_PDU, None),
                           "pdu_counts": {"A-ASSOCIATE-RQ": 1, "A-ASSOCIATE-RJ": 1}, "dimse": {}, "statuses": {},
                           "sop_classes": {}},
        st.ABORT: base | {"result": "aborted", "released": False, "abort": {"source": 0, "reason": 0},
                          "pdu_counts": {"A-ASSOCIATE-RQ": 1, "A-ASSOCIATE-AC": 1, "P-DATA-TF": 2, "A-ABORT": 1},
                          "dimse": {"C-ECHO-RQ": 1, "C-ECHO-RSP": 1}, "statuses": {SUCCESS: 1},
                          "sop_classes": {VERIFICATION: 1}},
    }


@pytest.mark.parametrize("calling", [st.ECHO, st.STORE, st.FIND_PATIENT, st.FIND_STUDY, st.MOVE, PACS_AET,
                                     st.GET, st.REJECT, st.ABORT])
def test_association_fields(run, events, calling):
    exp = _expected(run, events)[calling]
    a = assocs(events)[calling]
    got = {k: getattr(a, k) for k in exp}
    got["max_pdu"] = tuple(a.max_pdu)
    exp = dict(exp, sop_classes=dict(exp["sop_classes"]))
    assert got == exp
    # Implementation identity: dcmtk as requestor; Debian's Orthanc is built on the same libdcmtk and
    # keeps dcmtk's identity (as acceptor, and as requestor of the C-MOVE sub-association).
    uid, version = dcmtk_impl(run["versions"]["dcmtk"])
    told = st.negotiated_identity(run["steps"][st.ECHO].stderr)
    assert (told["our Implementation Class UID"], told["our Implementation Version Name"]) == (uid, version)
    assert (told["their Implementation Class UID"], told["their Implementation Version Name"]) == (uid, version)
    assert int(told["their Max PDU Receive Size"]) == int(told["our Max PDU Receive Size"]) == DCMTK_MAX_PDU
    assert (a.req_impl_uid, a.req_impl_version) == (uid, version)
    if calling == st.REJECT:
        assert (a.acc_impl_uid, a.acc_impl_version) == (None, None)
    else:
        assert (a.acc_impl_uid, a.acc_impl_version) == (uid, version)
    assert a.application_context == "1.2.840.10008.3.1.1.1"
    server = run["scp"].port if calling == PACS_AET else run["pacs"].dicom_port
    assert (a.server.ip, a.server.port, a.client.ip) == (st.HOST, server, st.HOST)
    assert a.ts_start <= a.ts_end
    if a.result == "accepted":
        assert a.pdu_counts["P-DATA-TF"] == a.pdv_fragments  # dcmtk and Orthanc: one PDV per PDU


def _ctx(a, i):
    return next(c for c in a.contexts if c.id == i)


def test_presentation_contexts(run, events):
    got = assocs(events)
    for calling in (st.ECHO, st.REJECT, st.ABORT):
        a = got[calling]
        assert [(c.id, c.abstract_syntax, tuple(c.transfer_syntaxes)) for c in a.contexts] == [
            (1, VERIFICATION, (IMPLICIT,))]
        assert a.contexts[0].result == (None if calling == st.REJECT else 0)
        assert a.contexts[0].accepted_transfer_syntax == (None if calling == st.REJECT else IMPLICIT)
    # storescu -R: per SOP class of the files, one context with the file's syntax, one with the others.
    a = got[st.STORE]
    sops = list(dict.fromkeys(sop for s in run["studies"] for sop in s.sop_classes))
    assert [c.id for c in a.contexts] == list(range(1, 4 * len(sops), 2))
    assert [c.abstract_syntax for c in a.contexts] == [s for s in sops for _ in (0, 1)]
    assert [tuple(c.transfer_syntaxes) for c in a.contexts] == [(EXPLICIT,), (BIG, IMPLICIT)] * len(sops)
    assert all(c.result == 0 for c in a.contexts)
    assert list(a.abstract_syntaxes) == sops
    for calling, model in ((st.FIND_PATIENT, [PATIENT_FIND]), (st.FIND_STUDY, [STUDY_FIND]),
                           (st.MOVE, [STUDY_FIND, STUDY_MOVE])):
        a = got[calling]
        assert [c.abstract_syntax for c in a.contexts] == model, calling
        assert all(tuple(c.transfer_syntaxes) == (EXPLICIT, BIG, IMPLICIT) and c.result == 0
                   and c.accepted_transfer_syntax == EXPLICIT for c in a.contexts), calling
    # getscu: the query/retrieve model plus ~120 storage classes, each with an SCP role proposal.
    a = got[st.GET]
    assert a.contexts[0].abstract_syntax == STUDY_GET and a.contexts[0].result == 0
    assert len(a.contexts) > 100 and len(a.roles) == len(a.contexts) - 1
    roles = {r[0]: (r[1], r[2]) for r in a.roles}
    for sop in run["studies"][1].sop_classes:
        assert roles[sop] == (False, True)
        assert any(c.abstract_syntax == sop and c.result == 0 for c in a.contexts)
    # Orthanc's sub-association proposes its whole storage list; the CTs go on an accepted context.
    a = got[PACS_AET]
    assert len(a.contexts) > 100 and len({c.id for c in a.contexts}) == len(a.contexts)
    assert any(c.abstract_syntax == st.CT_IMAGE and c.result == 0 for c in a.contexts)


def test_pdata_spans_many_pdus_and_segments(run, events):
    """The 2 MiB image is cut into >100 PDUs, and PDUs straddle TCP segment boundaries."""
    a = assocs(events)[st.STORE]
    big = max(messages(events, st.STORE), key=lambda m: m.dataset_bytes)
    assert big.dataset_bytes > 2 * 1024 * 1024
    assert -(-big.dataset_bytes // DCMTK_MAX_PDV) > 100
    turns = craft.tcp_conversations(run["pcap"])[((a.client.ip, a.client.port), (a.server.ip, a.server.port))]
    segs = [len(p) for from_client, p in turns if from_client]
    # Walk the PDU headers across the requestor's byte stream; count PDUs cut by a segment edge.
    stream = b"".join(p for from_client, p in turns if from_client)
    edges, off = set(), 0
    for n in segs:
        off += n
        edges.add(off)
    pos, straddling, pdus = 0, 0, 0
    while pos + 6 <= len(stream):
        end = pos + 6 + int.from_bytes(stream[pos + 2:pos + 6], "big")
        straddling += any(pos < e < end for e in edges)
        pdus += 1
        pos = end
    # Requestor's PDUs: A-ASSOCIATE-RQ, the C-STORE-RQ P-DATA-TFs, A-RELEASE-RQ.
    assert pos == len(stream) and pdus == 2 + a.pdu_counts["P-DATA-TF"] - a.dimse["C-STORE-RSP"]
    assert len(segs) > 10 and straddling > 10


# ---- DIMSE messages ------------------------------------------------------------------------------


def _msg_view(m):
    return {"command": m.command, "requested_by": m.requested_by, "sop_class": m.sop_class,
            "message_id": m.message_id, "move_destination": m.move_destination, "status": m.status,
            "pending": m.pending, "dataset_bytes": m.dataset_bytes, "query_level": m.query_level,
            "wildcard_keys": sorted(m.wildcard_keys), "sub_ops": None if m.sub_ops is None else tuple(m.sub_ops)}


def _msg(command, sop, mid, ds=0, by="requestor", status=SUCCESS, pending=0, dest=None, level=None, keys=(),
         sub_ops=None):
    return {"command": command, "requested_by": by, "sop_class": sop, "message_id": mid, "move_destination": dest,
            "status": status, "pending": pending, "dataset_bytes": ds, "query_level": level,
            "wildcard_keys": sorted(keys), "sub_ops": sub_ops}


def test_dimse_messages(run, events):
    s1, s2, _ = run["studies"]
    files = [(p, sop) for s in run["studies"] for p, sop in zip(s.files, s.sop_classes)]
    move = messages(events, st.MOVE)
    get = [m for m in messages(events, st.GET) if m.command == "C-GET"]
    exp = {
        st.ECHO: [_msg("C-ECHO", VERIFICATION, 1)],
        st.ABORT: [_msg("C-ECHO", VERIFICATION, 1)],
        st.STORE: [_msg("C-STORE", sop, i, st.dataset_len(p)) for i, (p, sop) in enumerate(files, 1)],
        st.FIND_PATIENT: [_msg("C-FIND", PATIENT_FIND, 1, identifier_len(st.FIND_PATIENT_KEYS), pending=3, level="PATIENT", keys=["PatientName"])],
        st.FIND_STUDY: [_msg("C-FIND", STUDY_FIND, 1, identifier_len(st.FIND_STUDY_KEYS), pending=2, level="STUDY",
                             keys=["PatientName", "StudyDescription"])],
        # Pending counts are Orthanc's choice (1.10.1: one per sub-operation but the last for C-MOVE,
        # one for a single-instance C-GET); bounded here and equal to tshark's in test_tshark_agrees.
        st.MOVE: [_msg("C-MOVE", STUDY_MOVE, 1, identifier_len(st.retrieve_keys(s1)), pending=move[0].pending if move else -1, dest=DEST_AET,
                       level="STUDY", sub_ops=(0, len(s1.files), 0, 0))],
        PACS_AET: [_msg("C-STORE", sop, i, st.dataset_len(p)) for i, (p, sop) in
                   enumerate(zip(s1.files, s1.sop_classes), 1)],
        st.GET: [_msg("C-GET", STUDY_GET, 1, identifier_len(st.retrieve_keys(s2)), pending=get[0].pending if get else -1,
                      level="STUDY",
                      sub_ops=(0, len(s2.files), 0, 0))]
        + [_msg("C-STORE", sop, i, st.dataset_len(p), by="acceptor") for i, (p, sop) in
           enumerate(zip(s2.files, s2.sop_classes), 1)],
        st.REJECT: [],
    }
    for calling, want in exp.items():
        got = sorted((_msg_view(m) for m in messages(events, calling)),
                     key=lambda d: (d["requested_by"] != "requestor", d["message_id"]))
        assert got == want, calling
    # Identifier sizes: the request identifiers above are dcmtk's encodings of the -k keys; the
    # responses carry one data set per pending match.
    for calling in (st.FIND_PATIENT, st.FIND_STUDY):
        (m,) = messages(events, calling)
        assert m.response_dataset_bytes > 0 and m.latency is not None and m.latency >= 0
    assert 0 < move[0].pending <= len(s1.files) and 0 < get[0].pending <= len(s2.files)
    for m in by_type(events, DimseMessage):
        if m.command == "C-STORE":
            assert m.dataset_bytes > 0 and m.priority == 0 and m.status == SUCCESS
        assert m.ts_response is not None and m.ts_response >= m.ts


def test_c_move_sub_association_is_paired(run, events):
    """Exactly one association fits the C-MOVE: from the PACS to the move destination, inside the
    move's time span, carrying as many successful C-STOREs as the final response's completed count."""
    (move,) = messages(events, st.MOVE)
    remaining, completed, failed, warning = move.sub_ops
    candidates = [a for a in by_type(events, DicomAssociation)
                  if a.calling_ae == move.called_ae and a.called_ae == move.move_destination
                  and move.ts <= a.ts_start <= move.ts_response]
    assert len(candidates) == 1
    sub = candidates[0]
    assert sub.server.port == run["scp"].port and sub.client.ip == move.server.ip
    stores = messages(events, sub.calling_ae)
    assert all(move.ts <= m.ts and m.ts_response <= move.ts_response for m in stores)
    assert sum(m.status == SUCCESS for m in stores) == completed == len(run["studies"][0].files)
    assert (remaining, failed, warning) == (0, 0, 0)
    assert sub.released


def test_c_get_sub_operations_come_from_the_acceptor(run, events):
    (get,) = [m for m in messages(events, st.GET) if m.command == "C-GET"]
    stores = [m for m in messages(events, st.GET) if m.command == "C-STORE"]
    assert len(stores) == get.sub_ops[1] == len(run["received_by_getscu"])
    assert all(m.requested_by == "acceptor" and get.ts <= m.ts and m.ts_response <= get.ts_response
               for m in stores)


# ---- flows, weirds, PHI --------------------------------------------------------------------------


def test_flows(events):
    flows = by_type(events, FlowRecord)
    assert len(flows) == len(by_type(events, DicomAssociation))
    for f in flows:
        assert (f.proto, f.app, f.handshake, f.tcp_state, f.close_reason, f.rst) == (
            "tcp", "dicom", True, "established", "fin", False), f
    for a in by_type(events, DicomAssociation):
        (f,) = [f for f in flows if (f.client.port, f.server.port) == (a.client.port, a.server.port)]
        assert list(a.bytes) == list(f.payload_bytes)


def test_no_weird_events(events):
    """Neither the rejected nor the aborted association is an anomaly: both are legal PDU sequences."""
    assert by_type(events, Weird) == []


def test_no_phi_in_any_event(run, events):
    blob = "\n".join(json.dumps(e.to_dict()) for e in events)
    for s in run["studies"]:
        for value in (s.patient_name, s.patient_name.split("^")[1], s.patient_id, s.description):
            assert value not in blob
    assert "TEST" not in blob


# ---- tshark --------------------------------------------------------------------------------------


def test_oracle_uid_parser_handles_names_starting_with_a_digit():
    show = "12-lead ECG Waveform Storage (1.2.840.10008.5.1.4.1.1.9.1.1)"
    assert oracle._uid(show) == "1.2.840.10008.5.1.4.1.1.9.1.1"
    assert oracle._uid("1.2.840.10008.1.2 (Implicit VR Little Endian)") == "1.2.840.10008.1.2"


def test_tshark_agrees(run, events, tmp_path):
    # getscu and Orthanc propose 12-lead ECG Waveform Storage, whose name starts with a digit
    res = compare_capture(run["pcap"], tmp_path)
    n_assoc = len(by_type(events, DicomAssociation))
    n_ops = len(by_type(events, DimseMessage))
    n_cmds = sum(sum(a.dimse.values()) for a in by_type(events, DicomAssociation))
    assert res["disagreements"] == []
    assert res["assoc"] == [n_assoc, n_assoc] and n_assoc == 9
    assert res["dimse_commands"] == [n_cmds, n_cmds] and n_cmds == 40
    assert res["dimse_ops"] == [n_ops, n_ops] and n_ops == 16
    # The oracle itself, directly: association count and DIMSE command counts by type.
    ports = [run["pacs"].dicom_port, run["scp"].port]
    o_assocs, _ = oracle.run_oracle(str(run["pcap"]), ports)
    assert len(o_assocs) == n_assoc
    o_dimse, d_dimse = Counter(), Counter()
    for o in o_assocs:
        o_dimse.update(o.summary()["dimse"])
    for a in by_type(events, DicomAssociation):
        d_dimse.update(a.dimse)
    assert o_dimse == d_dimse
    # Request/response pairs: every tshark operation has a decoded one with the same final status.
    o_pairs = sorted((o.calling_ae, op["command"], op["message_id"], op["requested_by"], op["status"], op["pending"])
                     for o in o_assocs for op in o.operations())
    d_pairs = sorted((m.calling_ae, m.command, m.message_id, m.requested_by, m.status, m.pending)
                     for m in by_type(events, DimseMessage))
    assert o_pairs == d_pairs


# ---- compiled vs reference decoder ---------------------------------------------------------------


_CLI = ("import runpy, sys; from sensor import _fast; "
        "sys.stderr.write('COMPILED=%s\\n' % _fast.COMPILED); "
        "sys.argv = ['radsensor'] + sys.argv[1:]; runpy.run_module('sensor.cli', run_name='__main__')")


def test_reference_decoder_writes_the_same_events(run, events, tmp_path):
    logs = {}
    for fast in ("1", "0"):
        out = tmp_path / f"fast{fast}"
        res = subprocess.run([sys.executable, "-c", _CLI, "decode", str(run["pcap"]), "--no-progress",
                              "--logs", str(out)], env=dict(os.environ, RADSENSOR_FAST=fast),
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert res.returncode == 0, res.stderr
        assert f"COMPILED={fast == '1'}" in res.stderr
        logs[fast] = {p.name: p.read_bytes() for p in sorted(out.glob("*.jsonl"))}
    assert logs["1"] == logs["0"]
    # And both equal the in-process decode of this module.
    dimse = [json.loads(line) for line in logs["0"]["dimse.jsonl"].splitlines()]
    dicom = [json.loads(line) for line in logs["0"]["dicom.jsonl"].splitlines()]
    assert dimse == [m.to_dict() for m in by_type(events, DimseMessage)]
    assert dicom == [a.to_dict() for a in by_type(events, DicomAssociation)]
