"""``make eval``: train → detect → evaluate on a generated dataset, with the flow-only comparison.

Usage: ``python -m training.run_eval DATASET_DIR OUT_DIR``. The dataset folder holds
``*normal*.pcap`` (baseline), ``*attack*.pcap`` with ``<stem>.labels.json`` and ``*clean*.pcap``.
It runs the real CLI (the same code path a user runs) and prints one table per model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def _rs(*args: str) -> None:
    cmd = [sys.executable, "-m", "sensor.cli", *args]
    print("$ radsensor " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def _pcaps(folder: Path, word: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if word in p.name and p.name.endswith((".pcap", ".pcap.gz", ".pcapng")))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    data, out = Path(argv[0]), Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    normal, attacks, cleans = _pcaps(data, "normal"), _pcaps(data, "attack"), _pcaps(data, "clean")
    if not normal or not attacks:
        print(f"run_eval: {data} needs *normal* and *attack* captures", file=sys.stderr)
        return 2
    summary: dict[str, dict] = {}
    for kind, extra in (("full", []), ("flow-only", ["--flow-only"])):
        model = out / f"{kind}.rsm"
        started = time.monotonic()
        _rs("train", *map(str, normal), "-o", str(model), "--no-progress", *extra)
        summary[kind] = {"train_seconds": round(time.monotonic() - started, 1), "captures": {}}
        for cap in attacks + cleans:
            alerts = out / f"{kind}-{cap.name.split('.')[0]}.alerts.jsonl"
            _rs("detect", str(cap), "-m", str(model), "--alerts", str(alerts), "--format", "json")
            summary[kind]["captures"][cap.name] = str(alerts)
    for cap in attacks:
        labels = cap.with_name(cap.name.split(".")[0] + ".labels.json")
        stem = cap.name.split(".")[0]
        print(f"\n=== {cap.name}: full model vs flow-only forest ===", flush=True)
        _rs("evaluate", "--labels", str(labels), str(out / f"full-{stem}.alerts.jsonl"),
            str(out / f"flow-only-{stem}.alerts.jsonl"), "--model", str(out / "full.rsm"))
    for cap in cleans:
        stem = cap.name.split(".")[0]
        for kind in ("full", "flow-only"):
            n = sum(1 for _ in open(out / f"{kind}-{stem}.alerts.jsonl", encoding="utf-8"))
            print(f"clean day {cap.name}: {kind}: {n} alerts")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
