"""``radsensor decode CAPTURE... [--logs DIR]``: event logs and a summary."""

from __future__ import annotations

import os
import sys
import time

import click

from sensor.capture import CaptureError
from sensor.eventlog import EventLogWriter
from sensor.events import Counters
from sensor.pipeline import PipelineError, iter_events
from sensor.summary import DecodeSummary


@click.command()
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--logs", "logs_dir", type=click.Path(file_okay=False), default=None,
              help="Write flows/dicom/dimse/hl7/weird .jsonl logs into this folder.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
def decode(captures: tuple[str, ...], logs_dir: str | None, progress: bool | None) -> None:
    """Decode captures (pcap, pcapng, .gz, folders) into DICOM/HL7/flow events."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TransferSpeedColumn

    console = Console(stderr=False)
    total = sum(_size(p) for p in captures)
    show = sys.stderr.isatty() if progress is None else progress
    counters = Counters()
    summary = DecodeSummary()
    writer = EventLogWriter(logs_dir) if logs_dir else None
    packets = 0
    warnings: list[str] = []
    started = time.perf_counter()
    bar = Progress(TextColumn("decoding"), BarColumn(), TextColumn("{task.fields[pk]:,} packets"),
                   TransferSpeedColumn(), console=Console(stderr=True), disable=not show)
    try:
        with bar:
            task = bar.add_task("decode", total=total, pk=0)

            def on_batch(batch) -> None:
                nonlocal packets
                n = len(batch)  # never batch.frames: a compiled-path block builds them on access
                packets += n
                bar.update(task, advance=batch.captured_bytes() + 16 * n, pk=packets)

            for event in iter_events(captures, counters=counters, on_batch=on_batch,
                                     warnings=warnings):
                summary.add(event)
                if writer:
                    writer.write(event)
    except (CaptureError, PipelineError) as exc:
        click.echo(f"radsensor: {exc}", err=True)
        sys.exit(2)
    finally:
        if writer:
            writer.close()
    summary.render(counters, packets, time.perf_counter() - started, console)
    for warning in warnings:
        click.echo(f"radsensor: warning: {warning}", err=True)
    if writer:
        console.print(f"event logs in {logs_dir}: " + ", ".join(
            f"{k}.jsonl ({v:,})" for k, v in sorted(writer.written.items())))


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)
