"""Per-day generation context: hosts, sessions, the merge into one time-ordered packet stream,
and the generator-side record of what was generated (for the tshark validation test).

Time: a day runs from the site's local midnight to the next local midnight (23 or 25 h on a DST
change day). Times are µs since the UTC epoch (what pcap stores); ``t0`` is local midnight.
Hourly schedules are walked over the day's *elapsed* hours (``wall_hours[e]`` is the local
clock hour during elapsed hour ``e``), so a DST day has one hour fewer or one repeated.
``wall(off)`` maps a local clock time (µs after midnight) to epoch µs, for scenario windows
such as "01:00-04:00". Protocol timestamps that carry local time (HL7 MSH-7, syslog) use
``when()``. For a UTC site all of this reduces to ``t0 + off`` exactly as before.
"""

from __future__ import annotations

import datetime as dt
import heapq
import ipaddress
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from .compose import Library, count_dimse
from .hl7msgs import Hl7Library
from .render import Host, Packet, TcpConversation, udp_frame
from .site import Device, Site

US = 1_000_000


@dataclass(slots=True)
class Session:
    start: int  # µs since epoch
    build: Callable[[], Iterator[Packet]]
    kind: str = ""  # record kind ("c-store", "dns", ...) and initiating address: for inspection
    src: str = ""


@dataclass
class Record:
    """What the generator emitted: compared with tshark's view by the validation test."""

    dimse: Counter = field(default_factory=Counter)
    hl7: Counter = field(default_factory=Counter)
    associations: int = 0
    rejects: int = 0
    dicom_ports: set = field(default_factory=set)
    hl7_ports: set = field(default_factory=set)
    sessions: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"dimse": dict(sorted(self.dimse.items())), "hl7": dict(sorted(self.hl7.items())),
                "associations": self.associations, "rejects": self.rejects,
                "dicom_ports": sorted(self.dicom_ports), "hl7_ports": sorted(self.hl7_ports),
                "sessions": dict(sorted(self.sessions.items()))}


