"""One measured tool per process: ``python -m bench.workers TOOL CAPTURE RESULT.json [MODEL]``.

Each worker times only the work (first packet to last, or the whole in-process command run), not
the interpreter start-up or imports; that start-up is measured separately (``startup_s``: process
start → ready to read). External programs (tshark) are timed by the runner instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time

_T_PROC = time.perf_counter()  # as early as this module can take it (python start-up is before it)


def floor(path: str) -> dict:
    """Read the file into memory in 4 MiB blocks: what any reader must pay at least."""
    buf = bytearray(4 << 20)
    total = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return {"seconds": time.perf_counter() - t0, "file_bytes_read": total}


def dpkt_loop(path: str) -> dict:
    """dpkt's pcap reader + Ethernet/IP/TCP/UDP decode + a dict flow table (packets, bytes per flow)."""
    import dpkt

    flows: dict[tuple, list[int]] = {}
    n = 0
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        t0 = time.perf_counter()
        for _ts, buf in reader:
            n += 1
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                continue
            l4 = ip.data
            if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                key = (ip.p, ip.src, l4.sport, ip.dst, l4.dport)
                rkey = (ip.p, ip.dst, l4.dport, ip.src, l4.sport)
            else:
                key = rkey = (ip.p, ip.src, 0, ip.dst, 0)
            st = flows.get(key) or flows.get(rkey)
            if st is None:
                st = flows[key] = [0, 0]
            st[0] += 1
            st[1] += len(buf)
        dt = time.perf_counter() - t0
    return {"seconds": dt, "packets": n, "flows": len(flows)}


def scapy_reader(path: str) -> dict:
    """scapy's PcapReader: every packet dissected into layer objects."""
    from scapy.utils import PcapReader

    n = 0
    with PcapReader(path) as r:
        t0 = time.perf_counter()
        for _pkt in r:
            n += 1
        dt = time.perf_counter() - t0
    return {"seconds": dt, "packets": n}


def scapy_dicom_reader(path: str) -> dict:
    """scapy's PcapReader with its own DICOM layer (scapy.contrib.dicom, bound to TCP 104/11112)."""
    import scapy.contrib.dicom  # noqa: F401 - binds the DICOM layer to its ports on import
    from scapy.utils import PcapReader

    n = 0
    with PcapReader(path) as r:
        t0 = time.perf_counter()
        for _pkt in r:
            n += 1
        dt = time.perf_counter() - t0
    return {"seconds": dt, "packets": n}


def pyshark_reader(path: str) -> dict:
    """pyshark over tshark (DICOM heuristic on); timed from the first packet to the last."""
    import pyshark

    cap = pyshark.FileCapture(path, keep_packets=False, override_prefs={"dicom.heuristic": "TRUE"})
    n = 0
    t0 = None
    try:
        for pkt in cap:
            if t0 is None:
                t0 = time.perf_counter()
            _ = pkt.highest_layer
            n += 1
        dt = time.perf_counter() - (t0 or time.perf_counter())
    finally:
        cap.close()
    # the first packet's own cost is outside [t0, end]: count n-1 intervals
    return {"seconds": dt, "packets": n, "rate_packets": max(n - 1, 0)}


def _radsensor(args: list[str]) -> dict:
    """Run a radsensor click command in this process with stdout discarded; time the run."""
    from sensor.cli import cli

    cmd = cli.get_command(None, args[0])  # import the command module before the clock starts
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        t0 = time.perf_counter()
        try:
            cmd.main(args[1:], standalone_mode=False)
        finally:
            dt = time.perf_counter() - t0
    return {"seconds": dt}


def _with_helper(out: dict) -> dict:
    from sensor import _fast

    out["fast_path"] = "compiled" if _fast.COMPILED else "pure Python (fallback)"
    return out


def radsensor_decode(path: str) -> dict:
    return _with_helper(_radsensor(["decode", path, "--no-progress"]))


def radsensor_flows(path: str) -> dict:
    """The ceiling under radsensor decode: the same read, L2-L4 decode and flow table, with protocol
    recognition answering "not DICOM/HL7" for every flow (no analyzer ever runs)."""
    from sensor.protocols import dispatch

    dispatch.recognise = lambda first, from_client: None
    dispatch.recognise_inside = lambda data: None
    return _with_helper(_radsensor(["decode", path, "--no-progress"]))


def radsensor_detect(path: str, model: str) -> dict:
    return _with_helper(_radsensor(["detect", path, "-m", model, "--format", "json"]))


TOOLS = {
    "floor": floor,
    "dpkt": dpkt_loop,
    "scapy": scapy_reader,
    "scapy-dicom": scapy_dicom_reader,
    "pyshark": pyshark_reader,
    "radsensor-decode": radsensor_decode,
    "radsensor-flows": radsensor_flows,
    "radsensor-detect": radsensor_detect,
}


def main(argv: list[str]) -> int:
    tool, path, result, *extra = argv
    ready = time.perf_counter()
    out = TOOLS[tool](path, *extra)
    out["startup_s"] = ready - _T_PROC
    ru = resource.getrusage(resource.RUSAGE_SELF)
    ruc = resource.getrusage(resource.RUSAGE_CHILDREN)  # pyshark's tshark
    out["maxrss_kb"] = ru.ru_maxrss
    out["children_maxrss_kb"] = ruc.ru_maxrss
    out["cpu_s"] = ru.ru_utime + ru.ru_stime
    with open(result, "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
