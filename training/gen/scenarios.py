"""Attack scenarios injected into an otherwise normal day, each with a label.

Every scenario is ``fn(ctx, links, r) -> label`` where the label is
``{id, type, start, end, ips: [{ip, role}], description}`` (UTC ISO 8601). Rates, sizes and
times come from ``r`` (seeded per day), so different seeds give different attacks. Scenario hours
("01:00-04:00", "08:30-16:30") are the site's local clock (``DayContext.wall``); the hosts a
scenario brings along come from the site's ``[scenario_hosts]`` (``Site.scenario_hosts``).
training/README.md describes what a detector should see for each.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import random
import string
import struct

from .background import dns_pair, rdp_session, smb_session, tls_record
from .context import US, DayContext
from .recorder import record_raw
from .schedule import read_study
from .site import Device


def _iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us / US, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _label(ctx: DayContext, kind: str, start: int, end: int, attackers: list[str], victims: list[str],
           description: str) -> dict:
    n = sum(1 for _ in ctx.__dict__.setdefault("_labels_seen", []))
    ctx.__dict__["_labels_seen"].append(kind)
    return {"id": f"{ctx.day.isoformat()}-{n + 1:02d}-{kind}", "type": kind, "start": _iso(start), "end": _iso(end),
            "ips": [{"ip": ip, "role": "attacker"} for ip in attackers] + [{"ip": ip, "role": "victim"} for ip in victims],
            "description": description, "_start_us": start, "_end_us": end}


def _at(ctx: DayContext, r: random.Random, h0: float, h1: float) -> int:
    """A uniform time between local clock hours h0 and h1 of the day."""
    return ctx.wall(int(r.uniform(h0, h1) * 3600 * US))


def _ip(ctx: DayContext, key: str) -> str:
    return ctx.site.scenario_hosts[key].ip


def _fake(name: str, ip: str, ae: str, fp: str = "pynetdicom", role: str = "pc", port: int = 104) -> Device:
    return Device(name=name, role=role, ip=ip, mac="", ae=ae, fingerprint=fp, port=port)


# ----------------------------------------------------------------------------- DICOM
def _sweep(ctx: DayContext, r: random.Random, src: Device, t: int, letters: list[str], level: str) -> int:
    pacs, lib = ctx.site.one("pacs"), ctx.lib
    for c in letters:
        n = r.randint(20, 150)
        ctx.tcp(t, src.ip, pacs.ip, pacs.port, lambda n=n, c=c, s=ctx.seed(): lib.find(
            lib.fp(src), pacs, n, random.Random(s), src.ae, level=level, wildcard=c + "*"), "attack-find", app="dicom")
        t += int(r.uniform(1.5, 8) * US)
    return t


def phi_sweep_workstation(ctx, links, r):
    ws = ctx.site.by_name["WS2"]
    t0 = _at(ctx, r, 10, 15.5)
    letters = sorted(r.sample(string.ascii_uppercase, r.randint(12, 26)))
    end = _sweep(ctx, r, ws, t0, letters, "PATIENT")
    return _label(ctx, "phi_harvest_cfind", t0, end, [ws.ip], [ctx.site.one("pacs").ip],
                  f"Known workstation {ws.ae} runs {len(letters)} PATIENT-level C-FIND queries with wildcard "
                  "patient names (A*, B*, ...) against the PACS, each returning 20-150 patients.")


def phi_sweep_new_host(ctx, links, r):
    host = _fake("NEWQ", _ip(ctx, "new_query"), r.choice(["FINDSCU", "QUERY_TOOL", "ANY-SCU"]), "dcmtk")
    t0 = _at(ctx, r, 17, 21)
    letters = sorted(r.sample(string.ascii_uppercase, r.randint(15, 26)))
    end = _sweep(ctx, r, host, t0, letters, "PATIENT")
    end = _sweep(ctx, r, host, end, ["", "S"], "STUDY")
    return _label(ctx, "phi_harvest_cfind_new_host", t0, end, [host.ip], [ctx.site.one("pacs").ip],
                  f"Unknown host {host.ip} (AE {host.ae}, DCMTK fingerprint) sweeps the PACS with wildcard "
                  "PATIENT- and STUDY-level C-FIND queries.")


def exfil_move(ctx, links, r):
    ws = ctx.site.by_name["WS1"]
    dest = _fake("EXFIL", _ip(ctx, "exfil"), r.choice(["BACKUP_SCP", "STORESCP", "ARCHIVE2"]), "dcmtk")
    mods = [d for d in ctx.site.devices if d.role in ("ct", "mr")]
    t = t0 = _at(ctx, r, 12, 16)
    n_studies = max(5, int(r.randint(15, 40) * min(1.0, 2 * ctx.volume)))
    for _ in range(n_studies):
        mod = r.choice(mods)
        read_study(ctx, ws, mod, t, r.randint(1, max(2, ctx.day_index * 10_000)), r.randint(1, 20_000),
                   ctx.n_images(mod, r), dest_ae=dest.ae, dest_ip=dest.ip, n_find=0, dest_dev=dest)
        t += int(r.uniform(20, 90) * US)
    return _label(ctx, "exfil_cmove_new_destination", t0, t + 120 * US, [ws.ip, dest.ip], [ctx.site.one("pacs").ip],
                  f"{ws.ae} issues {n_studies} C-MOVE requests of CT/MR studies to a destination AE never seen "
                  f"before ({dest.ae}) at a new address {dest.ip}; the PACS pushes the images there.")


def exfil_get(ctx, links, r):
    host = _fake("GETTER", _ip(ctx, "exfil"), "GETSCU", "pynetdicom", "workstation")
    pacs, lib = ctx.site.one("pacs"), ctx.lib
    mods = [d for d in ctx.site.devices if d.role in ("ct", "mr", "mg")]
    t = t0 = _at(ctx, r, 19, 23)
    n_studies = max(4, int(r.randint(10, 30) * min(1.0, 2 * ctx.volume)))
    for _ in range(n_studies):
        mod = r.choice(mods)
        nb, n = lib.image_bytes(mod), ctx.n_images(mod, r)
        st = r.randint(1, max(2, ctx.day_index * 10_000))
        ctx.tcp(t, host.ip, pacs.ip, pacs.port, lambda m=mod, nb=nb, n=n, st=st, s=ctx.seed(): lib.get(
            host, pacs, m.role, nb, st, 1, n, random.Random(s)), "attack-get", app="dicom")
        t += int(r.uniform(30, 120) * US)
    return _label(ctx, "exfil_cget_new_host", t0, t + 120 * US, [host.ip], [pacs.ip],
                  f"Unknown host {host.ip} (AE {host.ae}) pulls {n_studies} studies with C-GET in the evening.")


def rogue_modality(ctx, links, r):
    ct1 = ctx.site.by_name["CT1"]
    rogue = _fake("ROGUE", _ip(ctx, "rogue_modality"), ct1.ae, "pynetdicom", "ct")
    pacs, lib = ctx.site.one("pacs"), ctx.lib
    t = t0 = _at(ctx, r, 9, 17)
    k = r.randint(2, 5)
    for _ in range(k):
        n = max(2, int(r.randint(20, 120) * ctx.count_scale))
        ctx.tcp(t, rogue.ip, pacs.ip, pacs.port, lambda n=n, s=ctx.seed(), st=ctx.day_index * 10_000 + 9000 + _: lib.store(
            rogue, pacs, "ct", lib.image_bytes(ct1), st, 99, n, random.Random(s)), "attack-store", app="dicom")
        t += int(r.uniform(60, 600) * US)
    return _label(ctx, "rogue_modality_cstore", t0, t, [rogue.ip], [pacs.ip],
                  f"A host at new address {rogue.ip} uses CT1's AE title {ct1.ae} (with a different "
                  f"implementation fingerprint) to inject {k} CT studies into the PACS by C-STORE.")


def ae_bruteforce(ctx, links, r):
    pacs, lib = ctx.site.one("pacs"), ctx.lib
    fp = ctx.site.fingerprints["pynetdicom"]
    brute = _ip(ctx, "bruteforce")
    t = t0 = _at(ctx, r, 0, 23)
    n = r.randint(60, 250)
    guesses = ["ANY", "STORESCP", "DCM4CHEE", "ORTHANC", "CONQUESTSRV1", "ARCHIVE", "SERVER", "AE_TITLE"]
    for k in range(n):
        called = guesses[k] if k < len(guesses) else "".join(r.choices(string.ascii_uppercase, k=r.randint(4, 10)))
        ctx.tcp(t, brute, pacs.ip, pacs.port, lambda c=called, s=ctx.seed(): lib.reject(
            fp, pacs, "called", random.Random(s), "ECHOSCU", c), "attack-rj", app="dicom")
        t += int(r.uniform(0.2, 2.0) * US)
    host = _fake("BRUTE", brute, "ECHOSCU")
    ctx.tcp(t, host.ip, pacs.ip, pacs.port, lambda s=ctx.seed(): lib.echo(host, pacs, random.Random(s)),
            "attack-echo", app="dicom")
    return _label(ctx, "ae_title_bruteforce", t0, t + US, [brute], [pacs.ip],
                  f"Unknown host {brute} tries {n} called AE titles against the PACS; all but the last "
                  "are rejected with A-ASSOCIATE-RJ (called AE title not recognised), the last guess "
                  "succeeds with a C-ECHO.")


FUZZ = [
    b"\x09\x00\x00\x00\x00\x40" + bytes(range(64)),                       # unknown PDU type
    b"\x01\x00\x00\x00\x00\x10" + b"\x00" * 16,                         # truncated A-ASSOCIATE-RQ
    b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x04\x01\x03\x00\x00",         # P-DATA before association
    b"\x01\x00\xff\xff\xff\xf0" + b"\x00\x01\x00\x00" + b"A" * 32,       # absurd PDU length
    b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00",                         # A-RELEASE-RQ out of order
    b"\x01\x00\x00\x00\x00\x44\x00\x01\x00\x00" + b"FUZZ".ljust(16) + b"X".ljust(16) + b"\x00" * 32
    + b"\x99\x00\x00\x00",                                                # bad item type in RQ
]


def malformed_pdus(ctx, links, r):
    pacs = ctx.site.one("pacs")
    fp = ctx.site.fp(pacs)
    fuzzer = _ip(ctx, "fuzzer")
    t = t0 = _at(ctx, r, 1, 23)
    n = r.randint(20, 60)
    for k in range(n):
        if k < len(FUZZ):
            payload = FUZZ[k]
        else:  # one of 10 seeded mutations per day: valid header type, random body/length
            m = random.Random(r.randrange(10) * 7919 + ctx.day_index)
            body = m.randbytes(m.randint(4, 400))
            payload = bytes([m.choice((1, 2, 4, 7, 0x11, 0xFF)), 0]) + struct.pack(">I", m.choice(
                (len(body), len(body) + 100, 3, 0x7FFFFFFF))) + body

        def items(p=payload):
            runs = ctx.lib._get(("raw", p), lambda: record_raw(ctx.lib.rec, fp, [p]))
            return [(d, 0 if i == 0 else 800, b) for i, (d, b) in enumerate(runs)]
        ctx.tcp(t, fuzzer, pacs.ip, pacs.port, items, "attack-fuzz", app="fuzz")
        t += int(r.uniform(0.5, 5) * US)
    return _label(ctx, "malformed_pdu_fuzzing", t0, t, [fuzzer], [pacs.ip],
                  f"Host {fuzzer} opens {n} connections to the PACS DICOM port and sends malformed or "
                  "fuzzed PDUs (unknown types, bad lengths, out-of-order PDUs); the PACS answers with "
                  "A-ABORT or closes.")


# ----------------------------------------------------------------------------- network
def port_scan(ctx, links, r):
    us1 = ctx.site.by_name["US1"]
    t = t0 = _at(ctx, r, 8, 18)
    ports = [21, 22, 23, 25, 80, 104, 135, 139, 443, 445, 1433, 2575, 3306, 3389, 4242, 5900, 6661, 8080, 11112]
    open_ = {(d.ip, p) for d in ctx.site.devices for p in (d.port, d.hl7_port) if p}
    open_ |= {(ctx.site.one("dc").ip, 445), (ctx.site.one("dc").ip, 3389), (ctx.site.one("proxy").ip, 8080),
              (ctx.site.one("dc").ip, 53)}
    known = {d.ip for d in ctx.site.devices}
    targets = [str(ctx.site.subnet[(0 << 8) + i]) for i in range(1, 64)]
    for ip in targets:
        for p in ports:
            if (ip, p) in open_:
                ctx.tcp(t, us1.ip, ip, p, None, "scan", close="rst")
            elif ip in known:
                ctx.tcp(t, us1.ip, ip, p, None, "scan", handshake="rst")
            else:
                ctx.tcp(t, us1.ip, ip, p, None, "scan", handshake="drop")
            t += r.randint(500, 4000)
    return _label(ctx, "port_scan_from_modality", t0, t + 2 * US, [us1.ip], [],
                  f"Ultrasound {us1.name} ({us1.ip}) SYN-scans {len(targets)} addresses of the server subnet on "
                  f"{len(ports)} ports: RST from closed ports, SYN/ACK (then RST) from open ones, silence "
                  "from unused addresses.")


def lateral_movement(ctx, links, r):
    mr = ctx.site.by_name["MR1"]
    t = t0 = _at(ctx, r, 13, 22)
    peers = [d for d in ctx.site.devices if d.role in ("pc", "workstation", "dc", "pacs", "ris", "ct", "dx")]
    r.shuffle(peers)
    chosen = peers[: r.randint(6, len(peers))]
    for d in chosen:
        if d.os == "windows":
            ctx.tcp(t, mr.ip, d.ip, 445, lambda s=ctx.seed(): smb_session(random.Random(s), 2), "attack-smb")
            if r.random() < 0.5:
                ctx.tcp(t + 3 * US, mr.ip, d.ip, 3389, lambda s=ctx.seed(): rdp_session(random.Random(s), 3),
                        "attack-rdp")
        else:
            ctx.tcp(t, mr.ip, d.ip, 445, None, "attack-smb", handshake="rst")
        t += int(r.uniform(2, 30) * US)
    return _label(ctx, "lateral_movement_smb_rdp", t0, t, [mr.ip], [d.ip for d in chosen],
                  f"MR scanner {mr.name} ({mr.ip}) fans out over SMB (445) and RDP (3389) to {len(chosen)} "
                  "hosts it never talks to normally.")


def beaconing(ctx, links, r):
    ct2 = ctx.site.by_name["CT2"]
    dc = ctx.site.one("dc")
    c2 = _ip(ctx, "c2")
    t = t0 = _at(ctx, r, 0, 15)
    period = r.choice((30, 60, 120, 300))
    dur = int(r.uniform(3, 8) * 3600)
    name = r.choice(["cdn-sync.example.net", "telemetry.example.org", "update-check.example.com"])
    q, a = dns_pair(r.getrandbits(16), name, ipaddress.IPv4Address(c2).packed)
    ctx.udp(t - 200_000, ct2.ip, dc.ip, ctx.eport(ct2.ip, r), 53, [(0, 0, q), (1, 900, a)], "attack-dns")
    k = 0
    while t < t0 + dur * US and t < ctx.t0 + (ctx.day_s - 400) * US:
        ctx.tcp(t, ct2.ip, c2, 443, lambda s=ctx.seed(): _beacon_items(random.Random(s)), "attack-beacon")
        t += int(period * r.uniform(0.95, 1.05) * US)
        k += 1
    return _label(ctx, "c2_beaconing_from_modality", t0, t, [ct2.ip], [c2],
                  f"CT scanner {ct2.name} resolves {name} and connects every ~{period}s ({k} times) to the "
                  f"external address {c2}:443 with small TLS-shaped exchanges.")


def _beacon_items(r: random.Random) -> list:
    return [(0, 0, tls_record(22, b"\x01" + r.randbytes(200))), (1, r.randint(30_000, 90_000),
            tls_record(22, b"\x02" + r.randbytes(400))), (0, 2000, tls_record(23, r.randbytes(180))),
            (1, r.randint(20_000, 60_000), tls_record(23, r.randbytes(r.randint(60, 400))))]


# ----------------------------------------------------------------------------- HL7
def hl7_injection(ctx, links, r):
    engine = ctx.site.one("engine")
    sender = _ip(ctx, "hl7_sender")
    t = t0 = _at(ctx, r, 0, 23)
    app = r.choice(["LABX", "TESTAPP", "HL7SPY"])
    from .schedule import Hl7Link
    link = Hl7Link(ctx, sender, engine, app, engine.hl7_app, kind="attack-hl7", open_at=t)
    n = r.randint(15, 80)
    for _ in range(n):
        link.add(t, r.choice(["ADT^A08", "ADT^A08", "ORM^O01", "ORU^R01"]), r.randint(1, 20_000), r.randint(1, 99_999))
        t += int(r.uniform(0.5, 20) * US)
    link.schedule()
    return _label(ctx, "hl7_injection_unknown_sender", t0, t, [sender], [engine.ip],
                  f"Unknown host {sender} (sending application {app}) connects to the interface engine "
                  f"and sends {n} ADT/ORM/ORU messages, which are accepted.")


def nak_storm(ctx, links, r):
    ris, engine = ctx.site.one("ris"), ctx.site.one("engine")
    t = t0 = _at(ctx, r, 8, 18)
    from .schedule import Hl7Link
    link = Hl7Link(ctx, ris, engine, ris.hl7_app, engine.hl7_app, kind="attack-nak", open_at=t)
    n = r.randint(150, 600)
    for _ in range(n):
        link.add(t, r.choice(["ADT^A08", "ORM^O01"]), r.randint(1, 20_000), r.randint(1, 99_999),
                 r.choice(["AE", "AR", "AE"]))
        t += int(r.uniform(0.2, 2.5) * US)
    link.schedule()
    return _label(ctx, "hl7_nak_storm", t0, t, [ris.ip], [engine.ip],
                  f"A second RIS connection floods the engine with {n} messages that are all negatively "
                  "acknowledged (MSA-1 AE/AR) within minutes.")


# ----------------------------------------------------------------------------- behavioural
def offhours_new_peer(ctx, links, r):
    ws = ctx.site.by_name["WS2"]
    vna = ctx.site.one("archive")
    lib = ctx.lib
    t = t0 = _at(ctx, r, 1, 4)
    k = r.randint(4, 12)
    mods = [d for d in ctx.site.devices if d.is_modality]
    for _ in range(k):
        mod = r.choice(mods)
        n = ctx.n_images(mod, r)
        st = r.randint(1, max(2, ctx.day_index * 10_000))
        nres = r.randint(1, 3)
        ctx.tcp(t, ws.ip, vna.ip, vna.port, lambda s=ctx.seed(), k=nres: lib.find(lib.fp(ws), vna, k,
                random.Random(s), ws.ae), "attack-offhours-find", app="dicom")
        t += int(r.uniform(5, 30) * US)
        seed = ctx.seed()
        off = r.randint(5_000, 15_000)

        def part(which, mod=mod, n=n, st=st, seed=seed, off=off):
            return lib.move(ws, vna, ws, ws.ae, mod.role, lib.image_bytes(mod), st, 1, n, random.Random(seed),
                            sub_offset=off)[which]
        ctx.tcp(t, ws.ip, vna.ip, vna.port, lambda p=part: p(0), "attack-offhours-move", app="dicom")
        ctx.tcp(t + off, vna.ip, ws.ip, ws.port, lambda p=part: p(1), "attack-offhours-move-sub", app="dicom")
        t += int(r.uniform(60, 400) * US)
    return _label(ctx, "offhours_new_peer", t0, t, [ws.ip], [vna.ip],
                  f"Day-shift workstation {ws.ae} is active at night and talks to the archive {vna.ae}, a peer it "
                  f"never uses: {k} C-FIND + C-MOVE retrievals directly from the VNA.")


def retrieval_increase(ctx, links, r):
    ws = ctx.site.by_name["WS1"]
    mods = [d for d in ctx.site.devices if d.is_modality]
    base = ws.reads_per_day * ctx.volume
    extra = max(3, int(2 * base))  # ~3x its usual retrievals in total
    times = sorted(ctx.wall(int(r.uniform(8.5, 16.5) * 3600 * US)) for _ in range(extra))  # local 08:30-16:30
    for t in times:
        mod = r.choice(mods)
        read_study(ctx, ws, mod, t, r.randint(1, max(2, ctx.day_index * 10_000)), r.randint(1, 20_000),
                   ctx.n_images(mod, r))
    return _label(ctx, "retrieval_rate_increase", ctx.wall(int(8.5 * 3600 * US)), ctx.wall(int(16.5 * 3600 * US)) + 300 * US,
                  [ws.ip], [ctx.site.one("pacs").ip],
                  f"Workstation {ws.ae} retrieves about three times its usual number of studies ({extra} extra "
                  "C-FIND + C-MOVE reads) during working hours, with normal-looking individual sessions.")


SCENARIOS = {
    "phi_harvest_cfind": phi_sweep_workstation,
    "phi_harvest_cfind_new_host": phi_sweep_new_host,
    "exfil_cmove_new_destination": exfil_move,
    "exfil_cget_new_host": exfil_get,
    "rogue_modality_cstore": rogue_modality,
    "ae_title_bruteforce": ae_bruteforce,
    "port_scan_from_modality": port_scan,
    "hl7_injection_unknown_sender": hl7_injection,
    "hl7_nak_storm": nak_storm,
    "malformed_pdu_fuzzing": malformed_pdus,
    "lateral_movement_smb_rdp": lateral_movement,
    "c2_beaconing_from_modality": beaconing,
    "offhours_new_peer": offhours_new_peer,
    "retrieval_rate_increase": retrieval_increase,
}


def inject(ctx: DayContext, links: dict, names) -> list[dict]:
    """Run the named scenarios (each with its own seeded RNG); returns their labels."""
    labels = []
    for name in names:
        r = random.Random(f"{ctx.rng.getrandbits(64)}:{name}")
        labels.append(SCENARIOS[name](ctx, links, r))
    labels.sort(key=lambda lb: lb["_start_us"])
    for k, lb in enumerate(labels):
        lb["id"] = f"{ctx.day.isoformat()}-{k + 1:02d}-{lb['type']}"
    return labels
