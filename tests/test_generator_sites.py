"""Every site model under training/sites/ works with the generator: it loads and is consistent,
each attack scenario finds the devices it needs (and they fit what the scenario claims: a scan
*from a modality*, an off-hours session of a *day-shift* workstation...), and a one-hour slice of
an attack day renders well-formed frames. The site time zone (days from local midnight, local
schedules and scenario hours, local HL7/syslog clocks, DST days of 23/25 h) and the scenario-host
table are checked on the clinic site (America/Chicago) and on the default site's UTC defaults.
tshark-free and cheap (a few seconds per site); the tshark oracle over the committed samples is
tests/test_generator_validation.py."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import dpkt
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from training.gen import scenarios
from training.gen.background import background_day
from training.gen.compose import Library
from training.gen.context import US, DayContext
from training.gen.hl7msgs import Hl7Library
from training.gen.recorder import Recorder
from training.gen.schedule import clinical_day
from training.gen.site import DEFAULT_SITE, Site, load_site
from training.generate import DayJob, generate_day

SITES = sorted(DEFAULT_SITE.parent.glob("*.toml"))
CLINIC = DEFAULT_SITE.parent / "clinic.toml"
# The scenario hosts before sites could place them (and still the default site's): must not move.
DEFAULT_HOSTS = {"new_query": "10.20.3.87", "exfil": "10.20.3.99", "rogue_modality": "10.20.1.199",
                 "bruteforce": "10.20.3.66", "hl7_sender": "10.20.3.45", "fuzzer": "10.20.3.71",
                 "c2": "203.0.113.66"}
SERVER_ROLES = ("pacs", "archive", "mwl", "ris", "engine", "emr", "dc", "ntp", "syslog", "proxy")
ATTACK_DAY = 8  # a weekday for both sites' calendars (default: Tuesday, clinic: Wednesday)

sites = pytest.mark.parametrize("path", SITES, ids=lambda p: p.stem)


def test_more_than_one_site():
    assert DEFAULT_SITE in SITES and len(SITES) >= 2


@sites
def test_site_model_is_consistent(path: Path):
    site = load_site(path)
    devs = site.devices
    assert len({d.ip for d in devs}) == len({d.mac for d in devs}) == len(devs)
    aes = [d.ae for d in devs if d.ae]
    assert len(set(aes)) == len(aes)
    assert all(ipaddress.IPv4Address(d.ip) in site.subnet for d in devs)
    assert ipaddress.IPv4Address(site.gateway_ip) in site.subnet
    assert not site.subnet.overlaps(site.external_net)
    # the scenarios' own hosts: not site devices, placed in the site's plan (C2 in its "internet")
    hosts = site.scenario_hosts
    assert set(hosts) == set(DEFAULT_HOSTS)
    assert not {h.ip for h in hosts.values()} & {d.ip for d in devs}
    assert not {h.mac for h in hosts.values()} & {d.mac for d in devs}
    assert all(ipaddress.IPv4Address(h.ip) in site.subnet for k, h in hosts.items() if k != "c2")
    assert ipaddress.IPv4Address(hosts["c2"].ip) in site.external_net
    assert hosts["c2"].mac is None
    ZoneInfo(site.tz)
    for role in SERVER_ROLES:  # the schedule and background use the first device of each
        assert site.role(role), role
    assert site.one("pacs").hl7_port and site.one("pacs").port and site.one("archive").port
    assert all(site.one(r).hl7_port and site.one(r).hl7_app for r in ("engine", "ris", "emr"))
    assert {"dcmtk", "pynetdicom"} <= set(site.fingerprints)  # the attack tools' fingerprints
    for d in devs:
        if d.is_modality or d.role == "workstation":
            assert d.ae and d.port and d.fingerprint, d.name
        if d.is_modality:
            assert d.studies_per_day > 0 and d.image_bytes > 0 and d.images[0] <= d.images[1], d.name
        if d.role == "workstation":
            assert d.reads_per_day > 0 and d.retrieve in ("move", "get"), d.name


def _weekday_activity(site: Site, name: str, hours) -> float:
    s = site.schedules[site.by_name[name].schedule]
    return sum(s.hours[h] for h in hours)


@sites
def test_every_scenario_finds_fitting_devices(path: Path):
    site = load_site(path)
    day = site.start_date + dt.timedelta(days=ATTACK_DAY)
    assert day.weekday() < 5
    with Recorder() as rec:  # nothing is recorded: sessions are only scheduled, never built
        ctx = DayContext(site, Library(site, rec, 0.001), Hl7Library(rec), day, 3, 0.05, ATTACK_DAY)
        labels = scenarios.inject(ctx, clinical_day(ctx), scenarios.SCENARIOS)
    assert sorted(lb["type"] for lb in labels) == sorted(scenarios.SCENARIOS)
    by_ip = {d.ip: d for d in site.devices}
    own = {h.ip for h in site.scenario_hosts.values()}
    zone = ZoneInfo(site.tz)
    day_start = dt.datetime.combine(day, dt.time(), zone)  # the site's local midnight
    for lb in labels:
        start, end = (dt.datetime.fromisoformat(lb[k].replace("Z", "+00:00")) for k in ("start", "end"))
        assert start.tzinfo == dt.UTC and lb["start"].endswith("Z")  # labels stay UTC
        assert day_start <= start <= end <= day_start + dt.timedelta(days=1, hours=1), lb["id"]
        local = start.astimezone(zone)
        if lb["type"] == "offhours_new_peer":  # "at night" on the site's clock
            assert 1 <= local.hour < 4, local
        elif lb["type"] == "retrieval_rate_increase":
            assert local.time() == dt.time(8, 30), local
        ips = [x["ip"] for x in lb["ips"]]
        assert all(ip in by_ip or ip in own for ip in ips), lb["id"]
        if lb["type"] in ("phi_harvest_cfind_new_host", "exfil_cget_new_host", "rogue_modality_cstore",
                          "ae_title_bruteforce", "hl7_injection_unknown_sender", "malformed_pdu_fuzzing"):
            assert ips[0] in own, lb["id"]
        if lb["type"] == "c2_beaconing_from_modality":
            assert site.scenario_hosts["c2"].ip in ips
        attacker = by_ip.get(next(x["ip"] for x in lb["ips"] if x["role"] == "attacker"))
        kind = lb["type"]
        if kind in ("port_scan_from_modality", "lateral_movement_smb_rdp", "c2_beaconing_from_modality"):
            assert attacker and attacker.is_modality, kind
        elif kind in ("phi_harvest_cfind", "exfil_cmove_new_destination", "retrieval_rate_increase",
                      "offhours_new_peer"):
            assert attacker and attacker.role == "workstation", kind
        elif kind == "hl7_nak_storm":
            assert attacker is site.one("ris")
        else:  # the other scenarios bring their own, unknown host
            assert attacker is None, kind
    # the workstation that turns up at 01:00-04:00 must be one that is normally asleep then
    assert _weekday_activity(site, "WS2", range(0, 5)) == 0
    assert _weekday_activity(site, "WS1", range(9, 16)) > 0  # retrieval increase happens in its hours
    assert site.by_name["WS1"].retrieve == "move"  # the exfiltration is a C-MOVE like its normal reads


def _checksums_ok(frame: bytes) -> bool:
    """scapy recomputes IP and TCP/UDP checksums; they must equal the generator's."""
    e = Ether(frame)
    l4 = e[TCP] if TCP in e else e[UDP]
    sums = e[IP].chksum, l4.chksum
    del e[IP].chksum, l4.chksum
    again = Ether(bytes(e))
    return (again[IP].chksum, (again[TCP] if TCP in again else again[UDP]).chksum) == sums


