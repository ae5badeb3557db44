"""Capture readers on files written by scapy and by hand (struct), both byte orders, damaged files."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import PcapNgWriter, wrpcap

from sensor.capture import CaptureError, CaptureReader, PacketBatch, open_capture, open_captures

T0 = 1_700_000_000


# -- hand-written files ---------------------------------------------------------------------------

def pcap_bytes(records, order="<", nano=False, linktype=1, snaplen=65535) -> bytes:
    """records: (sec, frac, data, wirelen)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for sec, frac, data, wire in records:
        out.append(struct.pack(order + "IIII", sec, frac, len(data), wire) + data)
    return b"".join(out)


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def block(order, btype, body) -> bytes:
    body = _pad(body)
    n = len(body) + 12
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def opt(order, code, value) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + _pad(value)


def shb(order) -> bytes:
    return block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(order, linktype, snaplen=0, tsresol=None, tsoffset=None) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += opt(order, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += opt(order, 14, struct.pack(order + "q", tsoffset))
    if opts:
        opts += opt(order, 0, b"")
    return block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + opts)


def epb(order, ifid, ticks, data, wire=None) -> bytes:
    return block(order, 6, struct.pack(order + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF, len(data),
                                       wire or len(data)) + data)


def spb(order, data, wire=None) -> bytes:
    return block(order, 3, struct.pack(order + "I", wire or len(data)) + data)


def opb(order, ifid, ticks, data) -> bytes:
    return block(order, 2, struct.pack(order + "HHIIII", ifid, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(data),
                                       len(data)) + data)


def frame(i: int, size: int = 60) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.0.0.1", dst="10.0.0.2")
                 / UDP(sport=1000 + i, dport=2000) / (b"x" * max(0, size - 42)))


def read_all(path, batch_size=4096, **kw):
    r = CaptureReader(path, batch_size, **kw) if kw else open_capture(path, batch_size)
    batches = list(r)
    flat = [(b.linktype, t, bytes(f), w) for b in batches for t, f, w in zip(b.ts, b.frames, b.wirelen)]
    return r, batches, flat


# -- classic pcap ---------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_both_orders_and_resolutions(tmp_path, order, nano):
    recs = [(T0 + i, (123456789 if nano else 123456) + i, frame(i), 60 + i) for i in range(5)]
    p = tmp_path / "x.pcap"
    p.write_bytes(pcap_bytes(recs, order, nano))
    r, batches, flat = read_all(p)
    div = 1e9 if nano else 1e6
    assert [(t, f, w) for _, t, f, w in flat] == [(s + fr / div, d, w) for s, fr, d, w in recs]
    assert all(isinstance(b, PacketBatch) and b.linktype == 1 and b.source == str(p) for b in batches)
    assert (r.format, r.records, r.bytes, r.truncated, r.warnings) == ("pcap", 5, 300, 0, [])


def test_scapy_wrpcap(tmp_path):
    pkts = [Ether() / IP(dst="127.0.0.1") / TCP(dport=104 + i) for i in range(20)]
    for i, p in enumerate(pkts):
        p.time = T0 + i * 0.25
    path = tmp_path / "s.pcap"
    wrpcap(str(path), pkts)
    _, _, flat = read_all(path, batch_size=7)
    assert [f for _, _, f, _ in flat] == [bytes(p) for p in pkts]
    assert [t for _, t, _, _ in flat] == [T0 + i * 0.25 for i in range(20)]


def test_batches_respect_batch_size(tmp_path):
    p = tmp_path / "b.pcap"
    p.write_bytes(pcap_bytes([(T0, i, frame(i), 60) for i in range(10)]))
    _, batches, _ = read_all(p, batch_size=4)
    assert [len(b) for b in batches] == [4, 4, 2]


@settings(max_examples=40, deadline=None)
@given(st.integers(16, 300), st.integers(1, 50), st.lists(st.integers(0, 400), min_size=1, max_size=60))
def test_block_boundaries_do_not_matter(read_size, batch_size, sizes):
    # Tiny read blocks force records to straddle every possible block boundary.
    data = pcap_bytes([(T0 + i, i, bytes([i % 256]) * n, n + 4) for i, n in enumerate(sizes)])
    path = Path(f"/tmp/radsensor-test-boundaries-{read_size}-{batch_size}.pcap")
    path.write_bytes(data)
    try:
        _, _, small = read_all(path, batch_size, read_size=read_size)
        _, _, big = read_all(path)
        assert small == big and len(big) == len(sizes)
    finally:
        path.unlink()


