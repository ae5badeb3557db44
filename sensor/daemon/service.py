"""The live sensor: capture workers → events → detector → alerts → sinks, until SIGTERM.

Start-up order matters and is fixed here: validate the configuration, load the model (a bad model
is a usage error, exit 2, before anything is opened), open the capture as root, bind the metrics
port, **drop privileges**, then build the sinks (so spool files belong to the service user, like
the ones a SIGHUP rebuild creates).

The loop waits in ``select`` on the capture rings (or the worker pipes) and the signal pipe with a
timeout of at most one second, so on a quiet link windows still close on the clock, flows still
time out, and SIGTERM/SIGHUP are served at once. Once a second it advances the flow table and the
detector to wall-clock time and publishes a metrics snapshot.

- SIGTERM/SIGINT: read what is already in the rings, close them, end every open flow, finish every
  window, hand the alerts to the sinks and wait up to ``daemon.shutdown_timeout`` for delivery
  (what is not delivered stays in the on-disk spool for the next start); exit 0.
- SIGHUP: re-read the configuration file and the model. The capture handles stay open and the flow
  table and open windows are kept; a new BPF filter is applied to the open handles. Keys that only
  take effect at start (interfaces, ring size, workers, user, metrics address) are reported and
  keep their running values. A bad new file or model is logged and the old one stays in force.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import select
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sensor.alerts.schema import Alert, Severity
from sensor.capture import CaptureError
from sensor.capture.live import LiveOptions
from sensor.daemon.config import Config, ConfigError, DetectConfig, check_runnable, load_config, sink_label
from sensor.daemon.metrics import Family, MetricsServer
from sensor.daemon.privileges import PrivilegeError, drop_privileges
from sensor.daemon.signals import SignalFlags
from sensor.daemon.workers import make_workers
from sensor.events import Counters
from sensor.flows.table import FlowConfig
from sensor.pipeline import PipelineError

log = logging.getLogger("radsensor")

TICK = 1.0  # seconds between clock advances and metrics snapshots
# Restart-only keys: what SIGHUP cannot change on a running capture.
RESTART_KEYS = {
    "capture": ("interfaces", "snaplen", "promisc", "buffer_size", "timeout_ms", "batch_size", "workers"),
    "metrics": ("enabled", "listen", "port"),
    "daemon": ("user", "group"),
}


class ServiceError(Exception):
    """Start-up failure, one line. ``exit_code`` 2 = bad input (config, model), 1 = runtime."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ------------------------------------------------------------------------------ default factories


def load_detector(cfg: Config, counters: Counters, previous=None):
    """A live :class:`~sensor.detect.detector.Detector` for ``cfg.detect`` (raises ServiceError)."""
    from sensor.detect.artifact import ModelArtifact, ModelError
    from sensor.detect.detector import Detector

    d = cfg.detect
    try:
        artifact = ModelArtifact.load(d.model)
    except FileNotFoundError:
        raise ServiceError(f"detect.model: {d.model}: no such file", 2) from None
    except KeyError as exc:  # an artifact from another version of the format
        raise ServiceError(f"detect.model: {d.model}: not a model this version can read (no {exc})", 2) from None
    except (ModelError, OSError, ValueError) as exc:
        raise ServiceError(f"detect.model: {exc}", 2) from None
    _check_window(d, artifact.window.span)
    return Detector(artifact, sensor_id=cfg.daemon.sensor_id or socket.gethostname(), live=True,
                    merge_span=d.merge_span, lateness=d.lateness or None, counters=counters)


def _check_window(d: DetectConfig, span: float) -> None:
    if d.window and not math.isclose(d.window, span):
        raise ServiceError(f"detect.window: {d.window:g} s but the model was trained on {span:g} s windows "
                           "(features are per-window counts; retrain or unset detect.window)", 2)


