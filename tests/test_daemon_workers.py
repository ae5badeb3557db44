"""``--workers 2`` and ``--workers 1`` give the same alerts for the same packets.

Both daemons run *at the same time* in one namespace (tests/netns.py), capturing the same veth end,
and tcpreplay puts ``pcaps/attack-day.pcap`` on the other end once. Live windows are aligned to the
capture clock (the kernel's receive time), so two runs at different times split a replay over
different window boundaries and legitimately get different alerts (a replay that straddles a
minute yields two windows per device). Capturing the same frames side by side gives both daemons the
same timestamps, so any difference left is the workers' doing: the PACKET_FANOUT split, flow state
per child, event shipping over the pipes and the merge in the parent.

Asserts: each daemon decoded every packet with no drop, both produced the same event counts, and
the multisets of (rule id, device ip, window start, count) alerts are identical and not empty.
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import dpkt
import pytest

from sensor.daemon.metrics import parse_text
from tests.netns import NetNs
from tests.test_daemon_live import Daemon as LiveDaemon

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = ROOT / "pcaps" / "attack-day.pcap"
MODEL = ROOT / "models" / "demo.rsm"
PPS = 5000  # ~9 s for the capture; two daemons and tcpreplay share two cores without drops


class Daemon(LiveDaemon):
    """``radsensor run --workers N`` inside the namespace, with its own metrics port and JSONL file."""

    def __init__(self, ns: NetNs, workers: int, port: int, out: Path) -> None:
        self.port, self.out = port, out
        super().__init__(ns, ["-i", ns.rx, "-m", str(MODEL), "--workers", str(workers),
                              "--metrics-port", str(port), "--jsonl", str(out)])

    def packets(self) -> float:
        m = parse_text(self.ns.http_get(f"http://127.0.0.1:{self.port}/metrics"))
        return m.get(f'radsensor_packets_total{{interface="{self.ns.rx}"}}', 0.0)

    def stop(self, timeout: float = 30.0) -> int:
        return super().stop(timeout)

    def alerts(self) -> collections.Counter:
        rows = [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]
        return collections.Counter((r["rule_id"], r["device"]["ip"], r["window_start"], r["count"]) for r in rows)


def _count_packets(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in dpkt.pcap.Reader(fh))


def test_two_workers_give_the_alerts_of_one(tmp_path):
    n = _count_packets(CAPTURE)
    with NetNs("wk") as ns:
        one = Daemon(ns, 1, 9481, tmp_path / "w1.jsonl")
        two = Daemon(ns, 2, 9482, tmp_path / "w2.jsonl")
        try:
            one.wait_log(r"capturing on .*1 worker\)")
            two.wait_log(r"capturing on .*2 workers\)")
            time.sleep(1.0)  # the children are forked after that line; let them reach their loop
            ns.replay(str(CAPTURE), pps=PPS, timeout=60)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not (one.packets() >= n and two.packets() >= n):
                time.sleep(0.3)
        finally:
            rc1, rc2 = one.stop(), two.stop()
    assert rc1 == 0, one.log
    assert rc2 == 0, two.log
    summary = r"stopped: (\d+) packets, (\d+) kernel drops, (\d+) interface drops, (\d+) events, (\d+) alerts"
    s1, s2 = one.wait_log(summary), two.wait_log(summary)
    # Same input for both, or the comparison means nothing.
    assert (int(s1[1]), int(s1[2]), int(s1[3])) == (n, 0, 0), one.log
    assert (int(s2[1]), int(s2[2]), int(s2[3])) == (n, 0, 0), two.log
    assert s1[4] == s2[4]  # events
    a1, a2 = one.alerts(), two.alerts()
    assert a1, "the attack capture must raise alerts"
    assert {k[0].split(".")[0] for k in a1} >= {"anomaly"}
    assert a1 == a2, f"only with 1 worker: {a1 - a2}; only with 2 workers: {a2 - a1}"
