"""``radsensor model info MODEL``: what a model file holds."""

from __future__ import annotations

import sys

import click


@click.group()
def model() -> None:
    """Inspect model artifacts."""


@model.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--devices/--no-devices", default=True, help="List the inventory's devices.")
def info(path: str, as_json: bool, devices: bool) -> None:
    """Print format, versions, training metadata, threshold and inventory of MODEL."""
    import json

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from sensor.detect.artifact import ModelError, read_members

    try:
        manifest, members = read_members(path)
    except ModelError as exc:
        click.echo(f"radsensor: {exc}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(manifest, indent=2, sort_keys=True))
        return
    con = Console()
    tr, th, w, v = manifest["training"], manifest["threshold"], manifest["window"], manifest["versions"]
    t = Table(title=f"model {path}", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    rows = [
        ("format", f"{manifest['format']} v{manifest['format_version']}"),
        ("kind", manifest["kind"]),
        ("features", f"{len(manifest['feature_names'])} (+ summaries)"),
        ("window", f"{w['span']:g}s, lateness {w['lateness']:g}s, tz {w['tz']}"),
        ("trained", f"{tr.get('trained_at')} from {', '.join(tr.get('captures', []))}"),
        ("baseline", f"{tr.get('time_start')} → {tr.get('time_end')}"),
        ("windows", (f"{tr.get('windows', 0):,} over {tr.get('devices', 0)} devices, "
                     f"{tr.get('device_days', 0):g} device-days")),
        ("threshold", (f"{th['value']:.4f} ({th['method']}; target {th['per_device_day']:g}/device/day, "
                       f"safety {th['safety']:g}, expected {th['expected_per_device_day']:.3f})")),
        ("rate shifts", _rates_line(members)),
        ("inventory", ", ".join(f"{k} {v}" for k, v in manifest["inventory_summary"].items() if k != "roles")),
        ("roles", ", ".join(f"{k} {n}" for k, n in manifest["inventory_summary"]["roles"].items())),
        ("versions", ", ".join(f"{k} {x}" for k, x in v.items())),
    ]
    for k, val in rows:
        t.add_row(k, Text(str(val)))
    con.print(t)
    if devices:
        inv = json.loads(members["inventory.json"])
        d = Table(title="baseline devices")
        for col in ("ip", "role", "AE titles", "MAC", "listening", "windows"):
            d.add_column(col, overflow="fold")
        for r in inv["devices"]:
            d.add_row(Text(r["ip"]), Text(r["role"]), Text(",".join(r["ae_titles"])), Text(",".join(r["macs"][:2])),
                      Text(",".join(f"{p}/{n}" for p, n in r["listen"][:6])), Text(str(r["windows"])))
        con.print(d)


def _rates_line(members: dict[str, bytes]) -> str:
    import json

    from sensor.detect.rates import RateModel

    if "rates.json" not in members:
        return "none (flow-only model, or trained before rate-shift detection: retrain to enable)"
    try:
        return RateModel.from_dict(json.loads(members["rates.json"])).summary()
    except (ValueError, KeyError, TypeError):
        return "damaged rates.json"
