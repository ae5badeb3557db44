"""pynetdicom SCU ↔ SCP scenarios on loopback; each returns what it did as a plain dict.

Every association in a run has its own calling AE title, so decoded associations are matched to
scenarios by AE title, not by guessing from order. What went over the wire is recorded twice:

* by the scenario itself (datasets it built, encoded with pydicom in the negotiated transfer
  syntax; message ids it chose; statuses its peer returned), and
* by the acceptor's ``EVT_DIMSE_SENT`` / ``EVT_DIMSE_RECV`` hooks (every DIMSE message of every
  accepted association, including the C-MOVE sub-association the SCP opens itself).

``run_all(host, scp_port, dest_port)`` runs the whole set against one SCP (and one C-MOVE
destination) and returns ``{"associations": {calling_ae: expected}, "dimse": [...], ...}``.

Example::

    with Capture(pcap, ports=[p1, p2]):
        expected = run_all("127.0.0.1", p1, p2)
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pynetdicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, build_role, evt
from pynetdicom._globals import DEFAULT_MAX_LENGTH
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

# PHI safety (CONTRIBUTING-HELPERS): pynetdicom logs identifiers by default.
pynetdicom._config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom._config.LOG_RESPONSE_IDENTIFIERS = False

# Distinctive fake patient data: asserted never to appear in any decoded event.
CANARY_NAME = "QQCANARY^ZEBULON"
CANARY_ID = "PHICANARY4711"
CANARY_ACCESSION = "ACCCANARY99"
CANARY_STRINGS = (CANARY_NAME, "QQCANARY", "ZEBULON", CANARY_ID, CANARY_ACCESSION)

SCP_AE = "RADSCP"
DEST_AE = "MOVEDEST"
SCU_IMPL_UID = "1.2.826.0.1.3680043.10.1153.7.1"  # our own, so both sides differ
SCU_IMPL_VERSION = "RADTEST_SCU_1"
SCP_IMPL_UID = pynetdicom.PYNETDICOM_IMPLEMENTATION_UID
SCP_IMPL_VERSION = pynetdicom.PYNETDICOM_IMPLEMENTATION_VERSION
SCU_MAX_PDU = 16000  # small (and not pynetdicom's default 16382): the SCP's C-STOREs to us (C-GET) fragment into many PDVs
SCP_MAX_PDU = 32768  # what our C-STOREs to the SCP are cut to
DEST_MAX_PDU = 20000

N_IMAGES = 6
ROWS = COLS = 256  # 256*256*2 = 128 KiB of pixel data per image
STUDY_UID = "1.2.826.0.1.3680043.10.1153.7.2.1"
SERIES_UID = "1.2.826.0.1.3680043.10.1153.7.2.1.1"
COMMIT_INSTANCE_UID = "1.2.840.10008.1.20.1.1"  # well-known Storage Commitment SOP instance
TIMEOUT = 20


def encoded_len(ds: Dataset, transfer_syntax: str) -> int:
    """Length of ``ds`` as pynetdicom puts it into P-DATA (pydicom encoding, no file meta)."""
    implicit = transfer_syntax == ImplicitVRLittleEndian
    data = encode(ds, implicit, True)
    assert data is not None
    return len(data)


def make_ct(i: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # uncompressed: pynetdicom may re-encode
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{SERIES_UID}.{i + 1}"
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.PatientName = CANARY_NAME
    ds.PatientID = CANARY_ID
    ds.AccessionNumber = CANARY_ACCESSION
    ds.Modality = "CT"
    ds.StudyDate = "20240315"
    ds.InstanceNumber = i + 1
    ds.Rows, ds.Columns = ROWS, COLS
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    # Synthetic pixels, different per image; 131072 bytes.
    ds.PixelData = bytes((j * 7 + i) & 0xFF for j in range(256)) * (ROWS * COLS * 2 // 256)
    return ds


STUDY = [make_ct(i) for i in range(N_IMAGES)]


def _patient_match(k: int) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    ds.PatientName = f"{CANARY_NAME}{k}"
    ds.PatientID = f"{CANARY_ID}{k}"
    return ds


def _study_match(k: int) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = CANARY_NAME
    ds.StudyDate = "20240315"
    ds.ModalitiesInStudy = "CT"
    ds.StudyInstanceUID = f"{STUDY_UID}.{k}"
    return ds


PATIENT_MATCHES = [_patient_match(k) for k in range(3)]
STUDY_MATCHES = [_study_match(k) for k in range(2)]
MOVE_SUBOPS = 2
GET_SUBOPS = 3


class WireLog:
    """Acceptor-side record of every DIMSE message, keyed by the association's calling AE."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[dict[str, Any]] = []
        self.assocs: dict[str, dict[str, Any]] = {}

    def _msg(self, event, direction: str) -> None:
        msg = event.message
        cs = msg.command_set
        data = msg.data_set.getvalue() if msg.data_set is not None else b""
        rec = {
            "calling_ae": event.assoc.requestor.ae_title,
            "direction": direction,  # "to_acceptor" | "from_acceptor"
            "command_field": int(cs.CommandField),
            "message_id": int(cs.MessageID) if "MessageID" in cs else None,
            "responded_id": int(cs.MessageIDBeingRespondedTo) if "MessageIDBeingRespondedTo" in cs else None,
            "status": int(cs.Status) if "Status" in cs else None,
            "sop_class": str(cs.AffectedSOPClassUID) if "AffectedSOPClassUID" in cs else (
                str(cs.RequestedSOPClassUID) if "RequestedSOPClassUID" in cs else None),
            "move_destination": str(cs.MoveDestination).strip() if "MoveDestination" in cs else None,
            "dataset_len": len(data),
        }
        with self.lock:
            self.messages.append(rec)

    def on_sent(self, event) -> None:
        self._msg(event, "from_acceptor")

    def on_recv(self, event) -> None:
        self._msg(event, "to_acceptor")

    def on_established(self, event) -> None:
        a = event.assoc
        rq, ac = a.requestor, a.acceptor
        contexts = []
        for cx in sorted(a.accepted_contexts + a.rejected_contexts, key=lambda c: c.context_id):
            contexts.append({
                "id": cx.context_id, "abstract_syntax": str(cx.abstract_syntax),
                "result": cx.result, "transfer_syntax": str(cx.transfer_syntax[0]) if cx.result == 0 else None,
            })
        with self.lock:
            self.assocs[rq.ae_title] = {
                "called_ae": ac.ae_title,
                "req_impl_uid": str(rq.implementation_class_uid),
                "req_impl_version": rq.implementation_version_name,
                "acc_impl_uid": str(ac.implementation_class_uid),
                "acc_impl_version": ac.implementation_version_name,
                "max_pdu": [rq.maximum_length, ac.maximum_length],
                "contexts": contexts,
            }

    def handlers(self) -> list:
        return [(evt.EVT_DIMSE_SENT, self.on_sent), (evt.EVT_DIMSE_RECV, self.on_recv),
                (evt.EVT_ESTABLISHED, self.on_established)]


