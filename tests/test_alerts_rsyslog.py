"""Syslog delivery against a REAL rsyslogd (imtcp, imtcp+gtls, imudp) started by the test.

The test makes its own CA and server certificate with the openssl CLI, writes an rsyslog config
into a temporary directory (own work directory and pid file, listeners on free 127.0.0.1 ports,
one output file per listener with the raw message), runs ``rsyslogd -n -f CONF -i PIDFILE`` as a
child process and stops it by its PID. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sensor.alerts.formats import to_cef, to_leef
from sensor.alerts.schema import Alert, DeviceRef, Evidence, Peer
from sensor.alerts.sinks import SyslogSink
from sensor.alerts.syslog import TcpTransport, TlsTransport, UdpTransport
from tests.test_alerts_formats import check_cef, check_leef
from tests.test_alerts_wire import parse_cef, parse_leef, parse_syslog

RSYSLOGD = "/usr/sbin/rsyslogd"
T0 = datetime(2026, 3, 4, 3, 0, tzinfo=UTC)


# ------------------------------------------------------------------------------------------ PKI


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_ca(d: Path, name: str) -> None:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-subj",
        f"/CN=radsensor test {name}",
        cwd=d,
    )


def _make_leaf(d: Path, name: str, ca: str, ext: str) -> None:
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=d,
    )
    (d / f"{name}.ext").write_text(ext)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        cwd=d,
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _make_ca(d, "ca")
    _make_ca(d, "rogue")  # a CA nobody trusts
    _make_leaf(
        d,
        "server",
        "ca",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    _make_leaf(
        d,
        "client",
        "ca",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    return d


# ------------------------------------------------------------------------------------------ rsyslog


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rsyslog:
    """One rsyslogd child: plain TCP, TLS (anonymous clients), TLS (client cert required), UDP."""

    LISTENERS = ("tcp", "tls", "mtls", "udp")

    def __init__(self, root: Path, pki: Path) -> None:
        self.root = root
        (root / "work").mkdir(parents=True, exist_ok=True)
        self.ports = {
            k: _free_port(socket.SOCK_DGRAM if k == "udp" else socket.SOCK_STREAM) for k in self.LISTENERS
        }
        self.conf = root / "rsyslog.conf"
        self.pidfile = root / "rsyslogd.pid"
        self.proc: subprocess.Popen | None = None
        tls = 'streamDriver.name="gtls" streamDriver.mode="1"'
        self.conf.write_text(
            f"""
global(workDirectory="{root / "work"}" maxMessageSize="64k"
       inputs.timeout.shutdown="200"
       parser.escapeControlCharactersOnReceive="off"
       defaultNetstreamDriverCAFile="{pki / "ca.pem"}"
       defaultNetstreamDriverCertFile="{pki / "server.pem"}"
       defaultNetstreamDriverKeyFile="{pki / "server.key"}")
module(load="imtcp")
module(load="imudp")
template(name="raw" type="string" string="%rawmsg%\\n")
"""
            + "".join(
                f'ruleset(name="{k}") {{ action(type="omfile" file="{self.log(k)}" template="raw") }}\n'
                for k in self.LISTENERS
            )
            + f"""
input(type="imtcp" address="127.0.0.1" port="{self.ports["tcp"]}" ruleset="tcp")
input(type="imtcp" address="127.0.0.1" port="{self.ports["tls"]}" ruleset="tls" {tls} streamDriver.authMode="anon")
input(type="imtcp" address="127.0.0.1" port="{self.ports["mtls"]}" ruleset="mtls" {tls}
      streamDriver.authMode="x509/certvalid")
