"""Typed protocol events: what the analyzers saw, never what it means.

These records are the public face of ``flows/`` and ``protocols/``. They are small, frozen and
PHI-free by construction: no field can hold a patient name, ID, birth date, accession number or
free text. ``to_dict()`` gives the stable JSON-lines form (DESIGN §3, event logs).

Example::

    >>> ep = Endpoint("10.0.0.5", 104, "00:11:22:33:44:55")
    >>> ep.to_dict()
    {'ip': '10.0.0.5', 'port': 104, 'mac': '00:11:22:33:44:55'}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    port: int
    mac: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ip": self.ip, "port": self.port, "mac": self.mac}


def _plain(value: Any) -> Any:
    if isinstance(value, Endpoint):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _Record:
    """Mixin: JSON-ready dict in field order, plus the log the record belongs to."""

    __slots__ = ()
    log_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class FlowRecord(_Record):
    """One bidirectional L4 flow, emitted when it ends (FIN/RST, idle timeout, eviction, end of input)."""

    ts_start: float
    ts_end: float
    proto: str  # "tcp" | "udp" | "icmp" | "ipv6-icmp" | "other:<n>"
    client: Endpoint
    server: Endpoint
    packets: tuple[int, int]  # [to_server, to_client]
    bytes: tuple[int, int]  # IP-layer bytes each way
    payload_bytes: tuple[int, int]
    tcp_state: str | None  # established | rejected | no_answer | reset | open ; None for non-TCP
    tcp_flags: str  # union of flags seen, e.g. "SAFPR" (S syn, A ack, F fin, P psh, R rst, U urg)
    handshake: bool  # SYN, SYN-ACK and ACK all seen
    rst: bool
    app: str | None  # "dicom" | "hl7" | None
    close_reason: str  # fin | rst | timeout | evicted | eof
    vlan: tuple[int, ...] = ()

    log_name = "flows"

    @property
    def duration(self) -> float:
        return self.ts_end - self.ts_start


@dataclass(frozen=True, slots=True)
class PresentationContext:
    id: int
    abstract_syntax: str | None
    transfer_syntaxes: tuple[str, ...]
    result: int | None = None  # 0 acceptance, 1 user-rejection, 2 no-reason, 3 abstract syntax, 4 transfer syntax
    accepted_transfer_syntax: str | None = None


@dataclass(frozen=True, slots=True)
class DicomAssociation(_Record):
    """One DICOM association, emitted when it ends (release, abort, reject, timeout, end of input)."""

    ts_start: float
    ts_end: float
    client: Endpoint
    server: Endpoint
    calling_ae: str | None
    called_ae: str | None
    result: str  # accepted | rejected | aborted | no_response | incomplete
    released: bool
    reject: dict | None  # {"result", "source", "reason"}
    abort: dict | None  # {"source", "reason"}
    application_context: str | None
    abstract_syntaxes: tuple[str, ...]
    transfer_syntaxes: tuple[str, ...]
    contexts: tuple[PresentationContext, ...]
    req_impl_uid: str | None
    req_impl_version: str | None
    acc_impl_uid: str | None
    acc_impl_version: str | None
    max_pdu: tuple[int | None, int | None]  # [requestor, acceptor]
    user_identity_type: int | None
    roles: tuple[tuple[str, bool, bool], ...]  # (sop class, scu role, scp role) from role selection
    async_ops: tuple[int, int] | None
    pdu_counts: dict[str, int]
    dimse: dict[str, int]
    statuses: dict[str, int]
    sop_classes: dict[str, int]
    move_destinations: dict[str, int]
    query_levels: dict[str, int]
    wildcard_keys: dict[str, int]
    bytes: tuple[int, int]  # application bytes [to_server, to_client]
    dataset_bytes: int
    pdv_fragments: int
    decode_errors: int
    mid_stream: bool = False  # capture began inside the association (no A-ASSOCIATE seen)

    log_name = "dicom"


@dataclass(frozen=True, slots=True)
class DimseMessage(_Record):
    """One DIMSE operation: a request paired with its final response by message id."""

    ts: float  # request time
    ts_response: float | None
    client: Endpoint  # association requestor
    server: Endpoint  # association acceptor
    calling_ae: str | None
    called_ae: str | None
    command: str  # "C-STORE", "C-FIND", ... (no -RQ/-RSP suffix)
    requested_by: str  # "requestor" | "acceptor" (C-GET sub-op C-STOREs and N-EVENT-REPORTs come from the acceptor)
    sop_class: str | None
    message_id: int | None
    priority: int | None
    move_destination: str | None
    status: str | None  # final status "0x0000"; None when no response seen
    pending: int  # pending responses (0xFF00/0xFF01)
    latency: float | None
    dataset_bytes: int  # request data set
    response_dataset_bytes: int  # all response data sets (C-FIND matches etc.)
    query_level: str | None
    wildcard_keys: tuple[str, ...]
    sub_ops: tuple[int, int, int, int] | None  # remaining, completed, failed, warning (final response)

    log_name = "dimse"


@dataclass(frozen=True, slots=True)
class Hl7Message(_Record):
    """One HL7 v2 message. Only MSH/MSA control fields are kept; PID/OBX/NTE etc. are only counted."""

    ts: float
    src: Endpoint
    dst: Endpoint
    message_type: str | None  # MSH-9.1 "ADT"
    event: str | None  # MSH-9.2 "A08"
    structure: str | None  # MSH-9.3
    msh_type: str | None  # MSH-9 as sent
    sending_app: str | None
    sending_facility: str | None
    receiving_app: str | None
    receiving_facility: str | None
    control_id: str | None  # MSH-10
    processing_id: str | None  # MSH-11
    version: str | None  # MSH-12
    ack_code: str | None  # MSA-1
    acked_control_id: str | None  # MSA-2
    segment_types: dict[str, int]
    size: int
    framing: str  # "mllp" | "raw"

    log_name = "hl7"


@dataclass(frozen=True, slots=True)
class Weird(_Record):
    """A protocol anomaly worth counting (malformed PDU, oversize frame, resync...). Never carries payload."""

    ts: float
    name: str  # e.g. "dicom.bad_pdu_type", "hl7.oversize_frame"
    client: Endpoint | None
    server: Endpoint | None
    detail: str = ""  # numbers and protocol constants only, never payload text

    log_name = "weird"


Event = FlowRecord | DicomAssociation | DimseMessage | Hl7Message | Weird

LOG_NAMES = ("flows", "dicom", "dimse", "hl7", "weird")


@dataclass(slots=True)
class Counters:
    """Named event counters (drops, malformed frames by reason, evictions...). Nothing is lost silently."""

    values: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + n

    def merge(self, other: "Counters") -> None:
        for k, v in other.values.items():
            self.add(k, v)

    def get(self, name: str) -> int:
        return self.values.get(name, 0)

    def prefixed(self, prefix: str) -> dict[str, int]:
        return {k: v for k, v in sorted(self.values.items()) if k.startswith(prefix)}
