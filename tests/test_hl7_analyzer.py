"""Hl7Analyzer against bytes produced by the real ``hl7`` stack over loopback MLLP.

A small threaded MLLP listener on 127.0.0.1 records every byte each way and answers each message
with an ACK built by ``hl7.Message.create_ack`` (AA, AE or AR). The client is
``hl7.client.MLLPClient``. The recorded conversation is then fed to the analyzer whole, re-chunked
(Hypothesis) and damaged.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading

import hl7
import pytest
from hl7.client import MLLPClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.events import Counters, Endpoint, Hl7Message, Weird
from sensor.protocols.base import FlowContext
from sensor.protocols.hl7.analyzer import Hl7Analyzer, looks_like_hl7

FAKE_NAME = "QQFAKEPATIENT^ZZTEST"  # a fake patient name: must never appear in any event
FAKE_MRN = "MRN99887766"
FAKE_DOB = "19010203"
FAKE_OBX = "QQFREETEXTRESULT"

CLIENT = Endpoint("10.1.0.5", 40123)
SERVER = Endpoint("10.1.0.9", 2575)


def _segments(segments: list[str]) -> str:
    return "\r".join(segments)  # HL7 segment terminator


def _pid() -> str:
    return f"PID|1||{FAKE_MRN}^^^HOSP^MR||{FAKE_NAME}||{FAKE_DOB}|F"


MESSAGES = [
    # (raw message, ack code the listener answers with)
    (_segments([
        "MSH|^~\\&|ADT1|GOOD HEALTH HOSPITAL|RIS|RAD^1.2.840.1^ISO|20240301101500||ADT^A04^ADT_A01|MSG00001|P|2.5.1",
        "EVN|A04|20240301101500", _pid(), "NK1|1|QQFAKEKIN^ANNA|SPO", "PV1|1|O|RAD^^^HOSP",
    ]), "AA"),
    (_segments([
        "MSH|^~\\&|ADT1|GOOD HEALTH HOSPITAL|RIS|RAD|20240301101600||ADT^A08^ADT_A01|MSG00002|P|2.5.1",
        "EVN|A08|20240301101600", _pid(), "PV1|1|O|RAD^^^HOSP",
    ]), "AE"),
    (_segments([
        "MSH|^~\\&|HIS^1.2.3^ISO|MAIN|RIS|RAD|20240301102000||ORM^O01^ORM_O01|ORD-77|T^T|2.3",
        _pid(), "PV1|1|O", "ORC|NW|ORD-77", "OBR|1|ORD-77||CTHEAD^CT HEAD", "NTE|1||QQFREETEXTNOTE",
    ]), "AR"),
    (_segments([
        "MSH|^~\\&|RIS|RAD|EHR|MAIN|20240301110000||ORU^R01^ORU_R01|RPT-1|P|2.4",
        _pid(), "OBR|1|ORD-77||CTHEAD", f"OBX|1|TX|IMP||{FAKE_OBX}||||||F", f"OBX|2|TX|IMP||{FAKE_OBX}2||||||F",
        "ZDS|1.2.3.4^RIS^Application^DICOM",
    ]), "AA"),
]

ACK_ID = "ACK-{}"


class _Recorder(socketserver.BaseRequestHandler):
    """Reads MLLP frames, records wire bytes, answers with an ACK from hl7.Message.create_ack."""

    def handle(self) -> None:
        log, acks = self.server.log, self.server.acks  # type: ignore[attr-defined]
        buf = b""
        self.request.settimeout(5)
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            log.append((True, data))
            buf += data
            while b"\x1c\r" in buf:
                frame, buf = buf.split(b"\x1c\r", 1)
                msg = hl7.parse(frame.lstrip(b"\x0b").decode("utf-8"))
                cid = str(msg["MSH.F10"])
                ack = msg.create_ack(acks[cid], message_id=ACK_ID.format(cid))
                wire = b"\x0b" + str(ack).encode("utf-8") + b"\x1c\r"
                log.append((False, wire))
                self.request.sendall(wire)


def _run_conversation(messages: list[tuple[str, str]]) -> list[tuple[bool, bytes]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Recorder)
    server.daemon_threads = True
    server.log = []  # type: ignore[attr-defined]
    server.acks = {str(hl7.parse(m)["MSH.F10"]): code for m, code in messages}  # type: ignore[attr-defined]
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        with MLLPClient("127.0.0.1", server.server_address[1]) as client:
            client.socket.settimeout(5)
            for text, _ in messages:
                reply = client.send_message(hl7.parse(text))
                assert reply.startswith(b"\x0b") and reply.endswith(b"\x1c\r")
        # Let the handler see EOF and finish appending.
        for _ in range(100):
            if len(server.log) >= 2 * len(messages):  # type: ignore[attr-defined]
                break
            threading.Event().wait(0.01)
    finally:
        server.shutdown()
        server.server_close()
    return list(server.log)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def conversation() -> list[tuple[bool, bytes]]:
    return _run_conversation(MESSAGES)


def _analyze(pieces, max_frame: int | None = None, close: bool = True):
    out: list = []
    counters = Counters()
    ctx = FlowContext(CLIENT, SERVER, out.append, counters)
    a = Hl7Analyzer(ctx) if max_frame is None else Hl7Analyzer(ctx, max_frame=max_frame)
    for from_client, ts, data in pieces:
        if data is None:
            a.gap(from_client, ts, ts)
        else:
            a.data(from_client, ts, memoryview(data))
    if close:
        a.close(9.0, "fin")
    return out, counters


def _pieces(conv, ts0: float = 100.0):
    return [(fc, ts0 + i, data) for i, (fc, data) in enumerate(conv)]


def test_probe_recognises_mllp_and_raw():
    assert looks_like_hl7(b"\x0bMSH|^~\\&|", True) is True
    assert looks_like_hl7(b"\r\n\x0bMSH", False) is True
    assert looks_like_hl7(b"\x0bMS", True) is None
    assert looks_like_hl7(b"", True) is None
    assert looks_like_hl7(b"\r\n", True) is None
    assert looks_like_hl7(b"\x0bPID|", True) is False
    assert looks_like_hl7(b"GET / HTTP/1.1\r\n", True) is False
    assert looks_like_hl7(b"\x01\x00\x00\x00\x00\xcd", True) is False  # DICOM A-ASSOCIATE-RQ
    assert looks_like_hl7(b"MSH|^~\\&|", True) is True  # raw, unframed
    assert looks_like_hl7(b"MSH|", True) is None
    assert looks_like_hl7(b"MSHAB", True) is False


def test_real_stack_conversation_fields_exact(conversation):
    events, counters = _analyze(_pieces(conversation))
    msgs = [e for e in events if isinstance(e, Hl7Message)]
    assert [e for e in events if isinstance(e, Weird)] == []
    assert len(msgs) == 8
    reqs, acks = msgs[0::2], msgs[1::2]
    assert [m.src for m in reqs] == [CLIENT] * 4 and [m.dst for m in reqs] == [SERVER] * 4
    assert [m.src for m in acks] == [SERVER] * 4 and [m.dst for m in acks] == [CLIENT] * 4
    assert [m.ts for m in msgs] == [100.0 + i for i in range(8)]

    a04, a08, orm, oru = reqs
    assert (a04.message_type, a04.event, a04.structure, a04.msh_type) == ("ADT", "A04", "ADT_A01", "ADT^A04^ADT_A01")
    assert (a04.sending_app, a04.sending_facility) == ("ADT1", "GOOD HEALTH HOSPITAL")
    assert (a04.receiving_app, a04.receiving_facility) == ("RIS", "RAD^1.2.840.1^ISO")
    assert (a04.control_id, a04.processing_id, a04.version) == ("MSG00001", "P", "2.5.1")
    assert (a04.ack_code, a04.acked_control_id, a04.framing) == (None, None, "mllp")
    assert a04.segment_types == {"MSH": 1, "EVN": 1, "PID": 1, "NK1": 1, "PV1": 1}
    assert a04.size == len(MESSAGES[0][0].encode()) + 1  # str(hl7.Message) adds the final CR

    assert (a08.event, a08.control_id) == ("A08", "MSG00002")
    assert (orm.message_type, orm.event, orm.structure) == ("ORM", "O01", "ORM_O01")
    assert (orm.sending_app, orm.processing_id, orm.version) == ("HIS^1.2.3^ISO", "T", "2.3")
    assert orm.segment_types == {"MSH": 1, "PID": 1, "PV1": 1, "ORC": 1, "OBR": 1, "NTE": 1}
    assert oru.segment_types == {"MSH": 1, "PID": 1, "OBR": 1, "OBX": 2, "ZDS": 1}
    assert (oru.msh_type, oru.version) == ("ORU^R01^ORU_R01", "2.4")

    for req, ack, (_, code) in zip(reqs, acks, MESSAGES):
        assert ack.message_type == "ACK" and ack.event == req.event and ack.structure == "ACK"
        assert ack.ack_code == code
        assert ack.acked_control_id == req.control_id
        assert ack.control_id == ACK_ID.format(req.control_id)
        # create_ack swaps sender and receiver
        assert (ack.sending_app, ack.receiving_app) == (req.receiving_app, req.sending_app)
        assert ack.segment_types == {"MSH": 1, "MSA": 1}
    assert counters.get("hl7.messages") == 8


def test_no_phi_in_any_event(conversation):
    events, _ = _analyze(_pieces(conversation))
    blob = json.dumps([e.to_dict() for e in events])
    for secret in (FAKE_NAME, "QQFAKEPATIENT", "ZZTEST", FAKE_MRN, FAKE_DOB, FAKE_OBX, "QQFAKEKIN", "QQFREETEXTNOTE",
                   "CTHEAD", "CT HEAD"):
        assert secret not in blob
    assert "PID" in blob  # counted, not kept


def _rechunk(conv, cuts_per_piece):
    out = []
    for (fc, data), cuts in zip(conv, cuts_per_piece):
        points = sorted({c % (len(data) + 1) for c in cuts})
        prev = 0
        for p in points + [len(data)]:
            if p > prev:
                out.append((fc, 1.0, data[prev:p]))
                prev = p
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12), min_size=8, max_size=8))
def test_any_rechunking_gives_identical_events(conversation, cuts):
    whole, c1 = _analyze([(fc, 1.0, d) for fc, d in conversation])
    pieces, c2 = _analyze(_rechunk(conversation, cuts))
    assert [e.to_dict() for e in pieces] == [e.to_dict() for e in whole]
    assert c1.values == c2.values


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_rechunking_a_damaged_stream_is_stable(conversation, data):
    # Garbage, stray bytes and an oversize frame interleaved: same events however it is cut.
    client = b"".join(d for fc, d in conversation if fc)
    junk = data.draw(st.binary(max_size=40))
    stream = junk + client[:50] + b"\x0b" + b"X" * 2000 + b"\x1c\r" + client + b"\x1cZ" + client[:30]
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=20))))
    parts, prev = [], 0
    for p in cuts + [len(stream)]:
        parts.append((True, 1.0, stream[prev:p]))
        prev = p
    one, c1 = _analyze([(True, 1.0, stream)], max_frame=1000)
    many, c2 = _analyze(parts, max_frame=1000)
    assert [e.to_dict() for e in many] == [e.to_dict() for e in one]
    assert c1.values == c2.values
    assert sum(isinstance(e, Hl7Message) and e.control_id == "MSG00001" for e in one) == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=300) | st.none()), max_size=20))
def test_random_bytes_never_raise(pieces):
    events, _ = _analyze([(fc, 1.0, d) for fc, d in pieces])
    for e in events:
        json.dumps(e.to_dict())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([b"\x0b", b"\x0bMSH|^~\\&|", b"MSH|^~\\&|", b"\x1c\r"]))
def test_hl7_flavoured_random_bytes_never_raise(blob, prefix):
    stream = prefix + blob.replace(b"\x00", b"\r") + b"\x1c\r" + prefix + blob
    events, _ = _analyze([(True, 1.0, stream), (False, 1.0, stream)])
    for e in events:
        json.dumps(e.to_dict())


def test_oversize_frame_counted_and_next_frame_decoded(conversation):
    first = conversation[0][1]
    big = b"\x0bMSH|^~\\&|A|B|C|D|1||ADT^A01|BIG|P|2.5\r" + b"OBX|1|TX|||" + b"Y" * 5000 + b"\r\x1c\r"
    events, counters = _analyze([(True, 1.0, big[:700]), (True, 1.0, big[700:] + first)], max_frame=4096)
    msgs = [e for e in events if isinstance(e, Hl7Message)]
    assert [m.control_id for m in msgs] == ["MSG00001"]
    assert counters.get("weird.hl7.oversize_frame") == 1
    assert counters.get("hl7.discarded_bytes") == len(big) - 1  # everything after the start block
    assert [e.name for e in events if isinstance(e, Weird)] == ["hl7.oversize_frame"]


def test_oversize_memory_is_bounded():
    a_events, counters = [], Counters()
    a = Hl7Analyzer(FlowContext(CLIENT, SERVER, a_events.append, counters), max_frame=1 << 16)
    a.data(True, 1.0, memoryview(b"\x0bMSH|^~\\&|"))
    for _ in range(200):  # 200 x 64 KiB = 12.5 MiB of a never-ending frame
        a.data(True, 1.0, memoryview(b"Z" * 65536))
        assert len(a._dirs[1]._buf) <= 1 << 16
    assert counters.get("weird.hl7.oversize_frame") == 1


def test_gap_drops_partial_frame_and_resyncs(conversation):
    req = conversation[0][1]
    second = conversation[2][1]
    events, counters = _analyze([
        (True, 1.0, req[:40]), (True, 2.0, None), (True, 3.0, req[80:]), (True, 4.0, second),
    ])
    msgs = [e for e in events if isinstance(e, Hl7Message)]
    assert [m.control_id for m in msgs] == ["MSG00002"]
    assert counters.get("weird.hl7.gap_in_frame") == 1
    assert counters.get("weird.hl7.garbage") == 0  # bytes after a gap are resync, not garbage


def test_garbage_between_frames_counted(conversation):
    req = conversation[0][1]
    events, counters = _analyze([(True, 1.0, b"\r\n" + req + b"\r\nhello" + req + b"\n" + req)])
    assert sum(isinstance(e, Hl7Message) for e in events) == 3
    assert counters.get("hl7.garbage_bytes") == 5
    assert counters.get("weird.hl7.garbage") == 1


def test_unterminated_and_bad_trailer():
    m = b"MSH|^~\\&|A|B|C|D|1||ADT^A01|C1|P|2.5\r"
    events, counters = _analyze([(True, 1.0, b"\x0b" + m[:20] + b"\x0b" + m + b"\x1cX\x0b" + m + b"\x1c\r\x0b" + m)])
    assert [e.control_id for e in events if isinstance(e, Hl7Message)] == ["C1", "C1"]
    assert counters.get("weird.hl7.unterminated_frame") == 2  # one inside, one open at close
    assert counters.get("weird.hl7.bad_trailer") == 1


def test_bad_msh_still_counted():
    events, counters = _analyze([(True, 1.0, b"\x0bPID|1||X\rOBX|1\r\x1c\r\x0bMSHA^~\r\x1c\r\x0b\x1c\r")])
    msgs = [e for e in events if isinstance(e, Hl7Message)]
    assert len(msgs) == 2
    assert msgs[0].segment_types == {"PID": 1, "OBX": 1} and msgs[0].message_type is None
    assert counters.get("weird.hl7.bad_msh") == 2
    assert counters.get("weird.hl7.empty_frame") == 1
    details = [e.detail for e in events if isinstance(e, Weird) and e.name == "hl7.bad_msh"]
    assert details == ["no MSH segment", "bad MSH-1 field separator"]


def test_raw_framing(conversation):
    texts = [str(hl7.parse(t)).encode() for t, _ in MESSAGES]
    stream = b"".join(t + b"\r" if not t.endswith(b"\r") else t for t in texts)
    assert looks_like_hl7(stream[:16], True) is True
    for cut in (1, 7, 13):
        parts = [(True, 1.0, stream[i:i + cut]) for i in range(0, len(stream), cut)]
        events, _ = _analyze(parts)
        msgs = [e for e in events if isinstance(e, Hl7Message)]
        assert [m.control_id for m in msgs] == ["MSG00001", "MSG00002", "ORD-77", "RPT-1"]
        assert {m.framing for m in msgs} == {"raw"}
        assert [m.size for m in msgs] == [len(t) for t in texts]
        assert not [e for e in events if isinstance(e, Weird)]


def test_raw_oversize_resyncs_on_next_msh():
    m = b"MSH|^~\\&|A|B|C|D|1||ADT^A01|{}|P|2.5\rPID|1||{}\r"
    stream = m.replace(b"{}", b"R1", 1).replace(b"{}", b"X") + m.replace(b"{}", b"R2", 1).replace(b"{}", b"Q" * 900) \
        + m.replace(b"{}", b"R3", 1).replace(b"{}", b"X")
    for cut in (len(stream), 5, 64):
        parts = [(True, 1.0, stream[i:i + cut]) for i in range(0, len(stream), cut)]
        events, counters = _analyze(parts, max_frame=256)
        assert [e.control_id for e in events if isinstance(e, Hl7Message)] == ["R1", "R3"]
        assert counters.get("weird.hl7.oversize_frame") == 1


def test_custom_separators_from_msh1_and_msh2():
    text = "MSH#$~\\&#LAB$9.9$ISO#F1#RIS#F2#2024##ORU$R01$ORU_R01#CTL#P$T#2.6\rPID#1##X\r"
    parsed = hl7.parse(text)
    assert str(parsed.segment("MSH")[9]) == "ORU$R01$ORU_R01"  # the hl7 package agrees on MSH-9
    events, _ = _analyze([(True, 1.0, b"\x0b" + text.encode() + b"\x1c\r")])
    (m,) = events
    assert (m.message_type, m.event, m.structure) == ("ORU", "R01", "ORU_R01")
    assert (m.sending_app, m.processing_id, m.version) == ("LAB$9.9$ISO", "P", "2.6")
    assert m.segment_types == {"MSH": 1, "PID": 1}


def test_real_socket_bytes_recorded_both_ways(conversation):
    # The recording really is client→server requests and server→client MLLP ACKs.
    assert [fc for fc, _ in conversation] == [True, False] * 4
    assert all(d.startswith(b"\x0bMSH|") and d.endswith(b"\x1c\r") for _, d in conversation)
    assert socket.gethostbyname("localhost").startswith("127.")