# ---- SCP side ---------------------------------------------------------------------------------


def _on_store(event):
    return 0x0000


def _on_echo(event):
    return 0x0000


def _on_find(event):
    level = event.identifier.QueryRetrieveLevel
    matches = PATIENT_MATCHES if level == "PATIENT" else STUDY_MATCHES
    for m in matches:
        yield 0xFF00, m


def _make_on_move(dest_host: str, dest_port: int):
    def _on_move(event):
        yield dest_host, dest_port
        yield MOVE_SUBOPS
        for ds in STUDY[:MOVE_SUBOPS]:
            yield 0xFF00, ds
    return _on_move


def _on_get(event):
    yield GET_SUBOPS
    for ds in STUDY[:GET_SUBOPS]:
        yield 0xFF00, ds


def _on_n_action(event):
    return 0x0000, None  # success, no Action Reply


def start_servers(host: str, scp_port: int, dest_port: int, log: WireLog):
    """Main SCP (all services, requires the called AE) and the C-MOVE destination."""
    scp = AE(ae_title=SCP_AE)
    scp.require_called_aet = True
    scp.maximum_pdu_size = SCP_MAX_PDU
    scp.network_timeout = scp.acse_timeout = scp.dimse_timeout = TIMEOUT
    for uid in (Verification, PatientRootQueryRetrieveInformationModelFind,
                StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelMove,
                StudyRootQueryRetrieveInformationModelGet, StorageCommitmentPushModel):
        scp.add_supported_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    scp.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                              scu_role=True, scp_role=True)
    scp.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)  # for the C-MOVE sub-association
    handlers = log.handlers() + [
        (evt.EVT_C_ECHO, _on_echo), (evt.EVT_C_STORE, _on_store), (evt.EVT_C_FIND, _on_find),
        (evt.EVT_C_MOVE, _make_on_move(host, dest_port)), (evt.EVT_C_GET, _on_get),
        (evt.EVT_N_ACTION, _on_n_action),
    ]
    main = scp.start_server((host, scp_port), block=False, evt_handlers=handlers)

    dest = AE(ae_title=DEST_AE)
    dest.maximum_pdu_size = DEST_MAX_PDU
    dest.network_timeout = dest.acse_timeout = dest.dimse_timeout = TIMEOUT
    dest.add_supported_context(CTImageStorage, ImplicitVRLittleEndian)
    destsrv = dest.start_server((host, dest_port), block=False,
                                evt_handlers=log.handlers() + [(evt.EVT_C_STORE, _on_store)])
    return main, destsrv