@sites
def test_attack_day_slice_renders_valid_frames(path: Path, tmp_path: Path):
    site = load_site(path)
    job = DayJob("slice", "attack", ATTACK_DAY, 11, 0.001, 0.06, tuple(scenarios.SCENARIOS), 0.02, (10, 11))
    rec = generate_day(job, tmp_path, str(path))
    on_disk = json.loads((tmp_path / "slice.record.json").read_text())
    if site.tz == "UTC":  # UTC sites' records are unchanged (no key), run_eval then trains at UTC
        assert "tz" not in rec and "tz" not in on_disk
    else:
        assert rec["tz"] == on_disk["tz"] == site.tz
    zone = ZoneInfo(site.tz)
    d = rec["dimse"]
    assert d["C-STORE-RQ"] == d["C-STORE-RSP"] > 0 and d["C-ECHO-RQ"] == d["C-ECHO-RSP"] > 0
    assert d.get("C-FIND-RQ", 0) > 0 and rec["associations"] > 0
    assert site.one("pacs").port in rec["dicom_ports"]
    macs = {dev.ip: dev.mac for dev in site.devices}
    own_macs = {h.ip: h.mac for h in site.scenario_hosts.values() if h.mac}
    lo = dt.datetime.combine(site.start_date + dt.timedelta(days=ATTACK_DAY), dt.time(10), zone).timestamp()
    n = prev = n_syslog = 0
    seen: set[str] = set()
    with open(tmp_path / "slice.pcap", "rb") as fh:
        reader = dpkt.pcap.Reader(fh)
        assert reader.datalink() == dpkt.pcap.DLT_EN10MB
        for ts, frame in reader:
            assert ts >= prev and ts >= lo
            prev = ts
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            assert isinstance(ip, dpkt.ip.IP)
            for addr, mac in ((ip.src, eth.src), (ip.dst, eth.dst)):
                a, m = dpkt.utils.inet_to_str(addr), dpkt.utils.mac_to_str(mac)
                seen.add(a)
                if a in macs:
                    assert m == macs[a], a
                elif a in own_macs:  # a scenario host the site gave a MAC
                    assert m == own_macs[a], a
                elif ipaddress.IPv4Address(a) in site.subnet:  # other unknown local host: derived MAC
                    assert m.startswith("02:"), a
                else:  # routed: the internet, or a scenario host on another internal network
                    assert m == site.gateway_mac, a
            if n % 40 == 0:
                assert _checksums_ok(frame), n
            if isinstance(ip.data, dpkt.udp.UDP) and ip.data.dport == 514:  # RFC 3164: local clock
                mon, day, hms = ip.data.data.split(b">", 1)[1][:15].decode().split()
                here = dt.datetime.fromtimestamp(ts, zone)
                assert (mon, int(day), *map(int, hms.split(":"))) == (
                    here.strftime("%b"), here.day, here.hour, here.minute, here.second), here
                n_syslog += 1
            n += 1
    assert n == rec["packets"] > 500 and n_syslog > 0
    assert {site.one("pacs").ip, site.one("dc").ip, site.one("ntp").ip} <= seen
    assert sum(1 for a in seen if a in macs) >= len(macs) // 2