def test_truncated_in_middle_of_record(tmp_path):
    data = pcap_bytes([(T0 + i, 0, frame(i), 60) for i in range(6)])
    p = tmp_path / "t.pcap"
    p.write_bytes(data[:-25])
    r, _, flat = read_all(p)
    assert len(flat) == 5
    assert r.truncated == 1 and r.warnings == [f"{p}: truncated: file ends inside a record (35 of 60 bytes)"]


def test_truncated_inside_record_header(tmp_path):
    data = pcap_bytes([(T0, 0, frame(0), 60)]) + b"\x01\x02\x03"
    p = tmp_path / "t.pcap"
    p.write_bytes(data)
    r, _, flat = read_all(p)
    assert len(flat) == 1 and r.truncated == 1 and "record header (3 of 16" in r.warnings[0]


def test_huge_caplen_is_corrupt_not_an_allocation(tmp_path):
    data = pcap_bytes([(T0, 0, frame(0), 60)]) + struct.pack("<IIII", T0, 0, 0xFFFFFFF0, 60) + b"z" * 100
    p = tmp_path / "c.pcap"
    p.write_bytes(data)
    r, _, flat = read_all(p)
    assert len(flat) == 1 and r.truncated == 1
    assert "caplen 4294967280 > 262144" in r.warnings[0]


def test_unsupported_linktype_is_one_clear_line(tmp_path):
    p = tmp_path / "capture.pcap"
    p.write_bytes(pcap_bytes([(T0, 0, b"\x00" * 30, 30)], linktype=105))
    with pytest.raises(CaptureError) as e:
        open_capture(p)
    msg = str(e.value)
    assert msg == (f"{p}: link type 105 (IEEE 802.11) not supported; "
                   "supported: Ethernet, Linux cooked v1/v2, raw IP, BSD/OpenBSD loopback")
    assert "\n" not in msg


@pytest.mark.parametrize("lt,expect", [(1, 1), (113, 113), (276, 276), (101, 101), (228, 228), (229, 229),
                                       (12, 101), (14, 101)])
def test_supported_linktypes(tmp_path, lt, expect):
    p = tmp_path / "l.pcap"
    p.write_bytes(pcap_bytes([(T0, 0, b"\x45" + b"\0" * 19, 20)], linktype=lt))
    _, batches, _ = read_all(p)
    assert [b.linktype for b in batches] == [expect]


@pytest.mark.parametrize("content", [b"", b"hello world, not a capture\n", b"\x1f\x8b\x08\x00garbage",
                                     gzip.compress(b"plain text inside gzip"), b"\xd4\xc3\xb2\xa1\x02\x00"])
def test_not_a_capture(tmp_path, content):
    p = tmp_path / "notes.pcap"
    p.write_bytes(content)
    with pytest.raises(CaptureError) as e:
        open_capture(p)
    assert str(e.value).startswith(str(p) + ": ") and "\n" not in str(e.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CaptureError, match="cannot open"):
        open_capture(tmp_path / "nope.pcap")
    with pytest.raises(CaptureError, match="is a directory"):
        open_capture(tmp_path)


# -- gzip -----------------------------------------------------------------------------------------

def test_gzip_detected_by_magic_not_extension(tmp_path):
    recs = [(T0 + i, i, frame(i), 60) for i in range(50)]
    p = tmp_path / "capture.bin"  # no .gz
    p.write_bytes(gzip.compress(pcap_bytes(recs, ">", True)))
    r, _, flat = read_all(p, read_size=100)
    assert r.compressed and len(flat) == 50 and flat[3][1] == T0 + 3 + 3 / 1e9
    ng = tmp_path / "x.pcapng.gz"
    ng.write_bytes(gzip.compress(shb("<") + idb("<", 1) + epb("<", 0, T0 * 10**6 + 5, frame(1))))
    r, _, flat = read_all(ng)
    assert r.format == "pcapng" and r.compressed and flat == [(1, T0 + 5e-6, frame(1), 60)]


