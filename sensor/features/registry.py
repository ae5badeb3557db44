"""The one registry of window features: name, unit, description, transform, ATT&CK hint.

Everything that needs a feature goes through this table: the window vector (column order), the
Parquet export, the model manifest (feature names are checked on load) and alert evidence
(descriptions, units). Nothing anywhere refers to a column index (STYLE 8).

Each feature is one number per device per window. The *transform* is applied before modelling
(``log1p`` for counts and byte volumes, whose spread spans orders of magnitude; ``none`` for
cyclic time encodings); evidence always shows the raw, untransformed value.

Example::

    >>> FEATURES_BY_NAME["dimse.c_find_rq"].unit
    'requests'
    >>> "flow.bytes_out" in FLOW_FEATURE_NAMES
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    unit: str
    description: str
    transform: str = "log1p"  # "log1p" | "none"
    group: str = "flow"  # flow | dicom | dimse | hl7 | weird | time
    attack: tuple[str, ...] = ()  # ATT&CK techniques a high value of this feature suggests


def _f(name: str, unit: str, description: str, transform: str = "log1p", attack: tuple[str, ...] = ()) -> Feature:
    return Feature(name, unit, description, transform, name.split(".", 1)[0], attack)


# DIMSE commands that get their own request counters; every other command (N-*, C-CANCEL) is
# counted in dimse.n_rq / dimse.other_rq. Key = command as in DimseMessage.command.
DIMSE_COUNTED = {"C-ECHO": "c_echo", "C-STORE": "c_store", "C-FIND": "c_find", "C-MOVE": "c_move", "C-GET": "c_get"}
QUERY_LEVELS = {"PATIENT": "patient", "STUDY": "study", "SERIES": "series", "IMAGE": "image"}
HL7_TYPES = ("ADT", "ORM", "ORU", "SIU", "MDM", "ACK")  # everything else → hl7.type_other
NAK_CODES = frozenset({"AE", "AR", "CE", "CR"})

_T1046 = ("T1046",)  # Network Service Discovery
_T1005 = ("T1005",)  # Data from Local System (PACS collection)
_T1119 = ("T1119",)  # Automated Collection
_T1048 = ("T1048",)  # Exfiltration Over Alternative Protocol
_T1110 = ("T1110",)  # Brute Force (AE title guessing)
_T1565 = ("T1565.002",)  # Transmitted Data Manipulation (HL7 injection)
_T1499 = ("T1499",)  # Endpoint Denial of Service

FEATURES: tuple[Feature, ...] = (
    # --- L3/L4 flows (attributed to the window of the flow's start, see windows.py)
    _f("flow.bytes_out", "bytes", "IP bytes sent", attack=_T1048),
    _f("flow.bytes_in", "bytes", "IP bytes received"),
    _f("flow.packets_out", "packets", "packets sent"),
    _f("flow.packets_in", "packets", "packets received"),
    _f("flow.conns_out", "flows", "flows initiated (as client)", attack=_T1046),
    _f("flow.conns_in", "flows", "flows accepted (as server)"),
    _f("flow.peers", "hosts", "distinct peer IPs", attack=_T1046),
    _f("flow.new_peers", "hosts", "peer IPs not seen before for this device", attack=_T1046),
    _f("flow.dst_ports", "ports", "distinct server ports contacted", attack=_T1046),
    _f("flow.listen_ports", "ports", "distinct local ports that answered"),
    _f("flow.failed_out", "flows", "outgoing connections rejected or unanswered", attack=_T1046),
    _f("flow.failed_in", "flows", "incoming connections this device rejected"),
    _f("flow.resets", "flows", "flows ended by RST"),
    _f("flow.udp_flows", "flows", "UDP flows"),
    # --- DICOM associations
    _f("dicom.assoc_rq", "associations", "DICOM associations requested (as SCU)"),
    _f("dicom.assoc_ac", "associations", "DICOM associations accepted (as SCP)"),
    _f("dicom.rejected", "associations", "own association requests rejected", attack=_T1110),
    _f("dicom.rejects_sent", "associations", "association requests this device rejected", attack=_T1110),
    _f("dicom.aborts", "associations", "associations aborted"),
    _f("dicom.peer_aes", "AE titles", "distinct peer AE titles"),
    _f("dicom.contexts_proposed", "contexts", "presentation contexts proposed", attack=_T1046),
    _f("dicom.sop_classes", "SOP classes", "distinct SOP classes used"),
    _f("dicom.decode_errors", "errors", "DICOM decode errors"),
    # --- DIMSE operations (requested by this device unless "served")
    _f("dimse.c_echo_rq", "requests", "C-ECHO requests", attack=_T1046),
    _f("dimse.c_store_rq", "requests", "C-STORE requests sent"),
    _f("dimse.c_find_rq", "requests", "C-FIND queries", attack=_T1119),
    _f("dimse.c_move_rq", "requests", "C-MOVE requests", attack=_T1005),
    _f("dimse.c_get_rq", "requests", "C-GET requests", attack=_T1005),
    _f("dimse.n_rq", "requests", "N-* requests"),
    _f("dimse.other_rq", "requests", "other DIMSE requests (C-CANCEL, unknown)"),
    _f("dimse.c_store_served", "requests", "C-STORE requests received"),
    _f("dimse.c_find_served", "requests", "C-FIND queries answered", attack=_T1119),
    _f("dimse.c_move_served", "requests", "C-MOVE requests served", attack=_T1005),
    _f("dimse.c_get_served", "requests", "C-GET requests served", attack=_T1005),
    _f("dimse.failures", "responses", "own requests answered with a failure status"),
    _f("dimse.query_patient", "queries", "PATIENT-level queries/retrieves", attack=_T1119),
    _f("dimse.query_study", "queries", "STUDY-level queries/retrieves", attack=_T1119),
    _f("dimse.query_series", "queries", "SERIES-level queries/retrieves"),
    _f("dimse.query_image", "queries", "IMAGE-level queries/retrieves"),
    _f("dimse.wildcard_queries", "queries", "queries using wildcard keys", attack=_T1119),
    _f("dimse.find_result_bytes", "bytes", "C-FIND result bytes received", attack=_T1005),
    _f("dimse.move_destinations", "AE titles", "distinct C-MOVE destinations", attack=_T1048),
    _f("dimse.retrieved_instances", "instances", "instances retrieved by own C-MOVE/C-GET", attack=_T1005),
    _f("dimse.store_sent_bytes", "bytes", "data-set bytes sent by C-STORE", attack=_T1048),
    _f("dimse.store_recv_bytes", "bytes", "data-set bytes received by C-STORE"),
    _f("dimse.store_recv_instances", "instances", "instances received by C-STORE"),
    _f("dimse.sop_classes", "SOP classes", "distinct SOP classes in DIMSE requests"),
    # --- HL7 v2 (sent by this device unless "in")
    _f("hl7.msgs_out", "messages", "HL7 messages sent", attack=_T1565),
    _f("hl7.msgs_in", "messages", "HL7 messages received"),
    _f("hl7.bytes_out", "bytes", "HL7 bytes sent"),
    *(_f(f"hl7.type_{t.lower()}", "messages", f"HL7 {t} messages sent", attack=_T1565) for t in HL7_TYPES),
    _f("hl7.type_other", "messages", "HL7 messages of other types sent", attack=_T1565),
    _f("hl7.naks", "messages", "HL7 negative acknowledgements (AE/AR/CE/CR) sent or received"),
    _f("hl7.senders", "applications", "distinct HL7 sending application/facility pairs"),
    # --- protocol anomalies
    _f("weird.count", "events", "protocol anomalies (malformed PDUs, resyncs)"),
    # --- time of day/week in the site's time zone (cyclic encoding; a window at 23:59 is near 00:00)
    _f("time.hour_sin", "ratio", "time of day (sine, site time zone)", transform="none"),
    _f("time.hour_cos", "ratio", "time of day (cosine, site time zone)", transform="none"),
    _f("time.dow_sin", "ratio", "day of week (sine, site time zone)", transform="none"),
    _f("time.dow_cos", "ratio", "day of week (cosine, site time zone)", transform="none"),
    _f("time.weekend", "flag", "Saturday or Sunday (site time zone)", transform="none"),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
FEATURES_BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}
# The comparison baseline ("what a flow-only NetFlow detector would see"): L3/L4 plus time of day.
FLOW_FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES if f.group in ("flow", "time"))

assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)), "duplicate feature name"


def feature_vector(values: dict[str, float], names: tuple[str, ...] = FEATURE_NAMES) -> np.ndarray:
    """Order a finalised feature dict by ``names`` (missing names are 0)."""
    return np.array([values.get(n, 0.0) for n in names], dtype=np.float64)


def transform_mask(names: tuple[str, ...]) -> np.ndarray:
    """Boolean mask of the columns of ``names`` that use ``log1p``."""
    return np.array([FEATURES_BY_NAME[n].transform == "log1p" for n in names], dtype=bool)


def apply_transform(X: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Registry transforms on a (rows × len(names)) matrix of raw values; returns a new array.

    >>> apply_transform(np.array([[0.0, 1.0]]), ("flow.bytes_out", "time.hour_sin")).tolist()
    [[0.0, 1.0]]
    """
    out = np.array(X, dtype=np.float64, copy=True)
    m = transform_mask(names)
    out[:, m] = np.log1p(np.maximum(out[:, m], 0.0))
    return out
