"""End to end: `radsensor run` with a real model → alerts at a REAL rsyslog over TCP and over TLS.

Everything runs inside a namespace the test creates (tests/netns.py): the sensor captures one end
of a veth pair, tcpreplay replays a labelled attack capture onto the other end, and rsyslogd (test
CA and server certificate from tests/test_alerts_rsyslog.py) listens on the namespace's own
loopback. The daemon's JSONL sink is the reference: every alert it wrote must arrive exactly once
at each syslog receiver, and parse back (CEF over TCP, LEEF and JSON over TLS) to the same id.

Inputs: the shipped baseline model ``models/*.rsm`` (or one trained here from ``pcaps/`` baseline
captures) and an attack capture ``pcaps/*attack*.pcap*``. They come from the generator
(``make dataset`` / the committed samples). Missing inputs FAIL this test with what to build;
it never skips.
"""

from __future__ import annotations

import glob
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netns import NetNs
from tests.test_alerts_rsyslog import RSYSLOGD, Rsyslog, pki  # noqa: F401 - pki is a fixture
from tests.test_alerts_wire import parse_cef, parse_leef, parse_syslog
from tests.test_daemon_live import Daemon

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[1]


def _inputs(tmp: Path) -> tuple[str, str]:
    attacks = sorted(glob.glob(str(ROOT / "pcaps" / "*attack*.pcap*")))
    assert attacks, "no attack capture in pcaps/ (pcaps/*attack*.pcap*): generate the samples first"
    models = sorted(glob.glob(str(ROOT / "models" / "*.rsm")))
    if models:
        return models[0], attacks[0]
    baselines = sorted(p for p in glob.glob(str(ROOT / "pcaps" / "*.pcap*")) if "attack" not in Path(p).name)
    assert baselines, "no model in models/ and no baseline capture in pcaps/ to train one from"
    from training.baseline import TrainConfig, train

    artifact, _ = train(baselines, TrainConfig(n_jobs=1))
    artifact.save(tmp / "model.rsm")
    return str(tmp / "model.rsm"), attacks[0]


class NsRsyslog(Rsyslog):
    """The same rsyslogd, started inside the namespace (the sensor's loopback is the namespace's)."""

    def __init__(self, root: Path, pki: Path, ns: NetNs) -> None:  # noqa: F811
        super().__init__(root, pki)
        self.ns = ns

    def start(self) -> None:
        err = open(self.root / "rsyslogd.stderr", "ab")  # noqa: SIM115
        self.proc = self.ns.popen([RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                                  stdout=err, stderr=err, stdin=subprocess.DEVNULL)
        err.close()
        probe = ("import socket,sys\nfor p in sys.argv[1:]: socket.create_connection(('127.0.0.1', int(p)), 1).close()")
        deadline = time.monotonic() + 15
        while True:
            assert self.proc.poll() is None, (self.root / "rsyslogd.stderr").read_text()
            r = self.ns.run([sys.executable, "-c", probe, str(self.ports["tcp"]), str(self.ports["tls"])], check=False)
            if r.returncode == 0:
                return
            assert time.monotonic() < deadline, "rsyslogd not listening inside the namespace"
            time.sleep(0.2)


def test_attack_replay_alerts_arrive_at_rsyslog_tcp_and_tls(tmp_path, pki):  # noqa: F811
    model, attack = _inputs(tmp_path)
    with NetNs() as ns:
        rs = NsRsyslog(tmp_path / "rsyslog", pki, ns)
        rs.start()
        try:
            cfg = tmp_path / "run.toml"
            cfg.write_text(f"""
[capture]
timeout_ms = 50
[detect]
lateness = 1
[metrics]
port = 9477
[daemon]
shutdown_timeout = 15
[[sinks]]
type = "jsonl"
name = "ref"
path = "{tmp_path / 'alerts.jsonl'}"
[[sinks]]
type = "syslog"
name = "tcp"
url = "tcp://127.0.0.1:{rs.ports['tcp']}"
format = "cef"
spool_dir = "{tmp_path / 'spool-tcp'}"
[[sinks]]
type = "syslog"
name = "tls"
url = "tls://127.0.0.1:{rs.ports['tls']}"
format = "leef"
spool_dir = "{tmp_path / 'spool-tls'}"
[sinks.tls]
ca = "{pki / 'ca.pem'}"
[[sinks]]
type = "syslog"
name = "tlsjson"
url = "tls://127.0.0.1:{rs.ports['tls']}"
format = "json"
spool_dir = "{tmp_path / 'spool-tlsjson'}"
[sinks.tls]
ca = "{pki / 'ca.pem'}"
""")
            d = Daemon(ns, ["-i", ns.rx, "-m", model, "--config", str(cfg)])
            try:
                d.wait_log(r"capturing on")
                ns.replay(attack, pps=20000, timeout=90)
                time.sleep(1.0)
            finally:
                assert d.stop(timeout=40) == 0, d.log  # SIGTERM: flush windows, deliver
            ref = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
            assert ref, f"no alert for {Path(attack).name} with {Path(model).name}:\n{d.log}"
            # Live merging re-sends an alert (same id, higher count) as repeats come in, so compare
            # the id sequences with their repeats: each sink got each message exactly once.
            ids = sorted(a["id"] for a in ref)
            tcp = [parse_syslog(x) for x in rs.wait_lines("tcp", len(ref))]
            tls = [parse_syslog(x) for x in rs.wait_lines("tls", 2 * len(ref))]
            assert len(tcp) == len(ref) and len(tls) == 2 * len(ref), d.log
            assert sorted(parse_cef(m["msg"])[1]["externalId"] for m in tcp) == ids
            leef = [parse_leef(m["msg"])[1] for m in tls if m["msg"].startswith("LEEF")]
            js = [json.loads(m["msg"]) for m in tls if m["msg"].startswith("{")]
            assert sorted(a["alertId"] for a in leef) == ids
            assert sorted(a["id"] for a in js) == ids
            assert "Traceback" not in d.log
        finally:
            rs.stop()
