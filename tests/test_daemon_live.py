"""`radsensor run` as a real subprocess capturing a veth pair inside a namespace the test makes.

tcpreplay puts a capture on one end of the pair, the sensor captures the other end, both inside
the namespace (tests/netns.py): no replayed packet can leave the machine. The model is a real one,
trained by ``training.baseline.train`` on a baseline capture the test builds with dpkt.
Asserts: every packet counted on the metrics endpoint with zero kernel drops, SIGHUP applies a
new BPF filter on the open handle and keeps running, SIGTERM exits 0 after flushing open flows,
privileges are dropped, and two PACKET_FANOUT workers together see every packet once.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dpkt
import pytest

from sensor.daemon.metrics import parse_text
from tests.netns import NetNs

pytestmark = pytest.mark.netns

T0 = 1772600000.0
METRICS_PORT = 9477  # inside the namespace: its own port space


# ------------------------------------------------------------------------------------- traffic


def _mac(s: str) -> bytes:
    return bytes.fromhex(s.replace(":", ""))


def write_baseline(path: str, minutes: int = 180, clients: int = 5) -> tuple[int, int]:
    """Clients open short TCP connections to a server on port 104 and send a DNS-like datagram,
    once a minute each. Returns (packets, tcp packets)."""
    srv, smac = socket.inet_aton("10.20.0.10"), _mac("02:00:00:00:00:0a")
    dns = socket.inet_aton("10.20.0.53")
    S, A, F, P = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_PUSH
    n = n_tcp = 0
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for m in range(minutes):
            for c in range(clients):
                cip, cmac = socket.inet_aton(f"10.20.2.{11 + c}"), _mac(f"02:00:00:00:02:{11 + c:02x}")
                sp = 20000 + (m * clients + c) % 40000

                def tcp(from_client: bool, flags: int, seq: int, ack: int, data: bytes = b"",
                        cip=cip, cmac=cmac, sp=sp) -> bytes:
                    src, dst, s, d, sm, dm = ((cip, srv, sp, 104, cmac, smac) if from_client
                                              else (srv, cip, 104, sp, smac, cmac))
                    seg = dpkt.tcp.TCP(sport=s, dport=d, flags=flags, seq=seq, ack=ack, data=data, win=65535)
                    ip = dpkt.ip.IP(src=src, dst=dst, p=6, ttl=64, data=seg)
                    ip.len = 20 + len(bytes(seg))
                    return bytes(dpkt.ethernet.Ethernet(src=sm, dst=dm, type=0x0800, data=ip))

                frames = [tcp(True, S, 1000, 0), tcp(False, S | A, 5000, 1001), tcp(True, A, 1001, 5001),
                          tcp(True, P | A, 1001, 5001, b"x" * 200), tcp(False, A, 5001, 1201),
                          tcp(True, F | A, 1201, 5001), tcp(False, F | A, 5001, 1202), tcp(True, A, 1202, 5002)]
                n_tcp += len(frames)
                u = dpkt.udp.UDP(sport=sp, dport=53, data=b"q" * 40)
                u.ulen = 48
                ip = dpkt.ip.IP(src=cip, dst=dns, p=17, ttl=64, data=u)
                ip.len = 68
                frames.append(bytes(dpkt.ethernet.Ethernet(src=cmac, dst=smac, type=0x0800, data=ip)))
                t = T0 + m * 60 + c * 3.0
                for i, fr in enumerate(frames):
                    w.writepkt(fr, t + i * 0.001)
                    n += 1
    return n, n_tcp


@pytest.fixture(scope="module")
def world():
    """A directory the unprivileged service user can read (model, config) and write (alerts)."""
    d = Path(tempfile.mkdtemp(prefix="radsensor-daemon-"))
    os.chmod(d, 0o755)
    pcap = d / "baseline.pcap"
    counts = write_baseline(str(pcap))
    from training.baseline import TrainConfig, train

    artifact, _ = train([str(pcap)], TrainConfig(n_jobs=1, n_estimators=50))
    artifact.save(d / "model.rsm")
    out = d / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    for f in d.iterdir():
        os.chmod(f, os.stat(f).st_mode | stat.S_IROTH)
    yield {"dir": d, "pcap": str(pcap), "model": str(d / "model.rsm"), "packets": counts[0],
           "tcp_packets": counts[1], "out": out}
    shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------------- daemon


class Daemon:
    """``radsensor run`` inside the namespace; stderr collected by a thread."""

    def __init__(self, ns: NetNs, argv: list[str]) -> None:
        self.ns = ns
        self.lines: list[str] = []
        cmd = [sys.executable, "-m", "sensor.commands.run", *argv]
        self.proc = ns.popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             cwd=str(Path(__file__).resolve().parents[1]))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_log(self, pattern: str, timeout: float = 20.0) -> re.Match:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = rx.search(line)
                if m:
                    return m
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader catch the last lines
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.log}")
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r} in {timeout}s:\n{self.log}")

    def metrics(self) -> dict[str, float]:
        return parse_text(self.ns.http_get(f"http://127.0.0.1:{METRICS_PORT}/metrics"))

    def wait_metric(self, key: str, predicate, timeout: float = 15.0) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        m: dict[str, float] = {}
        while time.monotonic() < deadline:
            m = self.metrics()
            if predicate(m.get(key, 0.0)):
                return m
            time.sleep(0.3)
        raise AssertionError(f"{key} = {m.get(key)} after {timeout}s\n{self.log}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"daemon ignored SIGTERM for {timeout}s:\n{self.log}")
        self._reader.join(5)
        return self.proc.returncode


def _config(path: Path, bpf: str, out: Path) -> None:
    path.write_text(f"""
