"""Site model: devices, fingerprints and schedules loaded from a TOML file.

Example::

    >>> site = load_site()            # training/sites/default.toml
    >>> site.by_name["PACS"].ae
    'PACS'
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_SITE = Path(__file__).resolve().parent.parent / "sites" / "default.toml"

MODALITY_ROLES = ("ct", "mr", "us", "cr", "dx", "mg")

# SOP class per modality role (storage).
SOP_CLASS = {
    "ct": "1.2.840.10008.5.1.4.1.1.2",
    "mr": "1.2.840.10008.5.1.4.1.1.4",
    "us": "1.2.840.10008.5.1.4.1.1.6.1",
    "cr": "1.2.840.10008.5.1.4.1.1.1",
    "dx": "1.2.840.10008.5.1.4.1.1.1.1",
    "mg": "1.2.840.10008.5.1.4.1.1.1.2",
}
MODALITY_CODE = {"ct": "CT", "mr": "MR", "us": "US", "cr": "CR", "dx": "DX", "mg": "MG"}

# Hosts the attack scenarios bring along (training/gen/scenarios.py), by role; a site overrides
# them in its [scenario_hosts] table. These defaults fit default.toml (10.20.0.0/16, TEST-NET-3).
DEFAULT_SCENARIO_HOSTS = {
    "new_query": "10.20.3.87",       # phi_harvest_cfind_new_host: the unknown C-FIND sweeper
    "exfil": "10.20.3.99",           # exfil_cmove_new_destination target / exfil_cget_new_host puller
    "rogue_modality": "10.20.1.199", # rogue_modality_cstore: CT1's AE title from a new address
    "bruteforce": "10.20.3.66",      # ae_title_bruteforce
    "hl7_sender": "10.20.3.45",      # hl7_injection_unknown_sender
    "fuzzer": "10.20.3.71",          # malformed_pdu_fuzzing
    "c2": "203.0.113.66",            # c2_beaconing_from_modality: the internet peer (behind the gateway)
}


@dataclass(frozen=True, slots=True)
class Fingerprint:
    name: str
    uid: str
    version: str


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    hours: tuple[float, ...]  # 24 relative weights
    weekend: float


@dataclass(frozen=True, slots=True)
class ScenarioHost:
    """An address a scenario uses that is not a site device; ``mac`` only for on-VLAN hosts
    (None: a locally administered MAC derived from the address, see ``Site.mac_for``)."""

    ip: str
    mac: str | None = None


@dataclass(frozen=True, slots=True)
class Device:
    name: str
    role: str
    ip: str
    mac: str
    os: str = "linux"
    schedule: str = "always"
    ae: str | None = None
    port: int | None = None
    hl7_port: int | None = None
    hl7_app: str | None = None
    fingerprint: str | None = None
    studies_per_day: float = 0.0
    images: tuple[int, int] = (1, 1)
    image_bytes: int = 0
    mbps: int = 1000
    commit: bool = False
    reads_per_day: float = 0.0
    retrieve: str = "move"
    echo_every_min: int = 60

    @property
    def ttl(self) -> int:
        return 128 if self.os == "windows" else 64

    @property
    def is_modality(self) -> bool:
        return self.role in MODALITY_ROLES


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    start_date: dt.date
    subnet: ipaddress.IPv4Network
    gateway_ip: str
    gateway_mac: str
    external_net: ipaddress.IPv4Network
    domain: str
    devices: tuple[Device, ...]
    fingerprints: dict[str, Fingerprint]
    schedules: dict[str, Schedule]
    generation: dict = field(default_factory=dict)
    tz: str = "UTC"  # IANA zone of the site's wall clock (schedules, weekends, HL7/syslog times)
    scenario_hosts: dict[str, ScenarioHost] = field(
        default_factory=lambda: {k: ScenarioHost(v) for k, v in DEFAULT_SCENARIO_HOSTS.items()})

    @property
    def by_name(self) -> dict[str, Device]:
        return {d.name: d for d in self.devices}

    def role(self, role: str) -> list[Device]:
        return [d for d in self.devices if d.role == role]

    def one(self, role: str) -> Device:
        return self.role(role)[0]

    def fp(self, dev: Device) -> Fingerprint:
        return self.fingerprints[dev.fingerprint or "pynetdicom"]

    def mac_for(self, ip: str) -> str:
        """MAC seen on the VLAN for an address: the device's own, or the gateway for outside."""
        for d in self.devices:
            if d.ip == ip:
                return d.mac
        for h in self.scenario_hosts.values():
            if h.ip == ip and h.mac:
                return h.mac
        if ipaddress.IPv4Address(ip) in self.subnet:
            # unknown local host (attack scenarios): deterministic locally administered MAC
            o = ipaddress.IPv4Address(ip).packed
            return "02:00:%02x:%02x:%02x:%02x" % tuple(o)
        return self.gateway_mac


