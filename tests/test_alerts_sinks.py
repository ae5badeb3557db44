"""Local sinks (stdout, JSONL with rotation), the on-disk spool, fan-out, and a down destination.

Delivery to a real receiver is in test_alerts_rsyslog; here the syslog sink only meets a closed
127.0.0.1 port (nothing listening), where it must never block the caller.
"""

from __future__ import annotations

import io
import json
import socket
import time
from datetime import UTC, datetime, timedelta

import pytest

from sensor.alerts.formats import to_text
from sensor.alerts.schema import Alert, DeviceRef
from sensor.alerts.sinks import STAT_KEYS, JsonlFileSink, MultiSink, Sink, StdoutSink, SyslogSink
from sensor.alerts.spool import Spool
from sensor.alerts.syslog import TcpTransport

T0 = datetime(2026, 3, 4, 3, 0, tzinfo=UTC)


def alert(i: int) -> Alert:
    ws = T0 + timedelta(minutes=i)
    return Alert(
        rule_id="rule.test",
        kind="rule",
        severity="low",
        title=f"seq={i:05d}",
        device=DeviceRef("10.20.2.11"),
        window_start=ws,
        window_end=ws + timedelta(minutes=1),
    )


def closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: connects are refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stdout_sink_text_and_json():
    buf = io.StringIO()
    s = StdoutSink(buf)
    s.submit(alert(1))
    j = StdoutSink(buf, fmt="json")
    j.submit(alert(2))
    lines = buf.getvalue().splitlines()
    assert lines[0] == to_text(alert(1)) and json.loads(lines[1])["title"] == "seq=00002"
    assert s.stats() == {**dict.fromkeys(STAT_KEYS, 0), "submitted": 1, "delivered": 1}


def test_stdout_sink_counts_broken_stream():
    buf = io.StringIO()
    buf.close()
    s = StdoutSink(buf)
    s.submit(alert(1))  # must not raise
    assert s.stats()["failed"] == 1


def test_jsonl_rotation_keeps_n_files(tmp_path):
    path = tmp_path / "out" / "alerts.jsonl"
    line_len = len(json.dumps(alert(0).to_dict(), ensure_ascii=False, separators=(",", ":"))) + 1
    s = JsonlFileSink(path, max_bytes=line_len * 3, keep=2)
    for i in range(10):
        s.submit(alert(i))
    s.close()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["alerts.jsonl", "alerts.jsonl.1", "alerts.jsonl.2"]
    seq = lambda p: [json.loads(x)["title"] for x in p.read_text().splitlines()]
    assert seq(path) == ["seq=00009"]
    assert seq(path.with_name("alerts.jsonl.1")) == ["seq=00006", "seq=00007", "seq=00008"]
    assert seq(path.with_name("alerts.jsonl.2")) == ["seq=00003", "seq=00004", "seq=00005"]
    assert s.rotations == 3 and s.stats()["delivered"] == 10
    for p in path.parent.iterdir():
        assert all(Alert.from_dict(json.loads(x)) for x in p.read_text().splitlines())


# ------------------------------------------------------------------------------------------ spool


def test_spool_fifo_ack_and_reopen(tmp_path):
    sp = Spool(tmp_path / "s")
    assert sp.put_many([b"a", b"bb", b"ccc"]) == 0
    batch = sp.peek(2)
    assert [d for _, d in batch] == [b"a", b"bb"]
    sp.release()  # failed delivery: same records again, same order
    assert sp.peek(2) == batch
    sp.ack(batch[-1][0])
    assert len(sp) == 1 and sp.nbytes == 3
    sp.put_many([b"dddd"])
    sp.close()
    sp2 = Spool(tmp_path / "s")
    assert [d for _, d in sp2.peek(10)] == [b"ccc", b"dddd"] and len(sp2) == 2 and sp2.nbytes == 7
    sp2.close()


