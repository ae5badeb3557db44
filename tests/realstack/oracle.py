"""tshark as the oracle: Wireshark's DICOM and HL7 dissectors, aggregated like our events.

One tshark pass per capture writes PDML (``-T pdml``), read incrementally: in PDML the DICOM tag
fields come in document order, each followed by its value, which ``-T fields`` cannot give (it
flattens ``dicom.tag`` and the typed ``dicom.tag.value.*`` lists into separate, unalignable
columns). ``dicom.tag_tree:TRUE`` is needed for command elements to be fields at all.

The aggregates use the decoder's vocabulary (PDU and DIMSE names, ``0x0000`` statuses, keys of
``DicomAssociation``), so the comparison in the tests is a dict comparison.

Example::

    assocs, hl7_msgs = run_oracle(pcap, dicom_ports=[11112], hl7_ports=[2575])
    conv = tcp_conversations(pcap)

Known limits of tshark 4.0 that the comparison accounts for (see ``KNOWN_LIMITS``).
"""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

TSHARK = "tshark"

PDU_NAMES = {1: "A-ASSOCIATE-RQ", 2: "A-ASSOCIATE-AC", 3: "A-ASSOCIATE-RJ", 4: "P-DATA-TF",
             5: "A-RELEASE-RQ", 6: "A-RELEASE-RP", 7: "A-ABORT"}
COMMAND_NAMES = {0x0001: "C-STORE", 0x0010: "C-GET", 0x0020: "C-FIND", 0x0021: "C-MOVE", 0x0030: "C-ECHO",
                 0x0100: "N-EVENT-REPORT", 0x0110: "N-GET", 0x0120: "N-SET", 0x0130: "N-ACTION",
                 0x0140: "N-CREATE", 0x0150: "N-DELETE", 0x0FFF: "C-CANCEL"}
PENDING = (0xFF00, 0xFF01)

# What tshark cannot be asked, so the comparison leaves it out (reason in the value).
KNOWN_LIMITS = {
    "hl7.size": "tshark's hl7 proto length includes the MLLP start/end blocks only sometimes "
                "(depends on reassembly); the decoder's size is checked against the sent bytes instead",
    "dicom.identifiers": "tshark shows identifier values but has no notion of query level counting or "
                         "wildcard keys; checked against the scenario instead",
}

_UID_IN_PARENS = re.compile(r"\(([0-9.]+)\)\s*$")
_BARE_UID = re.compile(r"[0-9]+(\.[0-9]+)+")


def _uid(show: str) -> str:
    """UID out of tshark's display forms: 'Name (1.2.3)', '1.2.3 (Name)' or a bare '1.2.3'."""
    show = show.strip().rstrip("\x00").strip()
    first = show.split(" ", 1)[0]
    if _BARE_UID.fullmatch(first):  # not "12-lead ECG Waveform Storage (1.2...)"
        return first
    m = _UID_IN_PARENS.search(show)
    return m.group(1) if m else show


def _int(show: str) -> int:
    return int(show, 0)