def build_sinks(cfg: Config):
    """The configured sinks behind one :class:`~sensor.alerts.sinks.MultiSink` (default: stdout)."""
    from sensor.alerts.sinks import JsonlFileSink, MultiSink, StdoutSink, SyslogSink
    from sensor.alerts.syslog import Facility, transport_from_url

    out = []
    for i, s in enumerate(cfg.sinks):
        label = sink_label(s, i)
        try:
            if s.type == "stdout":
                sink = StdoutSink(fmt=s.format or "text")
            elif s.type == "jsonl":
                sink = JsonlFileSink(s.path, max_bytes=s.max_bytes, keep=s.keep, fmt=s.format or "json")
            else:
                tls: dict[str, Any] = {"timeout": 5.0}
                if s.url.startswith("tls:"):
                    tls.update(ca_file=s.tls.ca or None, certfile=s.tls.cert or None, keyfile=s.tls.key or None,
                               verify=s.tls.verify, server_hostname=s.tls.server_name or None)
                transport = transport_from_url(s.url, **tls)
                sink = SyslogSink(transport, s.spool_dir, fmt=s.format or "cef",
                                  facility=Facility[s.facility.upper()], app_name=s.app_name,
                                  queue_size=s.queue_size, spool_max_records=s.spool_max_records,
                                  spool_max_bytes=s.spool_max_bytes, overflow=s.overflow,
                                  backoff_max=s.backoff_max, name=label)
        except (OSError, ValueError) as exc:  # ssl.SSLError (bad CA/cert file) is an OSError
            for o in out:
                o.close(0.0)
            raise ServiceError(f"sinks[{i}] ({label}): {exc}") from None
        sink.name = label
        out.append(sink)
    if not out:
        out.append(StdoutSink(fmt="text"))
        out[0].name = "stdout"
    return MultiSink(out)


# ------------------------------------------------------------------------------------ the service


