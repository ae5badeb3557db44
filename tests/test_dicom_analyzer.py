"""DicomAnalyzer on byte streams recorded from real pynetdicom SCU↔SCP runs, plus edge cases."""

from __future__ import annotations

import io
import json

import pynetdicom
from pynetdicom import dimse_messages, dimse_primitives

from sensor.events import DicomAssociation, DimseMessage, Weird
from sensor.protocols.dicom import pdu as P
from sensor.protocols.dicom.analyzer import DicomAnalyzer
from tests.test_dicom_pdu import associate_ac_bytes, associate_rq_bytes, dimse_pdus, release_bytes
from tests.test_dicom_streams import (
    DEST_AE,
    N_IMAGES,
    SCP_AE,
    SCU_AE,
    SECRET,
    STORE_MAX_PDU,
    USERNAME,
    feed,
    make_ctx,
    recordings,
    runs,
)

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPL_UID = pynetdicom.PYNETDICOM_IMPLEMENTATION_UID
IMPL_VER = pynetdicom.PYNETDICOM_IMPLEMENTATION_VERSION


def split(events):
    assocs = [e for e in events if isinstance(e, DicomAssociation)]
    msgs = [e for e in events if isinstance(e, DimseMessage)]
    weirds = [e for e in events if isinstance(e, Weird)]
    return assocs, msgs, weirds


def pdus(data: bytes) -> list[tuple[int, int, int]]:
    """(type, offset, total length) of each PDU in one direction's bytes."""
    out, off = [], 0
    while off + 6 <= len(data):
        t, _, length = P.PDU_HEADER.unpack_from(data, off)
        out.append((t, off, 6 + length))
        off += 6 + length
    return out


def direction(chunks, from_client: bool) -> bytes:
    return b"".join(d for fc, _, d in chunks if fc == from_client)


# ---- recorded real sessions ----------------------------------------------------------------


def test_echo_association_fields():
    chunks, _ = recordings()["echo"]
    events, counters = feed(chunks)
    assocs, msgs, weirds = split(events)
    assert weirds == [] and counters.values == {}
    (a,) = assocs
    assert (a.calling_ae, a.called_ae, a.result, a.released) == (SCU_AE, SCP_AE, "accepted", True)
    assert a.reject is None and a.abort is None
    assert a.application_context == "1.2.840.10008.3.1.1.1"
    assert a.abstract_syntaxes == (VERIFICATION,)
    (ctx,) = a.contexts
    assert (ctx.id, ctx.abstract_syntax, ctx.result, ctx.accepted_transfer_syntax) == (
        1,
        VERIFICATION,
        0,
        IMPLICIT,
    )
    assert ctx.transfer_syntaxes[:2] == (IMPLICIT, EXPLICIT)
    assert (a.req_impl_uid, a.req_impl_version, a.acc_impl_uid, a.acc_impl_version) == (
        IMPL_UID,
        IMPL_VER,
        IMPL_UID,
        IMPL_VER,
    )
    assert a.max_pdu == (16384, STORE_MAX_PDU)
    assert a.user_identity_type == 2 and a.async_ops == (1, 1)
    assert a.pdu_counts == {
        "A-ASSOCIATE-RQ": 1,
        "A-ASSOCIATE-AC": 1,
        "P-DATA-TF": 2,
        "A-RELEASE-RQ": 1,
        "A-RELEASE-RP": 1,
    }
    assert a.dimse == {"C-ECHO-RQ": 1, "C-ECHO-RSP": 1}
    assert a.statuses == {"0x0000": 1}
    assert a.sop_classes == {VERIFICATION: 1}
    assert a.bytes == (len(direction(chunks, True)), len(direction(chunks, False)))
    assert (a.dataset_bytes, a.pdv_fragments, a.decode_errors, a.mid_stream) == (0, 2, 0, False)
    (m,) = msgs
    assert (m.command, m.requested_by, m.status, m.pending, m.message_id) == (
        "C-ECHO",
        "requestor",
        "0x0000",
        0,
        1,
    )
    assert m.latency is not None and m.latency >= 0
    assert events[-1] is a  # the association record comes after its messages


def test_user_identity_secret_never_emitted():
    chunks, _ = recordings()["echo"]
    assert SECRET in direction(chunks, True)  # it really was on the wire
    events, _ = feed(chunks)
    text = json.dumps([e.to_dict() for e in events])
    assert SECRET.decode() not in text and USERNAME.decode() not in text