def load_site(path: str | Path | None = None) -> Site:
    """Load and validate a site TOML file (default: training/sites/default.toml)."""
    p = Path(path) if path else DEFAULT_SITE
    with open(p, "rb") as fh:
        raw = tomllib.load(fh)
    s = raw["site"]
    fps = {k: Fingerprint(k, v["uid"], v["version"]) for k, v in raw.get("fingerprint", {}).items()}
    scheds = {k: Schedule(k, tuple(float(x) for x in v["hours"]), float(v["weekend"]))
              for k, v in raw.get("schedule", {}).items()}
    devices = []
    for d in raw["device"]:
        d = dict(d)
        if "images" in d:
            d["images"] = tuple(d["images"])
        dev = Device(**d)
        if dev.schedule not in scheds:
            raise ValueError(f"device {dev.name}: unknown schedule {dev.schedule!r}")
        if dev.fingerprint and dev.fingerprint not in fps:
            raise ValueError(f"device {dev.name}: unknown fingerprint {dev.fingerprint!r}")
        if dev.ae and len(dev.ae) > 16:
            raise ValueError(f"device {dev.name}: AE title longer than 16 characters")
        for fp in fps.values():
            if len(fp.version) > 16:
                raise ValueError(f"fingerprint {fp.name}: version name longer than 16 characters")
        devices.append(dev)
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise ValueError("duplicate device names")
    tz = s.get("tz", "UTC")
    try:
        ZoneInfo(tz)
    except (ValueError, ZoneInfoNotFoundError) as e:
        raise ValueError(f"site tz: unknown time zone {tz!r}") from e
    subnet = ipaddress.IPv4Network(s["subnet"])
    return Site(
        name=s["name"],
        start_date=dt.date.fromisoformat(s["start_date"]),
        subnet=subnet,
        gateway_ip=s["gateway_ip"],
        gateway_mac=s["gateway_mac"],
        external_net=ipaddress.IPv4Network(s["external_net"]),
        domain=s.get("domain", "hospital.test"),
        devices=tuple(devices),
        fingerprints=fps,
        schedules=scheds,
        generation=raw.get("generation", {}),
        tz=tz,
        scenario_hosts=_scenario_hosts(raw.get("scenario_hosts", {}), subnet, devices),
    )


def _scenario_hosts(table: dict, subnet: ipaddress.IPv4Network, devices: list[Device]) -> dict[str, ScenarioHost]:
    """[scenario_hosts]: ``key = "ip"`` or ``key = {ip = "...", mac = "..."}``; unset keys keep the
    defaults. A scenario host must not be a site device (it would inherit that device's MAC/TTL)."""
    unknown = set(table) - set(DEFAULT_SCENARIO_HOSTS)
    if unknown:
        raise ValueError(f"scenario_hosts: unknown keys {sorted(unknown)} (known: {sorted(DEFAULT_SCENARIO_HOSTS)})")
    hosts = {}
    dev_ips, dev_macs = {d.ip for d in devices}, {d.mac.lower() for d in devices}
    for key, default in DEFAULT_SCENARIO_HOSTS.items():
        v = table.get(key, default)
        h = ScenarioHost(v) if isinstance(v, str) else ScenarioHost(v["ip"], v.get("mac"))
        ip = ipaddress.IPv4Address(h.ip)  # raises ValueError on a bad address
        if h.ip in dev_ips:
            raise ValueError(f"scenario_hosts.{key}: {h.ip} is a site device")
        if h.mac is not None:
            if len(h.mac.split(":")) != 6 or len(bytes.fromhex(h.mac.replace(":", ""))) != 6:
                raise ValueError(f"scenario_hosts.{key}: bad MAC {h.mac!r}")
            if ip not in subnet:
                raise ValueError(f"scenario_hosts.{key}: a MAC only for hosts on the site subnet "
                                 "(routed hosts appear behind the gateway MAC)")
            if h.mac.lower() in dev_macs:
                raise ValueError(f"scenario_hosts.{key}: MAC {h.mac} belongs to a site device")
        hosts[key] = h
    ips = [h.ip for h in hosts.values()]
    if len(set(ips)) != len(ips):
        raise ValueError("scenario_hosts: two roles share an address")
    return hosts
