"""``radsensor run -i IFACE -m MODEL [--config FILE] [--syslog tcp://host:port]``: the live sensor.

Flags override the configuration file; sink flags (``--syslog``, ``--jsonl``, ``--stdout``)
replace the file's ``[[sinks]]``. Exit codes: 0 stopped by SIGTERM/SIGINT, 1 runtime failure
(capture, privileges, metrics port), 2 bad configuration or model.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from sensor.daemon.config import Config, ConfigError, SinkConfig, TlsConfig, load_config


def setup_logging(level: str) -> None:
    """stderr only; journald stamps time and unit itself, so add a timestamp only off journald."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format=fmt, force=True)


def _fail(message: str, code: int) -> None:
    click.echo(f"radsensor: {message}", err=True)
    sys.exit(code)


@click.command()
@click.option("-i", "--interface", "interfaces", multiple=True, metavar="IFACE",
              help="Interface to capture on (repeat for several). Overrides capture.interfaces.")
@click.option("-m", "--model", type=click.Path(dir_okay=False), help="Model artifact (detect.model).")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
@click.option("-f", "--filter", "bpf", metavar="BPF", help="BPF capture filter (capture.filter).")
@click.option("--snaplen", type=int, help="Bytes captured per frame (capture.snaplen).")
@click.option("--buffer-size", metavar="SIZE", help='Kernel ring per interface, e.g. "64MiB" (capture.buffer_size).')
@click.option("--promisc/--no-promisc", default=None, help="Promiscuous mode (capture.promisc).")
@click.option("--workers", type=int, help="Capture processes sharing the interface via PACKET_FANOUT.")
@click.option("--syslog", "syslog_urls", multiple=True, metavar="URL",
              help="Send alerts to syslog: udp://, tcp:// or tls://host:port (repeatable).")
@click.option("--syslog-format", type=click.Choice(["cef", "leef", "json", "ecs"]), default="cef", show_default=True)
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False), help="CA bundle for tls:// receivers.")
@click.option("--spool-dir", default="/var/lib/radsensor/spool", show_default=True,
              help="Spool for --syslog sinks (one sub-folder each).")
@click.option("--jsonl", "jsonl_path", type=click.Path(dir_okay=False), help="Append alerts to this JSONL file.")
@click.option("--stdout", "stdout_format", type=click.Choice(["text", "json", "cef", "leef", "ecs"]),
              help="Print alerts on stdout in this format.")
@click.option("--metrics-port", type=int, help="Prometheus endpoint port on localhost (metrics.port; 0 = any).")
@click.option("--no-metrics", is_flag=True, default=False, help="No metrics endpoint.")
@click.option("--user", help="Drop to this user once the capture is open (daemon.user).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
def run(interfaces, model, config_path, bpf, snaplen, buffer_size, promisc, workers, syslog_urls, syslog_format,
        ca_file, spool_dir, jsonl_path, stdout_format, metrics_port, no_metrics, user, log_level) -> None:
    """Capture live traffic, detect, and deliver alerts until SIGTERM (SIGHUP reloads)."""
    sinks: list[SinkConfig] = []
    for n, url in enumerate(syslog_urls):
        tls = TlsConfig(ca=ca_file or "")
        sinks.append(SinkConfig(type="syslog", name=f"syslog{n}" if len(syslog_urls) > 1 else "syslog", url=url,
                                format=syslog_format, tls=tls,
                                spool_dir=os.path.join(spool_dir, f"syslog{n}")))
    if jsonl_path:
        sinks.append(SinkConfig(type="jsonl", name="jsonl", path=jsonl_path))
    if stdout_format:
        sinks.append(SinkConfig(type="stdout", name="stdout", format=stdout_format))
    overrides = {
        "capture": {"interfaces": interfaces or None, "filter": bpf, "snaplen": snaplen,
                    "buffer_size": buffer_size, "promisc": promisc, "workers": workers},
        "detect": {"model": model},
        "metrics": {"port": metrics_port, "enabled": False if no_metrics else None},
        "daemon": {"user": user, "log_level": log_level},
        "sinks": sinks,
    }
    try:
        cfg = load_config(config_path) if config_path else Config()
        cfg = cfg.with_overrides(**overrides)
    except ConfigError as exc:
        _fail(str(exc), 2)
    setup_logging(cfg.daemon.log_level)

    from sensor.daemon.service import Service, ServiceError

    service = Service(cfg, overrides=overrides)
    try:
        service.start()
    except ServiceError as exc:
        _fail(str(exc), exc.exit_code)
    sys.exit(service.run())


if __name__ == "__main__":  # `python -m sensor.commands.run` (tests; before cli.py lists it)
    run(prog_name="radsensor run")
