"""L2–L4 header decoding, one batch at a time.

``decode_batch`` turns a batch of captured frames into a list of ``Packet`` tuples (plain tuples:
no per-packet objects beyond the tuple itself). IPv4 addresses are ints, IPv6 addresses 16-byte
``bytes``; the payload is a zero-copy ``memoryview`` of the frame. Anything that cannot be decoded
is counted by reason in ``counters`` ("decode.<reason>"), never raised.

Packet tuple fields, by index (see the ``P_*`` constants)::

    ts, proto, src, sport, dst, dport, tcp_flags, seq, ack, payload, ip_len, frame, mac_off, vlan, missing

``mac_off`` is the offset of the Ethernet header in ``frame`` (-1 when the link has no MACs);
``vlan`` the outermost VLAN id (0 when untagged); ``missing`` the payload bytes that were on the
wire but not captured (snaplen), so the stream layer can report a gap instead of guessing.
"""

from __future__ import annotations

import struct

from sensor import _fast
from sensor.capture import linktypes
from sensor.capture.linktypes import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)
from sensor.events import Counters

# One registry of link types for readers and decoder (capture/linktypes.py); DLT_RAW's 12/14
# leak into files from some platforms and decode as raw IP.
LINKTYPE_RAW_ALIASES = (12, 14)
SUPPORTED_LINKTYPES = {**linktypes.SUPPORTED, **{a: "raw IP" for a in LINKTYPE_RAW_ALIASES}}

(P_TS, P_PROTO, P_SRC, P_SPORT, P_DST, P_DPORT, P_FLAGS, P_SEQ, P_ACK, P_PAYLOAD, P_IPLEN, P_FRAME,
 P_MACOFF, P_VLAN, P_MISSING) = range(15)

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN_TAGS = (0x8100, 0x88A8, 0x9100)

# IPv6 extension headers that we walk over (RFC 8200 §4): hop-by-hop, routing, destination options,
# mobility, HIP, shim6. Fragment (44) and AH (51) have their own length rules.
IPV6_EXT_GENERIC = frozenset((0, 43, 60, 135, 139, 140))
IPV6_FRAGMENT = 44
IPV6_AH = 51
IPV6_MAX_EXT_HEADERS = 8

_U16 = struct.Struct("!H")
_U16_LE = struct.Struct("<I")
_IPV4 = struct.Struct("!BBHHHBBHII")  # ver_ihl tos total id frag ttl proto csum src dst
_IPV6 = struct.Struct("!IHBB16s16s")  # vtcfl payload_len next hop src dst
_TCP = struct.Struct("!HHIIBB")  # sport dport seq ack off_res flags
_UDP = struct.Struct("!HH")
_EXT = struct.Struct("!BB")
_FRAG6 = struct.Struct("!BBH")


def linktype_name(linktype: int) -> str:
    return SUPPORTED_LINKTYPES.get(linktype, f"link type {linktype}")


def decode_batch(linktype: int, ts_list, frames, counters: Counters, wirelens=None) -> list[tuple]:
    """Decode every frame of a batch; return Packet tuples for IP packets.

    Uses the compiled decoder when it is built (``sensor._fast``); ``decode_batch_py`` is the
    reference it is tested against.

    >>> from sensor.events import Counters
    >>> decode_batch(1, [0.0], [b"\\x00" * 10], Counters())
    []
    """
    bad: dict[str, int] = {}
    if _fast.COMPILED:
        if linktype not in SUPPORTED_LINKTYPES:
            raise ValueError(f"{linktype_name(linktype)} not supported")
        out = _fast.impl.decode(linktype, ts_list, frames, bad)
    else:
        out = decode_batch_py(linktype, ts_list, frames, bad)
    for reason, n in bad.items():
        counters.add("decode." + reason, n)
    return out


