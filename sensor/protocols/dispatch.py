"""Protocol recognition by content: one explicit table, no import-time registration.

The flow layer offers the first payload bytes of a TCP direction to ``recognise``. Each probe
answers True (this is mine), False (not mine) or None (need more bytes). The port is never used
as proof; DICOM on 8080 or HL7 on 104 are recognised the same way.
"""

from __future__ import annotations

from typing import Callable

from sensor.protocols.base import FlowContext, StreamAnalyzer
from sensor.protocols.dicom import pdu as dicom_pdu
from sensor.protocols.dicom.analyzer import DicomAnalyzer, looks_like_dicom
from sensor.protocols.hl7.analyzer import Hl7Analyzer, looks_like_hl7

# Bytes a probe may ask for before the flow is declared "no known application".
PROBE_LIMIT = 64

Probe = Callable[[bytes, bool], bool | None]

# (application, probe(first_bytes, from_client), analyzer factory)
ANALYZERS: tuple[tuple[str, Probe, Callable[[FlowContext], StreamAnalyzer]], ...] = (
    ("dicom", looks_like_dicom, DicomAnalyzer),
    ("hl7", looks_like_hl7, Hl7Analyzer),
)


def recognise(first: bytes, from_client: bool) -> tuple[str, Callable[[FlowContext], StreamAnalyzer]] | None | bool:
    """Return (app, factory) on a match, None if more bytes could still match, False if nothing can."""
    undecided = False
    for app, probe, factory in ANALYZERS:
        verdict = probe(first, from_client)
        if verdict:
            return app, factory
        if verdict is None:
            undecided = True
    if undecided and len(first) < PROBE_LIMIT:
        return None
    return False


# How much of a mid-stream segment is searched for a protocol header.
INSIDE_LIMIT = 1 << 16
_MID_STREAM_DICOM_PDUS = (dicom_pdu.P_DATA_TF, 0x05, 0x06, 0x07)


def recognise_inside(data) -> tuple[str, Callable[[FlowContext], StreamAnalyzer]] | None:
    """For a capture that began inside a connection: a protocol unit starting anywhere in ``data``.

    DICOM: a P-DATA-TF (its PDV headers checked, or the next one too) or an exact-length
    A-RELEASE/A-ABORT, found by the analyzer's own resync scan. HL7: an MLLP start block followed
    by ``MSH``. None (undecided: try the next segment) otherwise.
    """
    head = bytes(data[:INSIDE_LIMIT])
    if b"\x0bMSH" in head:
        return "hl7", ANALYZERS[1][2]
    verdict, offset = dicom_pdu.scan_for_pdu(head)
    if verdict == dicom_pdu.FOUND and head[offset] in _MID_STREAM_DICOM_PDUS:
        return "dicom", ANALYZERS[0][2]
    return None
