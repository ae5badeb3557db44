"""HL7 v2 over MLLP on loopback: ``hl7.client.MLLPClient`` against a small ACK-ing listener.

The listener answers every message with ``hl7``'s own ``create_ack``; the ack code is AA except
for messages whose control id says otherwise (``…-AE`` → AE, ``…-AR`` → AR). Each exchange is
recorded as the exact bytes sent both ways plus the endpoints, and ``expected_fields`` derives the
Hl7Message fields from those bytes with a plain split (independent of the decoder).

Example::

    with Capture(pcap, ports=[port]):
        sent = run_all("127.0.0.1", port)
"""

from __future__ import annotations

import socket
import socketserver
import threading
from typing import Any

import hl7
from hl7.client import MLLPClient

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"

CANARY_NAME = "QQCANARY^ZEBULON"
CANARY_ID = "PHICANARY4711"
CANARY_TEXT = "CANARYFREETEXT lesion"  # OBX/NTE free text
CANARY_STRINGS = ("QQCANARY", "ZEBULON", CANARY_ID, "CANARYFREETEXT")

TS = "20240315120000"


def _pid() -> str:
    return f"PID|1||{CANARY_ID}^^^HOSP^MR||{CANARY_NAME}||19700101|M|||1 CANARY ST^^TOWN"


def adt(event: str, control_id: str, app="RIS", fac="RADIOLOGY") -> str:
    structure = "ADT_A01"
    segs = [f"MSH|^~\\&|{app}|{fac}|EHR|HOSP|{TS}||ADT^{event}^{structure}|{control_id}|P|2.5.1",
            f"EVN|{event}|{TS}", _pid(), "PV1|1|O|RAD^1^1"]
    return "\r".join(segs) + "\r"


def orm(control_id: str, app="RIS", fac="RADIOLOGY") -> str:
    segs = [f"MSH|^~\\&|{app}|{fac}|PACS|HOSP|{TS}||ORM^O01|{control_id}|P|2.3",
            _pid(), "PV1|1|O", f"ORC|NW|ORD{control_id}", f"OBR|1|ORD{control_id}||CTHEAD^CT HEAD",
            f"NTE|1||{CANARY_TEXT}"]
    return "\r".join(segs) + "\r"


def oru(control_id: str, app="PACS", fac="IMAGING") -> str:
    segs = [f"MSH|^~\\&|{app}|{fac}|EHR|HOSP|{TS}||ORU^R01^ORU_R01|{control_id}|T|2.5",
            _pid(), f"OBR|1|ORD{control_id}||CTHEAD^CT HEAD",
            f"OBX|1|TX|IMP^Impression||{CANARY_TEXT}||||||F", f"OBX|2|TX|IMP^Impression||{CANARY_TEXT} 2||||||F"]
    return "\r".join(segs) + "\r"


# Two connections, as two sending systems would use.
CONNECTIONS = (
    [adt("A04", "RIS0001"), adt("A08", "RIS0002"), orm("RIS0003")],
    [oru("PACS0001"), adt("A08", "PACS0002-AE", app="PACS", fac="IMAGING"),
     orm("PACS0003-AR", app="PACS", fac="IMAGING")],
)


def ack_code_for(control_id: str) -> str:
    if control_id.endswith("-AE"):
        return "AE"
    if control_id.endswith("-AR"):
        return "AR"
    return "AA"


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        buf = b""
        self.request.settimeout(10)
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while EB + CR in buf:
                frame, buf = buf.split(EB + CR, 1)
                text = frame.lstrip(SB).decode("utf-8")
                msg = hl7.parse(text)
                cid = str(msg.segment("MSH")(10))
                ack = msg.create_ack(ack_code_for(cid), message_id=f"ACK{cid}")
                ack_bytes = str(ack).encode("utf-8") + CR  # segments end with CR (HL7 2.x)
                self.request.sendall(SB + ack_bytes + EB + CR)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def run_all(host: str, port: int) -> dict[str, Any]:
    """Send every connection's messages; returns the exchanges with exact bytes and endpoints."""
    server = _Server((host, port), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    exchanges = []
    try:
        for messages in CONNECTIONS:
            with MLLPClient(host, port) as client:
                client.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                cport = client.socket.getsockname()[1]
                for text in messages:
                    reply = client.send_message(text)
                    assert reply.startswith(SB) and reply.endswith(EB + CR), "ACK not in one recv"
                    exchanges.append({"client_port": cport, "request": text.encode("utf-8"),
                                      "reply": reply[1:-2]})
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    return {"host": host, "port": port, "exchanges": exchanges}


def expected_fields(message: bytes) -> dict[str, Any]:
    """Hl7Message fields for ``message`` (the bytes between SB and EB), by plain splitting."""
    segs = [s for s in message.decode("utf-8").split("\r") if s]
    msh = segs[0].split("|")
    # MSH-1 is the separator itself, so MSH-n sits at index n-1 in the split list.
    f = lambda n: (msh[n - 1] or None) if len(msh) >= n else None
    mtype = f(9)
    comps = (mtype or "").split("^")
    counts: dict[str, int] = {}
    msa = None
    for s in segs:
        name = s[:3]
        counts[name] = counts.get(name, 0) + 1
        if name == "MSA":
            msa = s.split("|")
    return {
        "message_type": comps[0] or None, "event": comps[1] if len(comps) > 1 and comps[1] else None,
        "structure": comps[2] if len(comps) > 2 and comps[2] else None, "msh_type": mtype,
        "sending_app": f(3), "sending_facility": f(4), "receiving_app": f(5), "receiving_facility": f(6),
        "control_id": f(10), "processing_id": f(11), "version": f(12),
        "ack_code": msa[1] if msa else None, "acked_control_id": msa[2] if msa and len(msa) > 2 else None,
        "segment_types": counts, "size": len(message), "framing": "mllp",
    }
