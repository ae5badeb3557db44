"""tshark oracle over the committed sample captures (pcaps/): no malformed or bad-checksum
frames, and the DIMSE / HL7 counts tshark decodes equal the generator's own record."""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

PCAPS = Path(__file__).resolve().parent.parent / "pcaps"
SAMPLES = sorted(p.stem for p in PCAPS.glob("*.pcap"))
FUZZ_HOST = "10.20.3.71"  # the malformed-PDU scenario's attacker: its frames are malformed on purpose
_DIMSE = re.compile(r"\b([CN]-[A-Z-]+?-(?:RQ|RSP))\b(?!-)")  # "C-STORE-RQ-DATA" is a data set

pytestmark = pytest.mark.oracle


def _record(stem: str) -> dict:
    return json.loads((PCAPS / f"{stem}.record.json").read_text())


def _tshark(pcap: Path, rec: dict, *args: str) -> list[str]:
    cmd = ["tshark", "-n", "-r", str(pcap), "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
           "-o", "udp.check_checksum:TRUE"]
    for p in rec["dicom_ports"]:
        if p != 104:
            cmd += ["-d", f"tcp.port=={p},dicom"]
    for p in rec["hl7_ports"]:
        cmd += ["-d", f"tcp.port=={p},hl7"]
    out = subprocess.run(cmd + list(args), capture_output=True, text=True, check=True, timeout=300)
    return out.stdout.splitlines()


def test_samples_exist_and_fit_budget():
    assert {"normal-day1", "normal-day2", "attack-day", "clean-day"} <= set(SAMPLES)
    total = sum(p.stat().st_size for p in PCAPS.rglob("*") if p.is_file())
    assert total <= 30 * 1000 * 1000
    labels = json.loads((PCAPS / "labels.json").read_text())
    assert len(labels) >= 13
    for lb in labels:
        assert {"id", "type", "start", "end", "ips", "description"} <= set(lb)
        assert lb["start"] <= lb["end"] and lb["start"].endswith("Z")
        assert all(ip["role"] in ("attacker", "victim") for ip in lb["ips"])


@pytest.mark.parametrize("stem", SAMPLES)
def test_no_bad_checksums_or_malformed(stem):
    rec = _record(stem)
    bad = _tshark(PCAPS / f"{stem}.pcap", rec, "-Y",
                  "ip.checksum.status == 0 || tcp.checksum.status == 0 || udp.checksum.status == 0",
                  "-T", "fields", "-e", "frame.number")
    assert bad == []
    # A-ASSOCIATE-RJ carries a protocol-level expert warning by design (brute-force scenario): allowed
    flt = "(dicom || hl7) && (_ws.malformed || (_ws.expert.severity >= warning && !(dicom.pdu.type == 3)))"
    if rec["kind"] == "attack":
        flt = f"({flt}) && !(ip.addr == {FUZZ_HOST})"
    bad = _tshark(PCAPS / f"{stem}.pcap", rec, "-Y", flt, "-T", "fields", "-e", "frame.number", "-e", "_ws.col.Info")
    assert bad == [], bad[:5]


@pytest.mark.parametrize("stem", SAMPLES)
def test_dimse_and_hl7_counts_match_record(stem):
    rec = _record(stem)
    flt = "dicom || hl7"
    if rec["kind"] == "attack":
        flt = f"({flt}) && !(ip.addr == {FUZZ_HOST})"
    lines = _tshark(PCAPS / f"{stem}.pcap", rec, "-Y", flt, "-T", "fields", "-E", "separator=\t",
                    "-e", "frame.protocols", "-e", "hl7.message.type", "-e", "_ws.col.Info")
    dimse: Counter = Counter()
    hl7: Counter = Counter()
    assoc = 0
    for ln in lines:
        protos, mtype, info = (ln.split("\t") + ["", ""])[:3]
        if ":hl7" in protos:
            for m in mtype.split(","):
                if m:
                    hl7[m] += 1
            continue
        dimse.update(_DIMSE.findall(info))
        assoc += info.count("A-ASSOCIATE request")
    want_hl7: Counter = Counter()
    for k, v in rec["hl7"].items():
        want_hl7[k.split("^")[0]] += v
    assert dict(dimse) == rec["dimse"]
    assert dict(hl7) == dict(want_hl7)
    assert assoc == rec["associations"]
