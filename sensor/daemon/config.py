"""The daemon's TOML configuration: immutable dataclasses, validated with errors that name the key.

Every option has a default except the interface and the model, which may also come from the
command line (``radsensor run -i IFACE -m MODEL``); flags override the file. Unknown keys are
errors (a typo must not silently fall back to a default). ``contrib/radsensor.example.toml``
documents every key.

Example::

    >>> cfg = parse_config({"capture": {"interfaces": ["eth1"]}, "detect": {"model": "m.rsm"}})
    >>> cfg.capture.buffer_size
    67108864
    >>> parse_config({"capture": {"snaplen": "big"}})
    Traceback (most recent call last):
    ...
    sensor.daemon.config.ConfigError: capture.snaplen: expected an integer, got 'big'
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

from sensor.alerts.syslog import Facility


class ConfigError(ValueError):
    """A configuration problem, one line: ``<key>: <problem>``."""


SINK_TYPES = ("stdout", "jsonl", "syslog")
SYSLOG_FORMATS = ("cef", "leef", "json", "ecs")
STDOUT_FORMATS = ("text", "json", "cef", "leef", "ecs")
JSONL_FORMATS = ("json", "ecs")
OVERFLOW = ("drop_oldest", "drop_newest")
LOG_LEVELS = ("debug", "info", "warning", "error")
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "mi": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3}


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    interfaces: tuple[str, ...] = ()
    filter: str = ""  # BPF, applied in the kernel
    snaplen: int = 262144
    promisc: bool = True
    buffer_size: int = 64 * 1024 * 1024  # kernel ring per interface
    timeout_ms: int = 100  # ring block timeout: max latency of a packet on a quiet link
    batch_size: int = 4096
    workers: int = 1  # >1: PACKET_FANOUT capture processes (one interface only)


@dataclass(frozen=True, slots=True)
class FlowsConfig:
    tcp_idle: float = 300.0
    udp_idle: float = 60.0
    max_flows: int = 262_144


@dataclass(frozen=True, slots=True)
class DetectConfig:
    model: str = ""
    window: float = 0.0  # seconds; must match the model's (0 = the window the model was trained with)
    lateness: float = 0.0  # seconds a window waits for late events; 0 = the model's
    merge_span: float = 3600.0  # repeats of one cause on one device within this span → one alert
    min_severity: str = "info"  # alerts below this are not delivered


@dataclass(frozen=True, slots=True)
class TlsConfig:
    ca: str = ""  # CA bundle that signs the receiver's certificate ("" = system trust store)
    cert: str = ""  # client certificate (mutual TLS)
    key: str = ""
    verify: bool = True
    server_name: str = ""  # expected certificate name ("" = host of the url)


@dataclass(frozen=True, slots=True)
class SinkConfig:
    type: str = "stdout"
    name: str = ""
    format: str = ""  # "" = the type's default (stdout text, jsonl json, syslog cef)
    # jsonl
    path: str = ""
    max_bytes: int = 100 * 1024 * 1024
    keep: int = 5
    # syslog
    url: str = ""  # udp://host:514, tcp://host:514, tls://host:6514
    facility: str = "local4"
    app_name: str = "radsensor"
    tls: TlsConfig = field(default_factory=TlsConfig)
    spool_dir: str = ""
    spool_max_records: int = 100_000
    spool_max_bytes: int = 64 * 1024 * 1024
    overflow: str = "drop_oldest"
    queue_size: int = 1000
    backoff_max: float = 60.0


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    listen: str = "127.0.0.1"
    port: int = 9477  # 0 = any free port (tests)


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    user: str = ""  # drop to this user once the capture is open ("" = stay as started)
    group: str = ""  # default: the user's primary group
    log_level: str = "info"
    stats_interval: float = 60.0  # seconds between capture statistics log lines (0 = never)
    sensor_id: str = ""  # "" = host name
    shutdown_timeout: float = 10.0  # seconds to deliver queued alerts on SIGTERM


@dataclass(frozen=True, slots=True)
class Config:
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    flows: FlowsConfig = field(default_factory=FlowsConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    sinks: tuple[SinkConfig, ...] = ()
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    source: str = ""  # the file it came from, for reloads and messages

    def with_overrides(self, **by_section: dict[str, Any]) -> Config:
        """CLI flags win: ``cfg.with_overrides(capture={"interfaces": ("eth1",)})``; None = unset.

        Values are validated like the file's (errors name the key); ``sinks=(SinkConfig, …)``
        replaces the file's sinks."""
        out = self
        for section, values in by_section.items():
            if section == "sinks":  # a whole list: sinks given on the command line replace the file's
                if values:
                    for i, sink in enumerate(values):
                        _check_sink(sink, f"sinks[{i}]")
                    out = replace(out, sinks=tuple(values))
                continue
            values = {k: v for k, v in values.items() if v is not None}
            if values:
                current = getattr(out, section)
                merged = {f.name: getattr(current, f.name) for f in fields(current)} | values
                out = replace(out, **{section: _build(type(current), merged, section)})
        return out


