"""Every site model under training/sites/ works with the generator: it loads and is consistent,
each attack scenario finds the devices it needs (and they fit what the scenario claims: a scan
*from a modality*, an off-hours session of a *day-shift* workstation...), and a two-hour slice of
an attack day renders well-formed frames. tshark-free and cheap (a few seconds per site); the
tshark oracle over the committed samples is tests/test_generator_validation.py."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import dpkt
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from training.gen import scenarios
from training.gen.compose import Library
from training.gen.context import DayContext
from training.gen.hl7msgs import Hl7Library
from training.gen.recorder import Recorder
from training.gen.schedule import clinical_day
from training.gen.site import DEFAULT_SITE, Site, load_site
from training.generate import DayJob, generate_day

SITES = sorted(DEFAULT_SITE.parent.glob("*.toml"))
# Hosts the scenarios bring along (hard-coded in scenarios.py): they must not be site devices.
SCENARIO_HOSTS = {scenarios.NEW_QUERY_HOST, scenarios.EXFIL_HOST, scenarios.ROGUE_MODALITY, scenarios.BRUTE_HOST,
                  scenarios.HL7_ROGUE, scenarios.FUZZ_HOST, scenarios.BEACON}
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
    assert not SCENARIO_HOSTS & {d.ip for d in devs}
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
    day_start = dt.datetime.combine(day, dt.time(), dt.UTC)
    for lb in labels:
        start, end = (dt.datetime.fromisoformat(lb[k].replace("Z", "+00:00")) for k in ("start", "end"))
        assert day_start <= start <= end <= day_start + dt.timedelta(days=1, hours=1), lb["id"]
        ips = [x["ip"] for x in lb["ips"]]
        assert all(ip in by_ip or ip in SCENARIO_HOSTS for ip in ips), lb["id"]
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
    d = rec["dimse"]
    assert d["C-STORE-RQ"] == d["C-STORE-RSP"] > 0 and d["C-ECHO-RQ"] == d["C-ECHO-RSP"] > 0
    assert d.get("C-FIND-RQ", 0) > 0 and rec["associations"] > 0
    assert site.one("pacs").port in rec["dicom_ports"]
    macs = {dev.ip: dev.mac for dev in site.devices}
    lo = dt.datetime.combine(site.start_date + dt.timedelta(days=ATTACK_DAY), dt.time(10), dt.UTC).timestamp()
    n = prev = 0
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
                elif ipaddress.IPv4Address(a) in site.subnet:  # a scenario's unknown local host
                    assert m.startswith("02:"), a
                else:  # routed: the internet, or a scenario host on another internal network
                    assert m == site.gateway_mac, a
            if n % 40 == 0:
                assert _checksums_ok(frame), n
            n += 1
    assert n == rec["packets"] > 500
    assert {site.one("pacs").ip, site.one("dc").ip, site.one("ntp").ip} <= seen
    assert sum(1 for a in seen if a in macs) >= len(macs) // 2
