"""L2–L4 decode against frames built by scapy (an independent encoder)."""

import socket

import pytest
from scapy.all import (
    ICMP,
    IP,
    TCP,
    UDP,
    Dot1Q,
    Ether,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    Raw,
)
from scapy.layers.l2 import CookedLinux

from sensor.decode import l2l4
from sensor.decode.l2l4 import (
    P_DPORT,
    P_DST,
    P_FLAGS,
    P_IPLEN,
    P_MISSING,
    P_PAYLOAD,
    P_PROTO,
    P_SEQ,
    P_SPORT,
    P_SRC,
    P_VLAN,
    decode_batch,
)
from sensor.events import Counters


def ip4(s):
    return int.from_bytes(socket.inet_aton(s), "big")


def dec(linktype, *frames):
    c = Counters()
    out = decode_batch(linktype, [float(i) for i in range(len(frames))], [memoryview(bytes(f)) for f in frames], c)
    return out, c


def test_ethernet_ipv4_tcp_fields():
    f = Ether(src="00:11:22:33:44:55", dst="66:77:88:99:aa:bb") / IP(src="10.0.0.1", dst="10.0.0.2") / \
        TCP(sport=40000, dport=104, seq=123456, flags="PA") / Raw(b"\x01\x00hello")
    (p,), c = dec(1, f)
    assert p[P_PROTO] == 6 and p[P_SRC] == ip4("10.0.0.1") and p[P_DST] == ip4("10.0.0.2")
    assert (p[P_SPORT], p[P_DPORT], p[P_SEQ]) == (40000, 104, 123456)
    assert p[P_FLAGS] == 0x18
    assert bytes(p[P_PAYLOAD]) == b"\x01\x00hello"
    assert p[P_IPLEN] == len(f[IP])


def test_ethernet_padding_is_not_payload():
    f = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="A")
    raw = bytes(f) + b"\x00" * 6  # minimum frame padding
    (p,), _ = dec(1, raw)
    assert p[P_PAYLOAD] is None


def test_vlan_and_qinq():
    inner = IP(src="10.1.1.1", dst="10.1.1.2") / UDP(sport=53, dport=5353) / Raw(b"x")
    (p1, p2), _ = dec(1, Ether() / Dot1Q(vlan=20) / inner,
                      Ether(type=0x88A8) / Dot1Q(vlan=100, type=0x8100) / Dot1Q(vlan=7) / inner)
    assert p1[P_VLAN] == 20 and p1[P_PROTO] == 17 and bytes(p1[P_PAYLOAD]) == b"x"
    assert p2[P_VLAN] == 100 and p2[P_SPORT] == 53


def test_ipv6_with_extension_headers():
    f = Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / \
        IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / TCP(sport=1, dport=11112) / Raw(b"abc")
    (p,), _ = dec(1, f)
    assert p[P_PROTO] == 6 and p[P_DPORT] == 11112 and bytes(p[P_PAYLOAD]) == b"abc"
    assert p[P_SRC] == socket.inet_pton(socket.AF_INET6, "2001:db8::1")


def test_fragments_are_counted_not_decoded():
    frags = [Ether() / IP(src="10.0.0.1", dst="10.0.0.2", flags="MF", frag=0) / UDP() / Raw(b"a" * 16),
             Ether() / IP(src="10.0.0.1", dst="10.0.0.2", frag=3, proto=17) / Raw(b"b" * 8),
             Ether() / IPv6() / IPv6ExtHdrFragment(offset=10, m=0) / Raw(b"c" * 8)]
    out, c = dec(1, *frags)
    assert out == []
    assert c.get("decode.ipv4_fragment") == 2 and c.get("decode.ipv6_fragment") == 1


def test_malformed_counted_by_reason():
    good = bytes(Ether() / IP() / TCP())
    bad = [
        good[:10],  # truncated ethernet
        good[:20],  # truncated ipv4
        bytes(Ether() / IP(ihl=2)),  # bad header length
        bytes(Ether() / IP(proto=6)) + b"\x00" * 5,  # truncated tcp
        bytes(Ether(type=0x0806)) + b"\x00" * 28,  # ARP: not IP
    ]
    out, c = dec(1, *bad)
    assert out == []
    assert c.get("decode.truncated_ethernet") == 1
    assert c.get("decode.truncated_ipv4") == 1
    assert c.get("decode.bad_ipv4_header") == 1
    assert c.get("decode.truncated_tcp") == 1
    assert c.get("decode.non_ip") == 1


def test_snaplen_cut_reports_missing():
    f = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP() / Raw(b"z" * 1000))
    (p,), _ = dec(1, f[:200])
    assert p[P_MISSING] == len(f) - 200 and len(p[P_PAYLOAD]) == 200 - 54


def test_linux_cooked_and_raw_ip():
    body = IP(src="10.0.0.1", dst="10.0.0.2") / ICMP()
    (p1,), _ = dec(113, CookedLinux(proto=0x0800) / body)
    (p2,), _ = dec(101, body)
    sll2 = b"\x08\x00" + b"\x00" * 18 + bytes(body)
    (p3,), _ = dec(276, sll2)
    for p in (p1, p2, p3):
        assert p[P_PROTO] == 1 and p[P_SRC] == ip4("10.0.0.1")


def test_unsupported_linktype_is_one_clear_error():
    with pytest.raises(ValueError, match="not supported"):
        decode_batch(105, [0.0], [b"x"], Counters())
    assert "Ethernet" in l2l4.linktype_name(1)


def test_random_bytes_never_raise():
    import random
    rnd = random.Random(1)
    frames = [bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 120))) for _ in range(3000)]
    for lt in (1, 101, 113, 276):
        decode_batch(lt, [0.0] * len(frames), [memoryview(f) for f in frames], Counters())