class Service:
    """``Service(cfg).start()`` then ``.run()`` → exit code. Factories are injectable for tests."""

    def __init__(self, config: Config, *, overrides: dict[str, dict[str, Any]] | None = None,
                 detector_factory: Callable = load_detector, sinks_factory: Callable = build_sinks) -> None:
        self.config = config
        self.overrides = overrides or {}
        self._detector_factory = detector_factory
        self._sinks_factory = sinks_factory
        self.flags = SignalFlags()
        self.counters = Counters()  # detector/window counters and the daemon's own
        self.events_by_log: Counter[str] = Counter()
        self.alerts_by: Counter[tuple[str, str]] = Counter()  # (kind, severity)
        self.alerts_suppressed = 0
        self.detector = None
        self.sinks = None
        self.metrics: MetricsServer | None = None
        self.workers: list = []
        self.started = time.time()
        self._windows_scored_base = 0
        self._min_rank = Severity.parse(config.detect.min_severity).rank
        self._next_stats_log = 0.0
        self._last_log_packets = 0

    # -- start-up ------------------------------------------------------------------------------
    def start(self) -> Service:
        cfg = self.config
        try:
            check_runnable(cfg)
        except ConfigError as exc:
            raise ServiceError(str(exc), 2) from None
        self.detector = self._detector_factory(cfg, self.counters)
        c = cfg.capture
        options = LiveOptions(snaplen=c.snaplen, promisc=c.promisc, buffer_size=c.buffer_size,
                              timeout_ms=c.timeout_ms, bpf=c.filter, batch_size=c.batch_size)
        self.workers = make_workers(c.interfaces, options, _flow_config(cfg), c.batch_size, c.workers)
        try:
            for w in self.workers:
                w.open()
        except CaptureError as exc:
            self._close_workers()
            raise ServiceError(str(exc), 1) from None
        if cfg.metrics.enabled:
            try:
                self.metrics = MetricsServer(cfg.metrics.listen, cfg.metrics.port).start()
            except OSError as exc:
                self._close_workers()
                raise ServiceError(str(exc), 1) from None
        _preload()
        try:
            if drop_privileges(cfg.daemon.user, cfg.daemon.group):
                log.info("running as user %s (uid %d)", cfg.daemon.user, os.getuid())
        except (PrivilegeError, OSError) as exc:
            self._close_workers()
            raise ServiceError(str(exc), 1) from None
        for w in self.workers:
            if hasattr(w, "start"):
                w.start()  # fork capture children only now: they inherit the dropped identity
        try:
            self.sinks = self._sinks_factory(cfg)
        except ServiceError:
            self._close_workers()
            raise
        self._publish(time.time())
        log.info("capturing on %s (filter %r, snaplen %d, ring %d MiB, %d worker%s); model %s; sinks: %s%s",
                 ",".join(c.interfaces), c.filter or "", c.snaplen, c.buffer_size >> 20, c.workers,
                 "s" if c.workers > 1 else "", os.path.basename(cfg.detect.model),
                 ", ".join(s.name for s in self.sinks.sinks),
                 f"; metrics on http://{self.metrics.address[0]}:{self.metrics.address[1]}/metrics"
                 if self.metrics else "")
        return self

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> int:
        self.flags.install()
        budget = max(self.config.capture.batch_size * 8, 16384)
        next_tick = 0.0
        try:
            while not self.flags.stop_requested:
                now = time.time()
                fds = [self.flags.fileno()] + [fd for w in self.workers for fd in w.fds()]
                try:
                    ready = set(select.select(fds, [], [], max(0.0, min(TICK, next_tick - now)))[0])
                except InterruptedError:  # pragma: no cover - PEP 475 retries select
                    ready = set()
                if self.flags.fileno() in ready:
                    self.flags.drain()
                if self.flags.stop_requested:
                    break
                if self.flags.take_reload():
                    self.reload()
                    self._publish(time.time())  # a scrape right after SIGHUP sees its outcome
                for w in self.workers:
                    self._events(w.pump(budget, ready))
                now = time.time()
                if now >= next_tick:
                    for w in self.workers:
                        self._events(w.tick(now))
                    self._alerts(self._detect("advance", now))
                    self._publish(now)
                    next_tick = now + TICK
                    if self.workers and not any(getattr(w, "alive", True) for w in self.workers):
                        log.error("every capture worker has stopped")
                        return self._shutdown(1)
        except (CaptureError, PipelineError) as exc:
            log.error("%s", exc)
            return self._shutdown(1)
        finally:
            self.flags.restore()
        log.info("signal %d: stopping", self.flags.stop_signal)
        return self._shutdown(0)

    def _events(self, events: list) -> None:
        if not events:
            return
        det = self.detector
        for e in events:
            self.events_by_log[e.log_name] += 1
            try:
                det.process(e)
            except Exception as exc:  # a detector bug must cost one event, not the sensor
                self._detector_error(exc)

    def _detect(self, what: str, now: float | None = None) -> list[Alert]:
        try:
            return self.detector.advance(now) if what == "advance" else self.detector.flush()
        except Exception as exc:
            self._detector_error(exc)
            return []

    def _detector_error(self, exc: Exception) -> None:
        self.counters.add("daemon.detector_errors")
        if self.counters.get("daemon.detector_errors") <= 10:  # no log flood; the counter keeps counting
            log.error("detector error (%s); event skipped", type(exc).__name__, exc_info=log.isEnabledFor(10))

    def _alerts(self, alerts: list[Alert]) -> None:
        for a in alerts:
            if a.severity.rank < self._min_rank:
                self.alerts_suppressed += 1
                continue
            self.alerts_by[(a.kind.value, a.severity.value)] += 1
            # Device address and rule only: titles can carry AE titles, which are not PHI, but the
            # alert itself is the place for detail, not the daemon log.
            log.info("alert %s %s device %s (count %d)", a.severity.value, a.rule_id, a.device.ip, a.count)
            self.sinks.submit(a)

    # -- SIGHUP --------------------------------------------------------------------------------
    def reload(self) -> bool:
        old = self.config
        self.counters.add("daemon.reloads")
        try:
            new = load_config(old.source).with_overrides(**self.overrides) if old.source else old
            check_runnable(new)
        except ConfigError as exc:
            self.counters.add("daemon.reload_failures")
            log.error("reload: %s; keeping the running configuration", exc)
            return False
        new = _keep_restart_keys(old, new)
        try:
            detector = self._reload_detector(new)
        except ServiceError as exc:
            self.counters.add("daemon.reload_failures")
            log.error("reload: %s; keeping the running model and configuration", exc)
            return False
        if new.capture.filter != old.capture.filter:
            try:
                for w in self.workers:
                    w.set_filter(new.capture.filter)
            except CaptureError as exc:
                self.counters.add("daemon.reload_failures")
                log.error("reload: %s; keeping filter %r", exc, old.capture.filter)
                new = dataclasses.replace(new, capture=dataclasses.replace(new.capture, filter=old.capture.filter))
        if new.flows != old.flows:
            for w in self.workers:
                w.set_flows(_flow_config(new))
        if new.sinks != old.sinks:
            try:
                sinks = self._sinks_factory(new)
            except ServiceError as exc:
                self.counters.add("daemon.reload_failures")
                log.error("reload: %s; keeping the running sinks", exc)
                new = dataclasses.replace(new, sinks=old.sinks)
            else:
                # Undelivered alerts of the old sinks stay in their spools (on disk), so a sink
                # that keeps its spool_dir picks them up.
                self.sinks.close(min(5.0, new.daemon.shutdown_timeout))
                self.sinks = sinks
        self.detector = detector
        self.config = new
        self._min_rank = Severity.parse(new.detect.min_severity).rank
        logging.getLogger().setLevel(new.daemon.log_level.upper())
        log.info("reloaded configuration%s and model %s", f" {new.source}" if new.source else "",
                 os.path.basename(new.detect.model))
        return True

    def _reload_detector(self, cfg: Config):
        """A detector with the (re-read) model that keeps the open windows and merge groups."""
        fresh = self._detector_factory(cfg, self.counters)
        old = self.detector
        same_windows = getattr(getattr(old, "artifact", None), "window", None) == getattr(
            getattr(fresh, "artifact", None), "window", object())
        if hasattr(old, "replace_model"):
            old.replace_model(fresh.artifact)
            return old
        if same_windows and hasattr(old, "scorer") and hasattr(fresh, "scorer"):
            # Same window geometry: keep the window builder and merge groups, swap the scoring.
            self._windows_scored_base += old.scorer.windows_scored
            old.artifact, old.scorer = fresh.artifact, fresh.scorer
            return old
        # Different window span: finish the open windows under the model that built them.
        self._alerts(self._detect("flush"))
        self._windows_scored_base += getattr(getattr(old, "scorer", None), "windows_scored", 0)
        if hasattr(old, "artifact"):
            log.warning("reload: the model's window changed; open windows were scored with the previous model")
        return fresh

    # -- shutdown ------------------------------------------------------------------------------
    def _shutdown(self, code: int) -> int:
        for w in self.workers:
            try:
                self._events(w.finish())
            except (CaptureError, PipelineError) as exc:
                log.error("while stopping capture: %s", exc)
        self._alerts(self._detect("flush"))
        timeout = self.config.daemon.shutdown_timeout
        delivered = self.sinks.flush(timeout) if self.sinks else True
        if self.sinks:
            self.sinks.close(0.5)
        self._publish(time.time())
        st = self._totals()
        log.info("stopped: %d packets, %d kernel drops, %d interface drops, %d events, %d alerts%s",
                 st["packets"], st["kernel_drops"], st["if_drops"], sum(self.events_by_log.values()),
                 sum(self.alerts_by.values()),
                 "" if delivered else "; undelivered alerts remain in the spool for the next start")
        if self.metrics:
            self.metrics.stop()
        self.flags.close()
        return code

    def _close_workers(self) -> None:
        for w in self.workers:
            try:
                w.finish(drain=False) if hasattr(w, "start") else w.source.close()
            except Exception:
                pass

    # -- metrics -------------------------------------------------------------------------------
    def _totals(self) -> dict[str, int]:
        t = Counter()
        for w in self.workers:
            st = w.stats()
            t["packets"] += sum(st.packets.values())
            t["kernel_drops"] += sum(c.kernel_drops for c in st.capture.values())
            t["if_drops"] += sum(c.if_drops for c in st.capture.values())
        return t

    def _publish(self, now: float) -> None:
        stats = [w.stats() for w in self.workers]
        self._maybe_log_stats(now, stats)
        if self.metrics is None:
            return
        self.metrics.publish(self.families(stats))

    def families(self, stats=None) -> list[Family]:
        stats = stats if stats is not None else [w.stats() for w in self.workers]

        def per_iface(attr: str, sub: str | None = None) -> tuple:
            acc: Counter[str] = Counter()
            for st in stats:
                src = getattr(st, attr)
                for iface, v in src.items():
                    acc[iface] += getattr(v, sub) if sub else v
            return tuple(((("interface", k),), float(v)) for k, v in sorted(acc.items()))

        pc: Counter[str] = Counter()
        for st in stats:
            pc.update(st.counters)
        dc = self.counters.values
        det = self.detector
        scored = self._windows_scored_base + getattr(getattr(det, "scorer", None), "windows_scored", 0)
        sink_stats = self.sinks.stats_by_sink() if self.sinks is not None else {}

        def sink(key: str) -> tuple:
            return tuple(((("sink", name.split(":", 1)[1]),), float(s.get(key, 0)))
                         for name, s in sorted(sink_stats.items()))

        fams = [
            Family("radsensor_up", "gauge", "1 while the sensor runs.", (((), 1.0),)),
            Family("radsensor_start_time_seconds", "gauge", "Start time (epoch seconds).", (((), self.started),)),
            Family("radsensor_packets_total", "counter", "Packets captured and decoded.", per_iface("packets")),
            Family("radsensor_bytes_total", "counter", "Bytes on the wire of captured packets.", per_iface("bytes")),
            Family("radsensor_kernel_drops_total", "counter",
                   "Packets dropped by the kernel because the capture ring was full (pcap ps_drop).",
                   per_iface("capture", "kernel_drops")),
            Family("radsensor_interface_drops_total", "counter",
                   "Packets dropped by the interface or driver (pcap ps_ifdrop).", per_iface("capture", "if_drops")),
            Family("radsensor_kernel_received_total", "counter", "Packets the kernel passed to the capture.",
                   per_iface("capture", "received")),
            Family("radsensor_capture_backlog", "gauge",
                   "Packets in the capture ring not yet through the pipeline (received - kernel drops - packets).",
                   _backlog(stats)),
            Family("radsensor_last_packet_timestamp_seconds", "gauge", "Capture time of the newest packet.",
                   (((), max((st.last_packet_ts for st in stats), default=0.0)),)),
            Family("radsensor_flows_active", "gauge", "Flows in the flow table.",
                   (((), float(sum(st.active_flows for st in stats))),)),
            Family("radsensor_flows_created_total", "counter", "Flows started.", (((), pc["flows.created"]),)),
            Family("radsensor_flows_ended_total", "counter", "Flows ended (FIN/RST, idle, eviction).",
                   (((), pc["flows.ended"]),)),
            Family("radsensor_flow_evictions_total", "counter", "Flows evicted because the table was full.",
                   (((), pc["flows.evicted"]),)),
            Family("radsensor_events_total", "counter", "Events by log (flows, dicom, dimse, hl7, weird).",
                   tuple(((("log", k),), float(v)) for k, v in sorted(self.events_by_log.items()))),
            Family("radsensor_windows_scored_total", "counter", "Device windows scored by the model.",
                   (((), float(scored)),)),
            Family("radsensor_alerts_total", "counter", "Alerts handed to the sinks (merged).",
                   tuple(((("kind", k), ("severity", s)), float(v)) for (k, s), v in sorted(self.alerts_by.items()))),
            Family("radsensor_alerts_suppressed_total", "counter", "Alerts below detect.min_severity.",
                   (((), float(self.alerts_suppressed)),)),
            Family("radsensor_sink_delivered_total", "counter", "Alerts delivered, per sink.", sink("delivered")),
            Family("radsensor_sink_delivery_failures_total", "counter", "Failed delivery attempts, per sink.",
                   sink("failed")),
            Family("radsensor_sink_retries_total", "counter", "Delivery retries, per sink.", sink("retries")),
            Family("radsensor_sink_queue_depth", "gauge", "Alerts queued in memory, per sink.", sink("queue_depth")),
            Family("radsensor_sink_spool_depth", "gauge", "Alerts waiting in the on-disk spool, per sink.",
                   sink("spooled")),
            Family("radsensor_sink_spool_dropped_total", "counter", "Alerts lost to spool overflow, per sink.",
                   sink("spool_dropped")),
            Family("radsensor_reloads_total", "counter", "SIGHUP reloads.", (((), float(dc.get("daemon.reloads", 0))),)),
            Family("radsensor_reload_failures_total", "counter", "SIGHUP reloads that kept the old state.",
                   (((), float(dc.get("daemon.reload_failures", 0))),)),
            Family("radsensor_pipeline_counter_total", "counter",
                   "Every pipeline and detector counter (decode.*, tcp.*, analyzer.*, windows.*, …) by name.",
                   tuple(((("name", k),), float(v)) for k, v in sorted((pc + Counter(dc)).items())
                         if not k.startswith("_"))),
        ]
        return fams

    def _maybe_log_stats(self, now: float, stats) -> None:
        every = self.config.daemon.stats_interval
        if not every or now < self._next_stats_log:
            return
        first = self._next_stats_log == 0.0
        self._next_stats_log = now + every
        if first:
            return
        t = self._totals()
        rate = (t["packets"] - self._last_log_packets) / every
        self._last_log_packets = t["packets"]
        log.info("%d packets (%.0f/s), %d kernel drops, %d interface drops, %d flows open, %d events, %d alerts",
                 t["packets"], rate, t["kernel_drops"], t["if_drops"], sum(st.active_flows for st in stats),
                 sum(self.events_by_log.values()), sum(self.alerts_by.values()))


