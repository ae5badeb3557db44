"""``radsensor train CAPTURE_OR_DIR... -o MODEL``: fit the baseline and print a training report."""

from __future__ import annotations

import os
import sys

import click

from sensor.commands.features import LOCAL_NET_OPTION, _window_config


@click.command()
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Model file to write.")
@click.option("--window", default="60s", show_default=True, help="Window span (e.g. 60s, 5m).")
@click.option("--lateness", default="120s", show_default=True, help="How long a window waits for late events.")
@click.option("--fpr", default="1/device/day", show_default=True,
              help="Target false-alert rate of the anomaly model (alerts per device per day).")
@click.option("--tz", default="UTC", show_default=True, help="Site time zone (IANA) for time-of-day features.")
@LOCAL_NET_OPTION
@click.option("--flow-only", is_flag=True, help="Fit the comparison model: plain forest on flow features only.")
@click.option("--jobs", "-j", default=2, show_default=True, help="Captures decoded in parallel.")
@click.option("--seed", default=0, show_default=True, help="Random seed (forests, subsampling).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
def train(captures: tuple[str, ...], output: str, window: str, lateness: str, fpr: str, tz: str,
          local_net: tuple[str, ...], flow_only: bool, jobs: int, seed: int, progress: bool | None) -> None:
    """Learn each device's normal behaviour from baseline captures."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from sensor.capture import CaptureError
    from sensor.detect.threshold import parse_fpr
    from sensor.pipeline import PipelineError
    from training.baseline import TrainConfig, expand_captures
    from training.baseline import train as fit_baseline

    cfg_window = _window_config(window, lateness, tz, local_net)
    try:
        rate = parse_fpr(fpr)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fpr") from None
    config = TrainConfig(window=cfg_window, per_device_day=rate, kind="flow_only" if flow_only else "baseline",
                         random_state=seed, n_jobs=max(1, jobs))
    try:
        files = expand_captures(captures)
    except FileNotFoundError as exc:
        click.echo(f"radsensor: {exc}", err=True)
        sys.exit(2)
    if not files:
        click.echo("radsensor: no capture files found", err=True)
        sys.exit(2)
    total = sum(os.path.getsize(f) for f in files)
    show = sys.stderr.isatty() if progress is None else progress
    bar = Progress(TextColumn("training"), BarColumn(), DownloadColumn(), TextColumn("{task.fields[n]} captures"),
                   TimeElapsedColumn(), console=Console(stderr=True), disable=not show)
    try:
        with bar:
            task = bar.add_task("train", total=total, n=f"0/{len(files)}")
            done = 0

            def on_capture(cw, size: int) -> None:
                nonlocal done
                done += 1
                bar.update(task, advance=size, n=f"{done}/{len(files)}")

            artifact, report = fit_baseline(files, config, on_capture)
    except (CaptureError, PipelineError, ValueError) as exc:
        click.echo(f"radsensor: {exc}", err=True)
        sys.exit(2)
    artifact.save(output)
    print_report(report, output, Console())


def print_report(report: dict, output: str, con) -> None:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"training report → {output}", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    inv = report["inventory"]
    for k, v in (
        ("model", report["kind"]),
        ("captures", ", ".join(report["captures"])),
        ("baseline span", f"{report['time_start']} → {report['time_end']}"),
        ("events", f"{report['events']:,} ({report['late_events']:,} late)"),
        ("device windows", f"{report['windows']:,} ({report['windows_dropped_by_cap']:,} subsampled away)"),
        ("devices", f"{report['devices']} ({report['device_days']:g} device-days)"),
        ("roles", ", ".join(f"{r} {n}" for r, n in inv["roles"].items())),
        ("inventory", (f"{inv['ae_titles']} AE titles, {inv['peer_pairs']} peer pairs, "
                       f"{inv['services']} services, {inv['move_destinations']} move destinations, "
                       f"{inv['hl7_senders']} HL7 senders")),
        ("threshold", f"{report['threshold']:.4f} ({report['calibration']} scores)"),
        ("false alerts", (f"{report['expected_alerts_per_device_day']:.3f} per device-day on baseline "
                          f"(target ≤ {report['fpr_target_per_device_day']:g})")),
        ("rate shifts", report.get("rates") or "off (flow-only model)"),
        ("fit time", f"{report['fit_seconds']:.1f}s"),
    ):
        t.add_row(k, Text(str(v)))
    con.print(t)
    d = Table(title="baseline devices")
    for col in ("ip", "role", "AE titles", "windows"):
        d.add_column(col)
    for ip, role, aes, n in report["devices_detail"]:
        d.add_row(Text(ip), Text(role), Text(",".join(aes)), Text(f"{n:,}"))
    con.print(d)