def decode_batch_py(linktype: int, ts_list, frames, bad: dict[str, int]) -> list[tuple]:
    """Pure-Python ``decode_batch``: reasons are counted into ``bad`` (no "decode." prefix)."""
    out: list[tuple] = []
    append = out.append
    u16 = _U16.unpack_from
    ipv4 = _IPV4.unpack_from
    tcp = _TCP.unpack_from
    udp = _UDP.unpack_from

    if linktype == LINKTYPE_ETHERNET:
        base, mac_off = 0, 0
    elif linktype == LINKTYPE_LINUX_SLL:
        base, mac_off = 16, -1
    elif linktype == LINKTYPE_LINUX_SLL2:
        base, mac_off = 20, -1
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, *LINKTYPE_RAW_ALIASES):
        base, mac_off = 0, -1
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        base, mac_off = 4, -1
    else:
        raise ValueError(f"{linktype_name(linktype)} not supported")

    for i, frame in enumerate(frames):
        flen = len(frame)
        vlan = 0
        # --- L2: find the ethertype and where IP starts --------------------------------------
        if linktype == LINKTYPE_ETHERNET:
            if flen < 14:
                bad["truncated_ethernet"] = bad.get("truncated_ethernet", 0) + 1
                continue
            etype = u16(frame, 12)[0]
            off = 14
            if etype in ETH_VLAN_TAGS:
                # 802.1Q / QinQ: keep the outer VLAN id, walk to the inner ethertype.
                vlan = u16(frame, 14)[0] & 0x0FFF if flen >= 18 else 0
                while etype in ETH_VLAN_TAGS:
                    if off + 4 > flen:
                        etype = -1
                        break
                    etype = u16(frame, off + 2)[0]
                    off += 4
                if etype == -1:
                    bad["truncated_vlan"] = bad.get("truncated_vlan", 0) + 1
                    continue
            if etype == ETH_IPV4:
                version = 4
            elif etype == ETH_IPV6:
                version = 6
            else:
                bad["non_ip"] = bad.get("non_ip", 0) + 1
                continue
        elif linktype == LINKTYPE_LINUX_SLL or linktype == LINKTYPE_LINUX_SLL2:
            if flen < base:
                bad["truncated_sll"] = bad.get("truncated_sll", 0) + 1
                continue
            etype = u16(frame, 14 if linktype == LINKTYPE_LINUX_SLL else 0)[0]
            off = base
            if etype == ETH_IPV4:
                version = 4
            elif etype == ETH_IPV6:
                version = 6
            else:
                bad["non_ip"] = bad.get("non_ip", 0) + 1
                continue
        else:
            off = base
            if flen <= off:
                bad["truncated_ip"] = bad.get("truncated_ip", 0) + 1
                continue
            version = frame[off] >> 4
            if version != 4 and version != 6:
                bad["non_ip"] = bad.get("non_ip", 0) + 1
                continue

        # --- L3 ---------------------------------------------------------------------------
        if version == 4:
            if off + 20 > flen:
                bad["truncated_ipv4"] = bad.get("truncated_ipv4", 0) + 1
                continue
            ver_ihl, _tos, total, _id, frag, _ttl, proto, _csum, src, dst = ipv4(frame, off)
            ihl = (ver_ihl & 0x0F) * 4
            if ver_ihl >> 4 != 4 or ihl < 20 or total < ihl:
                bad["bad_ipv4_header"] = bad.get("bad_ipv4_header", 0) + 1
                continue
            if frag & 0x3FFF:
                # MF set or a non-zero offset: counted, not reassembled (DESIGN §1).
                bad["ipv4_fragment"] = bad.get("ipv4_fragment", 0) + 1
                continue
            l4 = off + ihl
            end = off + total
            ip_len = total
        else:
            if off + 40 > flen:
                bad["truncated_ipv6"] = bad.get("truncated_ipv6", 0) + 1
                continue
            vtcfl, plen, proto, _hop, src, dst = _IPV6.unpack_from(frame, off)
            if vtcfl >> 28 != 6:
                bad["bad_ipv6_header"] = bad.get("bad_ipv6_header", 0) + 1
                continue
            l4 = off + 40
            end = l4 + plen
            ip_len = plen + 40
            n_ext = 0
            while proto in IPV6_EXT_GENERIC or proto == IPV6_FRAGMENT or proto == IPV6_AH:
                n_ext += 1
                if l4 + 8 > flen or n_ext > IPV6_MAX_EXT_HEADERS:
                    proto = -1
                    break
                nxt, hlen = _EXT.unpack_from(frame, l4)
                if proto == IPV6_FRAGMENT:
                    frag_off = _FRAG6.unpack_from(frame, l4)[2]
                    if frag_off & 0xFFF9:  # offset or M flag
                        proto = -2
                        break
                    l4 += 8
                elif proto == IPV6_AH:
                    l4 += (hlen + 2) * 4
                else:
                    l4 += (hlen + 1) * 8
                proto = nxt
            if proto == -1:
                bad["bad_ipv6_ext"] = bad.get("bad_ipv6_ext", 0) + 1
                continue
            if proto == -2:
                bad["ipv6_fragment"] = bad.get("ipv6_fragment", 0) + 1
                continue
            if l4 > end:
                bad["bad_ipv6_ext"] = bad.get("bad_ipv6_ext", 0) + 1
                continue

        # Ethernet pads short frames; the IP length is the truth. A snaplen cut leaves `missing`.
        missing = 0
        if end > flen:
            missing = end - flen
            end = flen

        # --- L4 ---------------------------------------------------------------------------
        if proto == IPPROTO_TCP:
            if l4 + 20 > end:
                bad["truncated_tcp"] = bad.get("truncated_tcp", 0) + 1
                continue
            sport, dport, seq, ack, off_res, flags = tcp(frame, l4)
            doff = (off_res >> 4) * 4
            if doff < 20 or l4 + doff > end:
                bad["bad_tcp_header"] = bad.get("bad_tcp_header", 0) + 1
                continue
            payload = frame[l4 + doff:end] if end > l4 + doff else None
        elif proto == IPPROTO_UDP:
            if l4 + 8 > end:
                bad["truncated_udp"] = bad.get("truncated_udp", 0) + 1
                continue
            sport, dport = udp(frame, l4)
            flags = seq = ack = 0
            payload = frame[l4 + 8:end] if end > l4 + 8 else None
        else:
            sport = dport = flags = seq = ack = 0
            payload = None
        append((ts_list[i], proto, src, sport, dst, dport, flags, seq, ack, payload, ip_len, frame,
                mac_off, vlan, missing))

    return out
