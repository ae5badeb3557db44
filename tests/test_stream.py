"""TcpStream: in-order delivery under retransmission, reordering, overlap, gaps and snaplen cuts."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.flows.stream import SEQ_MOD, TcpStream


class Sink:
    def __init__(self):
        self.data = bytearray()
        self.gaps = []

    def deliver(self, ts, chunk):
        self.data += chunk

    def gap(self, ts, n):
        self.gaps.append(n)
        self.data += b"\x00" * n  # placeholder so positions can be checked


def make(isn=1000, **kw):
    sink = Sink()
    stream = TcpStream(sink.deliver, sink.gap, **kw)
    stream.syn(isn)
    return sink, stream


PAYLOAD = bytes(random.Random(7).randrange(256) for _ in range(20000))


def segments(data, isn, size):
    return [((isn + 1 + i) % SEQ_MOD, data[i:i + size]) for i in range(0, len(data), size)]


def test_in_order():
    sink, s = make()
    for seq, chunk in segments(PAYLOAD, 1000, 1448):
        s.segment(0.0, seq, memoryview(chunk))
    assert bytes(sink.data) == PAYLOAD and not sink.gaps


def test_sequence_wraparound():
    isn = SEQ_MOD - 3000
    sink, s = make(isn)
    for seq, chunk in segments(PAYLOAD, isn, 1000):
        s.segment(0.0, seq, chunk)
    assert bytes(sink.data) == PAYLOAD


def test_retransmission_and_overlap_deliver_once():
    sink, s = make()
    segs = segments(PAYLOAD, 1000, 1000)
    s.segment(0.0, *segs[0])
    s.segment(0.0, *segs[0])  # pure retransmission
    seq1, c1 = segs[1]
    # overlapping resend: 500 old bytes + 1500 new
    s.segment(0.0, (seq1 - 500) % SEQ_MOD, PAYLOAD[500:2500])
    for seq, chunk in segs[2:]:
        s.segment(0.0, seq, chunk)
    assert bytes(sink.data) == PAYLOAD
    assert s.retransmitted >= 1


@settings(max_examples=60, deadline=None)
@given(st.integers(200, 3000), st.integers(0, 2**32 - 1), st.randoms(use_true_random=False),
       st.integers(0, 8))
def test_bounded_reordering_and_duplication_is_transparent(size, isn, rnd, window):
    sink, s = make(isn)
    segs = segments(PAYLOAD, isn, size)
    # shuffle within a window of `window` segments and duplicate some
    order = []
    for i in range(0, len(segs), window + 1):
        block = segs[i:i + window + 1]
        rnd.shuffle(block)
        order.extend(block)
        if rnd.random() < 0.3:
            order.append(rnd.choice(block))
    for seq, chunk in order:
        s.segment(0.0, seq, chunk)
    s.flush(0.0)
    assert bytes(sink.data) == PAYLOAD
    assert not sink.gaps


def test_lost_segment_becomes_gap_when_hold_window_overflows():
    sink, s = make(max_hold_segments=4)
    segs = segments(PAYLOAD, 1000, 1000)
    for i, (seq, chunk) in enumerate(segs):
        if i != 2:
            s.segment(0.0, seq, chunk)
    s.flush(0.0)
    assert sink.gaps == [1000]
    assert len(sink.data) == len(PAYLOAD)
    assert bytes(sink.data[3000:]) == PAYLOAD[3000:]
    assert bytes(sink.data[:2000]) == PAYLOAD[:2000]


def test_snaplen_cut_reports_missing_bytes_as_gap():
    sink, s = make()
    s.segment(0.0, 1001, PAYLOAD[:96], missing=1352)
    s.segment(0.0, 1001 + 1448, PAYLOAD[1448:2000])
    assert sink.gaps == [1352]
    assert bytes(sink.data[1448:]) == PAYLOAD[1448:2000]


def test_mid_stream_start_sets_cursor():
    sink = Sink()
    s = TcpStream(sink.deliver, sink.gap)
    s.segment(0.0, 555, b"abc")
    s.segment(0.0, 558, b"def")
    assert bytes(sink.data) == b"abcdef"
