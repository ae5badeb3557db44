"""``radsensor evaluate --labels LABELS.json ALERTS.jsonl...``: detection metrics per scenario."""

from __future__ import annotations

import json
import sys

import click


@click.command()
@click.option("--labels", "labels_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="labels.json of the evaluated capture(s).")
@click.argument("alerts", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Model whose inventory gives the device count for false alerts per device-day.")
@click.option("--device-days", type=float, default=None, help="Device-days covered (overrides --model).")
@click.option("--days", type=float, default=None, help="Days covered by the evaluated capture(s).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def evaluate(labels_path: str, alerts: tuple[str, ...], model_path: str | None, device_days: float | None,
             days: float | None, as_json: bool) -> None:
    """Per scenario: detected, time to detect, attacker named; false alerts per device-day, precision.

    Several ALERTS files (e.g. the full model and the flow-only comparison) are compared side by side.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from training.evaluate import EvalInputError, load_alerts, load_labels
    from training.evaluate import evaluate as run

    try:
        scenarios = load_labels(labels_path)
        streams = {path: load_alerts(path) for path in alerts}
    except EvalInputError as exc:
        click.echo(f"radsensor: {exc}", err=True)
        sys.exit(2)
    if device_days is None and model_path is not None:
        from sensor.detect.artifact import ModelError, read_manifest

        try:
            n_dev = read_manifest(model_path)["inventory_summary"]["devices"]
        except ModelError as exc:
            click.echo(f"radsensor: {exc}", err=True)
            sys.exit(2)
        if days is None:
            span = [t for s in scenarios for t in (s.start, s.end)] + [
                t for rows in streams.values() for a in rows for t in (a.window_start, a.window_end)]
            days = max(1.0, -(-(max(span) - min(span)) // 86400)) if span else 1.0
        device_days = n_dev * days
    results = {p: run(scenarios, rows, device_days=device_days) for p, rows in streams.items()}
    if as_json:
        click.echo(json.dumps({p: {"scenarios": r.rows, "summary": r.summary} for p, r in results.items()},
                              indent=2, default=str))
        return
    con = Console()
    for path, r in results.items():
        t = Table(title=f"evaluation: {path}")
        for col in ("scenario", "type", "detected", "attacker named", "time to detect", "≤2 windows", "alerts",
                    "rules"):
            t.add_column(col, overflow="fold")
        for row in r.rows:
            ttd = "-" if row["time_to_detect_s"] is None else f"{row['time_to_detect_s']:.0f}s"
            t.add_row(Text(row["id"]), Text(row["type"]), Text("yes" if row["detected"] else "NO"),
                      Text("yes" if row["attacker_named"] else "no"), Text(ttd),
                      Text("yes" if row["within_2_windows"] else "no"), Text(str(row["alerts"])),
                      Text(", ".join(row["rules"][:4]) + (" …" if len(row["rules"]) > 4 else "")))
        con.print(t)
    s = Table(title="summary")
    s.add_column("metric")
    for path in results:
        s.add_column(path, overflow="fold")
    keys = (("detected", "scenarios detected"), ("attacker_named", "attacker named"),
            ("within_2_windows", "detected ≤ 2 windows"), ("alerts", "alerts"), ("false_alerts", "false alerts"),
            ("precision", "precision"), ("false_alerts_per_device_day", "false alerts / device-day"),
            ("device_days", "device-days"))
    for key, label in keys:
        vals = []
        for r in results.values():
            v = r.summary[key]
            if key in ("detected", "attacker_named", "within_2_windows"):
                vals.append(f"{v}/{r.summary['scenarios']}")
            elif isinstance(v, float):
                vals.append(f"{v:.3f}")
            else:
                vals.append("-" if v is None else str(v))
        s.add_row(label, *vals)
    con.print(s)
    first = next(iter(results.values()))
    if first.summary["device_days_source"] != "given":
        Console(stderr=True).print(f"note: device-days {first.summary['device_days_source']}")