# ---- SCU side ---------------------------------------------------------------------------------


def _scu(calling: str) -> AE:
    ae = AE(ae_title=calling)
    ae.implementation_class_uid = SCU_IMPL_UID
    ae.implementation_version_name = SCU_IMPL_VERSION
    ae.maximum_pdu_size = SCU_MAX_PDU
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = TIMEOUT
    return ae


def _base(calling: str, called: str = SCP_AE) -> dict[str, Any]:
    return {"calling_ae": calling, "called_ae": called, "result": "accepted", "released": True,
            "reject": None, "abort": None, "dimse": Counter(), "statuses": Counter(),
            "sop_classes": Counter(), "move_destinations": Counter(), "query_levels": Counter(),
            "wildcard_keys": Counter(), "dataset_bytes": 0, "messages": []}


def _ctx_of(assoc, sop_class: str) -> str:
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax == sop_class:
            return str(cx.transfer_syntax[0])
    raise AssertionError(f"no accepted context for {sop_class}")


def _request(exp, command, msg_id, sop_class, ds_len=0, **kw):
    exp["dimse"][f"{command}-RQ"] += 1
    exp["sop_classes"][sop_class] += 1
    exp["dataset_bytes"] += ds_len
    rec = {"command": command, "message_id": msg_id, "sop_class": sop_class, "dataset_bytes": ds_len,
           "pending": 0, "response_dataset_bytes": 0, "status": None, "requested_by": "requestor"}
    rec.update(kw)
    exp["messages"].append(rec)
    return rec


def _response(exp, rec, status: int, ds_len: int = 0) -> None:
    exp["dimse"][f"{rec['command']}-RSP"] += 1
    exp["statuses"][f"0x{status:04X}"] += 1
    exp["dataset_bytes"] += ds_len
    rec["response_dataset_bytes"] += ds_len
    if status in (0xFF00, 0xFF01):
        rec["pending"] += 1
    else:
        rec["status"] = f"0x{status:04X}"


