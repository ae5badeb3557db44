"""``radsensor detect CAPTURE... -m MODEL``: the daemon's detection loop, over capture files."""

from __future__ import annotations

import sys

import click


@click.command()
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-m", "--model", "model_path", required=True, type=click.Path(dir_okay=False), help="Model file.")
@click.option("--alerts", "alerts_out", type=click.Path(dir_okay=False), default=None,
              help="Also write alerts as JSON lines to this file.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "cef", "leef"]), default="text",
              show_default=True, help="Stdout format (text: a table at the end).")
@click.option("--sensor-id", default="", help="Sensor name put in every alert.")
@click.option("--merge-span", default=3600.0, show_default=True,
              help="Seconds within which repeats of a cause on a device merge into one alert (0: never).")
def detect(captures: tuple[str, ...], model_path: str, alerts_out: str | None, fmt: str, sensor_id: str,
           merge_span: float) -> None:
    """Score captures against a baseline model; print and write alerts."""
    from rich.console import Console

    from sensor.alerts.formats import format_table, get_formatter, to_json
    from sensor.capture import CaptureError
    from sensor.detect.artifact import ModelArtifact, ModelError
    from sensor.detect.detector import Detector
    from sensor.events import Counters
    from sensor.pipeline import PipelineError, iter_events

    try:
        artifact = ModelArtifact.load(model_path)
    except ModelError as exc:
        click.echo(f"radsensor: {exc}", err=True)
        sys.exit(2)
    counters = Counters()
    det = Detector(artifact, sensor_id=sensor_id, merge_span=merge_span, counters=counters)
    line = None if fmt == "text" else get_formatter(fmt)
    collected = []
    sink = open(alerts_out, "w", encoding="utf-8") if alerts_out else None

    def emit(alerts) -> None:
        for a in alerts:
            collected.append(a)
            if sink:
                sink.write(to_json(a) + "\n")
            if line:
                click.echo(line(a))

    try:
        for ev in iter_events(captures, counters=counters):
            det.process(ev)
            emit(det.advance())
        emit(det.flush())
    except (CaptureError, PipelineError) as exc:
        click.echo(f"radsensor: {exc}", err=True)
        sys.exit(2)
    finally:
        if sink:
            sink.close()
    err = Console(stderr=True)
    if fmt == "text":
        collected.sort(key=lambda a: (a.time, a.device.ip))
        Console().print(format_table(collected))
    err.print(f"{det.scorer.windows_scored:,} device windows scored, {det.raw_alerts:,} raw alerts → "
              f"{len(collected):,} after merging" + (f"; written to {alerts_out}" if alerts_out else ""))