@dataclass
class OracleAssociation:
    stream: int
    client: tuple[str, int]
    server: tuple[str, int]
    calling_ae: str | None = None
    called_ae: str | None = None
    contexts: dict[int, dict] = field(default_factory=dict)
    req_impl_uid: str | None = None
    req_impl_version: str | None = None
    acc_impl_uid: str | None = None
    acc_impl_version: str | None = None
    max_pdu: list = field(default_factory=lambda: [None, None])
    user_identity_type: int | None = None
    reject: dict | None = None
    abort: dict | None = None
    pdu_counts: Counter = field(default_factory=Counter)
    commands: list[dict] = field(default_factory=list)  # every command set, in order
    dataset_bytes: int = 0
    seen_rq: bool = False

    def key(self) -> tuple:
        return (self.client[0], self.client[1], self.server[0], self.server[1])

    def summary(self) -> dict[str, Any]:
        dimse, statuses, sops, moves = Counter(), Counter(), Counter(), Counter()
        for c in self.commands:
            name = COMMAND_NAMES.get(c["command_field"] & 0x7FFF, "0x%04X" % (c["command_field"] & 0x7FFF))
            is_rsp = bool(c["command_field"] & 0x8000)
            dimse[name + ("-RSP" if is_rsp else "-RQ")] += 1
            if c.get("status") is not None:
                statuses["0x{:04X}".format(c["status"])] += 1
            if not is_rsp and c.get("sop_class"):
                sops[c["sop_class"]] += 1
            if not is_rsp and c.get("move_destination"):
                moves[c["move_destination"]] += 1
        return {
            "calling_ae": self.calling_ae, "called_ae": self.called_ae,
            "contexts": [self.contexts[k] for k in sorted(self.contexts)],
            "req_impl_uid": self.req_impl_uid, "req_impl_version": self.req_impl_version,
            "acc_impl_uid": self.acc_impl_uid, "acc_impl_version": self.acc_impl_version,
            "max_pdu": list(self.max_pdu), "user_identity_type": self.user_identity_type,
            "reject": self.reject, "abort": self.abort, "pdu_counts": dict(self.pdu_counts),
            "dimse": dict(dimse), "statuses": dict(statuses), "sop_classes": dict(sops),
            "move_destinations": dict(moves), "dataset_bytes": self.dataset_bytes,
        }

    def operations(self) -> list[dict]:
        """Requests paired with their responses by message id (per direction of request)."""
        open_: dict[tuple, dict] = {}
        out = []
        for c in self.commands:
            cf = c["command_field"]
            name = COMMAND_NAMES.get(cf & 0x7FFF, "0x%04X" % (cf & 0x7FFF))
            if not cf & 0x8000:
                op = {"command": name, "message_id": c.get("message_id"), "sop_class": c.get("sop_class"),
                      "move_destination": c.get("move_destination"), "priority": c.get("priority"),
                      "requested_by": "requestor" if c["from_client"] else "acceptor",
                      "status": None, "pending": 0}
                open_[(c["from_client"], c.get("message_id"))] = op
                out.append(op)
            else:
                op = open_.get((not c["from_client"], c.get("responded_id")))
                if op is None:
                    continue
                st = c.get("status")
                if st in PENDING:
                    op["pending"] += 1
                else:
                    op["status"] = None if st is None else f"0x{st:04X}"
                    del open_[(not c["from_client"], c.get("responded_id"))]
        return out


@dataclass
class OracleHl7:
    src: tuple[str, int]
    dst: tuple[str, int]
    fields: dict[str, Any]


def _base_cmd(pcap: str, dicom_ports: Iterable[int], hl7_ports: Iterable[int], heuristic: bool) -> list[str]:
    cmd = [TSHARK, "-r", str(pcap), "-n", "-o", "dicom.tag_tree:TRUE", "-o", "dicom.pdv_reassemble:TRUE",
           "-o", "tcp.desegment_tcp_streams:TRUE"]
    if heuristic:
        cmd += ["-o", "dicom.heuristic:TRUE"]
    for p in dicom_ports:
        cmd += ["-d", f"tcp.port=={p},dicom"]
    for p in hl7_ports:
        cmd += ["-d", f"tcp.port=={p},hl7"]
    return cmd


_AE_FIELDS = frozenset(("dicom.assoc.ae.calling", "dicom.assoc.ae.called"))


def _printable_ae(raw: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F else "?" for b in raw.strip(b" \x00"))


# Pass 1 (-T fields, every DICOM/HL7 frame): addresses, stream, PDU types, PDV lengths and flags.
# These lists are one entry per PDU / per PDV, so they align without needing document order.
_PASS1_FIELDS = ("frame.number", "tcp.stream", "ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst",
                 "tcp.dstport", "dicom.pdu.type", "dicom.pdv.len", "dicom.pdv.flags")
# Pass 2 (-T pdml) only where values need document order: association PDUs, command PDVs, HL7.
# -J keeps only the dicom/hl7 subtrees (the tcp subtree alone would carry every payload in hex).
_PASS2_FILTER = "dicom.pdu.type != 4 || dicom.pdv.flags & 0x01 || hl7"