def _context_expectation(assoc) -> tuple[list[dict], list[str]]:
    rq = assoc.requestor.requested_contexts
    by_id = {cx.context_id: cx for cx in assoc.accepted_contexts + assoc.rejected_contexts}
    out = []
    for cx in rq:
        got = by_id[cx.context_id]
        out.append({"id": cx.context_id, "abstract_syntax": str(cx.abstract_syntax),
                    "transfer_syntaxes": [str(t) for t in cx.transfer_syntax], "result": got.result,
                    "accepted_transfer_syntax": str(got.transfer_syntax[0]) if got.result == 0 else None})
    return out, [str(cx.abstract_syntax) for cx in rq]


def _finish(exp, assoc) -> dict:
    exp["contexts"], exp["abstract_syntaxes"] = _context_expectation(assoc)
    exp["req_impl_uid"], exp["req_impl_version"] = SCU_IMPL_UID, SCU_IMPL_VERSION
    exp["acc_impl_uid"] = str(assoc.acceptor.implementation_class_uid)
    exp["acc_impl_version"] = assoc.acceptor.implementation_version_name
    exp["max_pdu"] = [SCU_MAX_PDU, assoc.acceptor.maximum_length]
    return exp


def scenario_echo(host, port) -> dict:
    exp = _base("ECHOSCU")
    ae = _scu("ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=SCP_AE, max_pdu=SCU_MAX_PDU)
    assert assoc.is_established
    for msg_id in (1, 2):
        rec = _request(exp, "C-ECHO", msg_id, Verification)
        st = assoc.send_c_echo(msg_id=msg_id)
        _response(exp, rec, int(st.Status))
    _finish(exp, assoc)
    assoc.release()
    return exp


def scenario_store(host, port) -> dict:
    exp = _base("STORESCU")
    ae = _scu("STORESCU")
    # Explicit first: the SCP accepts it, so data sets travel explicit VR (and identifiers differ).
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=SCP_AE, max_pdu=SCU_MAX_PDU)
    assert assoc.is_established
    ts = _ctx_of(assoc, CTImageStorage)
    assert ts == ExplicitVRLittleEndian
    for i, ds in enumerate(STUDY):
        msg_id = 101 + i
        rec = _request(exp, "C-STORE", msg_id, CTImageStorage, encoded_len(ds, ts))
        st = assoc.send_c_store(ds, msg_id=msg_id)
        _response(exp, rec, int(st.Status))
    _finish(exp, assoc)
    exp["transfer_syntax"] = ts
    assoc.release()
    return exp


def _find(assoc, exp, ident, model, msg_id, level, wildcards):
    ts = _ctx_of(assoc, model)
    rec = _request(exp, "C-FIND", msg_id, model, encoded_len(ident, ts),
                   query_level=level, wildcard_keys=sorted(wildcards))
    exp["query_levels"][level] += 1
    for k in wildcards:
        exp["wildcard_keys"][k] += 1
    n = 0
    for status, identifier in assoc.send_c_find(ident, model, msg_id=msg_id):
        st = int(status.Status)
        _response(exp, rec, st, encoded_len(identifier, ts) if identifier is not None and st == 0xFF00 else 0)
        n += st == 0xFF00
    rec["matches"] = n
    return rec


def scenario_find(host, port) -> dict:
    exp = _base("FINDSCU")
    ae = _scu("FINDSCU")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(host, port, ae_title=SCP_AE, max_pdu=SCU_MAX_PDU)
    assert assoc.is_established
    q = Dataset()
    q.QueryRetrieveLevel = "PATIENT"
    q.PatientName = "*"
    q.PatientID = ""
    r1 = _find(assoc, exp, q, PatientRootQueryRetrieveInformationModelFind, 7, "PATIENT", ["PatientName"])
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.PatientName = "QQCAN*"
    q.StudyDate = "20240101-20241231"
    q.StudyDescription = "*CHEST*"
    q.StudyInstanceUID = ""
    r2 = _find(assoc, exp, q, StudyRootQueryRetrieveInformationModelFind, 8, "STUDY",
               ["PatientName", "StudyDescription"])
    assert r1["matches"] == len(PATIENT_MATCHES) and r2["matches"] == len(STUDY_MATCHES)
    _finish(exp, assoc)
    assoc.release()
    return exp


