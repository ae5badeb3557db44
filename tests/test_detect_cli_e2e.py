"""End to end over the sample captures: train → model info → detect → evaluate, via the CLI commands.

Needs the committed samples in pcaps/ (normal-day1.pcap, attack-day.pcap, labels.json) and the
decoding pipeline. ``RADSENSOR_PCAPS`` points at another sample folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner

from sensor.commands.detect import detect
from sensor.commands.evaluate import evaluate
from sensor.commands.features import features
from sensor.commands.model import model
from sensor.commands.train import train

PCAPS = Path(os.environ.get("RADSENSOR_PCAPS", Path(__file__).resolve().parent.parent / "pcaps"))
WIDE = {"COLUMNS": "250"}


def test_train_detect_evaluate_on_samples(tmp_path):
    r = CliRunner()
    m = tmp_path / "baseline.rsm"
    out = r.invoke(train, [str(PCAPS / "normal-day1.pcap"), "-o", str(m), "--no-progress"], env=WIDE)
    assert out.exit_code == 0, out.output
    assert "training report" in out.output and "threshold" in out.output

    info = r.invoke(model, ["info", str(m)], env=WIDE)
    assert info.exit_code == 0 and "radsensor.model v2" in info.output and "pacs" in info.output

    alerts = tmp_path / "alerts.jsonl"
    out = r.invoke(detect, [str(PCAPS / "attack-day.pcap"), "-m", str(m), "--alerts", str(alerts), "--format", "cef"])
    assert out.exit_code == 0, out.output
    lines = [json.loads(x) for x in alerts.read_text().splitlines()]
    assert lines and all(a["schema"] == "radsensor.alert/1" for a in lines)
    assert any(x.startswith("CEF:0|") for x in out.output.splitlines())

    out = r.invoke(evaluate, ["--labels", str(PCAPS / "labels.json"), str(alerts), "--model", str(m), "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)[str(alerts)]["summary"]
    print(json.dumps(summary, indent=1))  # the figures, for the record (pytest -s)
    assert summary["detected"] >= summary["scenarios"] // 2


def test_features_export_and_bad_inputs(tmp_path):
    import pyarrow.parquet as pq

    r = CliRunner()
    out = r.invoke(features, [str(PCAPS / "attack-day.pcap"), "-o", str(tmp_path / "f.parquet"), "--window", "5m",
                              "--tz", "Europe/Berlin"])
    assert out.exit_code == 0, out.output
    t = pq.read_table(tmp_path / "f.parquet")
    assert "dimse.c_find_rq" in t.column_names and t.num_rows > 0
    assert t.schema.field("flow.bytes_out").metadata[b"unit"] == b"bytes"
    (tmp_path / "junk.rsm").write_bytes(b"junk")
    out = r.invoke(detect, [str(PCAPS / "attack-day.pcap"), "-m", str(tmp_path / "junk.rsm")])
    assert out.exit_code == 2 and "not a radsensor model file" in out.output
    out = r.invoke(features, [str(PCAPS / "attack-day.pcap"), "-o", str(tmp_path / "g.parquet"), "--tz", "Nowhere/X"])
    assert out.exit_code == 2