def _backlog(stats) -> tuple:
    """Per interface: packets the kernel put in the ring that the pipeline has not decoded yet.

    On Linux pcap's ps_recv counts ring drops too (TPACKET_V3 adds tp_drops to tp_packets), hence
    the subtraction. Each worker's packets are read before its pcap counters (``stats()``), so a
    sample is never negative; a backlog that grows from scrape to scrape means the analyzers are
    slower than the link and the ring will overflow.
    """
    acc: Counter[str] = Counter()
    for st in stats:
        for iface, c in st.capture.items():
            acc[iface] += c.received - c.kernel_drops - st.packets.get(iface, 0)
    return tuple(((("interface", k),), float(v)) for k, v in sorted(acc.items()))


def _preload() -> None:
    """Import now what sinks, reloads and shutdown import lazily: after the privilege drop the
    interpreter's own library folders may no longer be readable (a Python under /root, say)."""
    import sqlite3  # noqa: F401 - the sinks' spool
    import ssl  # noqa: F401

    import sensor.alerts.sinks
    import sensor.alerts.syslog
    import sensor.detect.artifact
    import sensor.detect.detector  # noqa: F401


def _flow_config(cfg: Config) -> FlowConfig:
    f = cfg.flows
    return FlowConfig(tcp_idle=f.tcp_idle, udp_idle=f.udp_idle, max_flows=f.max_flows)


def _keep_restart_keys(old: Config, new: Config) -> Config:
    changed = []
    for section, keys in RESTART_KEYS.items():
        o, n = getattr(old, section), getattr(new, section)
        diff = [k for k in keys if getattr(o, k) != getattr(n, k)]
        if diff:
            changed += [f"{section}.{k}" for k in diff]
            new = dataclasses.replace(new, **{section: dataclasses.replace(n, **{k: getattr(o, k) for k in diff})})
    if changed:
        log.warning("reload: %s only change on restart; keeping the running values", ", ".join(changed))
    return new
