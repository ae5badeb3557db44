"""Edge-case captures made from real ones: re-segmented TCP streams, VLAN tags, cut files.

scapy renders the crafted packets, per packet on purpose: these are test inputs of a few hundred packets. The
crafted conversations carry a full handshake and FIN close with consistent sequence numbers.

Example::

    convs = tcp_conversations(Path("dicom.pcap"))          # {(client, server): [(from_client, bytes)]}
    write_conversation(out, resegment(turns, mss=100), client, server)
"""

from __future__ import annotations

import socket
import struct
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import dpkt
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.utils import PcapWriter

Turn = tuple[bool, bytes]  # (from client, payload bytes of one segment)

CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


def _frames(pcap: Path):
    """(ts, frame bytes, linktype) from a pcap, exactly as stored.

    dpkt, not scapy, for reading: scapy's reader drops the last bytes of maximum-size (64 KiB)
    loopback frames, which would corrupt re-segmented streams.
    """
    with open(pcap, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        lt = reader.datalink()
        for ts, buf in reader:
            yield ts, buf, lt


def tcp_conversations(pcap: Path) -> dict[tuple, list[Turn]]:
    """Payload-carrying segments per connection, in capture order, keyed by (client, server).

    The client is the SYN sender. Good enough for loopback captures (no loss, no reordering).
    """
    convs: dict[tuple, list[Turn]] = {}
    clients: dict[frozenset, tuple] = {}
    for _, buf, _lt in _frames(pcap):
        eth = dpkt.ethernet.Ethernet(buf)
        ip = eth.data
        if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) or not isinstance(ip.data, dpkt.tcp.TCP):
            continue
        tcp = ip.data
        to_str = (lambda a: socket.inet_ntop(socket.AF_INET6 if len(a) == 16 else socket.AF_INET, a))
        a, b = (to_str(ip.src), tcp.sport), (to_str(ip.dst), tcp.dport)
        key = frozenset((a, b))
        if tcp.flags & dpkt.tcp.TH_SYN and not tcp.flags & dpkt.tcp.TH_ACK:
            clients[key] = (a, b)
        cs = clients.get(key)
        if cs is None:
            continue
        if tcp.data:
            convs.setdefault(cs, []).append((a == cs[0], bytes(tcp.data)))
    return convs


def coalesce(turns: Sequence[Turn], limit: int = 60000) -> list[Turn]:
    """Merge consecutive same-direction segments (many PDUs per segment), at most ``limit`` bytes each."""
    out: list[Turn] = []
    for fc, data in turns:
        if out and out[-1][0] == fc and len(out[-1][1]) + len(data) <= limit:
            out[-1] = (fc, out[-1][1] + data)
        else:
            out.append((fc, data))
    return out


def resegment(turns: Sequence[Turn], mss: int) -> list[Turn]:
    """Cut every segment into ``mss``-byte pieces (one PDU over many segments)."""
    return [(fc, data[i:i + mss]) for fc, data in turns for i in range(0, len(data), mss)]


def write_conversation(path: Path, turns: Iterable[Turn], client: tuple[str, int], server: tuple[str, int],
                       vlan: int | None = None, t0: float = 1_700_000_000.0, append: bool = False) -> int:
    """Write one TCP connection (handshake, ``turns``, FIN close) to a pcap; returns packets written."""
    v6 = ":" in client[0]
    seq = {True: 1000, False: 5000}  # next sequence number per direction (True = client)

    def frame(fc: bool, flags: str, payload: bytes = b""):
        src, dst = (client, server) if fc else (server, client)
        l3 = (IPv6(src=src[0], dst=dst[0]) if v6 else IP(src=src[0], dst=dst[0]))
        l4 = TCP(sport=src[1], dport=dst[1], flags=flags, seq=seq[fc], ack=seq[not fc] if "A" in flags else 0,
                 window=65535)
        l2 = Ether(src=CLIENT_MAC if fc else SERVER_MAC, dst=SERVER_MAC if fc else CLIENT_MAC)
        pkt = (l2 / Dot1Q(vlan=vlan) / l3 / l4) if vlan is not None else (l2 / l3 / l4)
        return pkt / payload if payload else pkt

    pkts = []
    pkts.append(frame(True, "S"))
    seq[True] += 1
    pkts.append(frame(False, "SA"))
    seq[False] += 1
    pkts.append(frame(True, "A"))
    for fc, data in turns:
        pkts.append(frame(fc, "PA", data))
        seq[fc] += len(data)
    pkts.append(frame(True, "FA"))
    seq[True] += 1
    pkts.append(frame(False, "FA"))
    seq[False] += 1
    pkts.append(frame(True, "A"))
    writer = PcapWriter(str(path), append=append, sync=True, linktype=1)
    for i, p in enumerate(pkts):
        p.time = t0 + i * 0.001
        writer.write(p)
    writer.close()
    return len(pkts)


def _writer(f):
    return dpkt.pcap.Writer(f, snaplen=262144, linktype=dpkt.pcap.DLT_EN10MB)


def add_vlan(src: Path, dst: Path, vid: int) -> None:
    """Same frames with an 802.1Q tag (TPID 0x8100) inserted after the MAC addresses."""
    with open(dst, "wb") as f:
        w = _writer(f)
        for ts, buf, _ in _frames(src):
            w.writepkt(buf[:12] + struct.pack(">HH", 0x8100, vid) + buf[12:], ts)


def drop_first(src: Path, dst: Path, n: int, also_keep: frozenset[int] = frozenset()) -> None:
    """Copy frames from index ``n`` on (plus the indices in ``also_keep``): a capture begun late."""
    with open(dst, "wb") as f:
        w = _writer(f)
        for i, (ts, buf, _) in enumerate(_frames(src)):
            if i >= n or i in also_keep:
                w.writepkt(buf, ts)


def to_pcapng(src: Path, dst: Path) -> None:
    subprocess.run(["editcap", "-F", "pcapng", str(src), str(dst)], check=True, capture_output=True)


def cut_file(src: Path, dst: Path, keep_fraction: float) -> int:
    """Copy the first part of a capture file, ending wherever the byte count falls (mid-record)."""
    data = src.read_bytes()
    n = int(len(data) * keep_fraction)
    dst.write_bytes(data[:n])
    return n