[capture]
filter = "{bpf}"
timeout_ms = 50

[flows]
udp_idle = 600

[metrics]
port = {METRICS_PORT}

[daemon]
stats_interval = 1

[[sinks]]
type = "jsonl"
path = "{out / 'alerts.jsonl'}"
""")
    os.chmod(path, 0o644)


@pytest.fixture
def ns():
    with NetNs() as n:
        yield n


def _pk(m: dict[str, float], ns: NetNs) -> float:
    return m.get(f'radsensor_packets_total{{interface="{ns.rx}"}}', 0.0)


def test_replay_sighup_filter_then_sigterm_flushes(ns, world):
    cfg = world["dir"] / f"run-{ns.name}.toml"
    _config(cfg, "", world["out"])
    d = Daemon(ns, ["-i", ns.rx, "-m", world["model"], "--config", str(cfg), "--user", "nobody"])
    try:
        d.wait_log(r"capturing on " + re.escape(ns.rx))
        d.wait_log(r"running as user nobody")
        uid = int(re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{d.proc.pid}/status").read_text(), re.MULTILINE).group(1))
        assert uid == 65534  # privileges dropped while the capture handle stays open

        n = world["packets"]
        ns.replay(world["pcap"], pps=20000)
        m = d.wait_metric(f'radsensor_packets_total{{interface="{ns.rx}"}}', lambda v: v >= n)
        assert _pk(m, ns) == n, d.log
        assert m[f'radsensor_kernel_drops_total{{interface="{ns.rx}"}}'] == 0
        assert m["radsensor_flows_created_total"] == 1800  # 900 TCP connections + 900 UDP
        # FIN-closed TCP flows end after the linger; UDP flows (600 s idle) stay open until SIGTERM.
        m = d.wait_metric('radsensor_events_total{log="flows"}', lambda v: v >= 900)
        assert m['radsensor_events_total{log="flows"}'] == 900
        assert m["radsensor_flows_active"] == 900

        # SIGHUP: a new filter on the SAME handle (no restart): only TCP is counted now.
        _config(cfg, "tcp", world["out"])
        d.signal(signal.SIGHUP)
        d.wait_log(r"reloaded configuration")
        assert d.proc.poll() is None
        m = d.metrics()
        assert m["radsensor_reloads_total"] == 1 and m["radsensor_reload_failures_total"] == 0
        assert m["radsensor_flows_active"] == 900  # flow state survived the reload
        ns.replay(world["pcap"], pps=20000)
        m = d.wait_metric(f'radsensor_packets_total{{interface="{ns.rx}"}}',
                          lambda v: v >= n + world["tcp_packets"])
        time.sleep(0.5)
        assert _pk(d.metrics(), ns) == n + world["tcp_packets"]

        # A broken file on SIGHUP is refused; the sensor keeps running with what it had.
        cfg.write_text("[capture]\nsnaplen = 'big'\n")
        d.signal(signal.SIGHUP)
        d.wait_log(r"reload: capture\.snaplen: expected an integer")
        assert d.proc.poll() is None

        t = time.monotonic()
        assert d.stop() == 0, d.log
        assert time.monotonic() - t < 10
        stopped = d.wait_log(r"stopped: (\d+) packets, (\d+) kernel drops, \d+ interface drops, (\d+) events")
        assert int(stopped.group(1)) == n + world["tcp_packets"]
        assert int(stopped.group(2)) == 0
        # every flow ended and was emitted: 900 + 900 (UDP, flushed at SIGTERM) + 900 (2nd replay)
        assert int(stopped.group(3)) >= 2700
        assert "Traceback" not in d.log
    finally:
        d.stop()


def test_rate_without_kernel_drops(ns, world):
    """Replays ~80k packets at 40k packets/s: every one counted, none dropped by the kernel."""
    d = Daemon(ns, ["-i", ns.rx, "-m", world["model"], "--metrics-port", str(METRICS_PORT),
                    "--jsonl", str(world["out"] / "rate.jsonl")])
    try:
        d.wait_log(r"capturing on")
        loops = 10
        started = time.monotonic()
        summary = ns.replay(world["pcap"], pps=40000, loop=loops)
        elapsed = time.monotonic() - started
        total = world["packets"] * loops
        m = d.wait_metric(f'radsensor_packets_total{{interface="{ns.rx}"}}', lambda v: v >= total)
        assert _pk(m, ns) == total, summary
        assert m[f'radsensor_kernel_drops_total{{interface="{ns.rx}"}}'] == 0
        print(f"\nlive: {total} packets in {elapsed:.2f}s ({total / elapsed:,.0f}/s), 0 kernel drops")
    finally:
        assert d.stop() == 0, d.log


def test_two_fanout_workers_see_every_packet_once(ns, world):
    d = Daemon(ns, ["-i", ns.rx, "-m", world["model"], "--metrics-port", str(METRICS_PORT), "--workers", "2",
                    "--jsonl", str(world["out"] / "workers.jsonl")])
    try:
        d.wait_log(r"capturing on .*2 workers")
        n = world["packets"]
        ns.replay(world["pcap"], pps=20000)
        m = d.wait_metric(f'radsensor_packets_total{{interface="{ns.rx}"}}', lambda v: v >= n)
        time.sleep(0.6)
        m = d.metrics()
        assert _pk(m, ns) == n  # both workers together: each packet exactly once
        # flow-symmetric hashing: both directions of every TCP connection met in one worker
        assert m["radsensor_flows_created_total"] == 1800
    finally:
        assert d.stop() == 0, d.log
    stopped = d.wait_log(r"stopped: (\d+) packets, (\d+) kernel drops")
    assert int(stopped.group(1)) == n and int(stopped.group(2)) == 0
