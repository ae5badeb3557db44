"""Prometheus metrics over HTTP on localhost, in the text exposition format (version 0.0.4).

We write the dozen lines of the format ourselves rather than depend on ``prometheus_client``: the
daemon already has every number in its own counters, and a registry of live metric objects would
put a lock on the packet path. Instead the run loop renders a snapshot about once a second
(:meth:`MetricsServer.publish`) and the HTTP thread only ever returns the last rendered bytes, so
a scrape never touches capture state and needs no lock (one reference swap).

Example::

    >>> fam = Family("radsensor_packets_total", "counter", "Packets captured.",
    ...              (((("interface", "eth1"),), 12.0),))
    >>> print(render([fam]).decode(), end="")
    # HELP radsensor_packets_total Packets captured.
    # TYPE radsensor_packets_total counter
    radsensor_packets_total{interface="eth1"} 12
"""

from __future__ import annotations

import http.server
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: ``samples`` is a sequence of ``(labels, value)``."""

    name: str
    kind: str  # "counter" | "gauge"
    help: str
    samples: tuple[tuple[Labels, float], ...] | tuple = ()


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        return str(int(v))
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def render(families: Iterable[Family]) -> bytes:
    lines: list[str] = []
    for f in families:
        lines.append(f"# HELP {f.name} {f.help}")
        lines.append(f"# TYPE {f.name} {f.kind}")
        for labels, value in f.samples:
            if labels:
                lab = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels)
                lines.append(f"{f.name}{{{lab}}} {_num(value)}")
            else:
                lines.append(f"{f.name} {_num(value)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "radsensor"
    sys_version = ""

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        body = self.server.body  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:  # scrapes every 15 s would flood journald
        pass


class _Server(http.server.HTTPServer):
    daemon_threads = True
    body = b""


class MetricsServer:
    """A single-thread HTTP server for ``/metrics``; bind it to localhost (never 0.0.0.0 by default)."""

    def __init__(self, listen: str = "127.0.0.1", port: int = 9477) -> None:
        try:
            self._server = _Server((listen, port), _Handler)
        except OSError as exc:
            raise OSError(f"metrics: cannot listen on {listen}:{port}: {exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="radsensor-metrics", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def publish(self, families: Iterable[Family]) -> None:
        self._server.body = render(families)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2.0)


def parse_text(text: str) -> dict[str, float]:
    """Samples of an exposition as ``{'name{labels}': value}`` (tests, ``radsensor`` tooling)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out