input(type="imudp" address="127.0.0.1" port="{self.ports["udp"]}" ruleset="udp")
"""
        )

    def log(self, kind: str) -> Path:
        return self.root / f"{kind}.log"

    def start(self) -> None:
        assert self.proc is None
        err = open(self.root / "rsyslogd.stderr", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
            stdout=err,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
        err.close()
        deadline = time.monotonic() + 10
        pending = {"tcp", "tls", "mtls"}
        while pending:
            assert self.proc.poll() is None, (self.root / "rsyslogd.stderr").read_text()
            assert time.monotonic() < deadline, f"rsyslogd ports {pending} not listening"
            for k in sorted(pending):  # a copy: the set shrinks inside the loop
                try:
                    socket.create_connection(("127.0.0.1", self.ports[k]), timeout=0.2).close()
                    pending.discard(k)
                except OSError:
                    pass
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)  # our own child, by PID
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        self.proc = None

    def lines(self, kind: str) -> list[str]:
        p = self.log(kind)
        if not p.exists():
            return []
        text = p.read_text(encoding="utf-8")
        return text[: text.rfind("\n") + 1].splitlines()  # complete lines only: rsyslog may be mid-write

    def wait_lines(self, kind: str, n: int, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.lines(kind)
            if len(got) >= n or time.monotonic() > deadline:
                return got
            time.sleep(0.02)


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory, pki):
    rs = Rsyslog(tmp_path_factory.mktemp("rsyslog"), pki)
    rs.start()
    yield rs
    rs.stop()


@pytest.fixture
def fresh_rsyslog(tmp_path, pki):
    rs = Rsyslog(tmp_path / "rsyslog", pki)
    yield rs
    rs.stop()


# ------------------------------------------------------------------------------------------ helpers


def alert(i: int, title: str | None = None) -> Alert:
    ws = T0 + timedelta(minutes=i)
    return Alert(
        rule_id="anomaly.c_find_sweep",
        kind="anomaly",
        severity="high",
        title=title if title is not None else f"seq={i:05d}",
        device=DeviceRef("10.20.2.11", "00:11:22:33:44:55", ("WS2",), "workstation"),
        peers=(Peer("10.20.0.10", "PACS", 104),),
        window_start=ws,
        window_end=ws + timedelta(minutes=1),
        score=0.81,
        threshold=0.62,
        evidence=(Evidence("dimse.c_find_rq", 2140, 1, 12),),
        attack=("T1005",),
        count=1,
        sensor="sensor-1",
    )


NASTY = 'C-FIND sweep "x|y" a=b\\c ]z[ \t≤ 12/min'


def transport(rs: Rsyslog, kind: str, pki: Path, **kw):
    if kind == "tcp":
        return TcpTransport("127.0.0.1", rs.ports["tcp"], timeout=2.0)
    if kind == "udp":
        return UdpTransport("127.0.0.1", rs.ports["udp"], **kw)
    port = rs.ports["mtls" if kw.pop("mutual", False) else "tls"]
    return TlsTransport("127.0.0.1", port, ca_file=str(pki / "ca.pem"), timeout=2.0, **kw)


def sink(rs: Rsyslog, kind: str, pki: Path, spool: Path, fmt: str = "json", **kw) -> SyslogSink:
    tkw = {k: kw.pop(k) for k in ("max_size", "mutual", "certfile", "keyfile") if k in kw}
    kw.setdefault("backoff_initial", 0.05)
    kw.setdefault("backoff_max", 0.2)
    return SyslogSink(transport(rs, kind, pki, **tkw), spool, fmt=fmt, **kw)


def seqs(lines: list[str]) -> list[int]:
    return [int(json.loads(parse_syslog(ln)["msg"])["title"].removeprefix("seq=")) for ln in lines]


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("kind", ["tcp", "tls"])
@pytest.mark.parametrize("fmt", ["json", "cef", "leef"])
def test_formats_arrive_and_parse_back(rsyslog, pki, tmp_path, kind, fmt):
    before = len(rsyslog.lines(kind))
    a = alert(7, title=f"{fmt}/{kind}: {NASTY}")
    s = sink(rsyslog, kind, pki, tmp_path / "spool", fmt=fmt)
    s.submit(a)
    assert s.flush(10), s.last_error
    s.close()
    lines = rsyslog.wait_lines(kind, before + 1)
    assert len(lines) == before + 1
    d = parse_syslog(lines[-1])
    assert d["pri"] == 20 * 8 + 3 and d["hostname"] == "sensor-1" and d["app"] == "radsensor"
    assert d["msgid"] == a.rule_id and d["procid"] == str(os.getpid())
    assert d["sd"]["radsensor@32473"]["id"] == a.id and d["sd"]["radsensor@32473"]["device"] == "10.20.2.11"
    if fmt == "json":
        assert Alert.from_dict(json.loads(d["msg"])) == a
    elif fmt == "cef":
        assert d["msg"] == to_cef(a)
        check_cef(d["msg"], a)
        assert parse_cef(d["msg"])[1]["msg"] == a.title
    else:
        assert d["msg"] == to_leef(a)
        check_leef(d["msg"], a)
        assert parse_leef(d["msg"])[1]["name"] == a.title.replace("\t", " ")
    assert s.stats()["delivered"] == 1 and s.stats()["failed"] == 0


def test_udp_arrives_and_oversize_is_truncated(rsyslog, pki, tmp_path):
    s = sink(rsyslog, "udp", pki, tmp_path / "spool", fmt="cef", max_size=1024)
    a, big = alert(1, title="udp " + NASTY), alert(2, title="big " + "x" * 3000)
    s.submit(a)
    s.submit(big)
    assert s.flush(5)
    lines = rsyslog.wait_lines("udp", 2, timeout=5)
    assert len(lines) == 2
    d = parse_syslog(lines[0])
    assert d["msgid"] == a.rule_id and d["msg"] == to_cef(a)
    assert len(lines[1].encode()) == 1024 and lines[1].startswith("<163>1 ")
    st = s.stats()
    assert st["truncated"] == 1 and st["delivered"] == 2
    s.close()


def test_mutual_tls_with_client_certificate(rsyslog, pki, tmp_path):
    s = sink(
        rsyslog,
        "tls",
        pki,
        tmp_path / "spool",
        mutual=True,
        certfile=str(pki / "client.pem"),
        keyfile=str(pki / "client.key"),
    )
    s.submit(alert(3))
    assert s.flush(10), s.last_error
    s.close()
    assert seqs(rsyslog.wait_lines("mtls", 1)) == [3]


@pytest.mark.parametrize(
    "kw, reason",
    [
        ({"ca_file": "rogue"}, "certificate verify failed"),  # unknown CA
        ({"ca_file": None}, "certificate verify failed"),  # system trust store: test CA unknown
        ({"server_hostname": "pacs.example"}, "Hostname mismatch"),  # right CA, wrong name
    ],
)
def test_tls_refused_when_verification_fails(rsyslog, pki, tmp_path, kw, reason):
    before = len(rsyslog.lines("tls"))
    ca = kw.pop("ca_file", "ca")
    t = TlsTransport(
        "127.0.0.1", rsyslog.ports["tls"], ca_file=str(pki / f"{ca}.pem") if ca else None, timeout=2.0, **kw
    )
    with pytest.raises(ssl.SSLCertVerificationError, match=reason):
        t.connect()
    s = SyslogSink(t, tmp_path / "spool", backoff_initial=0.05, backoff_max=0.1)
    s.submit(alert(4))
    assert not s.flush(0.5)
    st = s.stats()
    assert st["delivered"] == 0 and st["failed"] >= 1 and st["spooled"] == 1
    assert "SSLCertVerificationError" in (s.last_error or "")
    s.close(0)
    time.sleep(0.1)
    assert len(rsyslog.lines("tls")) == before


def test_mutual_tls_without_client_certificate_refused(rsyslog, pki, tmp_path):
    s = sink(rsyslog, "tls", pki, tmp_path / "spool", mutual=True)
    s.submit(alert(5))
    assert not s.flush(1.0)
    assert s.stats()["delivered"] == 0 and s.stats()["failed"] >= 1
    # rsyslog checks the client certificate after the handshake and then closes: the connect
    # probe must see that, or the alert would be "sent" into a connection being torn down.
    assert "ConnectionAbortedError" in (s.last_error or "")
    s.close(0)
    assert rsyslog.lines("mtls") == [] or seqs(rsyslog.lines("mtls")) == [3]


@pytest.mark.parametrize("kind", ["tcp", "tls"])
def test_outage_every_alert_exactly_once_in_order(fresh_rsyslog, pki, tmp_path, kind):
    rs = fresh_rsyslog
    rs.start()
    s = sink(rs, kind, pki, tmp_path / "spool")
    for i in range(20):
        s.submit(alert(i))
    assert s.flush(10), s.last_error
    assert len(rs.wait_lines(kind, 20)) == 20

    rs.stop()  # outage: receiver gone, our connection to it half-closed
    worst = 0.0
    for i in range(20, 60):
        t = time.perf_counter()
        s.submit(alert(i))
        worst = max(worst, time.perf_counter() - t)
        time.sleep(0.005)
    assert worst < 0.05, f"submit blocked for {worst * 1000:.1f} ms"
    time.sleep(0.3)
    st = s.stats()
    assert st["delivered"] == 20 and st["failed"] >= 1 and st["retries"] >= 1
    assert st["spooled"] + st["queue_depth"] == 40

    rs.start()  # same ports, same output file
    assert s.flush(15), s.last_error
    lines = rs.wait_lines(kind, 60)
    s.close()
    got = seqs(lines)
    assert got == list(range(60)), (
        f"missing={sorted(set(range(60)) - set(got))} dup={len(got) - len(set(got))}"
    )
    assert s.stats()["delivered"] == 60


def test_outage_while_streaming(fresh_rsyslog, pki, tmp_path):
    """rsyslog stopped and restarted while a producer submits continuously."""
    rs = fresh_rsyslog
    rs.start()
    s = sink(rs, "tcp", pki, tmp_path / "spool")
    n, done = 300, threading.Event()
    worst = [0.0]

    def produce():
        for i in range(n):
            t = time.perf_counter()
            s.submit(alert(i))
            worst[0] = max(worst[0], time.perf_counter() - t)
            time.sleep(0.003)
        done.set()

    th = threading.Thread(target=produce)
    th.start()
    time.sleep(0.25)
    rs.stop()
    time.sleep(0.3)
    rs.start()
    th.join(10)
    assert done.is_set()
    assert s.flush(15), s.last_error
    got = seqs(rs.wait_lines("tcp", n))
    s.close()
    assert worst[0] < 0.05
    assert got == list(range(n)), f"missing={sorted(set(range(n)) - set(got))} dup={len(got) - len(set(got))}"


def test_spool_overflow_counted_newest_kept(fresh_rsyslog, pki, tmp_path):
    rs = fresh_rsyslog  # not started yet: destination down
    s = sink(rs, "tcp", pki, tmp_path / "spool", spool_max_records=10, queue_size=5)
    for i in range(25):
        s.submit(alert(i))
    time.sleep(0.2)
    st = s.stats()
    assert st["spool_dropped"] == 15 and st["spooled"] == 10 and st["delivered"] == 0
    rs.start()
    assert s.flush(10), s.last_error
    s.close()
    assert seqs(rs.wait_lines("tcp", 10)) == list(range(15, 25))


def test_spool_survives_reopen(fresh_rsyslog, pki, tmp_path):
    rs = fresh_rsyslog
    spool = tmp_path / "spool"
    s = sink(rs, "tls", pki, spool)  # receiver down
    for i in range(8):
        s.submit(alert(i))
    s.close(timeout=0.3)  # gives up: undelivered alerts stay on disk
    assert (spool / "spool.sqlite3").exists()
    rs.start()
    s2 = sink(rs, "tls", pki, spool)  # a new process would do exactly this
    assert s2.stats()["spooled"] == 8
    s2.submit(alert(8))
    assert s2.flush(10), s2.last_error
    s2.close()
    assert seqs(rs.wait_lines("tls", 9)) == list(range(9))
