"""Reference-traffic generator: ``python -m training.generate``.

Examples::

    python -m training.generate --samples --out pcaps            # the committed sample set
    python -m training.generate --full --out data/dataset        # >= 7 normal, 3 attack, 2 clean days
    python -m training.generate --kind attack --seed 7 --out /tmp/x --image-scale 0.01

Same seed, same options -> byte-identical pcaps (see tests/test_generator_determinism.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from training.gen.background import background_day
from training.gen.compose import Library
from training.gen.context import DayContext
from training.gen.hl7msgs import Hl7Library
from training.gen.recorder import Recorder
from training.gen.render import PcapWriter
from training.gen.scenarios import SCENARIOS, inject
from training.gen.schedule import clinical_day
from training.gen.site import load_site


@dataclass(frozen=True, slots=True)
class DayJob:
    name: str  # output file stem
    kind: str  # normal | clean | attack
    day_index: int
    seed: int
    image_scale: float
    volume: float
    scenarios: tuple[str, ...] = ()
    count_scale: float = 1.0  # images per study
    hours: tuple[int, int] = (0, 24)  # keep only sessions starting in [start, end) local clock hours


def generate_day(job: DayJob, out: Path, site_path: str | None = None) -> dict:
    """Generate one day into ``out/<name>.pcap`` plus ``<name>.record.json`` (and labels)."""
    t_start = time.monotonic()
    site = load_site(site_path)
    day = site.start_date + dt.timedelta(days=job.day_index)
    out.mkdir(parents=True, exist_ok=True)
    with Recorder(max_pdu=int(site.generation.get("max_pdu", 16382))) as rec:
        lib = Library(site, rec, job.image_scale)
        ctx = DayContext(site, lib, Hl7Library(rec), day, job.seed, job.volume, job.day_index, job.count_scale)
        links = clinical_day(ctx)
        labels = inject(ctx, links, job.scenarios) if job.kind == "attack" else []
        for link in links.values():
            link.schedule()
        background_day(ctx)
        lo, hi = ctx.wall(job.hours[0] * 3_600_000_000), ctx.wall(job.hours[1] * 3_600_000_000)
        if job.hours != (0, 24):
            # a slice keeps whole sessions that start inside it (so every association is complete)
            ctx.sessions = [s for s in ctx.sessions if lo <= s.start < hi]
            labels = [lb for lb in labels if lb["_start_us"] < hi and lb["_end_us"] >= lo]
        pcap = out / f"{job.name}.pcap"
        w = PcapWriter(str(pcap))
        try:
            w.write_all(ctx.packets())
        finally:
            w.close()
    for lb in labels:
        lb.pop("_start_us", None)
        lb.pop("_end_us", None)
    record = {
        "pcap": pcap.name, "kind": job.kind, "date": day.isoformat(), "seed": job.seed,
        "image_scale": job.image_scale, "volume": job.volume, "count_scale": job.count_scale, "hours": list(job.hours),
        "site": site.name,
        # the site's time zone (run_eval trains with it); absent = UTC, so UTC sites' records are unchanged
        **({"tz": site.tz} if site.tz != "UTC" else {}),
        "packets": w.packets, "bytes": w.bytes,
        "generation_seconds": round(time.monotonic() - t_start, 1),
        **ctx.record.to_dict(),
        "labels": [lb["id"] for lb in labels],
    }
    stable = {k: v for k, v in record.items() if k != "generation_seconds"}
    (out / f"{job.name}.record.json").write_text(json.dumps(stable, indent=1) + "\n")
    if job.kind == "attack":
        (out / f"{job.name}.labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    record["labels_full"] = labels
    return record


def _run(args):
    job, out, site = args
    return generate_day(job, Path(out), site)


def plan(mode: str, seed: int, days: int, site_path: str | None, image_scale: float | None,
         volume: float | None) -> list[DayJob]:
    site = load_site(site_path)
    g = site.generation
    if mode == "samples":
        sc = image_scale if image_scale is not None else float(g.get("sample_image_scale", 0.004))
        vol = volume if volume is not None else float(g.get("sample_volume_scale", 0.5))
        cs = float(g.get("sample_count_scale", 0.1))
        return [
            DayJob("normal-day1", "normal", 0, seed + 1, sc, vol, (), cs),
            DayJob("normal-day2", "normal", 1, seed + 2, sc, vol, (), cs),
            DayJob("attack-day", "attack", 2, seed + 3, sc, vol, tuple(SCENARIOS), cs),
            DayJob("clean-day", "clean", 3, seed + 4, sc, vol, (), cs),
        ]
    sc = image_scale if image_scale is not None else float(g.get("full_image_scale", 0.25))
    vol = volume if volume is not None else 1.0
    if mode == "full":
        n_norm = max(days, 7)
        jobs = [DayJob(f"normal-{i + 1:02d}", "normal", i, seed * 1000 + i, sc, vol) for i in range(n_norm)]
        jobs += [DayJob(f"attack-{i + 1:02d}", "attack", n_norm + i, seed * 1000 + 100 + i, sc, vol, tuple(SCENARIOS))
                 for i in range(3)]
        jobs += [DayJob(f"clean-{i + 1:02d}", "clean", n_norm + 3 + i, seed * 1000 + 200 + i, sc, vol)
                 for i in range(2)]
        return jobs
    return [DayJob(f"{mode}-{i + 1:02d}", mode, i, seed * 1000 + i, sc, vol,
                   tuple(SCENARIOS) if mode == "attack" else ()) for i in range(days)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.generate", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--days", type=int, default=1)
    ap.add_argument("--out", default="data/dataset")
    ap.add_argument("--site", default=None, help="site TOML (default training/sites/default.toml)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help=">= 7 normal, 3 attack, 2 clean full-size days")
    mode.add_argument("--samples", action="store_true", help="the small committed sample set (pcaps/)")
    mode.add_argument("--kind", choices=("normal", "attack", "clean"), default=None)
    ap.add_argument("--image-scale", type=float, default=None, help="multiply per-image bytes")
    ap.add_argument("--volume", type=float, default=None, help="multiply study/read/background counts")
    ap.add_argument("--jobs", type=int, default=2, help="days generated in parallel")
    a = ap.parse_args(argv)
    m = "full" if a.full else "samples" if a.samples else (a.kind or "normal")
    try:
        jobs = plan(m, a.seed, a.days, a.site, a.image_scale, a.volume)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    args = [(j, str(out), a.site) for j in jobs]
    t0 = time.monotonic()
    if a.jobs > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(min(a.jobs, len(jobs))) as pool:
            results = pool.map(_run, args, chunksize=1)
    else:
        results = [_run(x) for x in args]
    attack_labels = []
    for r in results:
        print(f"{r['pcap']:24s} {r['kind']:7s} {r['date']} packets={r['packets']:>9,} "
              f"MB={r['bytes'] / 1e6:8.1f} assoc={r['associations']:>5} hl7={sum(r['hl7'].values()):>5} "
              f"t={r['generation_seconds']}s")
        for lb in r["labels_full"]:
            attack_labels.append({**lb, "pcap": r["pcap"]})
    if attack_labels:
        (out / "labels.json").write_text(json.dumps(attack_labels, indent=1) + "\n")
    print(f"total {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
