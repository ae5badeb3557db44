"""Flow table: direction, TCP state, timeouts, eviction, analyzer attachment by content."""

from scapy.all import IP, TCP, UDP, Ether, Raw

from sensor.decode.l2l4 import decode_batch
from sensor.events import Counters, FlowRecord
from sensor.flows.table import FlowConfig, FlowTable

C, S = "10.0.0.1", "10.0.0.2"
CM, SM = "02:00:00:00:00:01", "02:00:00:00:00:02"


def pkt(t, src, dst, sport, dport, flags, seq=0, ack=0, data=b""):
    smac, dmac = (CM, SM) if src == C else (SM, CM)
    f = Ether(src=smac, dst=dmac) / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack)
    if data:
        f = f / Raw(data)
    return t, bytes(f)


def run(frames, config=FlowConfig()):
    events, counters = [], Counters()
    table = FlowTable(events.append, counters, config)
    pkts = decode_batch(1, [t for t, _ in frames], [memoryview(f) for _, f in frames], counters)
    table.process(pkts)
    table.finish()
    return [e for e in events if isinstance(e, FlowRecord)], events, counters


def handshake(t=0.0, sport=40000, dport=104):
    return [pkt(t, C, S, sport, dport, "S", 100), pkt(t + .001, S, C, dport, sport, "SA", 500, 101),
            pkt(t + .002, C, S, sport, dport, "A", 101, 501)]


def test_established_flow_record():
    frames = handshake() + [pkt(0.01, C, S, 40000, 104, "PA", 101, 501, b"hello"),
                            pkt(0.02, S, C, 104, 40000, "PA", 501, 106, b"hi"),
                            pkt(0.03, C, S, 40000, 104, "FA", 106, 503), pkt(0.04, S, C, 104, 40000, "FA", 503, 107),
                            pkt(0.05, C, S, 40000, 104, "A", 107, 504)]
    (flow,), _, _ = run(frames)
    assert flow.client.ip == C and flow.client.port == 40000 and flow.client.mac == CM
    assert flow.server.ip == S and flow.server.mac == SM
    assert flow.packets == (5, 3)
    assert flow.payload_bytes == (5, 2)
    assert flow.handshake and not flow.rst
    assert flow.tcp_state == "established" and flow.close_reason == "fin"
    assert set(flow.tcp_flags) == set("SAFP")


def test_syn_ack_first_sets_direction():
    frames = [pkt(0.0, S, C, 104, 40000, "SA", 500, 101), pkt(0.001, C, S, 40000, 104, "A", 101, 501)]
    (flow,), _, _ = run(frames)
    assert flow.client.ip == C and flow.server.port == 104 and flow.client.mac == CM


def test_rejected_and_no_answer():
    frames = [pkt(0.0, C, S, 40001, 4242, "S", 1), pkt(0.001, S, C, 4242, 40001, "RA", 0, 2),
              pkt(0.0, C, S, 40002, 4243, "S", 1)]
    flows, _, _ = run(frames)
    states = {f.server.port: f.tcp_state for f in flows}
    assert states == {4242: "rejected", 4243: "no_answer"}


def test_idle_timeout_and_eviction_are_counted():
    frames = [pkt(float(i), C, S, 41000 + i, 104, "S", 1) for i in range(10)]
    frames.append(pkt(1000.0, C, S, 50000, 104, "S", 1))
    flows, _, counters = run(frames, FlowConfig(tcp_idle=60, max_flows=5, sweep_every=1))
    assert len(flows) == 11
    assert counters.get("flows.evicted") == 5
    assert sum(f.close_reason == "timeout" for f in flows) == 5
    assert sum(f.close_reason == "evicted" for f in flows) == 5


def test_udp_flow():
    f1 = Ether() / IP(src=C, dst=S) / UDP(sport=5353, dport=53) / Raw(b"q" * 30)
    f2 = Ether() / IP(src=S, dst=C) / UDP(sport=53, dport=5353) / Raw(b"r" * 60)
    (flow,), _, _ = run([(0.0, bytes(f1)), (0.1, bytes(f2))])
    assert flow.proto == "udp" and flow.payload_bytes == (30, 60) and flow.tcp_state is None


def test_hl7_recognised_by_content_on_any_port():
    msg = b"\x0bMSH|^~\\&|RIS|H|ENG|H|20260101||ADT^A08|42|P|2.5\rPID|1\r\x1c\r"
    frames = handshake(dport=8080) + [pkt(0.01, C, S, 40000, 8080, "PA", 101, 501, msg)]
    flows, events, counters = run(frames)
    assert flows[0].app == "hl7"
    assert counters.get("flows.app.hl7") == 1
    assert any(e.log_name == "hl7" for e in events)


def test_unknown_payload_is_not_an_app():
    frames = handshake(dport=443) + [pkt(0.01, C, S, 40000, 443, "PA", 101, 501, b"\x16\x03\x01" + b"\x00" * 80)]
    (flow,), _, _ = run(frames)
    assert flow.app is None


def test_mid_stream_first_packet_from_service_port_is_the_server():
    frames = [pkt(0.0, S, C, 104, 40000, "A", 500, 101), pkt(0.001, C, S, 40000, 104, "A", 101, 501)]
    (flow,), _, _ = run(frames)
    assert (flow.client.ip, flow.client.port, flow.server.port) == (C, 40000, 104)
    assert flow.client.mac == CM and flow.packets == (1, 1)


def test_mid_stream_between_ephemeral_ports_keeps_first_sender_as_client():
    frames = [pkt(0.0, S, C, 50000, 40000, "A", 500, 101)]
    (flow,), _, _ = run(frames)
    assert flow.client.ip == S and flow.client.port == 50000


def test_mid_stream_random_payload_is_not_recognised():
    import random
    rnd = random.Random(3)
    frames = [pkt(i * 0.001, C, S, 40000, 445, "PA", 101 + i * 1400, 501, bytes(rnd.randrange(256) for _ in range(1400)))
              for i in range(40)]
    (flow,), _, _ = run(frames)
    assert flow.app is None


def test_fuzzed_associate_rq_is_recognised_by_the_abort_answer():
    # A 22-byte "A-ASSOCIATE-RQ" far below the fixed part, answered by the SCP's A-ABORT.
    junk = b"\x01\x00\x00\x00\x00\x10" + b"\x00" * 16
    abort = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"
    frames = handshake() + [pkt(0.01, C, S, 40000, 104, "PA", 101, 501, junk),
                            pkt(0.02, S, C, 104, 40000, "PA", 501, 123, abort)]
    flows, events, counters = run(frames)
    assert flows[0].app == "dicom"
    (assoc,) = [e for e in events if e.log_name == "dicom"]
    assert assoc.result == "aborted" and assoc.pdu_counts == {"A-ASSOCIATE-RQ": 1, "A-ABORT": 1}
    assert counters.get("weird.dicom.bad_pdu_length") == 1