def test_spool_drop_oldest_by_count_and_bytes(tmp_path):
    sp = Spool(tmp_path / "s", max_records=5, max_bytes=1000)
    assert sp.put_many([b"%03d" % i for i in range(8)]) == 3
    assert [d for _, d in sp.peek(10)] == [b"003", b"004", b"005", b"006", b"007"]
    sp.release()
    assert sp.put_many([b"x" * 990]) == 2  # byte bound: 15 + 990 > 1000, the two oldest go
    assert [d for _, d in sp.peek(10)] == [b"005", b"006", b"007", b"x" * 990] and sp.dropped == 5
    sp.release()
    assert sp.put_many([b"y" * 2000]) == 1  # larger than the whole spool: refused, counted
    sp.close()


def test_spool_drop_newest(tmp_path):
    sp = Spool(tmp_path / "s", max_records=3, overflow="drop_newest")
    assert sp.put_many([b"1", b"2", b"3", b"4", b"5"]) == 2
    assert [d for _, d in sp.peek(10)] == [b"1", b"2", b"3"] and sp.dropped == 2
    sp.close()


def test_spool_never_drops_in_flight(tmp_path):
    sp = Spool(tmp_path / "s", max_records=2)
    sp.put_many([b"a", b"b"])
    batch = sp.peek(2)  # being sent
    sp.put_many([b"c", b"d", b"e"])  # nothing droppable but c, d: bound exceeded by the batch
    assert [d for _, d in sp.peek(10)][:2] == [b"a", b"b"]
    sp.ack(batch[-1][0])
    assert [d for _, d in sp.peek(10)] == [b"d", b"e"] and sp.dropped == 1
    sp.release()
    sp.close()


def test_spool_rejects_bad_policy(tmp_path):
    with pytest.raises(ValueError):
        Spool(tmp_path / "s", overflow="drop_random")


# ------------------------------------------------------------------------------------------ syslog down


def test_syslog_sink_down_never_blocks_and_spools(tmp_path):
    t = TcpTransport("127.0.0.1", closed_port(), timeout=1.0)
    s = SyslogSink(t, tmp_path / "spool", queue_size=4, backoff_initial=0.05, backoff_max=0.1)
    worst = 0.0
    for i in range(50):
        t0 = time.perf_counter()
        s.submit(alert(i))
        worst = max(worst, time.perf_counter() - t0)
    assert worst < 0.05
    assert not s.flush(0.3)
    st = s.stats()
    assert st["submitted"] == 50 and st["delivered"] == 0 and st["failed"] >= 1 and st["retries"] >= 1
    assert st["spooled"] + st["queue_depth"] == 50
    assert "ConnectionRefusedError" in (s.last_error or "")
    t0 = time.perf_counter()
    s.close(timeout=0.1)
    assert time.perf_counter() - t0 < 2.5
    sp = Spool(tmp_path / "spool")
    assert len(sp) == 50  # everything on disk for the next start, in order
    assert [int(d.rsplit(b"seq=", 1)[1][:5]) for _, d in sp.peek(100)] == list(range(50))
    sp.close()


class Exploding(Sink):
    def submit(self, alert):
        raise RuntimeError("bug")

    def stats(self):
        return {k: 0 for k in STAT_KEYS}


def test_multisink_fans_out_and_isolates_failures(tmp_path):
    a, b = io.StringIO(), io.StringIO()
    j = JsonlFileSink(tmp_path / "a.jsonl")
    m = MultiSink([StdoutSink(a), Exploding(), StdoutSink(b, fmt="cef"), j])
    for i in range(3):
        m.submit(alert(i))
    assert m.flush(1)
    m.close()
    assert len(a.getvalue().splitlines()) == 3 and all(
        x.startswith("CEF:0|") for x in b.getvalue().splitlines()
    )
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 3
    assert m.errors == 3 and m.stats()["delivered"] == 9 and m.stats()["submitted"] == 9
    assert set(m.stats_by_sink()) == {"0:stdout", "1:sink", "2:stdout", "3:jsonl"}
