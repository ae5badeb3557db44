"""Outage end to end: rsyslog stopped mid-run and restarted → every alert arrives exactly once.

Same setup as tests/test_daemon_siem.py (namespace with a veth pair, a real rsyslogd inside it
with TCP and TLS listeners, `radsensor run` capturing ``rx``, tcpreplay on ``tx``, shipped model
``models/demo.rsm`` and ``pcaps/attack-day.pcap``). The daemon has three sinks: JSONL (the ground
truth), syslog over TCP (CEF) and syslog over TLS (JSON, test CA) — both syslog sinks go to the
one rsyslogd, so each outage cuts both.

When alerts exist. The daemon's windows run on capture time, which live is the wall clock, and
alerts come out only when a window closes: at a minute boundary B (+ ``lateness`` = 1 s) and at
the SIGTERM flush. The test therefore aligns itself to B (at most one minute of waiting) and
replays the attack capture in three slices around it:

====================  ==============================================================
before B              part 1 replayed (window W0), rsyslog up; no alert yet
outage 1 (spans B)    rsyslog SIGTERMed; W0 closes → alerts written to JSONL, both
                      syslog sinks fail (metrics) and spool; part 2 replayed (W1)
restart 1             rsyslog on the same ports; the spool drains while the daemon runs
                      (waited for: every alert so far at rsyslog); part 3 replayed (W1)
outage 2              rsyslog SIGTERMed again — the sinks' connections are established
                      and get closed under them; daemon SIGTERMed: the flush scores W1
                      and closes the merge groups (same id, higher count) into the spool
restart 2             rsyslog back while the daemon still flushes; it delivers, exits 0
====================  ==============================================================

"Exactly once": live merging re-sends an alert with the same ``id`` and a higher ``count``, so
the unit is the pair (id, count) from the message's structured data. For each syslog sink the
sequence of pairs rsyslog received must EQUAL the sequence the daemon wrote to its JSONL sink:
same multiset (no duplicate, no loss) and same order. The payload must agree with the SD element
(CEF ``externalId``/``cnt``; JSON: the whole alert equals the JSONL record).

The only knob turned from its default for the test is the syslog ``backoff_max`` (1 s instead of
60 s) so a restarted receiver is reached within the test's time budget.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import dpkt
import pytest

from tests.netns import NetNs
from tests.test_alerts_rsyslog import pki  # noqa: F401 - fixture
from tests.test_alerts_wire import parse_cef, parse_syslog
from tests.test_daemon_live import Daemon
from tests.test_daemon_siem import NsRsyslog, _inputs

pytestmark = pytest.mark.netns

PPS = 15000  # replay rate: ~3 s for the whole capture, far below what the daemon keeps up with
PARTS = (0.4, 0.3, 0.3)  # share of the capture's packets in each replayed slice
LEAD = 4.0  # seconds before the minute boundary at which part 1 starts (covers its replay)
BUDGET = 88.0  # the whole test, seconds (worst case ~76 s, ~60 s of it waiting for the boundary)
SD = "radsensor@32473"


def _slices(pcap: str, out: Path) -> list[Path]:
    """The capture cut into consecutive packet slices (same link type), written to ``out``."""
    with open(pcap, "rb") as fh:
        rd = dpkt.pcap.Reader(fh)
        link, snap = rd.datalink(), rd.snaplen
        pkts = list(rd)
    paths, start = [], 0
    for i, share in enumerate(PARTS):
        end = len(pkts) if i == len(PARTS) - 1 else start + int(len(pkts) * share)
        p = out / f"part{i + 1}.pcap"
        with open(p, "wb") as fh:
            w = dpkt.pcap.Writer(fh, snaplen=snap, linktype=link)
            for ts, buf in pkts[start:end]:
                w.writepkt(buf, ts)
        paths.append(p)
        start = end
    return paths


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines()]


def _wait(cond, timeout: float, what: str, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert time.monotonic() < deadline, f"{what} (after {timeout:.0f} s)\n{log()}"
        time.sleep(0.05)


def _tally(sent: list[tuple[str, int]], got: list[tuple[str, int]]) -> tuple[int, int]:
    """(duplicates, lost) between two multisets of (id, count)."""
    s, g = Counter(sent), Counter(got)
    return sum((g - s).values()), sum((s - g).values())


def _check_sink(kind: str, fmt: str, lines: list[str], ref: list[dict], during: int) -> str:
    sent = [(a["id"], a["count"]) for a in ref]
    msgs = [parse_syslog(x) for x in lines]
    got = [(m["sd"][SD]["id"], int(m["sd"][SD]["count"])) for m in msgs]
    dup, lost = _tally(sent, got)
    summary = (f"outage test: sent {len(sent)}, delivered {len(got)}, duplicates {dup}, lost {lost}, "
               f"alerts during outage {during} ({kind}/{fmt})")
    print(summary)
    assert dup == 0 and lost == 0, summary
    assert got == sent, f"{kind}: every alert arrived once, but out of order"
    by_pair = {(a["id"], a["count"]): a for a in ref}
    for m, pair in zip(msgs, got, strict=True):
        if fmt == "cef":
            ext = parse_cef(m["msg"])[1]
            assert (ext["externalId"], int(ext["cnt"])) == pair
        else:
            assert json.loads(m["msg"]) == by_pair[pair]  # the whole alert, intact
    return summary


def test_rsyslog_outages_every_alert_exactly_once_in_order(tmp_path, pki):  # noqa: F811
    t0 = time.monotonic()
    marks: list[str] = []  # wall-clock phase timeline, printed (and kept in a failure's message)

    def left(cap: float) -> float:
        """A wait's timeout: ``cap``, but never past the test's time budget."""
        return max(0.5, min(cap, t0 + BUDGET - time.monotonic()))

    def mark(what: str) -> None:
        now = time.time()
        marks.append(f"{time.strftime('%H:%M:%S', time.localtime(now))}.{int(now * 10) % 10} {what}")

    model, attack = _inputs(tmp_path)
    parts = _slices(attack, tmp_path)
    ref_path = tmp_path / "alerts.jsonl"
    with NetNs() as ns:
        rs = NsRsyslog(tmp_path / "rsyslog", pki, ns)
        d: Daemon | None = None
        try:
            rs.start()
            cfg = tmp_path / "run.toml"
            cfg.write_text(f"""
