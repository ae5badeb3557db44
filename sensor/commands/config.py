"""``radsensor config check FILE``: validate a daemon configuration without starting anything."""

from __future__ import annotations

import os
import sys

import click

from sensor.daemon.config import ConfigError, load_config, sink_label


@click.group()
def config() -> None:
    """Daemon configuration files."""


@config.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--model/--no-model", "check_model", default=True, show_default=True,
              help="Also load the model the file names (format, features, scikit-learn version).")
def check(path: str, check_model: bool) -> None:
    """Validate FILE: every key, type and range; exit 2 with the key and the problem on error."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        click.echo(f"radsensor: {exc}", err=True)
        sys.exit(2)
    problems: list[str] = []
    if check_model and cfg.detect.model:
        from sensor.daemon.service import ServiceError, _check_window

        try:
            from sensor.detect.artifact import ModelArtifact, ModelError

            artifact = ModelArtifact.load(cfg.detect.model)
            _check_window(cfg.detect, artifact.window.span)
        except FileNotFoundError:
            problems.append(f"detect.model: {cfg.detect.model}: no such file")
        except (ModelError, ServiceError, OSError, ValueError, KeyError) as exc:
            problems.append(f"detect.model: {exc}" if not str(exc).startswith("detect.") else str(exc))
    for i, s in enumerate(cfg.sinks):
        for key, f in (("tls.ca", s.tls.ca), ("tls.cert", s.tls.cert), ("tls.key", s.tls.key)):
            if f and not os.path.isfile(f):
                problems.append(f"sinks[{i}].{key}: {f}: no such file")
    if problems:
        for p in problems:
            click.echo(f"radsensor: {p}", err=True)
        sys.exit(2)
    c = cfg.capture
    click.echo(f"{path}: ok")
    click.echo(f"  capture: {', '.join(c.interfaces) or '(interface from -i)'}; filter {c.filter or '(none)'}; "
               f"snaplen {c.snaplen}; ring {c.buffer_size >> 20} MiB; workers {c.workers}")
    click.echo(f"  model: {cfg.detect.model or '(from -m)'}")
    click.echo("  sinks: " + (", ".join(f"{sink_label(s, i)} ({s.type}{' ' + s.url if s.url else ''})"
                                         for i, s in enumerate(cfg.sinks)) or "stdout (default)"))
    m = cfg.metrics
    click.echo(f"  metrics: {'http://%s:%d/metrics' % (m.listen, m.port) if m.enabled else 'off'}; "
               f"user: {cfg.daemon.user or '(unchanged)'}")
