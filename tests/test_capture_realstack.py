"""Real libpcap-written files: tcpdump on loopback, converted by editcap, checked against tshark.

Traffic: a TCP connection to a listener this test opens on 127.0.0.1 (nothing leaves loopback).
tshark is the oracle for packet count, timestamps, captured and wire lengths.
"""

from __future__ import annotations

import gzip
import os
import select
import shutil
import signal
import socket
import subprocess
import time

import pytest

from sensor.capture import open_capture, open_captures

pytestmark = [pytest.mark.realstack, pytest.mark.oracle]


def _capture_loopback(path, iface: str = "lo", extra: tuple[str, ...] = ()) -> int:
    """Run tcpdump while a short TCP exchange happens on 127.0.0.1; return the number of exchanges."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    cmd = ["tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-Z", "root", "-w", str(path), *extra, f"tcp port {port}"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        seen = b""
        while b"listening on" not in seen and time.monotonic() < deadline:
            r, _, _ = select.select([proc.stderr], [], [], 0.2)
            if r:
                seen += os.read(proc.stderr.fileno(), 4096)
        assert b"listening on" in seen, seen
        for i in range(3):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            s, _ = srv.accept()
            c.sendall(b"hello %d" % i * (50 * (i + 1)))
            s.recv(65536)
            s.sendall(b"ok")
            c.recv(16)
            c.close()
            s.close()
        time.sleep(0.3)  # -U flushes per packet; give the kernel ring a moment
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        srv.close()
    return 3


def _tshark(path) -> list[tuple[str, int, int]]:
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch", "-e", "frame.len",
                          "-e", "frame.cap_len"], check=True, capture_output=True, text=True, timeout=60).stdout
    return [(t, int(n), int(c)) for t, n, c in (line.split("\t") for line in out.splitlines() if line)]


def _ours(path):
    r = open_capture(path)
    rows = [(t, w, len(f), b.linktype) for b in r for t, f, w in zip(b.ts, b.frames, b.wirelen)]
    return r, rows


def _assert_same(path, oracle, tol=1e-6):
    r, rows = _ours(path)
    assert len(rows) == len(oracle) > 0
    for (t, w, c, _), (ot, ow, oc) in zip(rows, oracle):
        assert (w, c) == (ow, oc)
        assert abs(t - float(ot)) < tol, (t, ot)
    assert r.warnings == [] and r.truncated == 0
    return r, rows


@pytest.fixture(scope="module")
def lo_pcap(tmp_path_factory):
    assert shutil.which("tcpdump") and shutil.which("tshark") and shutil.which("editcap")
    path = tmp_path_factory.mktemp("real") / "lo.pcap"
    _capture_loopback(path)
    return path


def test_tcpdump_pcap_matches_tshark(lo_pcap):
    oracle = _tshark(lo_pcap)
    r, rows = _assert_same(lo_pcap, oracle)
    assert r.format == "pcap" and {lt for *_, lt in rows} == {1}
    assert len(rows) >= 7  # at least one whole connection (tcpdump may miss the last packets at SIGINT)


def test_editcap_conversions_match_tshark(lo_pcap, tmp_path):
    oracle = _tshark(lo_pcap)
    for fmt in ("pcapng", "nsecpcap", "pcap"):
        out = tmp_path / f"lo.{fmt}"
        subprocess.run(["editcap", "-F", fmt, str(lo_pcap), str(out)], check=True, capture_output=True, timeout=60)
        r, _ = _assert_same(out, _tshark(out))
        assert r.format == ("pcapng" if fmt == "pcapng" else "pcap")
        assert len(_tshark(out)) == len(oracle)
        gz = tmp_path / f"lo-{fmt}.gz"
        gz.write_bytes(gzip.compress(out.read_bytes()))
        r, _ = _assert_same(gz, _tshark(out))
        assert r.compressed


def test_editcap_snapped_frames_keep_wire_length(lo_pcap, tmp_path):
    out = tmp_path / "snap.pcapng"
    subprocess.run(["editcap", "-s", "60", "-F", "pcapng", str(lo_pcap), str(out)], check=True, capture_output=True)
    _, rows = _assert_same(out, _tshark(out))
    assert max(c for _, _, c, _ in rows) == 60 and any(w > c for _, w, c, _ in rows)


def test_mergecap_interleaved_and_time_order(lo_pcap, tmp_path):
    # Shift a copy by +1000 s; open_captures must read the earlier file first whatever the names.
    later = tmp_path / "a_later.pcapng"
    subprocess.run(["editcap", "-t", "1000", str(lo_pcap), str(later)], check=True, capture_output=True)
    src = open_captures([later, lo_pcap])
    ts = [t for b in src for t in b.ts]
    n = len(_tshark(lo_pcap))
    assert len(ts) == 2 * n and ts == sorted(ts)
    assert src.files == [str(lo_pcap), str(later)]


def test_tcpdump_any_interface_nanosecond_is_sll2(tmp_path):
    path = tmp_path / "any.pcap"
    _capture_loopback(path, "any", ("--time-stamp-precision=nano",))
    oracle = _tshark(path)
    _, rows = _assert_same(path, oracle)
    assert {lt for *_, lt in rows} == {276}
    raw = path.read_bytes()[:4]
    assert raw == b"\x4d\x3c\xb2\xa1"  # nanosecond magic, little endian
