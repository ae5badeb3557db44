"""Render byte exchanges as Ethernet/IPv4/TCP (and UDP) frames into a classic pcap file.

Hot path rules (STYLE 6): one precompiled struct per header layout, checksums from integer
partial sums (the payload part of every segment of a burst is summed at once with NumPy),
no per-packet objects beyond the frame bytes and a ``(ts_us, key, frame)`` tuple for merging.

TCP model: 3-way handshake with MSS 1460, segments of at most 1460 payload bytes paced at the
sender's link rate, a cumulative ACK from the receiver every second segment and after the last
one (unless the receiver answers at once, then the ACK rides on its data), PSH on the last
segment of a burst, FIN/ACK teardown started by the client. IPv4 DF set, IP id counting up per
host direction. IP and TCP checksums are correct.

Example::

    >>> conv = TcpConversation(Host.of("10.20.1.11", "00:11:22:33:44:55", 128), 50123,
    ...                        Host.of("10.20.0.10", "52:54:00:20:00:10", 64), 104, seed=1)
    >>> frames = list(conv.frames(0, [(0, 0, b"hello"), (1, 500, b"world")]))
"""

from __future__ import annotations

import random
import struct
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

MSS = 1460
ETH_IPV4 = 0x0800
_TCP_HDR = struct.Struct("!6s6sHBBHHHBBH4s4sHHIIBBHHH")  # eth + ip + tcp(20)
_TCP_SYN = struct.Struct("!6s6sHBBHHHBBH4s4sHHIIBBHHHBBH")  # + MSS option (4)
_UDP_HDR = struct.Struct("!6s6sHBBHHHBBH4s4sHHHH")
_PCAP_GLOBAL = struct.Struct("<IHHiIII")
_PCAP_REC = struct.Struct("<IIII")
_ETH_IP_TCP_LEN = 54

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

Item = tuple[int, int, bytes]  # (direction 0=client->server, delay_us after previous item, payload)
Packet = tuple[int, int, bytes]  # (ts_us, merge key, frame)


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def csum_words(data: bytes) -> int:
    """Unfolded big-endian 16-bit word sum of ``data`` (odd length padded with zero)."""
    if len(data) & 1:
        data = data + b"\0"
    a = array("H", data)
    a.byteswap()  # array('H') is native little-endian; network order needs the swap
    return sum(a)


