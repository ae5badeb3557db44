"""Live capture on the real loopback interface (root): batches, non-blocking reads, filters, stats,
snapped frames, and the privilege drop with an open handle."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from sensor.capture import CaptureError, PacketBatch
from sensor.capture.live import LiveCapture, LiveOptions, LiveSource
from sensor.events import Counters
from sensor.pipeline import Pipeline


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _send(port: int, sizes: list[int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for n in sizes:
            s.sendto(b"r" * n, ("127.0.0.1", port))


def _read_all(cap, want: int, timeout: float = 5.0) -> list[PacketBatch]:
    out, got, deadline = [], 0, time.monotonic() + timeout
    while got < want and time.monotonic() < deadline:
        select.select([cap.fileno()], [], [], 0.2)
        b = cap.read()
        if b is not None:
            out.append(b)
            got += len(b.frames)
    return out


def test_batches_feed_the_pipeline_like_file_batches():
    port = _free_udp_port()
    cap = LiveCapture("lo", LiveOptions(bpf=f"udp port {port}", timeout_ms=20, promisc=False)).open()
    try:
        t0 = time.monotonic()
        assert cap.read() is None  # idle ring: returns at once, never blocks
        assert time.monotonic() - t0 < 0.05
        sizes = [1 + 97 * i for i in range(50)]
        _send(port, sizes)
        batches = _read_all(cap, len(sizes))
        frames = [bytes(f) for b in batches for f in b.frames]
        assert len(frames) == 50
        assert all(b.linktype == 1 and b.source == "lo" for b in batches)
        # Ethernet(14) + IPv4(20) + UDP(8) + payload; wirelen equals captured length (full snaplen)
        assert [len(f) - 42 for f in frames] == sizes
        assert [w for b in batches for w in b.wirelen] == [len(f) for f in frames]
        assert all(abs(t - time.time()) < 10 for b in batches for t in b.ts)
        events = []
        pipe = Pipeline(events.append, counters=Counters())
        for b in batches:
            pipe.feed(b)
        pipe.finish()
        assert pipe.packets == 50
        flows = [e for e in events if e.log_name == "flows"]
        assert len(flows) == 1 and flows[0].packets == (50, 0) and flows[0].server.port == port
        st = cap.stats()
        assert st.kernel_drops == 0 and st.received >= 50
    finally:
        cap.close()


def test_short_snaplen_reports_wire_length():
    port = _free_udp_port()
    cap = LiveCapture("lo", LiveOptions(bpf=f"udp port {port}", snaplen=96, timeout_ms=20, promisc=False)).open()
    try:
        _send(port, [1000, 10])
        batches = _read_all(cap, 2)
        assert [len(f) for b in batches for f in b.frames] == [96, 52]
        assert [w for b in batches for w in b.wirelen] == [1042, 52]
    finally:
        cap.close()


def test_filter_replaced_on_the_open_handle():
    p1, p2 = _free_udp_port(), _free_udp_port()
    src = LiveSource(["lo"], LiveOptions(bpf=f"udp port {p1}", timeout_ms=20, promisc=False)).open()
    try:
        fd = src.fds()[0]
        src.set_filter(f"udp port {p2}")
        _send(p1, [10] * 5)
        _send(p2, [20] * 3)
        time.sleep(0.1)
        got = []
        for _ in range(20):
            got += src.read_ready(src.wait(0.1), 1000)
        assert sum(len(b.frames) for b in got) == 3 and src.fds() == [fd]
        with pytest.raises(CaptureError, match="bad BPF filter"):
            src.set_filter("udp port")
    finally:
        src.close()


def test_open_errors_are_one_line():
    with pytest.raises(CaptureError, match="interface nosuch0: cannot capture"):
        LiveCapture("nosuch0").open()
    with pytest.raises(CaptureError, match="bad BPF filter 'tcp port banana'"):
        LiveCapture("lo", LiveOptions(bpf="tcp port banana")).open()


def test_privileges_dropped_with_the_capture_still_readable(tmp_path):
    """In a child (the drop is for good): open on lo as root, become nobody, still capture."""
    port = _free_udp_port()
    code = textwrap.dedent(f"""
        import os, select, socket, sys
        from sensor.capture.live import LiveCapture, LiveOptions
        from sensor.daemon.privileges import drop_privileges, PrivilegeError
        cap = LiveCapture("lo", LiveOptions(bpf="udp port {port}", timeout_ms=20, promisc=False)).open()
        assert drop_privileges("nobody") is True
        assert os.getuid() == os.geteuid() == 65534 and os.getgid() != 0 and 0 not in os.getgroups()
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            sys.exit("regained root")
        try:
            LiveCapture("lo").open()
        except Exception as exc:
            print("reopen refused:", type(exc).__name__)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"x", ("127.0.0.1", {port}))
        n = 0
        for _ in range(50):
            select.select([cap.fileno()], [], [], 0.1)
            b = cap.read()
            n += len(b.frames) if b else 0
            if n:
                break
        print("captured", n, "drops", cap.stats().kernel_drops)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0, res.stderr
    assert "captured 1 drops 0" in res.stdout and "reopen refused: CaptureError" in res.stdout


def test_unknown_user_is_a_clear_error():
    from sensor.daemon.privileges import PrivilegeError, drop_privileges

    with pytest.raises(PrivilegeError, match="daemon.user: no such user 'no-such-user-x'"):
        drop_privileges("no-such-user-x")
    assert drop_privileges("") is False
