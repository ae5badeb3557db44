"""Novelty rules: what a window shows that the baseline inventory never saw.

Each rule is one row of ``RULES`` (id, severity, ATT&CK technique, function). A rule reads a
finished :class:`DeviceWindow` (its observation keys and features) against the
:class:`Inventory` and returns :class:`Finding`s. ``RuleEngine`` remembers what it already
reported in this run, so a new item fires once, not every window (like Zeek's ``known_*``
scripts); the baseline inventory itself is never modified.

Rules (all explainable from the inventory):

==============================  ========  =========  ===========================================
rule id                         severity  ATT&CK     fires when
==============================  ========  =========  ===========================================
novelty.new_device              medium    T1200      an IP the baseline never saw speaks
novelty.new_ae_title            medium    T1036      a known device uses an AE title new to it
novelty.ae_title_spoofing       high      T1036      a known AE title is used from another IP
novelty.new_peer_pair           low       T1021      a known device talks to a new server
novelty.new_dicom_service       medium    by cmd     new command × SOP class on a pair
novelty.new_move_destination    high      T1048      C-MOVE to a destination new for that SCP
rule.reject_abort_burst         medium    T1110      rejects/aborts/HL7 NAKs above the device's baseline
rule.query_sweep                high      T1119      wildcard or PATIENT-level C-FINDs above the device's baseline
novelty.hl7_unknown_sender      high      T1565.002  HL7 from an app/facility/IP never seen
novelty.new_listening_port      medium    T1571      a known device answers on a new port
novelty.new_implementation      low       T1036      a known device shows a new DICOM impl UID/version
==============================  ========  =========  ===========================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sensor.detect.inventory import Inventory
from sensor.features.windows import DeviceWindow, LocalNets

# Unknown devices get this per-window maximum for the burst rule (rejects are rare but not zero).
DEFAULT_BURST_MAX = 1.0


@dataclass(frozen=True, slots=True)
class Finding:
    """A rule hit, before it becomes an Alert (scorer.py adds device, window and ids)."""

    rule_id: str
    kind: str  # "novelty" | "rule"
    severity: str
    title: str
    attack: tuple[str, ...]
    time: float
    evidence: tuple[tuple[str, float, float | None, float | None, str | None], ...] = ()
    peers: tuple[tuple[str, str | None], ...] = ()  # (ip, AE title)


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    kind: str
    severity: str
    attack: tuple[str, ...]
    check: Callable[[DeviceWindow, Inventory, RuleEngine], list[Finding]]
    description: str


def _obs(w: DeviceWindow, kind: str) -> list[tuple[tuple, float]]:
    return sorted(((k, t) for k, t in w.obs.items() if k[0] == kind), key=lambda kt: (kt[1], str(kt[0])))


def _known(inv: Inventory, w: DeviceWindow) -> bool:
    return w.ip in inv.devices


def _list(items: list[str], limit: int = 5) -> str:
    s = ", ".join(items[:limit])
    return s + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def r_new_device(w, inv, eng) -> list[Finding]:
    if _known(inv, w) or not eng.first(w.ip, ("device",)):
        return []
    t = min(w.obs.values(), default=w.start)
    detail = []
    if w.ae_titles:
        detail.append("AE " + ", ".join(w.ae_titles))
    if w.macs:
        detail.append("MAC " + w.macs[0])
    title = f"New device {w.ip}" + (f" ({'; '.join(detail)})" if detail else "") + " not in baseline"
    return [eng.finding("novelty.new_device", title, t, peers=w.peers[:5],
                        evidence=(("flow.peers", w.features.get("flow.peers", 0.0), 0.0, 0.0,
                                   "device absent from the baseline inventory"),))]


def r_ae(w, inv, eng) -> list[Finding]:
    out: list[Finding] = []
    d = inv.devices.get(w.ip)
    for key, t in _obs(w, "ae"):
        ae = key[1]
        owners = inv.ae_ips.get(ae, set())
        if owners and w.ip not in owners:
            if eng.first(w.ip, key):
                out.append(eng.finding(
                    "novelty.ae_title_spoofing",
                    f"AE title {ae} used from {w.ip}; baseline saw it only from {_list(sorted(owners))}", t,
                    peers=tuple((ip, ae) for ip in sorted(owners))[:5],
                    evidence=(("dicom.assoc_rq", w.features.get("dicom.assoc_rq", 0.0), None, None,
                               f"AE title {ae} bound to other IP(s) in baseline"),)))
        elif d is not None and ae not in d.ae_titles and eng.first(w.ip, key):
            known = sorted(d.ae_titles)
            out.append(eng.finding(
                "novelty.new_ae_title",
                f"New AE title {ae} on {w.ip} (baseline: {_list(known) if known else 'none'})", t,
                peers=w.peers[:5],
                evidence=(("dicom.assoc_rq", w.features.get("dicom.assoc_rq", 0.0), None, None,
                           f"AE title {ae} never used by this device"),)))
    return out


def r_new_peer(w, inv, eng) -> list[Finding]:
    if not _known(inv, w):
        return []
    # Outside servers: a device that already talked to the internet in the baseline (a workstation
    # browsing) is not alerted for each new web server; one that never did (a CT) is.
    talks_out = any(not eng.is_local(p) for p in inv.devices[w.ip].peers)
    new = [(k[1], t) for k, t in _obs(w, "peer")
           if (w.ip, k[1]) not in inv.peers and (eng.is_local(k[1]) or not talks_out) and eng.first(w.ip, k)]
    if not new:
        return []
    ips = [ip for ip, _ in new]
    aes = dict(w.peers)
    return [eng.finding(
        "novelty.new_peer_pair", f"{w.ip} connected to {len(ips)} new peer(s): {_list(ips)}", new[0][1],
        peers=tuple((ip, aes.get(ip)) for ip in ips[:16]),
        evidence=(("flow.new_peers", float(len(ips)), 0.0, 0.0, "peer pairs absent from the baseline"),))]


_SERVICE_ATTACK = {"C-FIND": ("T1119",), "C-MOVE": ("T1005",), "C-GET": ("T1005",), "C-ECHO": ("T1046",),
                   "C-STORE": ("T1565.001",)}


def r_new_service(w, inv, eng) -> list[Finding]:
    # Also for devices absent from the baseline: "new device" is said once, but what an unknown
    # host then does (a C-FIND sweep, a C-GET of whole studies) is what the analyst must see.
    # Each (device, service) is still reported only once per run.
    out: list[Finding] = []
    aes = dict(w.peers)
    for key, t in _obs(w, "service"):
        _, other, cmd, sop = key
        if (w.ip, other, cmd, sop) in inv.services or not eng.first(w.ip, key):
            continue
        feat = f"dimse.{cmd.lower().replace('-', '_')}_rq"
        out.append(eng.finding(
            "novelty.new_dicom_service", f"New DICOM service {cmd} {sop or '?'} from {w.ip} to {other}", t,
            attack=_SERVICE_ATTACK.get(cmd, ("T1565.001",) if cmd.startswith("N-") else ()),
            peers=((other, aes.get(other)),),
            evidence=((feat, w.features.get(feat, 0.0), None, None, f"{cmd} × {sop} never seen on this pair"),)))
    return out


def r_move_dest(w, inv, eng) -> list[Finding]:
    out: list[Finding] = []
    for key, t in _obs(w, "move_dest"):
        _, scp, dest = key
        known = inv.move_dests.get(scp, set())
        if dest in known or not eng.first(w.ip, key):
            continue
        dest_ips = sorted(inv.ae_ips.get(dest, set()))
        where = f"known at {_list(dest_ips)}" if dest_ips else "unknown AE title"
        out.append(eng.finding(
            "novelty.new_move_destination",
            f"C-MOVE from {scp} to new destination {dest} ({where}) requested by {w.ip}", t,
            peers=((scp, dict(w.peers).get(scp)),),
            evidence=(("dimse.c_move_rq", w.features.get("dimse.c_move_rq", 0.0), None, None,
                       f"destination {dest}; baseline destinations: {_list(sorted(known)) or 'none'}"),)))
    return out


def _above_baseline(w, inv, names) -> list[tuple[str, float, float]]:
    """(feature, observed, baseline per-window maximum) for each of ``names`` well above that maximum."""
    d = inv.devices.get(w.ip)
    maxima = d.maxima if d is not None else {}
    hits = []
    for name in names:
        observed = w.features.get(name, 0.0)
        base = maxima.get(name, 0.0) if d is not None else DEFAULT_BURST_MAX
        # "Above baseline": more than double the worst baseline window and at least 3 more.
        if observed > max(2.0 * base, base + 3.0):
            hits.append((name, observed, base))
    return hits


def r_burst(w, inv, eng) -> list[Finding]:
    # DICOM association rejects/aborts, and HL7's equivalent: negative acknowledgements (AE/AR).
    hits = _above_baseline(w, inv, ("dicom.rejected", "dicom.aborts", "hl7.naks"))
    if not hits:
        return []
    what = ", ".join(f"{n.split('.')[1]} {o:g} (baseline max {b:g})" for n, o, b in hits)
    kind = "DICOM association failures" if hits[0][0].startswith("dicom") else "HL7 negative acknowledgements"
    return [eng.finding("rule.reject_abort_burst", f"{kind} at {w.ip}: {what}", w.start,
                        peers=w.peers[:5],
                        evidence=tuple((n, o, 0.0, b, "per-window maximum in baseline as p99") for n, o, b in hits))]


def r_query_sweep(w, inv, eng) -> list[Finding]:
    # A patient-data harvest is many open-ended C-FINDs in a short time: "A*", "B*"... at PATIENT
    # level, or "*" at STUDY level. Reading workstations do query with wildcards, a few a minute;
    # the bar is the device's own worst baseline minute, doubled.
    hits = _above_baseline(w, inv, ("dimse.wildcard_queries", "dimse.query_patient"))
    if not hits:
        return []
    what = ", ".join(f"{n.split('.')[1].replace('_', ' ')} {o:g} (baseline max {b:g})" for n, o, b in hits)
    servers = [(ip, ae) for ip, ae in w.peers if ae][:5] or w.peers[:5]
    evidence = tuple((n, o, 0.0, b, "per-window maximum in baseline as p99") for n, o, b in hits)
    evidence += (("dimse.find_result_bytes", w.features.get("dimse.find_result_bytes", 0.0), None, None,
                  "C-FIND result bytes received in the window"),)
    return [eng.finding("rule.query_sweep", f"C-FIND sweep from {w.ip}: {what}", w.start, peers=servers,
                        evidence=evidence)]


def r_hl7_sender(w, inv, eng) -> list[Finding]:
    out: list[Finding] = []
    for key, t in _obs(w, "hl7_sender"):
        app, fac = key[1], key[2]
        ips = inv.hl7_senders.get((app, fac))
        if ips is not None and w.ip in ips:
            continue
        if not eng.first(w.ip, key):
            continue
        name = f"{app or '?'}^{fac or '?'}"
        if ips:
            title = f"HL7 sender {name} from new IP {w.ip} (baseline: {_list(sorted(ips))})"
        else:
            title = f"HL7 from unknown sender {name} at {w.ip}"
        out.append(eng.finding("novelty.hl7_unknown_sender", title, t, peers=w.peers[:5],
                               evidence=(("hl7.msgs_out", w.features.get("hl7.msgs_out", 0.0), None, None,
                                          f"sending application/facility {name} unknown for this IP"),)))
    return out


def r_listen(w, inv, eng) -> list[Finding]:
    d = inv.devices.get(w.ip)
    if d is None:
        return []
    new = [(k, t) for k, t in _obs(w, "listen") if (k[1], k[2]) not in d.listen and eng.first(w.ip, k)]
    if not new:
        return []
    ports = [f"{k[1]}/{k[2]}" for k, _ in new]
    known = [f"{p}/{n}" for p, n in sorted(d.listen)]
    return [eng.finding(
        "novelty.new_listening_port", f"{w.ip} answers on new port(s) {_list(ports)} (baseline: "
        f"{_list(known) if known else 'none'})", new[0][1], peers=w.peers[:5],
        evidence=(("flow.listen_ports", w.features.get("flow.listen_ports", 0.0), None, float(len(d.listen)),
                   "listening ports absent from the baseline"),))]


def r_impl(w, inv, eng) -> list[Finding]:
    d = inv.devices.get(w.ip)
    if d is None:
        return []
    out = []
    for key, t in _obs(w, "impl"):
        if (key[1], key[2], key[3]) in d.impl or not eng.first(w.ip, key):
            continue
        out.append(eng.finding(
            "novelty.new_implementation",
            f"New DICOM implementation on {w.ip} as {key[1].upper()}: {key[2] or '?'} {key[3] or ''}".rstrip(), t,
            peers=w.peers[:3],
            evidence=(("dicom.assoc_rq" if key[1] == "scu" else "dicom.assoc_ac", 1.0, None, None,
                       "implementation class UID/version never seen on this device"),)))
    return out


RULES: tuple[Rule, ...] = (
    Rule("novelty.new_device", "novelty", "medium", ("T1200",), r_new_device, "IP not in baseline speaks"),
    Rule("novelty.ae_title_spoofing", "novelty", "high", ("T1036",), r_ae, "known AE title from a new IP"),
    Rule("novelty.new_ae_title", "novelty", "medium", ("T1036",), r_ae, "new AE title on a device"),
    Rule("novelty.new_peer_pair", "novelty", "low", ("T1021",), r_new_peer, "new client→server pair"),
    Rule("novelty.new_dicom_service", "novelty", "medium", (), r_new_service, "new command × SOP class on a pair"),
    Rule("novelty.new_move_destination", "novelty", "high", ("T1048",), r_move_dest, "new C-MOVE destination"),
    Rule("rule.reject_abort_burst", "rule", "medium", ("T1110",), r_burst, "rejects/aborts above baseline"),
    Rule("rule.query_sweep", "rule", "high", ("T1119",), r_query_sweep, "C-FIND sweep above baseline"),
    Rule("novelty.hl7_unknown_sender", "novelty", "high", ("T1565.002",), r_hl7_sender, "HL7 from unknown sender"),
    Rule("novelty.new_listening_port", "novelty", "medium", ("T1571",), r_listen, "new listening port"),
    Rule("novelty.new_implementation", "novelty", "low", ("T1036",), r_impl, "new DICOM implementation"),
)
RULES_BY_ID = {r.id: r for r in RULES}
# Several rows share a check function (r_ae serves two ids); run each function once.
_CHECKS = tuple(dict.fromkeys(r.check for r in RULES))


class RuleEngine:
    """Runs every rule on each finished window; remembers reported items (bounded) per run."""

    def __init__(self, inventory: Inventory, is_local: Callable[[str], bool] | None = None,
                 max_memory: int = 200_000) -> None:
        self.inventory = inventory
        self.is_local = is_local if is_local is not None else LocalNets()
        self._reported: set[tuple[str, tuple]] = set()
        self._max = max_memory
        self.fired: dict[str, int] = {}

    def first(self, ip: str, key: tuple) -> bool:
        """True the first time (ip, key) is reported in this run."""
        k = (ip, key)
        if k in self._reported:
            return False
        if len(self._reported) >= self._max:
            self._reported.clear()  # bounded: worst case a novelty re-fires (merged downstream)
        self._reported.add(k)
        return True

    def finding(self, rule_id: str, title: str, t: float, *, attack: tuple[str, ...] | None = None,
                peers: tuple = (), evidence: tuple = ()) -> Finding:
        r = RULES_BY_ID[rule_id]
        self.fired[rule_id] = self.fired.get(rule_id, 0) + 1
        return Finding(rule_id, r.kind, r.severity, title, r.attack if attack is None else attack, t,
                       tuple(evidence), tuple(peers))

    def check(self, w: DeviceWindow) -> list[Finding]:
        out: list[Finding] = []
        for fn in _CHECKS:
            out += fn(w, self.inventory, self)
        return out
