"""``radsensor features CAPTURE... -o FILE.parquet``: the per-device window feature table."""

from __future__ import annotations

import json
import sys

import click

# Some hospitals number their internal networks from public address space; the site says which
# addresses are its devices (the model keeps the list, so detection and the daemon use the same).
LOCAL_NET_OPTION = click.option(
    "--local-net", multiple=True, metavar="CIDR",
    help="A network whose addresses are site devices; repeat for several. Replaces the default "
         "(private, CGNAT, link-local and ULA ranges).")


@click.command()
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Parquet file to write.")
@click.option("--window", default="60s", show_default=True, help="Window span (e.g. 60s, 5m).")
@click.option("--lateness", default="120s", show_default=True, help="How long a window waits for late events.")
@click.option("--tz", default="UTC", show_default=True, help="Site time zone (IANA) for time-of-day features.")
@LOCAL_NET_OPTION
def features(captures: tuple[str, ...], output: str, window: str, lateness: str, tz: str,
             local_net: tuple[str, ...]) -> None:
    """Export one row per device per window, one column per registry feature."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sensor.capture import CaptureError
    from sensor.events import Counters
    from sensor.features.registry import FEATURES
    from sensor.features.windows import iter_windows
    from sensor.pipeline import PipelineError, iter_events

    cfg = _window_config(window, lateness, tz, local_net)
    counters = Counters()
    cols: dict[str, list] = {"device": [], "window_start": [], "window_end": [], "mac": [], "ae_titles": []}
    cols.update({f.name: [] for f in FEATURES})
    try:
        for w in iter_windows(iter_events(captures, counters=counters), cfg, counters):
            cols["device"].append(w.ip)
            cols["window_start"].append(int(w.start * 1e6))
            cols["window_end"].append(int(w.end * 1e6))
            cols["mac"].append(w.macs[0] if w.macs else None)
            cols["ae_titles"].append(list(w.ae_titles))
            for f in FEATURES:
                cols[f.name].append(w.features[f.name])
    except (CaptureError, PipelineError) as exc:
        click.echo(f"radsensor: {exc}", err=True)
        sys.exit(2)
    ts = pa.timestamp("us", tz="UTC")
    fields = [pa.field("device", pa.string()), pa.field("window_start", ts), pa.field("window_end", ts),
              pa.field("mac", pa.string()), pa.field("ae_titles", pa.list_(pa.string()))]
    fields += [pa.field(f.name, pa.float64(), metadata={"unit": f.unit, "description": f.description,
                                                       "transform": f.transform}) for f in FEATURES]
    meta = {"radsensor.window": json.dumps({"span": cfg.span, "lateness": cfg.lateness, "tz": cfg.tz})}
    table = pa.table(cols, schema=pa.schema(fields, metadata=meta))
    pq.write_table(table, output)
    click.echo(f"{table.num_rows:,} device windows × {len(FEATURES)} features from "
               f"{len(set(cols['device']))} devices → {output}")


def _window_config(window: str, lateness: str, tz: str, local_nets: tuple[str, ...] = ()):
    from sensor.features.windows import DEFAULT_LOCAL_NETS, WindowConfig, parse_span

    try:
        return WindowConfig(parse_span(window), parse_span(lateness) if lateness not in ("0", "0s") else 0.0, tz,
                            tuple(local_nets) or DEFAULT_LOCAL_NETS)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    except Exception as exc:  # zoneinfo raises ZoneInfoNotFoundError (a KeyError) for unknown zones
        raise click.BadParameter(f"unknown time zone {tz!r}") from exc