def segment_sums(payload: bytes, mss: int = MSS) -> list[int]:
    """Word sums of each ``mss``-sized slice of ``payload`` (vectorised; mss must be even)."""
    n = -(-len(payload) // mss)
    if n == 0:
        return []
    pad = n * mss - len(payload)
    buf = payload + b"\0" * pad if pad else payload
    arr = np.frombuffer(buf, dtype=">u2").reshape(n, mss // 2)
    return arr.sum(axis=1, dtype=np.uint64).tolist()


@dataclass(frozen=True, slots=True)
class Host:
    ip: bytes
    mac: bytes
    ttl: int
    ip_sum: int  # word sum of the 4 address bytes

    @staticmethod
    def of(ip: str, mac: str, ttl: int = 64) -> Host:
        ipb = bytes(int(x) for x in ip.split("."))
        return Host(ipb, bytes.fromhex(mac.replace(":", "")), ttl, (ipb[0] << 8 | ipb[1]) + (ipb[2] << 8 | ipb[3]))


class _Dir:
    """Per-direction constant header material and running counters."""

    __slots__ = ("dport", "dst", "ip_const", "ip_id", "rate", "seq", "sport", "src", "tcp_const", "window")

    def __init__(self, src: Host, dst: Host, sport: int, dport: int, isn: int, ip_id: int,
                 window: int, rate_bps: int) -> None:
        self.src, self.dst, self.sport, self.dport = src, dst, sport, dport
        # IPv4: version/IHL/TOS + flags(DF) + TTL/proto + addresses (total length and id per packet)
        self.ip_const = 0x4500 + 0x4000 + (src.ttl << 8 | 6) + src.ip_sum + dst.ip_sum
        # TCP pseudo header (addresses + proto) + ports + window (length, seq, ack, flags per packet)
        self.tcp_const = src.ip_sum + dst.ip_sum + 6 + sport + dport + window
        self.seq = isn
        self.ip_id = ip_id
        self.window = window
        self.rate = rate_bps


class TcpConversation:
    """One TCP connection between two hosts; ``frames()`` yields time-ordered packets."""

    def __init__(self, cli: Host, cport: int, srv: Host, sport: int, seed: int,
                 rtt_us: int = 300, cli_rate: int = 1_000_000_000, srv_rate: int = 1_000_000_000,
                 key: int = 0) -> None:
        r = random.Random(seed)
        self.d = (
            _Dir(cli, srv, cport, sport, r.getrandbits(32), r.getrandbits(16), 64240, cli_rate),
            _Dir(srv, cli, sport, cport, r.getrandbits(32), r.getrandbits(16), 65160, srv_rate),
        )
        self.owd = max(20, rtt_us // 2)
        self.key = key

    # -------------------------------------------------------------- single frames
    def _frame(self, di: int, flags: int, payload: bytes = b"", psum: int = -1) -> bytes:
        d, o = self.d[di], self.d[1 - di]
        plen = len(payload)
        total = 40 + plen
        d.ip_id = (d.ip_id + 1) & 0xFFFF
        ipc = 0xFFFF - _fold(d.ip_const + total + d.ip_id)
        seq, ack = d.seq, o.seq if flags & ACK else 0
        if psum < 0:
            psum = csum_words(payload) if plen else 0
        s = (d.tcp_const + 20 + plen + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF)
             + (0x5000 | flags) + psum)
        tc = 0xFFFF - _fold(s)
        hdr = _TCP_HDR.pack(d.dst.mac, d.src.mac, ETH_IPV4, 0x45, 0, total, d.ip_id, 0x4000, d.src.ttl, 6,
                            ipc, d.src.ip, d.dst.ip, d.sport, d.dport, seq, ack, 0x50, flags, d.window, tc, 0)
        d.seq = (seq + plen + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF
        return hdr + payload if plen else hdr

    def _syn(self, di: int, flags: int) -> bytes:
        d, o = self.d[di], self.d[1 - di]
        d.ip_id = (d.ip_id + 1) & 0xFFFF
        total = 44
        ipc = 0xFFFF - _fold(d.ip_const + total + d.ip_id)
        seq, ack = d.seq, o.seq if flags & ACK else 0
        s = (d.tcp_const + 24 + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF)
             + (0x6000 | flags) + 0x0204 + MSS)
        tc = 0xFFFF - _fold(s)
        d.seq = (seq + 1) & 0xFFFFFFFF
        return _TCP_SYN.pack(d.dst.mac, d.src.mac, ETH_IPV4, 0x45, 0, total, d.ip_id, 0x4000, d.src.ttl, 6,
                             ipc, d.src.ip, d.dst.ip, d.sport, d.dport, seq, ack, 0x60, flags, d.window, tc, 0,
                             0x02, 0x04, MSS)

    def _tx_us(self, di: int, nbytes: int) -> int:
        # wire time incl. preamble/IFG (20 B) at the sender's link rate
        return (nbytes + 20) * 8_000_000 // self.d[di].rate

    # -------------------------------------------------------------- conversations
    def frames(self, t0: int, items: Iterable[Item], handshake: str = "ok", close: str = "fin") -> Iterator[Packet]:
        """Yield packets for ``items`` starting at ``t0`` (µs).

        handshake: "ok" | "rst" (closed port: SYN, RST/ACK) | "drop" (SYN retried, no answer).
        close: "fin" (client closes) | "server-fin" | "rst" (client resets) | "none".
        """
        key = self.key
        owd = self.owd
        if handshake == "rst":
            yield t0, key, self._syn(0, SYN)
            yield t0 + 2 * owd, key, self._frame(1, RST | ACK)
            return
        if handshake == "drop":
            yield t0, key, self._syn(0, SYN)
            yield t0 + 1_000_000, key, self._syn_retry()
            return
        yield t0, key, self._syn(0, SYN)
        t = t0 + 2 * owd
        yield t, key, self._syn(1, SYN | ACK)
        t += 2 * owd
        yield t, key, self._frame(0, ACK)
        pending: list[tuple[int, int, bytes]] = []  # (ts, order, frame), flushed in time order
        order = 0
        items = list(items)
        i = 0
        last_arrival = t  # when the previous burst's last byte reached its receiver
        last_dir = 1
        while i < len(items):
            di, delay, _ = items[i]
            start = max(last_arrival + delay, t)
            # a burst: this item plus following same-direction items with no delay
            parts = [items[i][2]]
            i += 1
            while i < len(items) and items[i][0] == di and items[i][1] == 0:
                parts.append(items[i][2])
                i += 1
            payload = b"".join(parts)
            # everything already rendered before this burst starts can go out now
            if pending:
                pending.sort()
                cut = 0
                for ts, _, fr in pending:
                    if ts > start:
                        break
                    yield ts, key, fr
                    cut += 1
                del pending[:cut]
            sums = segment_sums(payload)
            n = len(sums)
            tx_full = self._tx_us(di, MSS + _ETH_IP_TCP_LEN)
            ts = start
            for k in range(n):
                off = k * MSS
                seg = payload[off:off + MSS]
                fl = ACK | PSH if k == n - 1 else ACK
                pending.append((ts, order, self._frame(di, fl, seg, sums[k])))
                order += 1
                arrival = ts + tx_full + owd
                if k & 1 or k == n - 1:
                    nxt_same = i < len(items) and items[i][0] != di and items[i][1] < 200 and k == n - 1
                    if not nxt_same:  # the receiver will not answer at once: pure ACK
                        pending.append((arrival + 30, order, self._frame(1 - di, ACK)))
                        order += 1
                ts += tx_full if k < n - 1 else 0
            t = ts + 1
            last_arrival = ts + self._tx_us(di, len(payload) - (n - 1) * MSS + _ETH_IP_TCP_LEN) + owd
            last_dir = di
        pending.sort()
        for ts, _, fr in pending:
            yield ts, key, fr
        t = max(t, last_arrival) + 200
        if close == "none":
            return
        if close == "rst":
            yield t, key, self._frame(0, RST | ACK)
            return
        a = 0 if close == "fin" else 1
        yield t, key, self._frame(a, FIN | ACK)
        t += 2 * owd
        yield t, key, self._frame(1 - a, FIN | ACK)
        t += 2 * owd
        yield t, key, self._frame(a, ACK)
        del last_dir

    def _syn_retry(self) -> bytes:
        d = self.d[0]
        d.seq = (d.seq - 1) & 0xFFFFFFFF  # retransmission reuses the ISN
        return self._syn(0, SYN)


def udp_frame(src: Host, dst: Host, sport: int, dport: int, payload: bytes, ip_id: int) -> bytes:
    """One Ethernet/IPv4/UDP frame with correct IP and UDP checksums."""
    ulen = 8 + len(payload)
    total = 20 + ulen
    ipc = 0xFFFF - _fold(0x4500 + total + ip_id + (src.ttl << 8 | 17) + src.ip_sum + dst.ip_sum)
    s = src.ip_sum + dst.ip_sum + 17 + ulen + sport + dport + ulen + csum_words(payload)
    uc = 0xFFFF - _fold(s)
    if uc == 0:
        uc = 0xFFFF
    return _UDP_HDR.pack(dst.mac, src.mac, ETH_IPV4, 0x45, 0, total, ip_id, 0, src.ttl, 17, ipc,
                         src.ip, dst.ip, sport, dport, ulen, uc) + payload


class PcapWriter:
    """Classic little-endian pcap, microsecond timestamps, Ethernet link type."""

    def __init__(self, path: str) -> None:
        self.fh = open(path, "wb", buffering=1 << 22)
        self.fh.write(_PCAP_GLOBAL.pack(0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        self.packets = 0
        self.bytes = 0

    def write_all(self, packets: Iterable[Packet]) -> None:
        w = self.fh.write
        rec = _PCAP_REC.pack
        n = 0
        b = 0
        for ts, _, fr in packets:
            ln = len(fr)
            w(rec(ts // 1_000_000, ts % 1_000_000, ln, ln))
            w(fr)
            n += 1
            b += ln
        self.packets += n
        self.bytes += b

    def close(self) -> None:
        self.fh.close()
