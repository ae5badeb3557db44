"""The baseline inventory: what was normal, as sets of PHI-free keys, built from device windows.

It answers the novelty questions the rules ask: is this device known, which AE titles did it use,
which IPs used this AE title, which peer pairs, DICOM services (command × SOP class per pair),
C-MOVE destinations, HL7 senders, listening ports and implementation fingerprints were seen. Roles
(PACS, modality, workstation, RIS, …) are inferred from behaviour, not from names.

It is built from :class:`~sensor.features.windows.DeviceWindow` observations — the same keys the
rules read at detection time. HL7 control ids are never stored (events keep them; windows do not).

Example::

    >>> inv = Inventory()
    >>> for w in windows: inv.update(w)          # doctest: +SKIP
    >>> inv.finalize(); inv.devices["10.0.0.5"].role   # doctest: +SKIP
    'pacs'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sensor.features.windows import DeviceWindow

MWL_FIND = "1.2.840.10008.5.1.4.31"  # Modality Worklist Information Model – FIND
MPPS = "1.2.840.10008.3.1.2.3.3"  # Modality Performed Procedure Step
MAX_PEERS_PER_DEVICE = 4096

# Per-window maxima kept per device, for the "above baseline" rules.
TRACKED_MAX = ("dicom.rejected", "dicom.aborts", "dicom.rejects_sent", "hl7.naks", "flow.failed_out",
               "dimse.wildcard_queries", "dimse.query_patient")
# Feature totals kept per device, for role inference.
ROLE_TOTALS = ("dimse.c_store_rq", "dimse.c_store_served", "dimse.c_find_rq", "dimse.c_find_served",
               "dimse.c_move_rq", "dimse.c_move_served", "dimse.c_get_rq", "dimse.c_get_served",
               "dimse.n_rq", "dicom.assoc_rq", "dicom.assoc_ac", "hl7.msgs_out", "hl7.msgs_in")

ROLES = ("pacs", "ris", "modality", "workstation", "archive", "hl7_system", "dicom_node", "host")


@dataclass(slots=True)
class DeviceRecord:
    ip: str
    macs: set[str] = field(default_factory=set)
    ae_titles: set[str] = field(default_factory=set)
    first_seen: float = float("inf")
    last_seen: float = float("-inf")
    windows: int = 0
    role: str = "host"
    listen: set[tuple[str, int]] = field(default_factory=set)
    impl: set[tuple[str, str | None, str | None]] = field(default_factory=set)
    hl7_senders: set[tuple[str | None, str | None]] = field(default_factory=set)
    peers: set[str] = field(default_factory=set)  # every flow peer (both directions), capped
    maxima: dict[str, float] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)
    mwl_scu: bool = False
    mwl_scp: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "ip": self.ip, "macs": sorted(self.macs), "ae_titles": sorted(self.ae_titles),
            "first_seen": self.first_seen, "last_seen": self.last_seen, "windows": self.windows,
            "role": self.role, "listen": sorted([p, n] for p, n in self.listen),
            "impl": sorted([s, u, v] for s, u, v in self.impl),
            "hl7_senders": sorted([a, f] for a, f in self.hl7_senders),
            "peers": sorted(self.peers), "maxima": self.maxima, "totals": self.totals,
            "mwl_scu": self.mwl_scu, "mwl_scp": self.mwl_scp,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeviceRecord:
        return cls(
            ip=d["ip"], macs=set(d["macs"]), ae_titles=set(d["ae_titles"]), first_seen=d["first_seen"],
            last_seen=d["last_seen"], windows=d["windows"], role=d["role"],
            listen={(p, int(n)) for p, n in d["listen"]}, impl={(s, u, v) for s, u, v in d["impl"]},
            hl7_senders={(a, f) for a, f in d["hl7_senders"]}, peers=set(d["peers"]),
            maxima=dict(d["maxima"]), totals=dict(d["totals"]), mwl_scu=d["mwl_scu"], mwl_scp=d["mwl_scp"],
        )


class Inventory:
    """Sets of what the baseline saw. ``update`` with windows, ``merge`` partial inventories."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceRecord] = {}
        self.ae_ips: dict[str, set[str]] = {}  # AE title → IPs that used it
        self.peers: set[tuple[str, str]] = set()  # (client ip, server ip) that answered
        self.services: set[tuple[str, str, str, str | None]] = set()  # (requester, responder, command, SOP)
        self.move_dests: dict[str, set[str]] = {}  # C-MOVE SCP ip → destination AE titles asked of it
        self.hl7_senders: dict[tuple[str | None, str | None], set[str]] = {}  # (app, facility) → IPs

    # -- building
    def update(self, w: DeviceWindow) -> None:
        d = self.devices.get(w.ip)
        if d is None:
            d = self.devices[w.ip] = DeviceRecord(w.ip)
        d.windows += 1
        d.first_seen = min(d.first_seen, w.start)
        d.last_seen = max(d.last_seen, w.end)
        d.macs.update(w.macs)
        for name in TRACKED_MAX:
            v = w.features.get(name, 0.0)
            if v > d.maxima.get(name, 0.0):
                d.maxima[name] = v
        for name in ROLE_TOTALS:
            v = w.features.get(name, 0.0)
            if v:
                d.totals[name] = d.totals.get(name, 0.0) + v
        for p in w.peer_ips:
            if len(d.peers) >= MAX_PEERS_PER_DEVICE:
                break
            d.peers.add(p)
        for key in w.obs:
            self._observe(w.ip, d, key)

    def _observe(self, ip: str, d: DeviceRecord, key: tuple) -> None:
        kind = key[0]
        if kind == "ae":
            d.ae_titles.add(key[1])
            self.ae_ips.setdefault(key[1], set()).add(ip)
        elif kind == "peer":
            self.peers.add((ip, key[1]))
        elif kind == "listen":
            d.listen.add((key[1], key[2]))
        elif kind == "service":
            _, other, command, sop = key
            self.services.add((ip, other, command, sop))
            if command == "C-FIND" and sop == MWL_FIND:
                d.mwl_scu = True
                o = self.devices.get(other)
                if o is None:
                    o = self.devices[other] = DeviceRecord(other)
                o.mwl_scp = True
        elif kind == "move_dest":
            self.move_dests.setdefault(key[1], set()).add(key[2])
        elif kind == "hl7_sender":
            d.hl7_senders.add((key[1], key[2]))
            self.hl7_senders.setdefault((key[1], key[2]), set()).add(ip)
        elif kind == "impl":
            d.impl.add((key[1], key[2], key[3]))

    def merge(self, other: Inventory) -> Inventory:
        """Fold a partial inventory (one capture) into this one; returns self."""
        for ip, o in other.devices.items():
            d = self.devices.get(ip)
            if d is None:
                self.devices[ip] = DeviceRecord.from_dict(o.to_dict())
                continue
            d.windows += o.windows
            d.first_seen = min(d.first_seen, o.first_seen)
            d.last_seen = max(d.last_seen, o.last_seen)
            d.macs |= o.macs
            d.ae_titles |= o.ae_titles
            d.listen |= o.listen
            d.impl |= o.impl
            d.hl7_senders |= o.hl7_senders
            d.peers |= set(sorted(o.peers)[: max(0, MAX_PEERS_PER_DEVICE - len(d.peers))])
            for k, v in o.maxima.items():
                d.maxima[k] = max(d.maxima.get(k, 0.0), v)
            for k, v in o.totals.items():
                d.totals[k] = d.totals.get(k, 0.0) + v
            d.mwl_scu |= o.mwl_scu
            d.mwl_scp |= o.mwl_scp
        for ae, ips in other.ae_ips.items():
            self.ae_ips.setdefault(ae, set()).update(ips)
        self.peers |= other.peers
        self.services |= other.services
        for ip, dests in other.move_dests.items():
            self.move_dests.setdefault(ip, set()).update(dests)
        for k, ips in other.hl7_senders.items():
            self.hl7_senders.setdefault(k, set()).update(ips)
        return self

    def finalize(self) -> Inventory:
        """Infer roles once the inventory is complete; returns self."""
        for d in self.devices.values():
            d.role = infer_role(d)
        return self

    # -- queries
    def role(self, ip: str) -> str | None:
        d = self.devices.get(ip)
        return d.role if d is not None else None

    def known_peers(self) -> dict[str, set[str]]:
        return {ip: d.peers for ip, d in self.devices.items() if d.peers}

    def summary(self) -> dict[str, Any]:
        roles: dict[str, int] = {}
        for d in self.devices.values():
            roles[d.role] = roles.get(d.role, 0) + 1
        return {"devices": len(self.devices), "roles": dict(sorted(roles.items())),
                "ae_titles": len(self.ae_ips), "peer_pairs": len(self.peers), "services": len(self.services),
                "move_destinations": sum(len(v) for v in self.move_dests.values()),
                "hl7_senders": len(self.hl7_senders)}

    # -- serialisation (plain JSON: readable with `radsensor model info`, no pickle)
    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": [d.to_dict() for _, d in sorted(self.devices.items())],
            "ae_ips": {ae: sorted(ips) for ae, ips in sorted(self.ae_ips.items())},
            "peers": sorted([c, s] for c, s in self.peers),
            "services": sorted(([a, b, c, s] for a, b, c, s in self.services), key=lambda r: [str(x) for x in r]),
            "move_dests": {ip: sorted(v) for ip, v in sorted(self.move_dests.items())},
            "hl7_senders": sorted(([a, f, sorted(ips)] for (a, f), ips in self.hl7_senders.items()),
                                  key=lambda r: (str(r[0]), str(r[1]))),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Inventory:
        inv = cls()
        inv.devices = {r["ip"]: DeviceRecord.from_dict(r) for r in d["devices"]}
        inv.ae_ips = {ae: set(ips) for ae, ips in d["ae_ips"].items()}
        inv.peers = {(c, s) for c, s in d["peers"]}
        inv.services = {(a, b, c, s) for a, b, c, s in d["services"]}
        inv.move_dests = {ip: set(v) for ip, v in d["move_dests"].items()}
        inv.hl7_senders = {(a, f): set(ips) for a, f, ips in d["hl7_senders"]}
        return inv


