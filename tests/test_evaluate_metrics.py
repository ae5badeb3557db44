"""Evaluation metrics on a constructed labels/alerts pair, and the evaluate/model CLI commands."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sensor.alerts.formats import to_json
from sensor.alerts.schema import Alert, DeviceRef
from sensor.commands.evaluate import evaluate as evaluate_cmd
from training.evaluate import EvalInputError, evaluate, load_alerts, load_labels

LABELS = [
    {"id": "s1", "type": "cfind_sweep", "start": "2026-03-04T10:00:30Z", "end": "2026-03-04T10:10:00Z",
     "ips": [{"ip": "10.20.2.11", "role": "attacker"}, {"ip": "10.20.0.10", "role": "victim"}],
     "description": "patient-level sweep"},
    {"id": "s2", "type": "move_exfil", "start": "2026-03-04T14:00:00Z", "end": "2026-03-04T14:05:00Z",
     "ips": [{"ip": "10.20.2.12", "role": "attacker"}], "description": ""},
    {"id": "s3", "type": "hl7_inject", "start": "2026-03-04T18:00:00Z", "end": "2026-03-04T18:01:00Z",
     "ips": [{"ip": "10.20.9.9", "role": "attacker"}, {"ip": "10.20.0.30", "role": "victim"}], "description": ""},
]


def alert(ip, start, rule="anomaly.dimse.c_find_rq", minutes=1):
    from datetime import datetime, timedelta

    ws = datetime.fromisoformat(start.replace("Z", "+00:00"))
    return Alert(rule_id=rule, kind="anomaly" if rule.startswith("anomaly") else "novelty", severity="medium",
                 title="t", device=DeviceRef(ip), window_start=ws, window_end=ws + timedelta(minutes=minutes))


@pytest.fixture
def files(tmp_path):
    alerts = [
        alert("10.20.2.11", "2026-03-04T10:01:00Z"),  # s1, attacker, 30 s after start
        alert("10.20.0.10", "2026-03-04T10:00:00Z", "anomaly.dimse.c_find_served"),  # s1 victim
        alert("10.20.0.30", "2026-03-04T18:02:00Z", "novelty.hl7_unknown_sender"),  # s3 victim, 2 min late
        alert("10.20.1.11", "2026-03-04T03:00:00Z"),  # false
        alert("10.20.2.12", "2026-03-04T12:00:00Z"),  # right device, wrong time: false
    ]
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    (tmp_path / "alerts.jsonl").write_text("".join(to_json(a) + "\n" for a in alerts))
    (tmp_path / "none.jsonl").write_text("")
    return tmp_path


def test_metrics_exact(files):
    r = evaluate(load_labels(files / "labels.json"), load_alerts(files / "alerts.jsonl"), device_days=10)
    rows = {x["id"]: x for x in r.rows}
    assert rows["s1"]["detected"] and rows["s1"]["attacker_named"] and rows["s1"]["alerts"] == 2
    assert rows["s1"]["time_to_detect_s"] == 0.0 and rows["s1"]["within_2_windows"]  # victim window covers start
    assert not rows["s2"]["detected"] and rows["s2"]["time_to_detect_s"] is None
    assert rows["s3"]["detected"] and not rows["s3"]["attacker_named"] and rows["s3"]["time_to_detect_s"] == 120.0
    assert rows["s3"]["within_2_windows"]
    s = r.summary
    assert (s["detected"], s["attacker_named"], s["within_2_windows"]) == (2, 1, 2)
    assert (s["alerts"], s["true_alerts"], s["false_alerts"]) == (5, 3, 2)
    assert s["precision"] == pytest.approx(0.6) and s["false_alerts_per_device_day"] == pytest.approx(0.2)
    assert s["window_s"] == 60


def test_grace_is_two_windows(files):
    late = [alert("10.20.2.12", "2026-03-04T14:07:00Z")]  # end 14:05 + 2 min grace: starts too late? no: < 14:07
    r = evaluate(load_labels(files / "labels.json"), load_alerts_from(files, late), device_days=1)
    assert not {x["id"]: x for x in r.rows}["s2"]["detected"]
    ok = [alert("10.20.2.12", "2026-03-04T14:06:00Z")]
    r = evaluate(load_labels(files / "labels.json"), load_alerts_from(files, ok), device_days=1)
    assert {x["id"]: x for x in r.rows}["s2"]["detected"]


def load_alerts_from(tmp, alerts):
    p = tmp / "x.jsonl"
    p.write_text("".join(to_json(a) + "\n" for a in alerts))
    return load_alerts(p)


def test_no_alerts_and_bad_input(files):
    r = evaluate(load_labels(files / "labels.json"), load_alerts(files / "none.jsonl"), device_days=5)
    assert r.summary["detected"] == 0 and r.summary["precision"] is None
    (files / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(EvalInputError, match="bad.jsonl:1"):
        load_alerts(files / "bad.jsonl")
    (files / "bad.json").write_text(json.dumps([{"id": "x"}]))
    with pytest.raises(EvalInputError, match="scenario 0"):
        load_labels(files / "bad.json")


def test_cli_evaluate_table_and_json(files):
    run = CliRunner().invoke(evaluate_cmd, ["--labels", str(files / "labels.json"), str(files / "alerts.jsonl"),
                                   str(files / "none.jsonl"), "--device-days", "10"],
                             env={"COLUMNS": "250"})
    assert run.exit_code == 0, run.output
    assert "cfind_sweep" in run.output and "2/3" in run.output and "0/3" in run.output
    run = CliRunner().invoke(evaluate_cmd, ["--labels", str(files / "labels.json"), str(files / "alerts.jsonl"),
                                   "--device-days", "10", "--json"])
    data = json.loads(run.output)
    assert data[str(files / "alerts.jsonl")]["summary"]["false_alerts"] == 2
    (files / "bad.jsonl").write_text("nope\n")
    run = CliRunner().invoke(evaluate_cmd, ["--labels", str(files / "labels.json"), str(files / "bad.jsonl")])
    assert run.exit_code == 2 and "not a radsensor alert line" in run.output