class DayContext:
    """Everything a schedule/scenario needs to add sessions to one day."""

    def __init__(self, site: Site, lib: Library, hl7lib: Hl7Library, day: dt.date, seed: int,
                 volume: float, day_index: int, count_scale: float = 1.0) -> None:
        self.site, self.lib, self.hl7 = site, lib, hl7lib
        self.day = day
        # dt.UTC for UTC sites keeps their arithmetic exactly what it was before time zones
        self.zone = dt.UTC if site.tz == "UTC" else ZoneInfo(site.tz)
        self._midnight = dt.datetime(day.year, day.month, day.day)  # naive local
        self.t0 = self.wall(0)
        self.day_s = (self.wall(86400 * US) - self.t0) // US  # 86400, or 82800/90000 on DST days
        self.day_us = self.day_s * US
        self.n_hours = self.day_s // 3600
        self.wall_hours = [self.local_hour(self.t0 + e * 3600 * US) for e in range(self.n_hours)]
        self.rng = random.Random(seed)
        self.volume = volume
        self.count_scale = count_scale  # images per study (samples thin it)
        self.day_index = day_index
        self.sessions: list[Session] = []
        self.record = Record()
        self._hosts: dict[str, Host] = {}
        self._ttl = {d.ip: d.ttl for d in site.devices}
        self._ip_id: dict[str, int] = {}
        self.weekend = day.weekday() >= 5

    # ---------------------------------------------------------------- helpers
    def host(self, ip: str, ttl: int | None = None) -> Host:
        h = self._hosts.get(ip)
        if h is None:
            # hosts off the site subnet (the internet, routed scenario hosts) arrive some hops away
            local = ipaddress.IPv4Address(ip) in self.site.subnet
            h = Host.of(ip, self.site.mac_for(ip), ttl or self._ttl.get(ip, 64 if local else 52))
            self._hosts[ip] = h
        return h

    def seed(self) -> int:
        return self.rng.getrandbits(48)

    def when(self, us: int) -> dt.datetime:
        """Site-local wall-clock time of an epoch-µs instant (for protocols that carry local time)."""
        return dt.datetime.fromtimestamp(us / US, tz=self.zone)

    def wall(self, off: int) -> int:
        """Epoch µs of the local clock time ``off`` µs after this day's midnight (may pass 24 h).
        A clock time skipped by DST maps one hour on, a repeated one to its first occurrence."""
        s, us = divmod(off, US)
        local = (self._midnight + dt.timedelta(seconds=s)).replace(tzinfo=self.zone)
        return int(local.timestamp()) * US + us

    def local_hour(self, us: int) -> int:
        """Local clock hour of an instant, counted from this day's midnight (24.. is the next day)."""
        loc = dt.datetime.fromtimestamp(us // US, tz=self.zone)
        return (loc.date() - self.day).days * 24 + loc.hour

    def eport(self, ip: str, r: random.Random) -> int:
        win = self._ttl.get(ip, 64) == 128
        return r.randint(49152, 65535) if win else r.randint(32768, 60999)

    def n_images(self, dev: Device, r: random.Random) -> int:
        return max(1, round(r.randint(*dev.images) * self.count_scale))

    def activity(self, dev: Device, hour: int) -> float:
        s = self.site.schedules[dev.schedule]
        return s.hours[hour % 24] * (s.weekend if self.weekend else 1.0)

    def sample_time(self, dev: Device, r: random.Random) -> int:
        """A time of day (elapsed µs since local midnight) drawn from the device's hourly weights."""
        w = [self.activity(dev, h) for h in self.wall_hours]
        if sum(w) == 0:
            w = [1.0] * self.n_hours
        h = r.choices(range(self.n_hours), weights=w)[0]  # an elapsed hour of the day
        return int((h * 3600 + r.random() * 3600) * US)

    # ---------------------------------------------------------------- adding sessions
    def tcp(self, start: int, cli_ip: str, srv_ip: str, sport: int, items_fn, kind: str,
            handshake: str = "ok", close: str = "fin", cport: int | None = None,
            cli_rate: int = 1_000_000_000, srv_rate: int = 1_000_000_000, app: str | None = None) -> None:
        """Schedule one TCP conversation; ``items_fn()`` builds its items lazily at render time."""
        seed = self.seed()
        r = random.Random(seed)
        cport = cport or self.eport(cli_ip, r)
        rtt = r.randint(150, 500)
        self.record.sessions[kind] += 1
        if app == "dicom":
            self.record.dicom_ports.add(sport)
        elif app == "hl7":
            self.record.hl7_ports.add(sport)

        def build() -> Iterator[Packet]:
            conv = TcpConversation(self.host(cli_ip), cport, self.host(srv_ip), sport, seed, rtt,
                                   cli_rate, srv_rate)
            items = items_fn() if items_fn else []
            if app == "dicom":
                self._count_dicom(items)
            elif app == "hl7":
                self._count_hl7(items)
            return conv.frames(start, items, handshake, close)
        self.sessions.append(Session(start, build, kind, cli_ip))

    def udp(self, start: int, src_ip: str, dst_ip: str, sport: int, dport: int, payloads: list, kind: str) -> None:
        """Schedule UDP datagrams: payloads = [(direction, delay_us, bytes)], 0 = src->dst."""
        self.record.sessions[kind] += 1

        def build() -> Iterator[Packet]:
            a, b = self.host(src_ip), self.host(dst_ip)
            t = start
            for d, delay, p in payloads:
                t += delay
                s, o = (a, b) if d == 0 else (b, a)
                ipid = self._ip_id.get(s.ip, 0) + 1 & 0xFFFF
                self._ip_id[s.ip] = ipid
                yield t, 0, udp_frame(s, o, sport if d == 0 else dport, dport if d == 0 else sport, p, ipid)
        self.sessions.append(Session(start, build, kind, src_ip))

    def _count_dicom(self, items) -> None:
        self.record.dimse.update(count_dimse(items))
        for _, _, p in items:
            if p[0] == 1:
                self.record.associations += 1
            elif p[0] == 3:
                self.record.rejects += 1

    def _count_hl7(self, items) -> None:
        for _, _, p in items:
            try:
                msh = p[1:p.index(b"\r")].split(b"|")
                self.record.hl7[msh[8].decode()] += 1
            except (ValueError, IndexError):
                self.record.hl7["?"] += 1

    # ---------------------------------------------------------------- output
    def packets(self) -> Iterator[Packet]:
        """Merge every session's packets in time order; sessions are built only when due."""
        sess = sorted(self.sessions, key=lambda s: s.start)
        heap: list = []
        i, n = 0, len(sess)
        push, replace = heapq.heappush, heapq.heapreplace
        while heap or i < n:
            while i < n and (not heap or sess[i].start <= heap[0][0]):
                it = sess[i].build()
                first = next(it, None)
                if first is not None:
                    push(heap, (first[0], i, first[2], it))
                i += 1
            ts, idx, fr, it = heap[0]
            yield ts, idx, fr
            nxt = next(it, None)
            if nxt is None:
                heapq.heappop(heap)
            else:
                replace(heap, (nxt[0], idx, nxt[2], it))
