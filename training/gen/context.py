"""Per-day generation context: hosts, sessions, the merge into one time-ordered packet stream,
and the generator-side record of what was generated (for the tshark validation test)."""

from __future__ import annotations

import datetime as dt
import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .compose import Library, count_dimse
from .hl7msgs import Hl7Library
from .render import Host, Packet, TcpConversation, udp_frame
from .site import Device, Site

US = 1_000_000


@dataclass(slots=True)
class Session:
    start: int  # µs since epoch
    build: Callable[[], Iterator[Packet]]


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
        self.t0 = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * US
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
            h = Host.of(ip, self.site.mac_for(ip), ttl or self._ttl.get(ip, 64 if not ip.startswith("203.") else 52))
            self._hosts[ip] = h
        return h

    def seed(self) -> int:
        return self.rng.getrandbits(48)

    def when(self, us: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(us / US, tz=dt.UTC)

    def eport(self, ip: str, r: random.Random) -> int:
        win = self._ttl.get(ip, 64) == 128
        return r.randint(49152, 65535) if win else r.randint(32768, 60999)

    def n_images(self, dev: Device, r: random.Random) -> int:
        return max(1, round(r.randint(*dev.images) * self.count_scale))

    def activity(self, dev: Device, hour: int) -> float:
        s = self.site.schedules[dev.schedule]
        return s.hours[hour % 24] * (s.weekend if self.weekend else 1.0)

    def sample_time(self, dev: Device, r: random.Random) -> int:
        """A time of day (µs since midnight) drawn from the device's hourly activity weights."""
        w = [self.activity(dev, h) for h in range(24)]
        if sum(w) == 0:
            w = [1.0] * 24
        h = r.choices(range(24), weights=w)[0]
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
        self.sessions.append(Session(start, build))

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
        self.sessions.append(Session(start, build))

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
