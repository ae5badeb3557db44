"""Normal clinical activity for one day: orders, worklist, studies, commitment, forwarding,
reading (C-FIND then C-MOVE/C-GET), reports, echoes, persistent HL7 links.

Example::

    >>> clinical_day(ctx)      # adds sessions to a DayContext
"""

from __future__ import annotations

import math
import random

from .context import US, DayContext
from .site import Device

EXAM_MIN = {"ct": (5, 15), "mr": (20, 45), "us": (10, 30), "cr": (3, 6), "dx": (3, 6), "mg": (10, 20)}
MIN = 60 * US


def poisson(r: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, int(r.gauss(lam, math.sqrt(lam)) + 0.5))
    k, p, el = 0, 1.0, math.exp(-lam)
    while True:
        p *= r.random()
        if p <= el:
            return k
        k += 1


def store_duration(ctx: DayContext, dev: Device, n: int) -> int:
    nb = ctx.lib.image_bytes(dev)
    return n * (nb * 8 * US // (dev.mbps * 1_000_000) + 8000)


class Hl7Link:
    """A persistent MLLP connection (sender -> receiver) carrying one day of messages."""

    def __init__(self, ctx: DayContext, sender: Device | str, receiver: Device, sending_app: str,
                 receiving_app: str, kind: str = "hl7-link", open_at: int | None = None) -> None:
        self.ctx = ctx
        self.src = sender.ip if isinstance(sender, Device) else sender
        self.dst = receiver
        self.apps = (sending_app, receiving_app)
        self.msgs: list[tuple[int, str, int, int, str]] = []  # (t, type, patient, study, ack)
        self.kind = kind
        self.open_at = open_at

    def add(self, t: int, mtype: str, patient: int, study: int, ack: str = "AA") -> None:
        self.msgs.append((t, mtype, patient, study, ack))

    def schedule(self) -> None:
        if not self.msgs:
            return
        ctx = self.ctx
        msgs = sorted(self.msgs)
        start = self.open_at if self.open_at is not None else max(ctx.t0 + 2 * US, msgs[0][0] - 5 * US)
        ctrl0 = ctx.day_index * 1_000_000 + ctx.rng.randrange(100_000)
        r = random.Random(ctx.seed())

        def items():
            out = []
            prev = start + 1000
            for k, (t, mtype, patient, study, ack) in enumerate(msgs):
                m, a = ctx.hl7.exchange(mtype, self.apps[0], self.apps[1], ctx.when(t), ctrl0 + k,
                                        patient, study, ack)
                out.append((0, max(1000, t - prev), m))
                rsp = r.randint(2000, 40000)
                out.append((1, rsp, a))
                prev = t + rsp + 2000
            return out
        ctx.tcp(start, self.src, self.dst.ip, self.dst.hl7_port, items, self.kind, close="none", app="hl7")


def clinical_day(ctx: DayContext) -> dict:
    """Add the normal clinical workload. Returns the HL7 links (scenarios may add to them)."""
    site, lib, r = ctx.site, ctx.lib, ctx.rng
    pacs, vna, mwl = site.one("pacs"), site.one("archive"), site.one("mwl")
    ris, engine, emr = site.one("ris"), site.one("engine"), site.one("emr")
    wss = site.role("workstation")
    links = {
        "ris-engine": Hl7Link(ctx, ris, engine, ris.hl7_app, engine.hl7_app),
        "engine-pacs": Hl7Link(ctx, engine, pacs, engine.hl7_app, "PACS"),
        "engine-emr": Hl7Link(ctx, engine, emr, engine.hl7_app, emr.hl7_app),
    }
    study_no = ctx.day_index * 10_000 + 1
    reads: list[tuple[int, Device, int, int, int]] = []  # (time, modality, study, patient, n)
    for dev in [d for d in site.devices if d.is_modality]:
        lam = dev.studies_per_day * ctx.volume * (site.schedules[dev.schedule].weekend if ctx.weekend else 1.0)
        for _ in range(poisson(r, lam)):
            study = study_no
            study_no += 1
            patient = r.randint(1, 20_000)
            t_exam = ctx.t0 + ctx.sample_time(dev, r)
            n = ctx.n_images(dev, r)
            # orders: ADT then ORM from RIS through the engine to the PACS
            t_ord = t_exam - r.randint(10, 90) * MIN
            adt = "ADT^A04" if r.random() < 0.6 else "ADT^A08"
            ack = "AE" if r.random() < 0.01 else "AA"
            links["ris-engine"].add(t_ord, adt, patient, study, ack)
            links["ris-engine"].add(t_ord + r.randint(20, 200) * US, "ORM^O01", patient, study)
            links["engine-pacs"].add(t_ord + r.randint(1, 5) * US, adt, patient, study)
            links["engine-pacs"].add(t_ord + r.randint(201, 260) * US, "ORM^O01", patient, study,
                                     "AR" if r.random() < 0.005 else "AA")
            # worklist query before the exam
            t_mwl = t_exam - r.randint(1, 10) * MIN
            k_items = r.randint(1, 8)
            ctx.tcp(t_mwl, dev.ip, mwl.ip, mwl.port, lambda d=dev, k=k_items, s=ctx.seed(): lib.mwl(
                d, mwl, k, random.Random(s)), "mwl-find", app="dicom", cli_rate=dev.mbps * 1_000_000)
            # the study, stored when the exam ends
            t_store = t_exam + r.randint(*EXAM_MIN[dev.role]) * MIN
            nb = lib.image_bytes(dev)
            ctx.tcp(t_store, dev.ip, pacs.ip, pacs.port,
                    lambda d=dev, st=study, p=patient, k=n, nb=nb, s=ctx.seed(): lib.store(
                        d, pacs, d.role, nb, st, p, k, random.Random(s)),
                    "c-store", app="dicom", cli_rate=dev.mbps * 1_000_000)
            t_end = t_store + store_duration(ctx, dev, n)
            if dev.commit:
                t_c = t_end + r.randint(1, 10) * US
                s1 = ctx.seed()

                def commit(which, d=dev, k=n, s=s1):
                    return lib.commit(d, pacs, k, random.Random(s))[which]
                ctx.tcp(t_c, dev.ip, pacs.ip, pacs.port, lambda c=commit: c(0), "commit-action", app="dicom")
                ctx.tcp(t_c + r.randint(2, 30) * US, pacs.ip, dev.ip, dev.port, lambda c=commit: c(1),
                        "commit-report", app="dicom")
            # forwarding to the archive
            t_f = t_end + r.randint(2, 30) * MIN
            ctx.tcp(t_f, pacs.ip, vna.ip, vna.port,
                    lambda d=dev, st=study, p=patient, k=n, nb=nb, s=ctx.seed(): lib.store(
                        pacs, vna, d.role, nb, st, p, k, random.Random(s), think_ms=(0.2, 2), proc_ms=(1, 6)),
                    "forward", app="dicom")
            if r.random() < 0.92:
                reads.append((t_end + r.randint(5, 360) * MIN, dev, study, patient, n))
            # report back once read
            t_rep = t_end + r.randint(30, 600) * MIN
            links["ris-engine"].add(t_rep, "ORU^R01", patient, study)
            links["engine-emr"].add(t_rep + r.randint(1, 4) * US, "ORU^R01", patient, study)
    # reading: assign each read to an active workstation, plus prior-study retrievals
    last_read = ctx.t0 + (ctx.day_s - 1) * US - 600 * US  # reads are kept inside the day
    for t, dev, study, patient, n in reads:
        hour = ctx.local_hour(t)
        weights = [ctx.activity(w, hour) for w in wss]
        ws = r.choices(wss, weights=weights)[0] if sum(weights) else wss[-1]
        read_study(ctx, ws, dev, min(t, last_read), study, patient, n)
    for ws in wss:
        extra = poisson(r, ws.reads_per_day * ctx.volume * 0.4 * (0.2 if ctx.weekend else 1.0))
        mods = [d for d in site.devices if d.is_modality]
        for _ in range(extra):
            dev = r.choice(mods)
            t = ctx.t0 + ctx.sample_time(ws, r)
            old = r.randint(1, max(1, ctx.day_index * 10_000 + 1))
            read_study(ctx, ws, dev, t, old, r.randint(1, 20_000), ctx.n_images(dev, r))
    echoes(ctx)
    return links


def read_study(ctx: DayContext, ws: Device, mod: Device, t: int, study: int, patient: int, n: int,
               dest_ae: str | None = None, dest_ip: str | None = None, n_find: int | None = None,
               dest_dev: Device | None = None) -> int:
    """A workstation reads a study: STUDY-level C-FIND(s) then C-MOVE to itself (or C-GET)."""
    lib, r = ctx.lib, ctx.rng
    pacs = ctx.site.one("pacs")
    nb = lib.image_bytes(mod)
    for _ in range(n_find if n_find is not None else r.choice((1, 1, 1, 2, 3))):
        k = r.choice((0, 1, 1, 1, 2, 2, 3, 4, 6))
        ctx.tcp(t, ws.ip, pacs.ip, pacs.port, lambda k=k, s=ctx.seed(): lib.find(
            lib.fp(ws), pacs, k, random.Random(s), ws.ae), "c-find", app="dicom")
        t += r.randint(2, 40) * US
    if ws.retrieve == "get" and dest_ae is None:
        ctx.tcp(t, ws.ip, pacs.ip, pacs.port, lambda s=ctx.seed(): lib.get(
            ws, pacs, mod.role, nb, study, patient, n, random.Random(s)), "c-get", app="dicom")
        return t
    dest_ae = dest_ae or ws.ae
    dest_ip = dest_ip or ws.ip
    seed = ctx.seed()
    off = r.randint(5_000, 15_000)

    def part(which: int, seed=seed):
        # composed twice (once per connection) from the same seed: identical, and nothing is held
        return lib.move(ws, pacs, dest_dev or ws, dest_ae, mod.role, nb, study, patient, n, random.Random(seed),
                        sub_offset=off)[which]
    ctx.tcp(t, ws.ip, pacs.ip, pacs.port, lambda: part(0), "c-move", app="dicom")
    ctx.tcp(t + off, pacs.ip, dest_ip, ws.port if dest_ip == ws.ip else 104, lambda: part(1), "c-move-sub",
            app="dicom")
    return t


def echoes(ctx: DayContext) -> None:
    """Periodic C-ECHO: modalities to the PACS while switched on, PACS to the archive all day."""
    site, lib, r = ctx.site, ctx.lib, ctx.rng
    pacs, vna = site.one("pacs"), site.one("archive")
    for dev in [d for d in site.devices if d.is_modality]:
        for e, h in enumerate(ctx.wall_hours):  # elapsed hour e, local clock hour h
            if ctx.activity(dev, h) > 0 and r.random() < 0.9:
                t = ctx.t0 + (e * 3600 + r.randint(0, 3599)) * US
                ctx.tcp(t, dev.ip, pacs.ip, pacs.port, lambda d=dev, s=ctx.seed(): lib.echo(d, pacs, random.Random(s)),
                        "c-echo", app="dicom")
    step = vna.echo_every_min * 60
    for k in range(ctx.day_s // step):
        t = ctx.t0 + (k * step + r.randint(0, 30)) * US
        ctx.tcp(t, pacs.ip, vna.ip, vna.port, lambda s=ctx.seed(): lib.echo(pacs, vna, random.Random(s)),
                "c-echo", app="dicom")