class _Frame:
    __slots__ = ("dst", "fields", "num", "src", "stream")

    def __init__(self, num: int, stream: int, src: tuple, dst: tuple) -> None:
        self.num, self.stream, self.src, self.dst = num, stream, src, dst
        self.fields: list[tuple[str, str]] = []


def _pass1(base: list[str]):
    cmd = base + ["-Y", "dicom || hl7", "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a",
                  "-E", "aggregator=,"]
    for f in _PASS1_FIELDS:
        cmd += ["-e", f]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    for line in res.stdout.splitlines():
        v = (line.split("\t") + [""] * len(_PASS1_FIELDS))[:len(_PASS1_FIELDS)]
        num, stream = int(v[0]), int(v[1] or -1)
        src = (v[2] or v[3], int(v[4] or 0))
        dst = (v[5] or v[6], int(v[7] or 0))
        lst = lambda x: [_int(y) for y in x.split(",") if y]
        yield _Frame(num, stream, src, dst), lst(v[8]), lst(v[9]), lst(v[10])


def _pass2(base: list[str], frames: dict[int, _Frame]):
    cmd = base + ["-Y", _PASS2_FILTER, "-J", "dicom hl7", "-T", "pdml"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        for _, elem in ET.iterparse(proc.stdout, events=("end",)):
            if elem.tag != "packet":
                continue
            num = None
            fields = []
            for f in elem.iter("field"):
                name = f.get("name", "")
                if name == "num" and num is None:
                    num = int(f.get("show", "0"))
                elif name in _AE_FIELDS and f.get("value"):
                    # Compare the raw bytes tshark saw, rendered by the decoder's documented rule
                    # (non-printables -> '?'): tshark's own rendering of a fuzzed AE title uses
                    # escapes and U+FFFD that cannot be mapped back.
                    fields.append((name, _printable_ae(bytes.fromhex(f.get("value")))))
                elif name.startswith(("dicom.", "hl7.")):
                    fields.append((name, f.get("show", "")))
            elem.clear()
            fr = frames.get(num) if num is not None else None
            if fr is not None and fields:
                fr.fields = fields
                yield fr
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        rc = proc.wait()
        if rc != 0:
            raise RuntimeError(f"tshark failed ({rc}): {err.strip()[:500]}")


def _dicom_frame(pkt: _Frame, a: OracleAssociation) -> None:
    """Association and command-set fields of one frame (PDU counts and data-set bytes: pass 1)."""
    cur: dict[str, Any] | None = None  # current command set being read
    pdu_type = None
    pctx_id = None
    tag = None
    state = None  # "rq" | "ac" within an A-ASSOCIATE PDU

    def flush_cmd() -> None:
        nonlocal cur
        if cur is not None and "command_field" in cur:
            a.commands.append(cur)
        cur = None

    for name, show in pkt.fields:
        if name == "dicom.pdu.type":
            flush_cmd()
            pdu_type = _int(show)
            state = "rq" if pdu_type == 1 else "ac" if pdu_type == 2 else None
            continue
        if name == "dicom.assoc.ae.calling" and pdu_type == 1:
            a.calling_ae = show.strip() or None
        elif name == "dicom.assoc.ae.called" and pdu_type == 1:
            a.called_ae = show.strip() or None
        elif name == "dicom.pctx.id":
            pctx_id = _int(show)
            if state in ("rq", "ac"):
                a.contexts.setdefault(pctx_id, {"id": pctx_id, "abstract_syntax": None, "transfer_syntaxes": [],
                                                "result": None, "accepted_transfer_syntax": None})
        elif name == "dicom.pctx.result" and state == "ac" and pctx_id is not None:
            a.contexts[pctx_id]["result"] = _int(show)
        elif name == "dicom.pctx.abss.syntax" and state == "rq" and pctx_id is not None:
            a.contexts[pctx_id]["abstract_syntax"] = _uid(show)
        elif name == "dicom.pctx.xfer.syntax" and pctx_id is not None:
            if state == "rq":
                a.contexts[pctx_id]["transfer_syntaxes"].append(_uid(show))
            elif state == "ac" and a.contexts[pctx_id]["result"] == 0:
                a.contexts[pctx_id]["accepted_transfer_syntax"] = _uid(show)
        elif name == "dicom.max_pdu_len" and state:
            a.max_pdu[0 if state == "rq" else 1] = int(show)
        elif name == "dicom.userinfo.uid" and state:
            if state == "rq":
                a.req_impl_uid = _uid(show)
            else:
                a.acc_impl_uid = _uid(show)
        elif name == "dicom.userinfo.version" and state:
            if state == "rq":
                a.req_impl_version = show
            else:
                a.acc_impl_version = show
        elif name == "dicom.userinfo.user_identify.type" and state == "rq":
            a.user_identity_type = _int(show)
        elif name.startswith("dicom.assoc.reject."):
            a.reject = a.reject or {}
            a.reject[name.rsplit(".", 1)[1]] = _int(show)
        elif name.startswith("dicom.assoc.abort.") and name.rsplit(".", 1)[1] in ("source", "reason"):
            a.abort = a.abort or {}
            a.abort[name.rsplit(".", 1)[1]] = _int(show)
        elif name == "dicom.pdv.len":
            flush_cmd()
        elif name == "dicom.pdv.flags":
            flags = _int(show)
            if flags & 3 == 3:
                cur = {"from_client": pkt.src == a.client}
        elif name == "dicom.tag" and cur is not None:
            tag = _int(show)
        elif name.startswith("dicom.tag.value.") and cur is not None and tag is not None:
            if tag >> 16 != 0:  # only command group elements belong to the command set
                continue
            el = tag & 0xFFFF
            if el == 0x0100:
                cur["command_field"] = int(show)
            elif el == 0x0110:
                cur["message_id"] = int(show)
            elif el == 0x0120:
                cur["responded_id"] = int(show)
            elif el == 0x0900:
                cur["status"] = int(show)
            elif el in (0x0002, 0x0003):
                cur.setdefault("sop_class", _uid(show))
            elif el == 0x0600:
                cur["move_destination"] = show.strip()
            elif el == 0x0700:
                cur["priority"] = int(show)
            tag = None
    flush_cmd()


def _hl7_packet(pkt: _Frame, out: list[OracleHl7]) -> None:
    segs: list[str] = []

    def flush() -> None:
        if not segs:
            return
        msh = segs[0].split("|")
        f = lambda n: (msh[n - 1] or None) if len(msh) >= n else None
        counts: Counter = Counter(s[:3] for s in segs)
        msa = next((s.split("|") for s in segs if s.startswith("MSA")), None)
        # Only control fields are kept: segment text (PID, OBX…) is dropped right here.
        out.append(OracleHl7(pkt.src, pkt.dst, {
            "msh_type": f(9), "sending_app": f(3), "sending_facility": f(4), "receiving_app": f(5),
            "receiving_facility": f(6), "control_id": f(10), "processing_id": f(11), "version": f(12),
            "ack_code": msa[1] if msa else None, "acked_control_id": msa[2] if msa and len(msa) > 2 else None,
            "segment_types": dict(counts)}))
        segs.clear()

    for name, show in pkt.fields:
        if name == "hl7.segment":
            # XML attribute normalisation turns the segment's CR into a space.
            text = show.replace("\\r", "").rstrip("\r\n ")
            if text.startswith("MSH") and segs:
                flush()
            segs.append(text)
    flush()


def run_oracle(pcap: str, dicom_ports: Sequence[int] = (), hl7_ports: Sequence[int] = (),
               heuristic: bool = False) -> tuple[list[OracleAssociation], list[OracleHl7]]:
    """DICOM associations and HL7 messages as tshark dissects them (two tshark passes)."""
    base = _base_cmd(pcap, dicom_ports, hl7_ports, heuristic)
    server_ports = set(dicom_ports)
    current: dict[int, OracleAssociation] = {}
    out: list[OracleAssociation] = []
    frames: dict[int, _Frame] = {}
    frame_assoc: dict[int, OracleAssociation] = {}
    for fr, pdu_types, pdv_lens, pdv_flags in _pass1(base):
        frames[fr.num] = fr
        if not pdu_types:
            continue  # HL7 frame
        a = current.get(fr.stream)
        for t in pdu_types:
            if t == 1 and (a is None or a.seen_rq):  # new association (also a second one on a connection)
                a = OracleAssociation(fr.stream, fr.src, fr.dst, seen_rq=True)
                current[fr.stream] = a
                out.append(a)
            elif a is None:  # capture began inside the association: orient by the known server port
                client, server = (fr.src, fr.dst) if fr.dst[1] in server_ports else (fr.dst, fr.src)
                a = OracleAssociation(fr.stream, client, server)
                current[fr.stream] = a
                out.append(a)
            elif t == 1:
                a.seen_rq = True
            a.pdu_counts[PDU_NAMES.get(t, str(t))] += 1
        for n, f in zip(pdv_lens, pdv_flags):
            if not f & 1:
                a.dataset_bytes += n - 2
        frame_assoc[fr.num] = a
    hl7_out: list[OracleHl7] = []
    for fr in _pass2(base, frames):
        kinds = {n.split(".", 1)[0] for n, _ in fr.fields}
        if "dicom" in kinds and fr.num in frame_assoc:
            _dicom_frame(fr, frame_assoc[fr.num])
        if "hl7" in kinds:
            _hl7_packet(fr, hl7_out)
    return out, hl7_out


_CONV = re.compile(r"^(\S+):(\d+)\s+<->\s+(\S+):(\d+)\s+(\d+)\s+(\d+)\s+(?:bytes|kB|MB|GB)\s+"
                   r"(\d+)\s+(\d+)\s+(?:bytes|kB|MB|GB)")


def tcp_conversations(pcap: str) -> dict[tuple, dict]:
    """Per TCP connection, as {(a_ip, a_port, b_ip, b_port): {"frames": [a→b, b→a], "ip_bytes": [...]}}.

    Frames come from ``-z conv,tcp``. Its byte columns are frame bytes rounded to kB above 10 kB
    (tshark 4.0), so exact IP-layer bytes are summed from ``ip.len`` / ``ipv6.plen`` per frame.
    """
    res = subprocess.run([TSHARK, "-r", str(pcap), "-n", "-q", "-z", "conv,tcp"], capture_output=True,
                         text=True, check=True)
    out: dict[tuple, dict] = {}
    for line in res.stdout.splitlines():
        m = _CONV.match(line.strip())
        if not m:
            continue
        a_ip, a_port, b_ip, b_port = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
        # Column "<-" is B→A, column "->" is A→B (tshark 4.0 layout).
        out[(a_ip, a_port, b_ip, b_port)] = {"frames": [int(m.group(7)), int(m.group(5))], "ip_bytes": [0, 0]}
    res = subprocess.run([TSHARK, "-r", str(pcap), "-n", "-T", "fields", "-E", "separator=/t",
                          "-e", "ip.src", "-e", "ipv6.src", "-e", "tcp.srcport", "-e", "ip.dst", "-e", "ipv6.dst",
                          "-e", "tcp.dstport", "-e", "ip.len", "-e", "ipv6.plen", "tcp"],
                         capture_output=True, text=True, check=True)
    for line in res.stdout.splitlines():
        src4, src6, sport, dst4, dst6, dport, iplen, plen = (line.split("\t") + [""] * 8)[:8]
        src, dst = src4 or src6, dst4 or dst6
        n = int(iplen) if iplen else int(plen) + 40
        if (src, int(sport), dst, int(dport)) in out:
            out[(src, int(sport), dst, int(dport))]["ip_bytes"][0] += n
        elif (dst, int(dport), src, int(sport)) in out:
            out[(dst, int(dport), src, int(sport))]["ip_bytes"][1] += n
    return out


def tshark_version() -> str:
    return subprocess.run([TSHARK, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
