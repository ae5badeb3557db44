"""Compiled vs reference on random and mutated input: never a crash, the same answers.

The decoder is compared tuple by tuple (payload bytes included) and reason by reason on frames
that hypothesis builds from valid headers and then cuts and corrupts; the pcap record scanner on
random buffers; and the whole flow side on random packet sequences written as captures.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor import _fast
from sensor._fast import fallback
from tests.test_fastpath import run_both, write_pcap

C = _fast.impl  # the compiled module when built (test_fastpath checks that it is)

LINKTYPES = [1, 101, 113, 276, 228, 229, 0, 108, 12, 14]


def _ipv4(proto: int, payload: bytes, frag: int = 0, ihl: int = 5, total_delta: int = 0) -> bytes:
    hdr = struct.pack("!BBHHHBBHII", 0x40 | ihl, 0, 20 + 4 * (ihl - 5) + len(payload) + total_delta, 1, frag,
                      64, proto, 0, 0x0A000001, 0x0A000002)
    return hdr + b"\x00" * (4 * (ihl - 5)) + payload


def _ipv6(nxt: int, payload: bytes, exts: bytes = b"") -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(exts) + len(payload), nxt, 64, b"\x20" * 16,
                       b"\x21" * 16) + exts + payload


def _tcp(seq: int, flags: int, data: bytes, doff: int = 5) -> bytes:
    return struct.pack("!HHIIBBHHH", 40000, 104, seq, 7, doff << 4, flags, 65535, 0, 0) + b"\x00" * (
        4 * (doff - 5)) + data


def _udp(data: bytes) -> bytes:
    return struct.pack("!HHHH", 53, 5353, 8 + len(data), 0) + data


@st.composite
def frames(draw):
    """A plausible frame for a random link type, then maybe cut and corrupted."""
    lt = draw(st.sampled_from(LINKTYPES))
    data = draw(st.binary(max_size=64))
    l4 = draw(st.sampled_from(["tcp", "udp", "icmp", "junk"]))
    ver = draw(st.sampled_from([4, 6]))
    if l4 == "tcp":
        seg = _tcp(draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 255)), data, draw(st.integers(0, 15)))
        proto = 6
    elif l4 == "udp":
        seg, proto = _udp(data), 17
    elif l4 == "icmp":
        seg, proto = data, 1 if ver == 4 else 58
    else:
        seg, proto = data, draw(st.integers(0, 255))
    if ver == 4:
        ip = _ipv4(proto, seg, draw(st.sampled_from([0, 0, 0x2000, 0x0010, 0x4000])),
                   draw(st.sampled_from([5, 5, 6, 4, 15])), draw(st.sampled_from([0, 0, -3, 5, 100])))
    else:
        kind = draw(st.sampled_from(["none", "hop", "frag", "ah", "many"]))
        exts = b""
        nxt = proto
        if kind == "hop":
            exts, nxt = bytes([proto, 0]) + b"\x00" * 6, 0
        elif kind == "frag":
            exts, nxt = bytes([proto, 0]) + struct.pack("!H", draw(st.sampled_from([0, 1, 8, 0x10]))) + b"\0" * 4, 44
        elif kind == "ah":
            exts, nxt = bytes([proto, 1]) + b"\x00" * 10, 51
        elif kind == "many":
            exts, nxt = (bytes([60, 0]) + b"\x00" * 6) * 9, 60
        ip = _ipv6(nxt, seg, exts)
    if lt == 1:
        tags = draw(st.sampled_from([b"", b"\x81\x00\x00\x05", b"\x88\xa8\x00\x07\x81\x00\x00\x05"]))
        etype = draw(st.sampled_from([b"\x08\x00" if ver == 4 else b"\x86\xdd", b"\x08\x06"]))
        frame = b"\x02" * 6 + b"\x04" * 6 + tags + etype + ip  # tags: (TPID, TCI) pairs
    elif lt == 113:
        frame = b"\x00" * 14 + (b"\x08\x00" if ver == 4 else b"\x86\xdd") + ip
    elif lt == 276:
        frame = (b"\x08\x00" if ver == 4 else b"\x86\xdd") + b"\x00" * 18 + ip
    elif lt in (0, 108):
        frame = b"\x02\x00\x00\x00" + ip
    else:
        frame = ip
    cut = draw(st.one_of(st.none(), st.integers(0, len(frame))))
    if cut is not None:
        frame = frame[:cut]
    flips = draw(st.lists(st.tuples(st.integers(0, 90), st.integers(0, 255)), max_size=3))
    b = bytearray(frame)
    for pos, val in flips:
        if pos < len(b):
            b[pos] = val
    return lt, bytes(b)


def _plain(packets):
    return [tuple(bytes(x) if isinstance(x, memoryview) else x for x in p) for p in packets]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames(), min_size=1, max_size=12))
def test_decode_compiled_equals_reference(items):
    lt = items[0][0]
    fr = [f for _, f in items]
    ts = [1.5 + i for i in range(len(fr))]
    bad_c: dict = {}
    bad_p: dict = {}
    out_c = C.decode(lt, ts, fr, bad_c)
    out_p = fallback.decode(lt, ts, fr, bad_p)
    assert _plain(out_c) == _plain(out_p)
    assert bad_c == bad_p
    assert len(out_c) + sum(bad_c.values()) == len(fr)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 64), st.booleans(), st.integers(0, 300), st.integers(1, 9))
def test_scan_pcap_compiled_equals_reference(buf, pos, swapped, limit, max_records):
    pos = min(pos, len(buf))
    assert C.scan_pcap(buf, pos, swapped, limit, max_records) == fallback.scan_pcap(buf, pos, swapped, limit,
                                                                                     max_records)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=40),
                          st.integers(0, 2**32 - 1)), max_size=8), st.booleans(),
       st.sampled_from([1e6, 1e9]))
def test_parse_pcap_compiled_equals_reference(records, swapped, units):
    order = ">" if swapped == (struct.pack("=I", 1)[0] == 1) else "<"
    buf = b"".join(struct.pack(order + "IIII", s, f, len(d), w) + d for s, f, d, w in records)
    end, n, nbytes, status = C.scan_pcap(buf, 0, swapped, 1 << 20, 100)
    assert (n, status, end) == (len(records), 1, len(buf))
    a = C.parse_pcap(buf, 0, n, swapped, units)
    b = fallback.parse_pcap(buf, 0, n, swapped, units)
    assert (a[0], [bytes(x) for x in a[1]], a[2]) == (b[0], [bytes(x) for x in b[1]], b[2])
    assert C.pcap_ts(buf, 0, n, swapped, units) == a[0]
    with pytest.raises(ValueError):
        C.parse_pcap(buf, 0, n + 1, swapped, units)


# -- the flow side on random conversations ---------------------------------------------------------

CLIENT, SERVER = 0x0A000001, 0x0A000002


def _eth_tcp(src, sport, dst, dport, seq, ack, flags, data, cut=None):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, 0x50, flags, 65535, 0, 0) + data
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, src, dst) + tcp
    frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip
    return frame if cut is None else frame[:cut]


@st.composite
def conversations(draw):
    """A few TCP connections with DICOM-looking or random payload, SYN/FIN/RST, gaps and overlaps."""
    from tests.test_fastpath import DICOM_FIXTURE, read_pcap

    _, recs = read_pcap(DICOM_FIXTURE)
    payloads = [r[2][54:] for r in recs if len(r[2]) > 54][:40] or [b"x"]
    out = []
    t = 1_700_000_000
    seqs = {}
    for _ in range(draw(st.integers(1, 60))):
        conn = draw(st.integers(0, 3))
        sport = 40000 + conn
        to_server = draw(st.booleans())
        key = (conn, to_server)
        seq = seqs.setdefault(key, draw(st.integers(0, 2**32 - 1)))
        kind = draw(st.sampled_from(["data", "data", "data", "ack", "syn", "synack", "fin", "rst", "jump", "old"]))
        flags = {"ack": 0x10, "syn": 0x02, "synack": 0x12, "fin": 0x11, "rst": 0x04}.get(kind, 0x18)
        data = b""
        if kind in ("data", "jump", "old"):
            blob = draw(st.sampled_from(payloads))
            a = draw(st.integers(0, len(blob)))
            data = blob[a:a + draw(st.integers(1, 1460))] or b"\x04"
        if kind == "jump":
            seq += draw(st.integers(1, 5000))
        elif kind == "old":
            seq -= draw(st.integers(1, 3000))
        src, dst, sp, dp = (CLIENT, SERVER, sport, 104) if to_server else (SERVER, CLIENT, 104, sport)
        cut = draw(st.one_of(st.none(), st.integers(40, 200)))
        frame = _eth_tcp(src, sp, dst, dp, seq, 1, flags, data, cut)
        seqs[key] = (seq + len(data) + (1 if flags & 0x03 else 0)) & 0xFFFFFFFF
        t += draw(st.sampled_from([0, 0, 1, 7]))
        out.append((t, draw(st.integers(0, 999_999)), frame, len(data) + 54))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(conversations(), st.integers(1, 9))
def test_random_conversations_fast_equals_fallback(tmp_path, records, batch_size):
    from sensor.flows.table import FlowConfig

    path = write_pcap(tmp_path / "conv.pcap", 1, records)
    for flows in (FlowConfig(), FlowConfig(max_flows=2, sweep_every=1.0, tcp_idle=3.0, closed_linger=1.0)):
        fast, slow = run_both([path], flows=flows, batch_size=batch_size)
        assert fast[:3] == slow[:3]
