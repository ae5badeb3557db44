"""``make eval``: train → detect → evaluate on a generated dataset, with the flow-only comparison.

Usage: ``python -m training.run_eval DATASET_DIR OUT_DIR [--tz ZONE]``. The dataset folder holds
``*normal*.pcap`` (baseline), ``*attack*.pcap`` with ``<stem>.labels.json`` and ``*clean*.pcap``.
It runs the real CLI (the same code path a user runs) and prints one table per model.

The models are trained with the site's time zone (time-of-day/week features; detection reads it
back from the model): ``--tz`` if given, else the ``tz`` field of the baseline captures'
``<stem>.record.json`` if they carry one, else UTC (the generator models its sites at UTC).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def _rs(*args: str) -> None:
    cmd = [sys.executable, "-m", "sensor.cli", *args]
    print("$ radsensor " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def _pcaps(folder: Path, word: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if word in p.name and p.name.endswith((".pcap", ".pcap.gz", ".pcapng")))


def _record_tz(captures: list[Path]) -> str | None:
    """The site time zone the baseline captures' generator records name, if any (all must agree)."""
    zones = set()
    for cap in captures:
        rec = cap.with_name(cap.name.split(".")[0] + ".record.json")
        if rec.is_file():
            zones.add(json.loads(rec.read_text()).get("tz"))
    zones.discard(None)
    if len(zones) > 1:
        raise ValueError(f"baseline records disagree on the site time zone: {sorted(zones)}")
    return zones.pop() if zones else None


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.run_eval", description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, metavar="DATASET_DIR")
    ap.add_argument("out", type=Path, metavar="OUT_DIR")
    ap.add_argument("--tz", default=None, help="site time zone (IANA); default: from the records, else UTC")
    try:
        a = ap.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    data, out = a.data, a.out
    normal, attacks, cleans = _pcaps(data, "normal"), _pcaps(data, "attack"), _pcaps(data, "clean")
    if not normal or not attacks:
        print(f"run_eval: {data} needs *normal* and *attack* captures", file=sys.stderr)
        return 2
    try:
        tz = a.tz or _record_tz(normal) or "UTC"
        ZoneInfo(tz)  # fail now, not after the first training run
    except (ValueError, ZoneInfoNotFoundError) as exc:
        print(f"run_eval: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict] = {}
    for kind, extra in (("full", []), ("flow-only", ["--flow-only"])):
        model = out / f"{kind}.rsm"
        started = time.monotonic()
        _rs("train", *map(str, normal), "-o", str(model), "--no-progress", "--tz", tz, *extra)
        summary[kind] = {"train_seconds": round(time.monotonic() - started, 1), "tz": tz, "captures": {}}
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
