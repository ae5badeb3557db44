"""Alert → wire formats: JSON, CEF, LEEF 2.0, ECS JSON, one-line text, rich table.

Field mapping follows docs SIEM.md (shared design notes). Escaping, per format:

- **CEF** header fields: ``\\`` → ``\\\\``, ``|`` → ``\\|``; line breaks become a space (a header
  cannot carry them). Extension values: ``\\`` → ``\\\\``, ``=`` → ``\\=``, CR/LF → ``\\r``/``\\n``.
  Extension keys are fixed names, never data.
- **LEEF 2.0** header fields: ``\\`` and ``|`` escaped with a backslash (as CEF). Attribute values:
  LEEF defines no escape for the delimiter, so tab, CR and LF become a space; ``=`` is allowed
  (parsers split an attribute at its first ``=``).
- **JSON/ECS**: ``json.dumps`` compact, non-ASCII kept as UTF-8, one line.

Example::

    to_cef(alert)
    # 'CEF:0|radsensor|radsensor|0.1.0|novelty.new_move_destination|C-MOVE to new AE|8|rt=1772593920000 …'
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from sensor import __version__
from sensor.alerts.schema import Alert, iso_z

VENDOR = "radsensor"
PRODUCT = "radsensor"

# CEF custom-string slots: (key, label). Labels are camelCase as ArcSight/Sentinel expect.
CEF_LABELS = {
    "cs1": "deviceAETitles",
    "cs2": "peerAETitle",
    "cs3": "deviceRole",
    "cs4": "evidence",
    "cs5": "attackTechniques",
    "cs6": "alertKind",
    "cn1": "scorePermille",
    "cfp1": "anomalyScore",
    "cfp2": "threshold",
}

_CEF_HDR = str.maketrans({"\\": "\\\\", "|": "\\|", "\r": " ", "\n": " "})
_CEF_EXT = str.maketrans({"\\": "\\\\", "=": "\\=", "\r": "\\r", "\n": "\\n"})
_LEEF_HDR = _CEF_HDR
_LEEF_VAL = str.maketrans({"\t": " ", "\r": " ", "\n": " "})
_ONE_LINE = str.maketrans({"\r": " ", "\n": " ", "\t": " "})


def cef_header_escape(s: str) -> str:
    return s.translate(_CEF_HDR)


def cef_ext_escape(s: str) -> str:
    return s.translate(_CEF_EXT)


def leef_value(s: str) -> str:
    return s.translate(_LEEF_VAL)


def _ms(dt) -> int:
    # CEF/LEEF time as epoch milliseconds: the one form every CEF parser accepts without a format.
    return round(dt.timestamp() * 1000)


def fmt_number(v: float | None) -> str:
    if v is None:
        return ""
    f = float(v)
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f)


def evidence_summary(alert: Alert, limit: int = 5) -> str:
    """``feat=obs (p50 a, p99 b); …`` for the first ``limit`` evidence items."""
    items = [e.summary() for e in alert.evidence[:limit]]
    if len(alert.evidence) > limit:
        items.append(f"+{len(alert.evidence) - limit} more")
    return "; ".join(items)


# ------------------------------------------------------------------------------------------ JSON


def to_json(alert: Alert) -> str:
    """The schema ``radsensor.alert/1`` object on one line (the JSONL form)."""
    return json.dumps(alert.to_dict(), ensure_ascii=False, separators=(",", ":"))


# ------------------------------------------------------------------------------------------ CEF


def cef_extension(alert: Alert) -> list[tuple[str, str]]:
    """Ordered (key, raw value) pairs of the CEF extension, before escaping."""
    assert alert.time is not None
    ext: list[tuple[str, str]] = [
        ("rt", str(_ms(alert.time))),
        ("start", str(_ms(alert.window_start))),
        ("end", str(_ms(alert.window_end))),
        ("src", alert.device.ip),
    ]
    if alert.device.mac:
        ext.append(("smac", alert.device.mac))
    if alert.peers:
        p = alert.peers[0]
        ext.append(("dst", p.ip))
        if p.port is not None:
            ext.append(("dpt", str(p.port)))
    ext += [("cnt", str(alert.count)), ("msg", alert.title), ("cat", alert.kind.value)]
    ext += [("externalId", alert.id)]
    if alert.sensor:
        ext += [("dvchost", alert.sensor), ("deviceExternalId", alert.sensor)]

    def slot(key: str, value: str | None) -> None:
        if value:
            ext.append((key, value))
            ext.append((key + "Label", CEF_LABELS[key]))

    slot("cs1", ",".join(alert.device.ae_titles))
    slot("cs2", alert.peers[0].ae_title if alert.peers else None)
    slot("cs3", alert.device.role)
    slot("cs4", evidence_summary(alert))
    slot("cs5", ",".join(alert.attack))
    slot("cs6", alert.kind.value)
    if alert.score is not None:
        # cn* are integers in CEF; cfp* carry the exact float.
        slot("cn1", str(round(alert.score * 1000)))
        slot("cfp1", fmt_number(alert.score))
    if alert.threshold is not None:
        slot("cfp2", fmt_number(alert.threshold))
    return ext


def to_cef(alert: Alert) -> str:
    """ArcSight CEF:0 line (no syslog header)."""
    hdr = [
        "CEF:0",
        cef_header_escape(VENDOR),
        cef_header_escape(PRODUCT),
        cef_header_escape(__version__),
        cef_header_escape(alert.rule_id),
        cef_header_escape(alert.title),
        str(alert.severity.cef),
    ]
    ext = " ".join(f"{k}={cef_ext_escape(v)}" for k, v in cef_extension(alert))
    return "|".join(hdr) + "|" + ext


# ------------------------------------------------------------------------------------------ LEEF

LEEF_DELIM = "\t"
LEEF_TIME_FORMAT = "yyyy-MM-dd'T'HH:mm:ss.SSSX"  # Java SimpleDateFormat, as QRadar expects


def leef_attributes(alert: Alert) -> list[tuple[str, str]]:
    """Ordered (key, raw value) pairs of the LEEF 2.0 attributes (predefined keys first)."""
    assert alert.time is not None
    t = alert.time
    attrs: list[tuple[str, str]] = [
        ("devTime", t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"),
        ("devTimeFormat", LEEF_TIME_FORMAT),
        ("cat", alert.kind.value),
        ("sev", str(alert.severity.leef)),
        ("src", alert.device.ip),
    ]
    if alert.device.mac:
        attrs.append(("srcMAC", alert.device.mac))
    if alert.peers:
        p = alert.peers[0]
        attrs.append(("dst", p.ip))
        if p.port is not None:
            attrs.append(("dstPort", str(p.port)))
    attrs += [
        ("name", alert.title),
        ("alertId", alert.id),
        ("ruleId", alert.rule_id),
        ("severity", alert.severity.value),
        ("windowStart", iso_z(alert.window_start)),
        ("windowEnd", iso_z(alert.window_end)),
        ("count", str(alert.count)),
    ]
    optional = [
        ("score", fmt_number(alert.score)),
        ("threshold", fmt_number(alert.threshold)),
        ("deviceAETitles", ",".join(alert.device.ae_titles)),
        ("deviceRole", alert.device.role or ""),
        ("peerAETitle", (alert.peers[0].ae_title or "") if alert.peers else ""),
        ("peers", ",".join(p.ip for p in alert.peers)),
        ("evidence", evidence_summary(alert)),
        ("attack", ",".join(alert.attack)),
        ("sensor", alert.sensor),
    ]
    attrs += [(k, v) for k, v in optional if v]
    return attrs


def to_leef(alert: Alert) -> str:
    """QRadar LEEF:2.0 line, tab-delimited (delimiter declared as ``x09`` in the header)."""
    hdr = [
        "LEEF:2.0",
        cef_header_escape(VENDOR),
        cef_header_escape(PRODUCT),
        cef_header_escape(__version__),
        cef_header_escape(alert.rule_id),
        "x09",
    ]
    body = LEEF_DELIM.join(f"{k}={leef_value(v)}" for k, v in leef_attributes(alert))
    return "|".join(hdr) + "|" + body


# ------------------------------------------------------------------------------------------ ECS


def ecs_dict(alert: Alert) -> dict[str, Any]:
    """Elastic Common Schema document (nested objects), radsensor extras under ``radsensor.*``."""
    assert alert.time is not None
    related = list(dict.fromkeys([alert.device.ip, *(p.ip for p in alert.peers)]))
    doc: dict[str, Any] = {
        "@timestamp": iso_z(alert.time),
        "message": alert.title,
        "ecs": {"version": "8.11.0"},
        "event": {
            "kind": "alert",
            "category": ["network", "intrusion_detection"],
            "type": ["info"],
            "id": alert.id,
            "dataset": "radsensor.alert",
            "module": "radsensor",
            "severity": alert.severity.cef,
            "start": iso_z(alert.window_start),
            "end": iso_z(alert.window_end),
        },
        "rule": {
            "id": alert.rule_id,
            "name": alert.title,
            "category": alert.kind.value,
            "ruleset": "radsensor",
        },
        "source": {"ip": alert.device.ip},
        "related": {"ip": related},
        "observer": {"type": "ids", "vendor": VENDOR, "product": PRODUCT, "version": __version__},
        "radsensor": {
            "schema": "radsensor.alert/1",
            "severity": alert.severity.value,
            "kind": alert.kind.value,
            "count": alert.count,
            "score": alert.score,
            "threshold": alert.threshold,
            "role": alert.device.role,
            "evidence": [e.to_dict() for e in alert.evidence],
            "peers": [p.to_dict() for p in alert.peers],
        },
    }
    if alert.score is not None:
        doc["event"]["risk_score"] = round(alert.score * 100, 3)  # ECS risk_score is 0–100
    if alert.device.mac:
        doc["source"]["mac"] = alert.device.mac.upper().replace(":", "-")  # ECS MAC spelling
    if alert.peers:
        p = alert.peers[0]
        doc["destination"] = {"ip": p.ip, **({"port": p.port} if p.port is not None else {})}
    if alert.sensor:
        doc["observer"]["name"] = alert.sensor
        doc["observer"]["hostname"] = alert.sensor
    if alert.device.ae_titles or any(p.ae_title for p in alert.peers):
        doc["dicom"] = {
            "device_ae_titles": list(alert.device.ae_titles),
            "peer_ae_titles": [p.ae_title for p in alert.peers if p.ae_title],
        }
    if alert.attack:
        doc["threat"] = {
            "framework": "MITRE ATT&CK",
            "technique": {"id": list(alert.attack)},
        }
    return doc


def to_ecs(alert: Alert) -> str:
    """ECS document as one JSON line."""
    return json.dumps(ecs_dict(alert), ensure_ascii=False, separators=(",", ":"))


# ------------------------------------------------------------------------------------------ text


def to_text(alert: Alert) -> str:
    """One readable line, e.g. for stdout.

    ``2026-03-04T03:12:00Z HIGH novelty.new_move_destination 10.20.2.11 [WS2 workstation] -> 10.20.0.10
    [PACS]: title (score 0.81/0.62) x3 | dimse.c_find_rq=2140 (p50 1, p99 12)``
    """
    assert alert.time is not None
    dev = alert.device.ip
    ctx = " ".join(x for x in (",".join(alert.device.ae_titles), alert.device.role or "") if x)
    if ctx:
        dev += f" [{ctx}]"
    parts = [iso_z(alert.time), alert.severity.value.upper(), alert.rule_id, dev]
    if alert.peers:
        p = alert.peers[0]
        peer = p.ip + (f" [{p.ae_title}]" if p.ae_title else "")
        if len(alert.peers) > 1:
            peer += f" +{len(alert.peers) - 1}"
        parts += ["->", peer]
    line = " ".join(parts) + ": " + alert.title
    if alert.score is not None:
        line += (
            f" (score {alert.score:.3g}"
            + (f"/{alert.threshold:.3g}" if alert.threshold is not None else "")
            + ")"
        )
    if alert.count > 1:
        line += f" x{alert.count}"
    ev = evidence_summary(alert, limit=3)
    if ev:
        line += " | " + ev
    return line.translate(_ONE_LINE)


def format_table(alerts: Iterable[Alert]):
    """A ``rich.table.Table`` of alerts for the terminal (``rich.print(format_table(a))``)."""
    from rich.table import Table  # imported here: only the CLI's table path needs rich
    from rich.text import Text  # cells as Text: data must never be read as rich markup

    style = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan", "info": "dim"}
    t = Table(title="radsensor alerts", show_lines=False)
    for col in ("time", "sev", "rule", "device", "peer", "title", "score", "n"):
        t.add_column(col, overflow="fold", no_wrap=col in ("time", "sev"))
    for a in alerts:
        assert a.time is not None
        peer = ""
        if a.peers:
            peer = a.peers[0].ip + (f" {a.peers[0].ae_title}" if a.peers[0].ae_title else "")
        dev = a.device.ip + (f" {','.join(a.device.ae_titles)}" if a.device.ae_titles else "")
        t.add_row(
            Text(iso_z(a.time)),
            Text(a.severity.value, style=style[a.severity.value]),
            Text(a.rule_id),
            Text(dev),
            Text(peer),
            Text(a.title.translate(_ONE_LINE)),
            Text("" if a.score is None else f"{a.score:.3g}"),
            Text(str(a.count)),
        )
    return t


FORMATTERS: dict[str, Callable[[Alert], str]] = {
    "json": to_json,
    "cef": to_cef,
    "leef": to_leef,
    "ecs": to_ecs,
    "text": to_text,
}


def get_formatter(name: str) -> Callable[[Alert], str]:
    """Formatter by name (``json``, ``cef``, ``leef``, ``ecs``, ``text``); ValueError otherwise."""
    try:
        return FORMATTERS[name]
    except KeyError:
        raise ValueError(f"unknown alert format {name!r} (choose from {', '.join(FORMATTERS)})") from None