# ----------------------------------------------------------------------------- time zone, hosts
def _edited(tmp_path: Path, src: Path, old: str, new: str) -> Path:
    text = src.read_text()
    assert old in text
    p = tmp_path / src.name
    p.write_text(text.replace(old, new))
    return p


def test_tz_and_scenario_hosts_parsed(tmp_path: Path):
    clinic = load_site(CLINIC)
    assert clinic.tz == "America/Chicago"
    hosts = clinic.scenario_hosts
    assert hosts["rogue_modality"].ip == "172.16.41.199" and hosts["rogue_modality"].mac == "00:0c:29:41:01:99"
    assert hosts["bruteforce"].mac is None and hosts["c2"].ip == "198.51.100.251"
    assert clinic.mac_for(hosts["new_query"].ip) == hosts["new_query"].mac
    assert clinic.mac_for(hosts["fuzzer"].ip) == "02:00:ac:10:2a:ab"  # derived from 172.16.42.171
    assert clinic.mac_for(hosts["c2"].ip) == clinic.gateway_mac
    # a table may set only some roles; the rest keep the defaults
    part = load_site(_edited(tmp_path, CLINIC, 'bruteforce = "172.16.43.66"', ""))
    assert part.scenario_hosts["bruteforce"].ip == DEFAULT_HOSTS["bruteforce"]
    for old, new in (('tz = "America/Chicago"', 'tz = "America/Springfield"'),
                     ('fuzzer = "172.16.42.171"', 'fuzzer = "172.16.42.11"'),      # WS1's address
                     ('fuzzer = "172.16.42.171"', 'fuzz = "172.16.42.171"'),       # unknown role
                     ('fuzzer = "172.16.42.171"', 'fuzzer = "172.16.43.66"'),      # shared with bruteforce
                     ('c2 = "198.51.100.251"', 'c2 = { ip = "198.51.100.251", mac = "02:00:00:00:00:01" }')):
        with pytest.raises(ValueError):
            load_site(_edited(tmp_path, CLINIC, old, new))


def test_default_site_keeps_utc_and_its_hosts(tmp_path: Path):
    site = load_site()
    assert site.tz == "UTC"
    assert {k: h.ip for k, h in site.scenario_hosts.items()} == DEFAULT_HOSTS
    assert all(h.mac is None for h in site.scenario_hosts.values())
    assert site.mac_for("10.20.3.87") == "02:00:0a:14:03:57"
    # without the tz line the site is still UTC (the field is optional)
    bare = load_site(_edited(tmp_path, DEFAULT_SITE, 'tz = "UTC"', ""))
    assert bare.tz == "UTC" and bare.scenario_hosts == site.scenario_hosts
    day = dt.date(2026, 3, 4)
    ctx = DayContext(site, None, None, day, 1, 0.1, 2)
    assert ctx.t0 == int(dt.datetime(2026, 3, 4, tzinfo=dt.UTC).timestamp()) * US
    assert ctx.day_s == 86400 and ctx.wall_hours == list(range(24))
    assert ctx.wall(int(8.5 * 3600 * US)) == ctx.t0 + int(8.5 * 3600 * US)
    assert ctx.when(ctx.t0).utcoffset() == dt.timedelta(0)
    # the committed samples were made before time zones: their records have no tz key
    for rec in sorted((Path(__file__).resolve().parent.parent / "pcaps").glob("*.record.json")):
        assert "tz" not in json.loads(rec.read_text()), rec.name