def infer_role(d: DeviceRecord) -> str:
    """Role from what the device *did* in the baseline (first match wins).

    >>> infer_role(DeviceRecord("x", totals={"dimse.c_store_served": 5, "dimse.c_move_served": 2}))
    'pacs'
    """
    t = d.totals.get
    store_in, store_out = t("dimse.c_store_served", 0), t("dimse.c_store_rq", 0)
    qr_served = t("dimse.c_move_served", 0) + t("dimse.c_get_served", 0) + t("dimse.c_find_served", 0)
    qr_out = t("dimse.c_find_rq", 0) + t("dimse.c_move_rq", 0) + t("dimse.c_get_rq", 0)
    hl7 = t("hl7.msgs_out", 0) + t("hl7.msgs_in", 0)
    if store_in and (t("dimse.c_move_served", 0) or t("dimse.c_get_served", 0)
                     or (t("dimse.c_find_served", 0) and not d.mwl_scp)):
        return "pacs"
    if d.mwl_scp:
        return "ris"
    if store_out and (d.mwl_scu or t("dimse.n_rq", 0) or not qr_out):
        return "modality"
    if qr_out:
        return "workstation"
    if store_in or qr_served:
        return "archive"
    if hl7:
        return "hl7_system"
    if t("dicom.assoc_rq", 0) or t("dicom.assoc_ac", 0):
        return "dicom_node"
    return "host"
