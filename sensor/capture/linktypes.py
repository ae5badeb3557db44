"""Link types (LINKTYPE_* values of the tcpdump.org registry) that the decoder understands.

Files carry LINKTYPE values, not the platform's DLT values; libpcap maps DLT_RAW (12 on most
systems, 14 on OpenBSD) to LINKTYPE_RAW (101) when writing, but old or foreign writers put 12/14
in files. Those are normalised to 101 here so that the decoder sees one raw-IP code.
"""

from __future__ import annotations

from sensor.capture.batch import CaptureError

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

SUPPORTED: dict[int, str] = {
    LINKTYPE_ETHERNET: "Ethernet",
    LINKTYPE_LINUX_SLL: "Linux cooked v1",
    LINKTYPE_LINUX_SLL2: "Linux cooked v2",
    LINKTYPE_RAW: "raw IP",
    LINKTYPE_IPV4: "raw IPv4",
    LINKTYPE_IPV6: "raw IPv6",
    LINKTYPE_NULL: "BSD loopback",
    LINKTYPE_LOOP: "OpenBSD loopback",
}

# DLT_RAW values that leak into files from some platforms.
_ALIASES = {12: LINKTYPE_RAW, 14: LINKTYPE_RAW}

# Names for a clear error message about common link types we do not decode.
_OTHER_NAMES = {
    6: "IEEE 802.5 Token Ring", 9: "PPP", 10: "FDDI", 50: "PPP in HDLC", 104: "Cisco HDLC",
    105: "IEEE 802.11", 119: "Prism 802.11", 127: "IEEE 802.11 radiotap", 163: "AVS 802.11",
    189: "Linux USB", 192: "PPI", 195: "IEEE 802.15.4", 201: "Bluetooth HCI H4", 220: "Linux USB mmapped",
}

SUPPORTED_TEXT = "Ethernet, Linux cooked v1/v2, raw IP, BSD/OpenBSD loopback"


def normalise(linktype: int) -> int:
    return _ALIASES.get(linktype, linktype)


def is_supported(linktype: int) -> bool:
    return normalise(linktype) in SUPPORTED


def describe(linktype: int) -> str:
    name = SUPPORTED.get(linktype) or _OTHER_NAMES.get(linktype)
    return f"link type {linktype} ({name})" if name else f"link type {linktype}"


def unsupported_error(source: str, linktype: int) -> CaptureError:
    return CaptureError(f"{source}: {describe(linktype)} not supported; supported: {SUPPORTED_TEXT}")