def scenario_move(host, port) -> dict:
    exp = _base("MOVESCU")
    ae = _scu("MOVESCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(host, port, ae_title=SCP_AE, max_pdu=SCU_MAX_PDU)
    assert assoc.is_established
    model = StudyRootQueryRetrieveInformationModelMove
    ts = _ctx_of(assoc, model)
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = STUDY_UID
    rec = _request(exp, "C-MOVE", 21, model, encoded_len(q, ts), move_destination=DEST_AE,
                   query_level="STUDY", wildcard_keys=[])
    exp["move_destinations"][DEST_AE] += 1
    exp["query_levels"]["STUDY"] += 1
    subops = None
    for status, identifier in assoc.send_c_move(q, DEST_AE, model, msg_id=21):
        st = int(status.Status)
        _response(exp, rec, st, encoded_len(identifier, ts) if identifier is not None else 0)
        if st not in (0xFF00, 0xFF01):
            subops = tuple(int(status.get(k, 0)) for k in (
                "NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
                "NumberOfFailedSuboperations", "NumberOfWarningSuboperations"))
    rec["sub_ops"] = subops
    _finish(exp, assoc)
    assoc.release()

    # The SCP's own association to the destination: one C-STORE per sub-operation.
    sub = _base(SCP_AE, DEST_AE)
    for i, ds in enumerate(STUDY[:MOVE_SUBOPS]):
        r = _request(sub, "C-STORE", 21 + i + 1, CTImageStorage, encoded_len(ds, ImplicitVRLittleEndian))
        _response(sub, r, 0x0000)
    sub["req_impl_uid"], sub["req_impl_version"] = SCP_IMPL_UID, SCP_IMPL_VERSION
    sub["acc_impl_uid"], sub["acc_impl_version"] = SCP_IMPL_UID, SCP_IMPL_VERSION
    # The SCP's associate() for the sub-association uses pynetdicom's default max_pdu (16382),
    # not the AE's maximum_pdu_size.
    sub["max_pdu"] = [DEFAULT_MAX_LENGTH, DEST_MAX_PDU]
    sub["contexts"] = [{"id": 1, "abstract_syntax": CTImageStorage,
                        "transfer_syntaxes": [ImplicitVRLittleEndian], "result": 0,
                        "accepted_transfer_syntax": ImplicitVRLittleEndian}]
    sub["abstract_syntaxes"] = [CTImageStorage]
    exp["sub_association"] = sub
    return exp


def scenario_get(host, port) -> dict:
    exp = _base("GETSCU")
    ae = _scu("GETSCU")
    model = StudyRootQueryRetrieveInformationModelGet
    ae.add_requested_context(model)
    ae.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)
    stored: list[int] = []

    def on_store(event):
        stored.append(int(event.request.MessageID))
        return 0x0000

    assoc = ae.associate(host, port, ae_title=SCP_AE, max_pdu=SCU_MAX_PDU, ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    ts = _ctx_of(assoc, model)
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = STUDY_UID
    rec = _request(exp, "C-GET", 31, model, encoded_len(q, ts), query_level="STUDY", wildcard_keys=[])
    exp["query_levels"]["STUDY"] += 1
    subops = None
    for status, identifier in assoc.send_c_get(q, model, msg_id=31):
        st = int(status.Status)
        _response(exp, rec, st, encoded_len(identifier, ts) if identifier is not None else 0)
        if st not in (0xFF00, 0xFF01):
            subops = tuple(int(status.get(k, 0)) for k in (
                "NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
                "NumberOfFailedSuboperations", "NumberOfWarningSuboperations"))
    rec["sub_ops"] = subops
    assert len(stored) == GET_SUBOPS
    store_ts = _ctx_of(assoc, CTImageStorage)
    for msg_id, ds in zip(stored, STUDY[:GET_SUBOPS]):
        r = _request(exp, "C-STORE", msg_id, CTImageStorage, encoded_len(ds, store_ts))
        r["requested_by"] = "acceptor"
        _response(exp, r, 0x0000)
    exp["roles"] = [[CTImageStorage, False, True]]
    _finish(exp, assoc)
    assoc.release()
    return exp


def scenario_commit(host, port) -> dict:
    exp = _base("COMMITSCU")
    ae = _scu("COMMITSCU")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(host, port, ae_title=SCP_AE, max_pdu=SCU_MAX_PDU)
    assert assoc.is_established
    ts = _ctx_of(assoc, StorageCommitmentPushModel)
    info = Dataset()
    info.TransactionUID = generate_uid(prefix="1.2.826.0.1.3680043.10.1153.7.9.")
    refs = []
    for ds in STUDY[:2]:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        refs.append(item)
    info.ReferencedSOPSequence = refs
    rec = _request(exp, "N-ACTION", 41, StorageCommitmentPushModel, encoded_len(info, ts))
    status, reply = assoc.send_n_action(info, 1, StorageCommitmentPushModel, COMMIT_INSTANCE_UID, msg_id=41)
    _response(exp, rec, int(status.Status), encoded_len(reply, ts) if reply is not None else 0)
    _finish(exp, assoc)
    assoc.release()
    return exp


def scenario_reject(host, port) -> dict:
    exp = _base("REJECTSCU", "NOSUCHAE")
    ae = _scu("REJECTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title="NOSUCHAE", max_pdu=SCU_MAX_PDU)
    assert assoc.is_rejected
    exp["contexts"] = [{"id": cx.context_id, "abstract_syntax": str(cx.abstract_syntax),
                        "transfer_syntaxes": [str(t) for t in cx.transfer_syntax], "result": None,
                        "accepted_transfer_syntax": None} for cx in assoc.requestor.requested_contexts]
    exp.update(result="rejected", released=False,
               reject={"result": 1, "source": 1, "reason": 7})  # permanent, service user, called AE
    exp["req_impl_uid"], exp["req_impl_version"] = SCU_IMPL_UID, SCU_IMPL_VERSION
    exp["acc_impl_uid"] = exp["acc_impl_version"] = None
    exp["max_pdu"] = [SCU_MAX_PDU, None]
    exp["abstract_syntaxes"] = [Verification]
    return exp


def scenario_abort(host, port) -> dict:
    exp = _base("ABORTSCU")
    ae = _scu("ABORTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=SCP_AE, max_pdu=SCU_MAX_PDU)
    assert assoc.is_established
    rec = _request(exp, "C-ECHO", 5, Verification)
    _response(exp, rec, int(assoc.send_c_echo(msg_id=5).Status))
    _finish(exp, assoc)
    assoc.abort()
    exp.update(result="aborted", released=False, abort={"source": 0, "reason": 0})
    return exp


SCENARIOS = (scenario_echo, scenario_store, scenario_find, scenario_move, scenario_get,
             scenario_commit, scenario_reject, scenario_abort)


def run_all(host: str, scp_port: int, dest_port: int, scenarios=SCENARIOS) -> dict[str, Any]:
    """Run the scenarios one after another; returns expectations keyed by calling AE title."""
    log = WireLog()
    main, dest = start_servers(host, scp_port, dest_port, log)
    out: dict[str, dict] = {}
    try:
        for sc in scenarios:
            exp = sc(host, scp_port)
            sub = exp.pop("sub_association", None)
            out[exp["calling_ae"]] = exp
            if sub is not None:
                out[sub["calling_ae"]] = sub
    finally:
        main.shutdown()
        dest.shutdown()
    for exp in out.values():
        for k in ("dimse", "statuses", "sop_classes", "move_destinations", "query_levels", "wildcard_keys"):
            exp[k] = dict(exp[k])
    return {"host": host, "ports": [scp_port, dest_port], "associations": out,
            "wire": log.messages, "wire_assocs": log.assocs}
