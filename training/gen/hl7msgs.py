"""HL7 v2.5 messages (ADT^A04/A08, ORM^O01, ORU^R01) exchanged over MLLP by the hl7 package.

Each (sender, receiver, type, ack code) pair is recorded once through ``Recorder.hl7`` (real
``hl7.client.MLLPClient`` to a server that answers with ``hl7.Message.create_ack``); sessions
then patch fixed-width fields: MSH-7 (``YYYYMMDDHHMMSS``), MSH-10 control ID, patient and
accession placeholders. Patients are fake (``TEST^PATIENT000123``).
"""

from __future__ import annotations

import datetime as dt

from . import dicomdata as dd
from .recorder import Recorder

TS0 = "20000101000000"
CTRL0 = "MSG0000001"

_BODY = {
    "ADT^A04": "EVN|A04|{ts}\rPID|1||{pid}^^^SYN^MR||{pname}||19000101|O\rPV1|1|O|RAD^^^SYN\r",
    "ADT^A08": "EVN|A08|{ts}\rPID|1||{pid}^^^SYN^MR||{pname}||19000101|O\rPV1|1|O|RAD^^^SYN\r",
    "ORM^O01": ("PID|1||{pid}^^^SYN^MR||{pname}||19000101|O\rORC|NW|{acc}|||SC\r"
                "OBR|1|{acc}||SYNPROC^SYNTHETIC PROCEDURE|||{ts}\r"),
    "ORU^R01": ("PID|1||{pid}^^^SYN^MR||{pname}||19000101|O\rOBR|1|{acc}||SYNPROC^SYNTHETIC PROCEDURE\r"
                "OBX|1|TX|SYNREPORT||SYNTHETIC REPORT TEXT||||||F\r"),
}


def message(mtype: str, sending: str, receiving: str) -> str:
    msh = f"MSH|^~\\&|{sending}|SYNHOSP|{receiving}|SYNHOSP|{TS0}||{mtype}|{CTRL0}|P|2.5\r"
    return msh + _BODY[mtype].format(ts=TS0, pid=dd.patient_id(1), pname=dd.patient_name(1),
                                     acc=dd.accession(1))


class Hl7Library:
    def __init__(self, recorder: Recorder) -> None:
        self.rec = recorder
        self._cache: dict[tuple, tuple[bytes, bytes]] = {}

    def pair(self, mtype: str, sending: str, receiving: str, ack: str = "AA") -> tuple[bytes, bytes]:
        key = (mtype, sending, receiving, ack)
        if key not in self._cache:
            conn = self.rec.hl7([message(mtype, sending, receiving)], ack)
            self._cache[key] = (conn[0][1], conn[1][1])
        return self._cache[key]

    def exchange(self, mtype: str, sending: str, receiving: str, when: dt.datetime, ctrl: int,
                 patient: int, study: int, ack: str = "AA") -> tuple[bytes, bytes]:
        msg, rsp = self.pair(mtype, sending, receiving, ack)
        subs = [(TS0.encode(), when.strftime("%Y%m%d%H%M%S").encode()),
                (CTRL0.encode(), f"MSG{ctrl % 10_000_000:07d}".encode()),
                (dd.patient_id(1).encode(), dd.patient_id(patient).encode()),
                (dd.patient_name(1).encode(), dd.patient_name(patient).encode()),
                (dd.accession(1).encode(), dd.accession(study).encode())]
        for a, b in subs:  # equal widths: frame lengths never change
            msg = msg.replace(a, b)
            rsp = rsp.replace(a, b)
        return msg, rsp
