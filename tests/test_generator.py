"""Generator unit tests: frame checksums against scapy, TCP framing, site model, determinism."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from training.gen.render import Host, TcpConversation, udp_frame
from training.gen.site import load_site
from training.generate import DayJob, generate_day


def _hosts():
    return Host.of("10.20.1.11", "00:1b:a8:10:01:11", 128), Host.of("10.20.0.10", "52:54:00:20:00:10", 64)


def test_tcp_frames_have_scapy_valid_checksums_and_sequence():
    a, b = _hosts()
    conv = TcpConversation(a, 50123, b, 104, seed=5)
    rnd = random.Random(1)
    items = [(0, 0, rnd.randbytes(7)), (1, 300, rnd.randbytes(5000)), (0, 100, rnd.randbytes(3001))]
    pkts = list(conv.frames(1_000_000, items))
    ts = [p[0] for p in pkts]
    assert ts == sorted(ts)
    stream = {0: b"", 1: b""}
    for _, _, fr in pkts:
        e = Ether(fr)
        ip, tcp = e[IP], e[TCP]
        ip_sum, tcp_sum = ip.chksum, tcp.chksum
        del ip.chksum, tcp.chksum
        again = Ether(bytes(e))
        assert again[IP].chksum == ip_sum and again[TCP].chksum == tcp_sum
        assert len(bytes(tcp.payload)) <= 1460
        stream[0 if tcp.sport == 50123 else 1] += bytes(tcp.payload)
    assert stream[0] == items[0][2] + items[2][2]
    assert stream[1] == items[1][2]
    flags = [str(Ether(p[2])[TCP].flags) for p in pkts]
    assert flags[:3] == ["S", "SA", "A"] and flags[-3:] == ["FA", "FA", "A"]


def test_udp_frame_checksum():
    a, b = _hosts()
    fr = udp_frame(a, b, 5353, 53, b"abcde", 7)
    e = Ether(fr)
    s = e[UDP].chksum
    del e[IP].chksum, e[UDP].chksum
    assert Ether(bytes(e))[UDP].chksum == s


def test_default_site_model():
    site = load_site()
    roles = {d.role for d in site.devices}
    assert {"ct", "mr", "us", "cr", "dx", "mg", "pacs", "archive", "mwl", "engine", "ris", "workstation", "pc"} <= roles
    assert len({site.fp(d).uid for d in site.devices if d.ae}) >= 5
    assert len({d.ip for d in site.devices}) == len(site.devices)


def test_same_seed_same_bytes(tmp_path: Path):
    job = DayJob("tiny", "attack", 0, 42, 0.001, 0.03, ("ae_title_bruteforce", "hl7_nak_storm"), 0.05)
    digests = []
    for k in range(2):
        out = tmp_path / str(k)
        rec = generate_day(job, out)
        assert rec["packets"] > 1000 and rec["dimse"]["C-STORE-RQ"] > 0
        digests.append(hashlib.sha256((out / "tiny.pcap").read_bytes()).hexdigest())
        assert (out / "tiny.labels.json").read_text().count('"type"') == 2
    assert digests[0] == digests[1]