def test_truncated_gzip_yields_what_it_can(tmp_path):
    base = frame(0, 200)  # built once: scapy is slow, and content does not matter here
    recs = [(T0 + i, i, base[:-2] + i.to_bytes(2, "big"), 200) for i in range(3000)]
    z = gzip.compress(pcap_bytes(recs), compresslevel=1)
    p = tmp_path / "t.pcap.gz"
    p.write_bytes(z[: len(z) // 2])
    r, _, flat = read_all(p, read_size=4096)
    assert 0 < len(flat) < 3000
    assert [f for _, _, f, _ in flat] == [d for _, _, d, _ in recs[: len(flat)]]
    assert r.truncated == 1 and any("gzip stream ends early" in w for w in r.warnings)


# -- pcapng ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_interfaces_resolutions_spb_opb_and_skipped_blocks(tmp_path, order):
    f = [frame(i, 60 + i) for i in range(8)]
    data = b"".join([
        shb(order),
        idb(order, 1, snaplen=64),  # if0: Ethernet, µs, snaplen 64 for SPBs
        idb(order, 101, tsresol=9),  # if1: raw IP, ns
        idb(order, 113, tsresol=0x80 | 20, tsoffset=100),  # if2: SLL, 2^-20 s, +100 s
        block(order, 4, b"\x01\x00\x04\x00" + b"\x7f\0\0\x01" + b"\0\0\0\0"),  # NRB
        epb(order, 0, T0 * 10**6 + 1, f[0]),
        epb(order, 0, T0 * 10**6 + 2, f[1]),
        spb(order, f[2][:64], wire=len(f[2])),  # SPB: snaplen of if0, time of the previous packet
        block(order, 5, struct.pack(order + "III", 0, 0, 0)),  # ISB
        block(order, 0x00000BAD, b"\x00\x00\x00\x00custom"),  # custom block
        epb(order, 1, T0 * 10**9 + 3, f[3]),
        epb(order, 1, T0 * 10**9 + 4, f[4]),
        epb(order, 2, (T0 << 20) + (1 << 19), f[5]),
        opb(order, 0, T0 * 10**6 + 7, f[6]),
        epb(order, 0, T0 * 10**6 + 8, f[7][:30], wire=len(f[7])),
    ])
    p = tmp_path / "multi.pcapng"
    p.write_bytes(data)
    r, batches, flat = read_all(p)
    assert [(b.linktype, len(b)) for b in batches] == [(1, 3), (101, 2), (113, 1), (1, 2)]
    assert [t for _, t, _, _ in flat] == [T0 + 1e-6, T0 + 2e-6, T0 + 2e-6, T0 + 3e-9, T0 + 4e-9, T0 + 100.5,
                                          T0 + 7e-6, T0 + 8e-6]
    assert [fr for _, _, fr, _ in flat] == [f[0], f[1], f[2][:64], f[3], f[4], f[5], f[6], f[7][:30]]
    assert [w for _, _, _, w in flat] == [len(x) for x in f]
    assert (r.format, r.linktype, r.records, r.truncated, r.warnings) == ("pcapng", 1, 8, 0, [])


def test_pcapng_sections_can_change_byte_order(tmp_path):
    data = shb("<") + idb("<", 1) + epb("<", 0, 1, frame(0)) + shb(">") + idb(">", 1) + epb(">", 0, 2, frame(1))
    p = tmp_path / "two.pcapng"
    p.write_bytes(data)
    _, _, flat = read_all(p)
    assert [(t, f) for _, t, f, _ in flat] == [(1e-6, frame(0)), (2e-6, frame(1))]


def test_pcapng_unsupported_interfaces(tmp_path):
    p = tmp_path / "wifi.pcapng"
    p.write_bytes(shb("<") + idb("<", 105) + epb("<", 0, 1, b"\0" * 30))
    with pytest.raises(CaptureError, match=r"wifi.pcapng: link type 105 \(IEEE 802.11\) not supported"):
        open_capture(p)
    # A mix: the Ethernet interface is read, the 802.11 one skipped with warnings.
    p.write_bytes(shb("<") + idb("<", 1) + idb("<", 105) + epb("<", 1, 1, b"\0" * 30) + epb("<", 0, 2, frame(0)))
    r, _, flat = read_all(p)
    assert [f for _, _, f, _ in flat] == [frame(0)]
    assert r.warnings == [f"{p}: interface 1: link type 105 (IEEE 802.11) not supported; its packets are skipped",
                          f"{p}: 1 packets on interfaces with unsupported link types skipped"]


def test_scapy_pcapng_writer(tmp_path):
    path = tmp_path / "s.pcapng"
    pkts = [Ether() / IP(dst="127.0.0.1") / TCP(sport=5000 + i, dport=2575) for i in range(10)]
    for i, p in enumerate(pkts):
        p.time = T0 + i / 8
    w = PcapNgWriter(str(path))
    for p in pkts:
        w.write(p)
    w.close()
    r, _, flat = read_all(path)
    assert r.format == "pcapng"
    assert [f for _, _, f, _ in flat] == [bytes(p) for p in pkts]
    assert [t for _, t, _, _ in flat] == pytest.approx([T0 + i / 8 for i in range(10)], abs=1e-6)


@pytest.mark.parametrize("damage", ["cut", "length", "trailer", "iface", "huge"])
def test_pcapng_damage_keeps_what_came_before(tmp_path, damage):
    good = shb("<") + idb("<", 1) + epb("<", 0, 1, frame(0)) + epb("<", 0, 2, frame(1))
    bad = epb("<", 0, 3, frame(2))
    if damage == "cut":
        bad = bad[:-10]
    elif damage == "length":
        bad = bad[:4] + struct.pack("<I", 13) + bad[8:]
    elif damage == "trailer":
        bad = bad[:-4] + b"\xff\xff\xff\xff"
    elif damage == "iface":
        bad = epb("<", 7, 3, frame(2))
    else:
        bad = bad[:4] + struct.pack("<I", 0xFFFFFFF0) + bad[8:]
    p = tmp_path / "d.pcapng"
    p.write_bytes(good + bad + epb("<", 0, 4, frame(3)))
    r, _, flat = read_all(p)
    assert [f for _, _, f, _ in flat] == [frame(0), frame(1)]
    assert r.truncated == 1 and len(r.warnings) == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(["pcap", "pcapng", "pcapng-be"]))
def test_random_bytes_after_a_valid_header_never_raise(tail, kind):
    head = {"pcap": pcap_bytes([]), "pcapng": shb("<") + idb("<", 1), "pcapng-be": shb(">") + idb(">", 1)}[kind]
    buf = io.BytesIO()
    buf.write(head + tail)
    path = Path(f"/tmp/radsensor-test-random-{kind}.cap")
    path.write_bytes(buf.getvalue())
    try:
        r = CaptureReader(path, 16, read_size=64)
        n = sum(len(b) for b in r)
        assert n == r.records
        assert all(len(w.splitlines()) == 1 for w in r.warnings)
    finally:
        path.unlink()


# -- several files --------------------------------------------------------------------------------

def test_open_captures_orders_files_by_first_packet(tmp_path):
    d = tmp_path / "caps"
    (d / "sub").mkdir(parents=True)
    (d / "a_late.pcap").write_bytes(pcap_bytes([(T0 + 100, 0, frame(1), 60)]))
    (d / "sub" / "b_early.pcapng").write_bytes(shb("<") + idb("<", 1) + epb("<", 0, (T0 + 10) * 10**6, frame(0)))
    (d / "labels.json").write_text("{}")
    (d / "z_mid.gz").write_bytes(gzip.compress(pcap_bytes([(T0 + 50, 0, frame(2), 60), (T0 + 120, 0, frame(3), 60)])))
    extra = tmp_path / "empty.pcap"
    extra.write_bytes(pcap_bytes([]))
    src = open_captures([d, extra], batch_size=1)
    got = [(b.ts[0], bytes(b.frames[0])) for b in src]
    assert got == [(T0 + 10, frame(0)), (T0 + 50, frame(2)), (T0 + 120, frame(3)), (T0 + 100, frame(1))]
    assert src.files == [str(d / "sub" / "b_early.pcapng"), str(d / "z_mid.gz"), str(d / "a_late.pcap"), str(extra)]
    assert (src.records, src.bytes, src.truncated, src.linktype) == (4, 240, 0, 1)
    assert src.warnings[0] == f"{d}: 1 non-capture files skipped"
    assert "files overlap in time" in src.warnings[1] and len(src.warnings) == 2


def test_open_captures_errors_before_any_packet(tmp_path):
    good = tmp_path / "good.pcap"
    good.write_bytes(pcap_bytes([(T0, 0, frame(0), 60)]))
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture")
    with pytest.raises(CaptureError, match="bad.pcap"):
        open_captures([good, bad])
    with pytest.raises(CaptureError, match="no capture files"):
        open_captures([tmp_path / "nonexistent-dir-xyz"]) if False else open_captures([])
    with pytest.raises(CaptureError, match="no such file"):
        open_captures([tmp_path / "missing.pcap"])


def test_reader_streams_and_closes(tmp_path):
    # 30 MB file, 1 MiB reads: after the first batch only the first block has been read.
    p = tmp_path / "big.pcap"
    one = struct.pack("<IIII", T0, 0, 1000, 1000) + b"\xab" * 1000
    p.write_bytes(pcap_bytes([]) + one * 30_000)
    r = CaptureReader(p, batch_size=10, read_size=1 << 20)
    first = next(r)
    assert len(first) == 10 and r._stream._raw.tell() <= (1 << 20) + 64
    assert sum(len(b) for b in r) == 30_000 - 10 and r.records == 30_000
    assert r._stream._raw.closed
    unused = CaptureReader(p)
    unused.close()
    assert unused._stream._raw.closed