[capture]
timeout_ms = 50
[detect]
lateness = 1
[metrics]
port = 9477
[daemon]
shutdown_timeout = 20
[[sinks]]
type = "jsonl"
name = "ref"
path = "{ref_path}"
[[sinks]]
type = "syslog"
name = "tcp"
url = "tcp://127.0.0.1:{rs.ports['tcp']}"
format = "cef"
backoff_max = 1.0
spool_dir = "{tmp_path / 'spool-tcp'}"
[[sinks]]
type = "syslog"
name = "tls"
url = "tls://127.0.0.1:{rs.ports['tls']}"
format = "json"
backoff_max = 1.0
spool_dir = "{tmp_path / 'spool-tls'}"
[sinks.tls]
ca = "{pki / 'ca.pem'}"
""")
            d = Daemon(ns, ["-i", ns.rx, "-m", model, "--config", str(cfg)])
            d.wait_log(r"capturing on")
            mark("daemon capturing")

            def ref() -> list[dict]:
                return _jsonl(ref_path)

            def log() -> str:
                return "\n".join(marks) + "\n" + (d.log if d else "")

            # -- align on the wall-clock minute: part 1 must be captured before the boundary
            boundary = math.ceil(time.time() / 60) * 60
            if boundary - time.time() < LEAD:
                boundary += 60
            time.sleep(max(0.0, boundary - LEAD - time.time()))
            mark(f"part 1 replay (boundary {time.strftime('%H:%M:%S', time.localtime(boundary))})")
            ns.replay(str(parts[0]), pps=PPS, timeout=left(30))
            mark("part 1 done")
            assert time.time() < boundary - 0.3, "part 1 replay overran the minute boundary"
            assert ref() == [], "alerts before any window closed"

            # -- outage 1: the minute closes while rsyslog is down
            rs.stop()
            mark("rsyslog stopped (outage 1)")
            k1 = len(_wait(ref, left(boundary + 10 - time.time()), "no alert when window W0 closed", log))
            for name in ("tcp", "tls"):
                d.wait_metric(f'radsensor_sink_delivery_failures_total{{sink="{name}"}}', lambda v: v >= 1, timeout=left(10))
            mark(f"{k1} alerts written, both syslog sinks failing")
            ns.replay(str(parts[1]), pps=PPS, timeout=left(30))
            k1 = len(ref())  # everything generated while down (W0 closes in one tick)
            mark(f"part 2 done, {k1} alerts")

            # -- restart 1: spool drains while the daemon runs
            rs.start()
            mark("rsyslog restarted")
            for kind in ("tcp", "tls"):
                n = len(rs.wait_lines(kind, k1, timeout=left(10)))
                assert n == k1, f"{kind}: {n} of {k1} spooled alerts after restart\n{log()}"
            assert d.proc.poll() is None
            mark("spool delivered")
            ns.replay(str(parts[2]), pps=PPS, timeout=left(30))
            n_before2 = len(ref())
            mark(f"part 3 done, {n_before2} alerts")

            # -- outage 2: connections established and idle, then cut; SIGTERM flushes into the spool
            rs.stop()
            d.signal(signal.SIGTERM)
            mark("rsyslog stopped (outage 2), daemon SIGTERMed")
            _wait(lambda: len(ref()) > n_before2, left(10), "the SIGTERM flush produced no alert", log)
            n = -1
            while n != len(ref()):  # the flush writes its alerts in one go: wait until it is done
                n = len(ref())
                time.sleep(0.5)
                assert left(10) > 0.5, f"flush never settled\n{log()}"
            time.sleep(0.5)  # the sinks try (and fail) against the stopped receiver
            k2 = len(ref()) - n_before2
            assert d.proc.poll() is None, f"daemon exited with rsyslog down\n{log()}"

            # -- restart 2: the daemon, still flushing, delivers and exits cleanly
            rs.start()
            mark(f"flush wrote {k2} alerts; rsyslog restarted")
            try:
                rc = d.proc.wait(timeout=left(25))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"daemon did not finish its flush\n{log()}") from None
            d._reader.join(5)
            mark(f"daemon exited {rc}")
            assert rc == 0, log()
            assert "undelivered alerts remain" not in log(), log()
            assert "Traceback" not in log(), log()

            final = ref()
            assert final, "no alert at all"
            for kind, fmt in (("tcp", "cef"), ("tls", "json")):
                lines = rs.wait_lines(kind, len(final), timeout=left(10))
                time.sleep(0.3)  # a duplicate would arrive after the expected count: look again
                lines = rs.lines(kind)
                _check_sink(kind, fmt, lines, final, k1 + k2)
            elapsed = time.monotonic() - t0
            print("\n".join(marks))
            print(f"outage test: outage 1 {k1} alerts, outage 2 {k2} alerts, "
                  f"{len(final)} in total, {elapsed:.1f} s")
            assert elapsed < BUDGET, f"test took {elapsed:.1f} s"
        finally:
            if d is not None:
                if d.proc.poll() is None:
                    d.proc.kill()  # our child, by its Popen handle (= PID)
                    d.proc.wait(5)
                (tmp_path / "daemon.log").write_text("\n".join(marks) + "\n" + d.log)  # post-mortem
            rs.stop()