def _local(ctx: DayContext, us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(us / US, ctx.zone)


def test_chicago_day_runs_on_local_time():
    """A winter weekday at the clinic: the day starts at 06:00 UTC, day-shift traffic sits in
    local working hours (noon UTC onwards), and HL7 MSH-7 carries the local clock."""
    site = load_site(CLINIC)
    day = dt.date(2026, 1, 14)  # a Wednesday, CST (UTC-6)
    with Recorder() as rec:
        ctx = DayContext(site, Library(site, rec, 0.001), Hl7Library(rec), day, 5, 0.3, 0, 0.05)
        assert ctx.t0 == int(dt.datetime(2026, 1, 14, 6, tzinfo=dt.UTC).timestamp()) * US
        assert ctx.day_s == 86400 and not ctx.weekend
        links = clinical_day(ctx)
        background_day(ctx)
        clinic_devs = {d.ip for d in site.devices if d.schedule == "clinic" and d.is_modality}
        stores = [s.start for s in ctx.sessions if s.kind == "c-store" and s.src in clinic_devs]
        assert len(stores) > 20
        # "clinic" hours are 06-19 local: exams 06:00-20:00, stored 5-45 min later
        assert all(6 <= _local(ctx, t).hour <= 20 and _local(ctx, t).date() == day for t in stores)
        assert min(stores) >= ctx.t0 + 6 * 3600 * US  # i.e. not before 12:00 UTC
        assert any(dt.datetime.fromtimestamp(t / US, dt.UTC).hour < 6 for t in stores)  # local evening
        desk1 = site.by_name["DESK1"].ip  # "admin" schedule: 07-18 local
        web = [s.start for s in ctx.sessions if s.kind == "http" and s.src == desk1]
        assert web and all(7 <= _local(ctx, t).hour <= 17 for t in web)
        # MSH-7 of every message (and its ACK) on the RIS link is the local send time
        link = links["ris-engine"]
        link.msgs = sorted(link.msgs)[:6]
        before = len(ctx.sessions)
        link.schedule()
        frames = list(ctx.sessions[before].build())
    n = 0
    for ts, _, frame in frames:
        data = dpkt.ethernet.Ethernet(frame).data.data.data
        if data.startswith(b"\x0bMSH|"):
            msh7 = dt.datetime.strptime(data.split(b"|")[6].decode(), "%Y%m%d%H%M%S")
            assert abs((_local(ctx, ts).replace(tzinfo=None) - msh7).total_seconds()) < 60, msh7
            n += 1
    assert n == 12


@pytest.mark.parametrize(("day", "hours", "missing", "twice"),
                         [(dt.date(2026, 3, 8), 23, 2, None), (dt.date(2026, 11, 1), 25, None, 1)])
def test_dst_change_day_runs_midnight_to_midnight(day, hours, missing, twice):
    site = load_site(CLINIC)
    with Recorder() as rec:
        ctx = DayContext(site, Library(site, rec, 0.001), Hl7Library(rec), day, 9, 0.2, 0, 0.05)
        nxt = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), ctx.zone)
        assert ctx.t0 + ctx.day_us == int(nxt.timestamp()) * US and ctx.day_s == hours * 3600
        assert sorted(set(ctx.wall_hours)) == [h for h in range(24) if h != missing]
        assert twice is None or ctx.wall_hours.count(twice) == 2
        clinical_day(ctx)
        background_day(ctx)
    # periodic traffic fills the whole 23/25 h: PACS -> archive echo every 10 min, NTP1 -> internet
    pacs = site.one("pacs").ip
    step = site.one("archive").echo_every_min * 60 * US
    echo = sorted(s.start for s in ctx.sessions if s.kind == "c-echo" and s.src == pacs)
    assert len(echo) == ctx.day_us // step and ctx.t0 <= echo[0] and echo[-1] >= ctx.t0 + ctx.day_us - step
    ntp = [s.start for s in ctx.sessions if s.kind == "ntp" and s.src == site.one("ntp").ip]
    assert len(ntp) == ctx.day_s // 1024 and max(ntp) > ctx.t0 + ctx.day_us - 2048 * US
    assert min(s.start for s in ctx.sessions) >= ctx.t0