def test_store_with_pdv_fragmentation():
    chunks, oracle = recordings()["store"]
    events, counters = feed(chunks)
    assocs, msgs, weirds = split(events)
    assert weirds == []
    (a,) = assocs
    stores = [m for m in msgs if m.command == "C-STORE"]
    assert [m.dataset_bytes for m in stores] == oracle.store and len(stores) == N_IMAGES
    assert all(m.status == "0x0000" and m.sop_class == CT and m.priority == 2 for m in stores)
    assert a.dataset_bytes == sum(oracle.store)
    # Every P-DATA-TF respects the acceptor's max PDU, so each data set was split into many PDVs.
    client = direction(chunks, True)
    pdata = [length for t, _, length in pdus(client) if t == 4]
    assert max(pdata) <= STORE_MAX_PDU + 6
    assert a.pdu_counts["P-DATA-TF"] == len(pdata) + 4  # + responses (3 store, 1 echo)
    assert a.pdv_fragments > 3 * (oracle.store[0] // STORE_MAX_PDU)
    assert a.dimse == {"C-STORE-RQ": 3, "C-STORE-RSP": 3, "C-ECHO-RQ": 1, "C-ECHO-RSP": 1}
    assert a.sop_classes == {CT: 3, VERIFICATION: 1}
    assert a.statuses == {"0x0000": 4}
    assert [c.result for c in a.contexts] == [0, 0]


def test_query_find_move_get():
    chunks, oracle = recordings()["query"]
    events, _ = feed(chunks)
    assocs, msgs, weirds = split(events)
    assert weirds == []
    (a,) = assocs
    finds = [m for m in msgs if m.command == "C-FIND"]
    assert [(m.query_level, m.wildcard_keys, m.status, m.pending) for m in finds] == [
        ("PATIENT", ("PatientName",), "0x0000", 2),
        ("STUDY", ("ModalitiesInStudy", "PatientName"), "0x0000", 2),
    ]
    (move,) = [m for m in msgs if m.command == "C-MOVE"]
    assert (move.move_destination, move.query_level, move.wildcard_keys) == (DEST_AE, "STUDY", ())
    assert (move.status, move.sub_ops, move.pending) == ("0x0000", (0, 1, 0, 0), 1)
    (get,) = [m for m in msgs if m.command == "C-GET"]
    assert (get.status, get.sub_ops, get.pending, get.requested_by) == (
        "0x0000",
        (0, 2, 0, 0),
        2,
        "requestor",
    )
    assert [m.dataset_bytes for m in finds + [move, get]] == oracle.identifiers
    assert all(m.response_dataset_bytes > 0 for m in finds)
    # C-GET sub-operations: C-STOREs sent by the acceptor on the same association.
    subs = [m for m in msgs if m.command == "C-STORE"]
    assert [(m.requested_by, m.status) for m in subs] == [("acceptor", "0x0000")] * 2
    assert [m.dataset_bytes for m in subs] == oracle.store
    assert a.query_levels == {"PATIENT": 1, "STUDY": 3}
    assert a.wildcard_keys == {"PatientName": 2, "ModalitiesInStudy": 1}
    assert a.move_destinations == {DEST_AE: 1}
    assert a.roles == ((CT, False, True),)
    assert a.statuses == {"0xFF00": 7, "0x0000": 6}
    assert a.dimse["C-FIND-RSP"] == 6 and a.dimse["C-GET-RSP"] == 3 and a.dimse["C-STORE-RQ"] == 2
    find_ctx = {c.abstract_syntax: c.accepted_transfer_syntax for c in a.contexts}
    assert find_ctx["1.2.840.10008.5.1.4.1.2.2.1"] == EXPLICIT  # the STUDY find walked explicit VR
    # No identifier value leaks into any event.
    text = json.dumps([e.to_dict() for e in events])
    assert "SYNTH" not in text and "SY?TH" not in text and "20240101" not in text


def test_storage_commitment_n_action():
    chunks, oracle = recordings()["commit"]
    events, _ = feed(chunks)
    (a,), (m,), weirds = split(events)
    assert weirds == []
    assert (m.command, m.sop_class, m.status, m.dataset_bytes) == (
        "N-ACTION",
        "1.2.840.10008.1.20.1",
        "0x0000",
        oracle.action[0],
    )
    assert a.dimse == {"N-ACTION-RQ": 1, "N-ACTION-RSP": 1}


def test_rejected_unknown_called_ae():
    chunks, _ = recordings()["reject"]
    events, _ = feed(chunks)
    (a,), msgs, _ = split(events)
    assert msgs == []
    assert (a.result, a.called_ae, a.reject) == (
        "rejected",
        "WRONGAE",
        {"result": 1, "source": 1, "reason": 7},
    )
    assert a.acc_impl_uid is None and a.max_pdu == (16384, None)
    assert a.pdu_counts == {"A-ASSOCIATE-RQ": 1, "A-ASSOCIATE-RJ": 1}
    assert [c.result for c in a.contexts] == [None]


def test_aborted_association():
    chunks, _ = recordings()["abort"]
    events, _ = feed(chunks)
    (a,), _, _ = split(events)
    assert (a.result, a.released, a.abort) == ("aborted", False, {"source": 0, "reason": 0})
    assert a.pdu_counts["A-ABORT"] == 1


# ---- segmentation ----------------------------------------------------------------------------


def _dicts(events):
    return [e.to_dict() for e in events]


def test_one_byte_chunks_and_whole_runs_agree():
    chunks, _ = recordings()["store"]
    ref, _ = feed(chunks)
    assert _dicts(feed(chunks, chunk_size=1)[0]) == _dicts(ref)
    assert _dicts(feed(runs(chunks))[0]) == _dicts(feed(runs(chunks), chunk_size=1)[0])


def test_two_associations_on_one_connection():
    chunks, _ = recordings()["echo"]
    events, _ = feed(chunks + [(fc, ts + 10, d) for fc, ts, d in chunks])
    assocs, msgs, _ = split(events)
    assert [a.result for a in assocs] == ["accepted", "accepted"] and len(msgs) == 2
    assert assocs[1].ts_start >= 10


# ---- endings -----------------------------------------------------------------------------------


def test_no_response_and_incomplete():
    chunks, _ = recordings()["echo"]
    rq_only = [chunks[0]]
    assert rq_only[0][0] is True
    (a,), _, _ = split(feed(rq_only)[0])
    assert a.result == "no_response"
    # Drop the release: accepted but ended by the close → incomplete; the unanswered echo has no status.
    client = direction(chunks, True)
    server = direction(chunks, False)
    c_pdus, s_pdus = pdus(client), pdus(server)
    rq, echo_rq = client[: c_pdus[0][2]], client[c_pdus[1][1] : c_pdus[1][1] + c_pdus[1][2]]
    ac = server[: s_pdus[0][2]]
    events, _ = feed([(True, 1.0, rq), (False, 2.0, ac), (True, 3.0, echo_rq)])
    (a,), (m,), _ = split(events)
    assert a.result == "incomplete" and not a.released
    assert (m.command, m.status, m.ts_response, m.latency) == ("C-ECHO", None, None, None)


# ---- mid-stream, gaps, resync -------------------------------------------------------------------


def _store_streams():
    chunks, oracle = recordings()["store"]
    return chunks, direction(chunks, True), direction(chunks, False), oracle


def _replay(chunks, drop: dict[bool, tuple[int, int]], mid_stream: bool = False):
    """Replay recorded chunks in order, losing one byte range per direction.

    A range starting at 0 models a capture that begins mid-stream (no gap call); any other range
    is reported with ``gap()``, as the flow layer would for a hole in the sequence space.
    """
    ctx, events = make_ctx(mid_stream)
    an = DicomAnalyzer(ctx)
    pos = {True: 0, False: 0}
    gapped = {True: False, False: False}
    last = 0.0
    for fc, ts, data in chunks:
        a, b = drop.get(fc, (0, 0))
        lo, hi = pos[fc], pos[fc] + len(data)
        pos[fc] = hi
        last = ts
        keep_before = data[: max(0, min(hi, a) - lo)]
        keep_after = data[max(0, b - lo) :] if hi > b else b""
        if keep_before:
            an.data(fc, ts, memoryview(keep_before))
        if hi > a and not gapped[fc] and a > 0 and b > a and lo < b:
            an.gap(fc, ts, b - a)
            gapped[fc] = True
        if keep_after:
            an.data(fc, ts, memoryview(keep_after))
    an.close(last + 1, "fin")
    return events, ctx.counters


def test_mid_association_start():
    chunks, client, server, oracle = _store_streams()
    c, s = pdus(client), pdus(server)
    # Capture starts after the A-ASSOCIATE exchange, in the middle of the first P-DATA-TF.
    events, counters = _replay(chunks, {True: (0, c[1][1] + 7), False: (0, s[1][1])}, mid_stream=True)
    (a,), msgs, _ = split(events)
    assert a.mid_stream and a.calling_ae is None and a.result == "accepted" and a.released
    stores = [m for m in msgs if m.command == "C-STORE" and m.status == "0x0000"]
    # the first store lost its command: it is seen as a response only
    assert len(stores) == N_IMAGES - 1
    assert [m.dataset_bytes for m in stores] == oracle.store[1:]
    assert counters.get("weird.dicom.resync") == 1
    assert counters.get("weird.dicom.unmatched_response") == 1
    assert counters.get("weird.dicom.internal") == 0


def test_mid_stream_at_pdu_boundary_is_quiet():
    chunks, client, server, oracle = _store_streams()
    c, s = pdus(client), pdus(server)
    events, counters = _replay(chunks, {True: (0, c[1][1]), False: (0, s[1][1])}, mid_stream=True)
    assert counters.values == {}
    (a,), msgs, _ = split(events)
    assert a.dimse["C-STORE-RQ"] == N_IMAGES and a.contexts == () and a.max_pdu == (None, None)
    assert [m.dataset_bytes for m in msgs if m.command == "C-STORE"] == oracle.store


def test_gap_across_pdu_headers_resyncs():
    chunks, client, server, oracle = _store_streams()
    c = pdus(client)
    # Lose bytes from the middle of the 3rd client PDU to the middle of the 5th one.
    events, counters = _replay(chunks, {True: (c[2][1] + 100, c[4][1] + 50)})
    assocs, msgs, _ = split(events)
    assert counters.get("weird.dicom.gap") == 1 and counters.get("weird.dicom.resync") == 1
    assert counters.get("weird.dicom.internal") == 0
    ok = [m for m in msgs if m.command == "C-STORE" and m.status == "0x0000"]
    # The first store's command survived but most of its data set fell into the gap.
    assert len(ok) == N_IMAGES and ok[0].dataset_bytes < oracle.store[0]
    assert [m.dataset_bytes for m in ok[1:]] == oracle.store[1:]
    assert assocs[0].released and assocs[0].decode_errors >= 2


def test_gap_inside_dataset_fragment_is_skipped_by_arithmetic():
    chunks, client, server, oracle = _store_streams()
    c = pdus(client)
    # A P-DATA-TF carrying a data-set fragment: lose 500 bytes from its middle.
    t, off, length = next(p for p in c[1:] if p[0] == 4 and not client[p[1] + 11] & 1)
    events, counters = _replay(chunks, {True: (off + 112, off + 612)})
    assert counters.get("weird.dicom.gap") == 1 and counters.get("weird.dicom.resync") == 0
    stores = [m for m in split(events)[1] if m.command == "C-STORE"]
    assert [m.dataset_bytes for m in stores] == oracle.store  # the gap's bytes are counted, not seen


# ---- synthetic streams from pynetdicom encoders --------------------------------------------------


def _assoc_prefix():
    return [(True, 0.0, associate_rq_bytes()), (False, 0.1, associate_ac_bytes())]


def test_command_split_over_two_pdus_and_acceptor_event_report():
    store = dimse_primitives.C_STORE()
    store.MessageID = 5
    store.AffectedSOPClassUID = CT
    store.AffectedSOPInstanceUID = "1.2.3.4.5.6"
    store.Priority = 0
    store.DataSet = io.BytesIO(b"\x08\x00\x16\x00\x02\x00\x00\x001\x00" * 50)
    # max PDU 40: the ~150-byte command set is split over several PDUs
    rq = dimse_pdus(dimse_messages.C_STORE_RQ, store, ctx_id=1, max_pdu=40)
    assert len(pdus(rq)) > 4
    rsp = dimse_primitives.C_STORE()
    rsp.MessageIDBeingRespondedTo = 5
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = "1.2.3.4.5.6"
    rsp.Status = 0xB000
    ev = dimse_primitives.N_EVENT_REPORT()
    ev.MessageID = 9
    ev.AffectedSOPClassUID = "1.2.840.10008.1.20.1"
    ev.AffectedSOPInstanceUID = "1.2.840.10008.1.20.1.1"
    ev.EventTypeID = 1
    ev_rsp = dimse_primitives.N_EVENT_REPORT()
    ev_rsp.MessageIDBeingRespondedTo = 9
    ev_rsp.AffectedSOPClassUID = "1.2.840.10008.1.20.1"
    ev_rsp.Status = 0
    cancel = dimse_primitives.C_CANCEL()
    cancel.MessageIDBeingRespondedTo = 5
    stream = _assoc_prefix() + [
        (True, 1.0, rq),
        (True, 1.5, dimse_pdus(dimse_messages.C_CANCEL_RQ, cancel)),
        (False, 2.0, dimse_pdus(dimse_messages.C_STORE_RSP, rsp)),
        (False, 3.0, dimse_pdus(dimse_messages.N_EVENT_REPORT_RQ, ev)),
        (True, 4.0, dimse_pdus(dimse_messages.N_EVENT_REPORT_RSP, ev_rsp)),
        (True, 5.0, release_bytes()),
        (False, 6.0, release_bytes(True)),
    ]
    events, counters = feed(stream)
    (a,), msgs, weirds = split(events)
    assert weirds == []
    assert [(m.command, m.requested_by, m.status, m.dataset_bytes) for m in msgs] == [
        ("C-STORE", "requestor", "0xB000", 500),
        ("N-EVENT-REPORT", "acceptor", "0x0000", 0),
    ]
    assert msgs[0].latency == 1.0
    assert a.dimse["C-CANCEL-RQ"] == 1 and a.statuses == {"0xB000": 1, "0x0000": 1}
    assert a.contexts[1].result == 3 and a.contexts[1].accepted_transfer_syntax is None


def test_malformed_pdus_are_counted_and_resynced():
    echo = dimse_primitives.C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = VERIFICATION
    good = dimse_pdus(dimse_messages.C_ECHO_RQ, echo)
    bad_type = b"\x09\x00\x00\x00\x00\x04abcd"
    huge = b"\x04\x00\xff\xff\xff\xff" + b"\x00" * 20
    bad_cmd = b"\x04\x00\x00\x00\x00\x0c\x00\x00\x00\x08\x01\x03" + b"\x08\x00\x00\x00\x00\x00"
    bad_pdv = b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x40\x01\x03\x00\x00"
    stream = _assoc_prefix() + [(True, 1.0, bad_type + good + huge + good + bad_cmd + bad_pdv + good)]
    events, counters = feed(stream)
    (a,), msgs, _ = split(events)
    assert counters.get("weird.dicom.internal") == 0
    for name in ("bad_pdu_type", "bad_pdu_length", "bad_command_element", "bad_pdv_length"):
        assert counters.get("weird.dicom." + name) >= 1, name
    assert counters.get("weird.dicom.resync") >= 2
    assert a.dimse.get("C-ECHO-RQ") == 3
    assert all(
        isinstance(w.detail, str) and not any(ch.isalpha() for ch in w.detail) for w in split(events)[2]
    )


def test_oversize_identifier_is_counted_and_skipped():
    find = dimse_primitives.C_FIND()
    find.MessageID = 3
    find.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    find.Priority = 2
    big = b"\x08\x00\x52\x00CS\x06\x00STUDY " + b"\x10\x00\x10\x00PN\x04\x00DOE*" * 1
    filler = b"\x09\x00\x10\x10OB\x00\x00" + (70000).to_bytes(4, "little") + bytes(70000)
    find.Identifier = io.BytesIO(big + filler)
    stream = _assoc_prefix() + [(True, 1.0, dimse_pdus(dimse_messages.C_FIND_RQ, find, ctx_id=3))]
    events, counters = feed(stream)
    (a,), (m,), _ = split(events)
    assert counters.get("weird.dicom.oversize_identifier") == 1
    assert m.query_level is None and m.dataset_bytes == len(big + filler)


def test_identifier_query_level_from_synthetic_find():
    find = dimse_primitives.C_FIND()
    find.MessageID = 3
    find.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    find.Priority = 2
    ident = b"\x08\x00\x52\x00CS\x06\x00SERIES" + b"\x08\x00\x60\x00CS\x02\x00M?"
    find.Identifier = io.BytesIO(ident)
    stream = _assoc_prefix() + [(True, 1.0, dimse_pdus(dimse_messages.C_FIND_RQ, find, ctx_id=3))]
    (a,), (m,), _ = split(feed(stream)[0])
    assert (m.query_level, m.wildcard_keys, m.status) == ("SERIES", ("Modality",), None)
    assert a.query_levels == {"SERIES": 1} and a.wildcard_keys == {"Modality": 1}


def test_pdu_after_end_and_never_raises_on_close_twice():
    ctx, events = make_ctx()
    an = DicomAnalyzer(ctx)
    an.data(True, 0.0, memoryview(associate_rq_bytes()))
    an.data(False, 0.1, memoryview(associate_ac_bytes()))
    an.data(True, 0.2, memoryview(release_bytes()))
    an.data(False, 0.3, memoryview(release_bytes(True)))
    an.data(False, 0.4, memoryview(release_bytes(True)))
    an.close(1.0, "fin")
    an.close(1.0, "fin")
    assocs, _, _ = split(events)
    assert len(assocs) == 1 and ctx.counters.get("weird.dicom.pdu_after_end") == 1