# ------------------------------------------------------------------------------------ validation


def _type_name(t: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(t, str(t))


def _coerce(key: str, value: Any, default: Any) -> Any:
    t = type(default)
    if t is bool:
        if isinstance(value, bool):
            return value
    elif t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if key.endswith(("size", "bytes")) and isinstance(value, str):
            return parse_size(key, value)
    elif t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif t is str:
        if isinstance(value, str):
            return value
    elif t is tuple:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    raise ConfigError(f"{key}: expected {_type_name(t)}, got {value!r}")


def parse_size(key: str, text: str) -> int:
    """``"64MiB"`` → 67108864; plain integers are bytes."""
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"{key}: expected a size like 65536 or \"64MiB\", got {text!r}")
    return int(m.group(1)) * _UNITS[(m.group(2) or "").lower()]


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: expected a table, got {raw!r}")
    proto = cls()
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in known:
            raise ConfigError(f"{key}: unknown key (known: {', '.join(sorted(known))})")
        default = getattr(proto, k)
        if k == "tls" and cls is SinkConfig:
            values[k] = v if isinstance(v, TlsConfig) else _build(TlsConfig, v, key)
        else:
            values[k] = _coerce(key, v, default)
    obj = cls(**values)
    _check(obj, prefix)
    return obj


def _need(cond: bool, key: str, problem: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {problem}")


def _check(obj: Any, p: str) -> None:
    """Range and choice checks, per section; ``p`` is the key prefix for messages."""
    if isinstance(obj, CaptureConfig):
        _need(all(i.strip() for i in obj.interfaces), f"{p}.interfaces", "empty interface name")
        _need(len(set(obj.interfaces)) == len(obj.interfaces), f"{p}.interfaces", "listed twice")
        _need(64 <= obj.snaplen <= 262144, f"{p}.snaplen", f"must be 64..262144, got {obj.snaplen}")
        _need(obj.buffer_size >= 1024 * 1024, f"{p}.buffer_size",
              f"must be at least 1 MiB, got {obj.buffer_size}")
        _need(1 <= obj.timeout_ms <= 10_000, f"{p}.timeout_ms", f"must be 1..10000, got {obj.timeout_ms}")
        _need(1 <= obj.batch_size <= 1 << 20, f"{p}.batch_size", f"must be 1..1048576, got {obj.batch_size}")
        _need(1 <= obj.workers <= 64, f"{p}.workers", f"must be 1..64, got {obj.workers}")
        _need(obj.workers == 1 or len(obj.interfaces) <= 1, f"{p}.workers",
              "several workers share one interface through PACKET_FANOUT; list one interface")
    elif isinstance(obj, FlowsConfig):
        _need(obj.tcp_idle > 0, f"{p}.tcp_idle", "must be > 0")
        _need(obj.udp_idle > 0, f"{p}.udp_idle", "must be > 0")
        _need(obj.max_flows >= 16, f"{p}.max_flows", f"must be >= 16, got {obj.max_flows}")
    elif isinstance(obj, DetectConfig):
        _need(obj.window >= 0, f"{p}.window", "must be >= 0 (0 = the model's window)")
        _need(obj.lateness >= 0, f"{p}.lateness", "must be >= 0 (0 = the model's)")
        _need(obj.merge_span >= 0, f"{p}.merge_span", "must be >= 0 (0 = no merging)")
        _need(obj.min_severity in ("info", "low", "medium", "high", "critical"), f"{p}.min_severity",
              f"must be info, low, medium, high or critical, got {obj.min_severity!r}")
    elif isinstance(obj, MetricsConfig):
        _need(0 <= obj.port <= 65535, f"{p}.port", f"must be 0..65535, got {obj.port}")
        _need(bool(obj.listen), f"{p}.listen", "must not be empty")
    elif isinstance(obj, DaemonConfig):
        _need(obj.log_level in LOG_LEVELS, f"{p}.log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        _need(obj.stats_interval >= 0, f"{p}.stats_interval", "must be >= 0")
        _need(obj.shutdown_timeout >= 0, f"{p}.shutdown_timeout", "must be >= 0")
        _need(not obj.group or bool(obj.user), f"{p}.group", "needs daemon.user as well")
    elif isinstance(obj, SinkConfig):
        _check_sink(obj, p)


def _check_sink(s: SinkConfig, p: str) -> None:
    _need(s.type in SINK_TYPES, f"{p}.type", f"must be one of {', '.join(SINK_TYPES)}, got {s.type!r}")
    formats = {"stdout": STDOUT_FORMATS, "jsonl": JSONL_FORMATS, "syslog": SYSLOG_FORMATS}[s.type]
    _need(not s.format or s.format in formats, f"{p}.format",
          f"must be one of {', '.join(formats)} for a {s.type} sink, got {s.format!r}")
    if s.type == "jsonl":
        _need(bool(s.path), f"{p}.path", "required for a jsonl sink")
        _need(s.max_bytes >= 1, f"{p}.max_bytes", "must be >= 1")
        _need(s.keep >= 0, f"{p}.keep", "must be >= 0")
    if s.type == "syslog":
        _need(bool(s.url), f"{p}.url", "required for a syslog sink (udp://, tcp:// or tls://host:port)")
        u = urlsplit(s.url)
        _need(u.scheme in ("udp", "tcp", "tls"), f"{p}.url", f"scheme must be udp, tcp or tls, got {s.url!r}")
        _need(bool(u.hostname), f"{p}.url", f"missing host in {s.url!r}")
        try:
            _ = u.port  # urllib raises on a port out of range or not a number
        except ValueError:
            raise ConfigError(f"{p}.url: bad port in {s.url!r}") from None
        _need(bool(s.spool_dir), f"{p}.spool_dir", "required for a syslog sink (alerts wait there when "
              "the receiver is down)")
        _need(s.facility.upper() in Facility.__members__, f"{p}.facility",
              f"unknown facility {s.facility!r} (e.g. local4, daemon, auth)")
        _need(s.overflow in OVERFLOW, f"{p}.overflow", f"must be one of {', '.join(OVERFLOW)}")
        _need(s.spool_max_records >= 1, f"{p}.spool_max_records", "must be >= 1")
        _need(s.spool_max_bytes >= 1, f"{p}.spool_max_bytes", "must be >= 1")
        _need(s.queue_size >= 1, f"{p}.queue_size", "must be >= 1")
        _need(s.backoff_max > 0, f"{p}.backoff_max", "must be > 0")
        _need(not (s.tls.cert or s.tls.key) or u.scheme == "tls", f"{p}.tls",
              "client certificate options need a tls:// url")
        _need(not s.tls.key or bool(s.tls.cert), f"{p}.tls.key", "a key without a certificate (set tls.cert)")

_SECTIONS = {"capture": CaptureConfig, "flows": FlowsConfig, "detect": DetectConfig,
             "metrics": MetricsConfig, "daemon": DaemonConfig}


def parse_config(raw: dict[str, Any], source: str = "") -> Config:
    """Validate a parsed TOML document into a :class:`Config` (raises :class:`ConfigError`)."""
    sections: dict[str, Any] = {}
    for k, v in raw.items():
        if k in _SECTIONS:
            sections[k] = _build(_SECTIONS[k], v, k)
        elif k == "sinks":
            if not isinstance(v, list):
                raise ConfigError("sinks: expected an array of tables ([[sinks]])")
            sinks = tuple(_build(SinkConfig, s, f"sinks[{i}]") for i, s in enumerate(v))
            names = [s.name for s in sinks if s.name]
            _need(len(set(names)) == len(names), "sinks.name", "two sinks share a name")
            sections["sinks"] = sinks
        else:
            known = ", ".join([*_SECTIONS, "sinks"])
            raise ConfigError(f"{k}: unknown section (known: {known})")
    return Config(**sections, source=source)


def load_config(path: str) -> Config:
    """Read and validate a TOML file; errors name the file and the key."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(raw, source=path)


def check_runnable(cfg: Config) -> None:
    """What ``run`` needs beyond a valid file: an interface and a model."""
    _need(bool(cfg.capture.interfaces), "capture.interfaces", "no interface (set it or pass -i IFACE)")
    _need(bool(cfg.detect.model), "detect.model", "no model (set it or pass -m MODEL)")


def sink_label(s: SinkConfig, index: int) -> str:
    """A metrics/log label for a sink: its name, or ``<index>-<type>``."""
    return s.name or f"{index}-{s.type}"
