"""End-to-end `radsensor decode`: event logs, summary, exit codes and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.all import IP, TCP, Ether, wrpcap

FIXTURES = Path(__file__).parent / "fixtures"
RADSENSOR = [sys.executable, "-m", "sensor.cli"]


def run(*args):
    return subprocess.run([*RADSENSOR, *args], capture_output=True, text=True, timeout=120)


def test_decode_writes_logs_and_summary(tmp_path):
    cap = FIXTURES / "realstack-dicom.pcap.gz"
    res = run("decode", str(cap), "--logs", str(tmp_path), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "DICOM associations" in res.stdout and "DIMSE operations" in res.stdout
    dicom = [json.loads(line) for line in (tmp_path / "dicom.jsonl").read_text().splitlines()]
    flows = [json.loads(line) for line in (tmp_path / "flows.jsonl").read_text().splitlines()]
    assert dicom and flows
    for rec in dicom:
        for key in ("ts_start", "ts_end", "client", "server", "calling_ae", "called_ae", "result", "contexts",
                    "dimse", "statuses", "bytes", "dataset_bytes", "pdu_counts"):
            assert key in rec
    assert any(f["app"] == "dicom" for f in flows)
    # every association maps to a flow on the same server endpoint
    servers = {(f["server"]["ip"], f["server"]["port"]) for f in flows}
    assert all((d["server"]["ip"], d["server"]["port"]) in servers or
               (d["client"]["ip"], d["client"]["port"]) in servers for d in dicom)


def test_garbage_file_is_one_clear_line(tmp_path):
    bad = tmp_path / "x.pcap"
    bad.write_bytes(b"this is not a capture file at all" * 10)
    res = run("decode", str(bad))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "not a pcap" in res.stderr
    assert "Traceback" not in res.stderr


def test_unsupported_linktype_is_one_clear_line(tmp_path):
    f = tmp_path / "wifi.pcap"
    wrpcap(str(f), [Ether() / IP() / TCP()], linktype=105)
    res = run("decode", str(f))
    assert res.returncode == 2 and "105" in res.stderr and "Traceback" not in res.stderr


def test_truncated_file_gives_events_and_warning(tmp_path):
    import gzip
    raw = gzip.decompress((FIXTURES / "realstack-dicom.pcap.gz").read_bytes())
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(raw[: len(raw) * 2 // 3 + 7])
    res = run("decode", str(cut), "--logs", str(tmp_path / "logs"), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "warning" in res.stderr and "truncated" in res.stderr
    assert (tmp_path / "logs" / "flows.jsonl").read_text().strip()


@pytest.mark.parametrize("args", [["--version"], ["decode", "--help"]])
def test_version_and_help(args):
    res = run(*args)
    assert res.returncode == 0 and res.stdout
