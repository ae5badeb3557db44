"""Unit tests for pdu.py, association.py, dimse.py, identifiers.py and looks_like_dicom.

Bytes are made by pynetdicom's own PDU/DIMSE encoders and pydicom's data set writer.
"""

from __future__ import annotations

import io
import os
import struct
import warnings

import pytest
from pydicom.dataset import Dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pynetdicom import dimse_messages, dimse_primitives
from pynetdicom.pdu import (
    A_ABORT_RQ,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
)
from pynetdicom.pdu_primitives import (
    A_ABORT,
    A_ASSOCIATE,
    A_RELEASE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext

from sensor.protocols.dicom import pdu as P
from sensor.protocols.dicom.analyzer import looks_like_dicom
from sensor.protocols.dicom.association import parse_abort, parse_associate, parse_reject
from sensor.protocols.dicom.dimse import parse_command
from sensor.protocols.dicom.identifiers import is_explicit, keyword, scan_identifier

CT = "1.2.840.10008.5.1.4.1.1.2"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"


def _user_info(impl_uid="1.2.3.4.5", version="SENSORTEST_1", max_len=32768, extra=()):
    ml = MaximumLengthNotification()
    ml.maximum_length_received = max_len
    ic = ImplementationClassUIDNotification()
    ic.implementation_class_uid = impl_uid
    iv = ImplementationVersionNameNotification()
    iv.implementation_version_name = version
    return [ml, ic, iv, *extra]


def associate_rq_bytes(password: bytes = b"hunter2-pw") -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title = "CT_SCANNER"
    prim.called_ae_title = "PACS"
    ctxs = []
    for cid, (abstract, tss) in zip((1, 3), ((CT, [IMPLICIT, EXPLICIT]), (FIND, [EXPLICIT]))):
        cx = PresentationContext()
        cx.context_id = cid
        cx.abstract_syntax = abstract
        cx.transfer_syntax = tss
        ctxs.append(cx)
    prim.presentation_context_definition_list = ctxs
    aw = AsynchronousOperationsWindowNegotiation()
    aw.maximum_number_operations_invoked = 5
    aw.maximum_number_operations_performed = 3
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CT
    role.scu_role = True
    role.scp_role = False
    ui = UserIdentityNegotiation()
    ui.user_identity_type = 2
    ui.primary_field = b"operator"
    ui.secondary_field = password
    prim.user_information = _user_info(extra=(aw, role, ui))
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    return pdu.encode()


def associate_ac_bytes() -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title = "CT_SCANNER"
    prim.called_ae_title = "PACS"
    prim.result = 0
    res = []
    for cid, result, ts in ((1, 0, IMPLICIT), (3, 3, EXPLICIT)):
        cx = PresentationContext()
        cx.context_id = cid
        cx.result = result
        cx.transfer_syntax = [ts]
        res.append(cx)
    prim.presentation_context_definition_results_list = res
    prim.user_information = _user_info("1.2.3.9", "ACCEPTOR_2", 65536)
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(prim)
    return pdu.encode()


def reject_bytes(result=1, source=1, reason=7) -> bytes:
    prim = A_ASSOCIATE()
    prim.result, prim.result_source, prim.diagnostic = result, source, reason
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(prim)
    return pdu.encode()


def abort_bytes(source=2, reason=6) -> bytes:
    prim = A_ABORT()
    prim.abort_source = source
    pdu = A_ABORT_RQ()
    pdu.from_primitive(prim)
    raw = bytearray(pdu.encode())
    raw[9] = reason if source == 2 else 0
    return bytes(raw)


def release_bytes(rp: bool = False) -> bytes:
    pdu = A_RELEASE_RP() if rp else A_RELEASE_RQ()
    prim = A_RELEASE()
    if rp:
        prim.result = "affirmative"
    pdu.from_primitive(prim)
    return pdu.encode()


def encode_ds(ds: Dataset, explicit: bool) -> bytes:
    buf = io.BytesIO()
    from pydicom.filebase import DicomFileLike

    fp = DicomFileLike(buf)
    fp.is_little_endian, fp.is_implicit_VR = True, not explicit
    write_dataset(fp, ds)
    return buf.getvalue()


def dimse_pdus(msg_cls, prim, ctx_id: int = 1, max_pdu: int = 16384) -> bytes:
    """Encode a DIMSE message the way pynetdicom sends it: P-DATA-TF PDUs."""
    msg = msg_cls()
    msg.primitive_to_message(prim)
    out = b""
    for p in msg.encode_msg(ctx_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(p)
        out += pdu.encode()
    return out


def command_bytes(msg_cls, prim) -> bytes:
    msg = msg_cls()
    msg.primitive_to_message(prim)
    from pydicom.filewriter import write_dataset as _w

    buf = io.BytesIO()
    from pydicom.filebase import DicomFileLike

    fp = DicomFileLike(buf)
    fp.is_little_endian, fp.is_implicit_VR = True, True
    _w(fp, msg.command_set)
    return buf.getvalue()


# ---- pdu.py ------------------------------------------------------------------------------


def test_header_table_and_errors():
    assert P.PDU_NAMES[4] == "P-DATA-TF" and len(P.PDU_NAMES) == 7
    assert P.header_error(4, 0, 16390) is None
    assert P.header_error(4, 0, 3) == "bad_pdu_length"
    assert P.header_error(4, 1, 100) == "bad_pdu_reserved"
    assert P.header_error(8, 0, 4) == "bad_pdu_type"
    assert P.header_error(5, 0, 5) == "bad_pdu_length"
    assert P.header_error(1, 0, 67) == "bad_pdu_length"
    assert P.header_error(1, 0, P.MAX_ASSOC_LEN + 1) == "bad_pdu_length"


def test_iter_items_overrun_is_reported_not_raised():
    raw = b"\x10\x00\x00\x03abc" + b"\x20\x00\x00\xff\x01"
    items = list(P.iter_items(raw, 0, len(raw)))
    assert items[0] == (0x10, 4, 3)
    assert items[1][0] == -1


def test_scan_finds_pdata_after_garbage():
    pd = dimse_pdus(dimse_messages.C_ECHO_RQ, _echo_prim())
    garbage = bytes(range(0x08, 0x80)) * 3
    verdict, at = P.scan_for_pdu(garbage + pd)
    assert (verdict, at) == (P.FOUND, len(garbage))
    verdict, at = P.scan_for_pdu(garbage)
    assert verdict == P.NOT_FOUND
    # A truncated candidate is undecided, not rejected.
    assert P.scan_for_pdu(garbage + pd[:8])[0] == P.NEED_MORE


# ---- association.py ----------------------------------------------------------------------


def test_associate_rq_fields_and_no_password():
    raw = associate_rq_bytes()
    t, _, length = P.PDU_HEADER.unpack_from(raw)
    assert t == 1 and length == len(raw) - 6
    info = parse_associate(raw[6:], is_ac=False)
    assert info.errors == []
    assert (info.calling_ae, info.called_ae, info.version) == ("CT_SCANNER", "PACS", 1)
    assert info.application_context == "1.2.840.10008.3.1.1.1"
    assert [(c.id, c.abstract_syntax, c.transfer_syntaxes) for c in info.contexts] == [
        (1, CT, [IMPLICIT, EXPLICIT]),
        (3, FIND, [EXPLICIT]),
    ]
    assert (info.max_pdu, info.impl_uid, info.impl_version) == (32768, "1.2.3.4.5", "SENSORTEST_1")
    assert info.async_ops == (5, 3)
    assert info.roles == [(CT, True, False)]
    assert info.user_identity_type == 2
    assert "hunter2" not in repr(info) and "operator" not in repr(info)


def test_associate_ac_fields():
    raw = associate_ac_bytes()
    info = parse_associate(raw[6:], is_ac=True)
    assert info.errors == []
    assert [(c.id, c.result, c.transfer_syntaxes) for c in info.contexts] == [
        (1, 0, [IMPLICIT]),
        (3, 3, [EXPLICIT]),
    ]
    assert (info.max_pdu, info.impl_uid, info.impl_version) == (65536, "1.2.3.9", "ACCEPTOR_2")


def test_associate_truncated_items_are_errors_not_exceptions():
    raw = associate_rq_bytes()
    for cut in range(60, len(raw) - 6, 7):
        info = parse_associate(raw[6 : 6 + cut], is_ac=False)
        assert isinstance(info.errors, list)
    info = parse_associate(raw[6:-3], is_ac=False)
    assert "item_overrun" in info.errors


def test_reject_abort_release():
    raw = reject_bytes(2, 3, 1)
    assert raw[:6] == b"\x03\x00\x00\x00\x00\x04"
    assert parse_reject(raw[6:]) == {"result": 2, "source": 3, "reason": 1}
    raw = abort_bytes(2, 6)
    assert parse_abort(raw[6:]) == {"source": 2, "reason": 6}
    assert release_bytes() == b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
    assert release_bytes(True)[:2] == b"\x06\x00"


# ---- dimse.py ----------------------------------------------------------------------------


def _echo_prim(mid: int = 7):
    p = dimse_primitives.C_ECHO()
    p.MessageID = mid
    p.AffectedSOPClassUID = "1.2.840.10008.1.1"
    return p


def test_command_set_move_request():
    p = dimse_primitives.C_MOVE()
    p.MessageID = 11
    p.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    p.Priority = 1
    p.MoveDestination = "DEST_AE"
    p.Identifier = io.BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    cmd = parse_command(command_bytes(dimse_messages.C_MOVE_RQ, p))
    assert cmd.error is None
    assert (cmd.key, cmd.message_id, cmd.priority, cmd.move_destination) == ("C-MOVE-RQ", 11, 1, "DEST_AE")
    assert cmd.sop_class == "1.2.840.10008.5.1.4.1.2.2.2" and cmd.has_dataset


def test_command_set_get_response_sub_ops():
    p = dimse_primitives.C_GET()
    p.MessageIDBeingRespondedTo = 3
    p.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.3"
    p.Status = 0xB000
    p.NumberOfRemainingSuboperations = 0
    p.NumberOfCompletedSuboperations = 4
    p.NumberOfFailedSuboperations = 1
    p.NumberOfWarningSuboperations = 2
    cmd = parse_command(command_bytes(dimse_messages.C_GET_RSP, p))
    assert (cmd.key, cmd.responded_id, cmd.status, cmd.sub_ops) == ("C-GET-RSP", 3, 0xB000, (0, 4, 1, 2))
    assert not cmd.has_dataset


def test_command_set_n_action_uses_requested_sop_class():
    p = dimse_primitives.N_ACTION()
    p.MessageID = 2
    p.RequestedSOPClassUID = "1.2.840.10008.1.20.1"
    p.RequestedSOPInstanceUID = "1.2.840.10008.1.20.1.1"
    p.ActionTypeID = 1
    cmd = parse_command(command_bytes(dimse_messages.N_ACTION_RQ, p))
    assert cmd.key == "N-ACTION-RQ" and cmd.sop_class == "1.2.840.10008.1.20.1"


def test_bad_command_sets():
    good = command_bytes(dimse_messages.C_ECHO_RQ, _echo_prim())
    assert parse_command(good[:-1]).error == "bad_command_element"
    assert parse_command(b"").error == "no_command_field"
    assert parse_command(b"\x08\x00\x52\x00\x02\x00\x00\x00AB").error == "bad_command_element"
    assert parse_command(os.urandom(3)).error is not None


# ---- identifiers.py ----------------------------------------------------------------------


def _mwl_identifier() -> Dataset:
    warnings.filterwarnings("ignore", message="Invalid value for VR")  # 'M*' is a legal query key
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "SMI?H^J*"
    ds.PatientID = "12345"  # no wildcard: not reported, value never kept
    ds.StudyDate = "20200101-20201231"
    step = Dataset()
    step.Modality = "M*"
    step.ScheduledStationAETitle = "CT1"
    ds.ScheduledProcedureStepSequence = Sequence([step])
    ds.add_new(0x00091001, "LO", "PRIV*")  # private: reported by tag, never by value
    return ds


@pytest.mark.parametrize("explicit", [True, False])
def test_identifier_level_and_wildcards(explicit):
    raw = encode_ds(_mwl_identifier(), explicit)
    level, keys, err = scan_identifier(raw, explicit)
    assert err is None
    assert level == "STUDY"
    expected = ("PatientName", "ScheduledProcedureStepSequence.Modality")
    # Explicit VR says LO for the private element; implicit VR gives no VR for it, so its value
    # is not assumed to be text.
    assert keys == (("(0009,1001)",) if explicit else ()) + expected
    for value in ("SMI", "12345", "PRIV", "2020"):
        assert value not in repr((level, keys))


def test_identifier_undefined_length_sequence():
    ds = _mwl_identifier()
    raw = encode_ds(ds, True)
    # Re-encode the sequence with undefined lengths by hand: item + delimiters.
    inner = encode_ds(ds.ScheduledProcedureStepSequence[0], True)
    seq = (
        struct.pack("<HH2sHI", 0x0040, 0x0100, b"SQ", 0, 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + inner
        + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )
    head_ds = Dataset()
    head_ds.QueryRetrieveLevel = "STUDY"
    head_ds.PatientName = ds.PatientName
    head = encode_ds(head_ds, True)
    level, keys, err = scan_identifier(head + seq, True)
    assert (level, keys, err) == ("STUDY", ("PatientName", "ScheduledProcedureStepSequence.Modality"), None)
    assert scan_identifier(raw, True)[2] is None


def test_identifier_garbage_never_raises():
    raw = encode_ds(_mwl_identifier(), True)
    for cut in range(len(raw)):
        level, keys, err = scan_identifier(raw[:cut], True)
        assert isinstance(keys, tuple)
    for _ in range(200):
        junk = os.urandom(64)
        scan_identifier(junk, True)
        scan_identifier(junk, False)


def test_transfer_syntax_choice_and_keywords():
    assert is_explicit(IMPLICIT, b"") is False
    assert is_explicit(EXPLICIT, b"") is True
    assert is_explicit("1.2.840.10008.1.2.1.99", b"") is None
    assert is_explicit(None, b"\x08\x00\x52\x00CS\x06\x00") is True
    assert is_explicit(None, b"\x08\x00\x52\x00\x06\x00\x00\x00") is False
    assert keyword(0x00100010) == "PatientName"


# ---- looks_like_dicom --------------------------------------------------------------------


def test_probe_accepts_pdus():
    assert looks_like_dicom(associate_rq_bytes(), True) is True
    assert looks_like_dicom(associate_ac_bytes(), False) is True
    assert looks_like_dicom(dimse_pdus(dimse_messages.C_ECHO_RQ, _echo_prim()), True) is True
    assert looks_like_dicom(release_bytes(), True) is True
    assert looks_like_dicom(release_bytes(True), False) is True
    assert looks_like_dicom(abort_bytes(), False) is True


def test_probe_needs_more_bytes():
    rq = associate_rq_bytes()
    assert looks_like_dicom(b"", True) is None
    assert looks_like_dicom(rq[:5], True) is None
    assert looks_like_dicom(rq[:20], True) is None
    assert looks_like_dicom(release_bytes()[:8], True) is None


TLS_HELLO = bytes.fromhex("160301020001000200030300") + os.urandom(40)
HTTP = b"GET /index.html HTTP/1.1\r\nHost: pacs\r\n\r\n"
SMB2 = b"\x00\x00\x00\x9a\xfeSMB@\x00\x00\x00\x00\x00\x00\x00" + bytes(40)
HL7 = b"\x0bMSH|^~\\&|RIS|HOSP|PACS|HOSP|202401010000||ORM^O01|1|P|2.3\r"


@pytest.mark.parametrize(
    "payload", [TLS_HELLO, HTTP, SMB2, HL7, b"\x04\x00\x00\x00\x00\x02\x00\x00", b"\x05\x00\x00\x00\x00\x05"]
)
def test_probe_rejects_other_protocols(payload):
    assert looks_like_dicom(payload, True) is False


def test_probe_rejects_bad_pdata_and_versions():
    pd = bytearray(dimse_pdus(dimse_messages.C_ECHO_RQ, _echo_prim()))
    even = bytearray(pd)
    even[10] = 2  # even presentation context id
    assert looks_like_dicom(bytes(even), True) is False
    ctrl = bytearray(pd)
    ctrl[11] = 7
    assert looks_like_dicom(bytes(ctrl), True) is False
    rq = bytearray(associate_rq_bytes())
    rq[7] = 2  # protocol version 2
    assert looks_like_dicom(bytes(rq), True) is False


def test_probe_random_bytes_never_raise_and_rarely_match():
    hits = 0
    for _ in range(3000):
        verdict = looks_like_dicom(os.urandom(64), True)
        assert verdict in (True, False, None)
        hits += verdict is True
    assert hits <= 1
