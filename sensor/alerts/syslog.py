"""RFC 5424 syslog messages and their transports: UDP (RFC 5426), TCP (RFC 6587), TLS (RFC 5425).

A message is ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [radsensor@32473 …] MSG`` with
``MSGID`` = the alert's rule id and ``MSG`` = a CEF, LEEF or JSON payload (no BOM: MSG-ANY, which
every receiver accepts; CEF/LEEF/JSON are UTF-8 anyway).

Transports are deliberately dumb and synchronous: ``connect()``, ``send(messages)`` (raises
``OSError`` on failure), ``peer_closed()``, ``close()``. Queuing, spooling and retries live in
:class:`sensor.alerts.sinks.SyslogSink`, which drives them from its own thread.

Example::

    t = TcpTransport("127.0.0.1", 514)
    t.connect()
    t.send([build_message(alert, to_cef(alert))])
    t.confirm(0.1)
    t.close()
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import ssl
import struct
import termios
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from enum import IntEnum
from urllib.parse import urlsplit

from sensor.alerts.formats import fmt_number
from sensor.alerts.schema import Alert

SD_ID = "radsensor@32473"  # 32473: the IANA documentation PEN (RFC 5612)
NILVALUE = "-"


class Facility(IntEnum):
    KERN = 0
    USER = 1
    DAEMON = 3
    AUTH = 4
    SYSLOG = 5
    AUTHPRIV = 10
    LOG_AUDIT = 13
    LOG_ALERT = 14
    LOCAL0 = 16
    LOCAL1 = 17
    LOCAL2 = 18
    LOCAL3 = 19
    LOCAL4 = 20
    LOCAL5 = 21
    LOCAL6 = 22
    LOCAL7 = 23


def pri(facility: int, severity: int) -> int:
    """RFC 5424 §6.2.1: facility × 8 + severity."""
    if not 0 <= facility <= 23 or not 0 <= severity <= 7:
        raise ValueError(f"bad facility/severity {facility}/{severity}")
    return facility * 8 + severity


_SD_ESC = str.maketrans({'"': '\\"', "\\": "\\\\", "]": "\\]"})


def sd_escape(value: str) -> str:
    """Escape an SD-PARAM value (RFC 5424 §6.3.3: ``"``, ``\\`` and ``]``)."""
    return value.translate(_SD_ESC)


def sd_element(sd_id: str, params: Iterable[tuple[str, str]]) -> str:
    """``[SD-ID name="value" …]``; names are ours (fixed), values escaped."""
    return "[" + sd_id + "".join(f' {k}="{sd_escape(v)}"' for k, v in params) + "]"


def _header_field(value: str | None, limit: int) -> str:
    # HOSTNAME/APP-NAME/PROCID/MSGID are PRINTUSASCII (33..126) with a length limit; '-' when empty.
    if not value:
        return NILVALUE
    out = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return out or NILVALUE


def timestamp(dt: datetime | None = None) -> str:
    """RFC 5424 TIMESTAMP in UTC with milliseconds: ``2026-03-04T03:12:00.123Z``."""
    t = (dt or datetime.now(UTC)).astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def alert_sd_params(alert: Alert) -> list[tuple[str, str]]:
    """The ``[radsensor@32473 …]`` parameters: enough to route/filter without parsing MSG."""
    params = [
        ("id", alert.id),
        ("rule", alert.rule_id),
        ("kind", alert.kind.value),
        ("severity", alert.severity.value),
        ("device", alert.device.ip),
        ("count", str(alert.count)),
    ]
    if alert.score is not None:
        params.append(("score", fmt_number(alert.score)))
    if alert.attack:
        params.append(("attack", ",".join(alert.attack)))
    return params


def build_message(
    alert: Alert,
    payload: str,
    *,
    facility: int = Facility.LOCAL4,
    hostname: str | None = None,
    app_name: str = "radsensor",
    procid: str | None = None,
    msgid: str | None = None,
    when: datetime | None = None,
    structured_data: bool = True,
) -> bytes:
    """One RFC 5424 message (without transport framing) as UTF-8 bytes.

    HOSTNAME defaults to the alert's ``sensor`` (else this host's name), MSGID to the rule id,
    TIMESTAMP to now (the time the message is originated; the alert's own times are in MSG).
    """
    head = " ".join(
        (
            f"<{pri(int(facility), alert.severity.syslog)}>1",
            timestamp(when),
            _header_field(hostname or alert.sensor or socket.gethostname(), 255),
            _header_field(app_name, 48),
            _header_field(procid if procid is not None else str(os.getpid()), 128),
            _header_field(msgid or alert.rule_id, 32),
            sd_element(SD_ID, alert_sd_params(alert)) if structured_data else NILVALUE,
        )
    )
    return (head + " " + payload).encode("utf-8")


def octet_frame(message: bytes) -> bytes:
    """RFC 6587 §3.4.1 octet counting: ``MSG-LEN SP SYSLOG-MSG``."""
    return b"%d %s" % (len(message), message)


def truncate_utf8(data: bytes, limit: int) -> bytes:
    """Cut ``data`` to at most ``limit`` bytes without splitting a UTF-8 sequence."""
    if len(data) <= limit:
        return data
    cut = limit
    while cut > 0 and (data[cut] & 0xC0) == 0x80:  # continuation byte: back up to its lead byte
        cut -= 1
    return data[:cut]


# ------------------------------------------------------------------------------------ transports


class UdpTransport:
    """RFC 5426: one message per datagram. Messages above ``max_size`` are truncated and counted.

    2048 is the size RFC 5426 says receivers SHOULD accept; raise it (≤ 65507) for receivers that
    take more. The socket is connected so the kernel reports ICMP port-unreachable as an error on
    a later send (the only "down" signal UDP has).
    """

    name = "udp"

    def __init__(self, host: str, port: int, *, max_size: int = 2048) -> None:
        if not 480 <= max_size <= 65507:
            raise ValueError("max_size must be within 480..65507 (RFC 5426)")
        self.host, self.port, self.max_size = host, int(port), max_size
        self.truncated = 0
        self._sock: socket.socket | None = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> None:
        self.close()
        fam, typ, proto, _, addr = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
        s = socket.socket(fam, typ, proto)
        try:
            s.connect(addr)
        except OSError:
            s.close()
            raise
        self._sock = s

    def send(self, messages: Sequence[bytes]) -> None:
        if self._sock is None:
            raise OSError("not connected")
        for m in messages:
            if len(m) > self.max_size:
                m = truncate_utf8(m, self.max_size)
                self.truncated += 1
            self._sock.send(m)

    def peer_closed(self) -> bool:
        return False

    def confirm(self, settle: float) -> bool:
        return True  # UDP has nothing to confirm: handed to the kernel is as good as it gets

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


ALIVE, EOF, RESET = "alive", "eof", "reset"
_INT = struct.Struct("i")


def _send_queue_bytes(sock: socket.socket) -> int:
    """Bytes written but not yet acknowledged by the peer's TCP (Linux SIOCOUTQ); 0 if unknown."""
    try:
        buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return _INT.unpack(buf)[0]


class TcpTransport:
    """RFC 6587 octet-counted syslog over TCP.

    TCP acknowledges bytes to the kernel, not to the receiving program: a receiver that stops
    (rsyslog restart) discards what it had not read yet, and ``sendall`` had "succeeded". Linux
    tells the two endings apart: a socket closed with everything read sends FIN; closed with
    unread data (or hit by data after its close) it sends RST. The transport uses that:

    - ``peer_closed()`` before a batch: a syslog receiver never sends to us, so a readable
      socket means EOF/RST (or junk, discarded) → reconnect before writing into a dead connection;
    - ``confirm(settle)`` after a batch: wait until the peer's TCP has ACKed every byte
      (``SIOCOUTQ`` = 0, bounded by ``timeout``), then ``settle`` seconds for a RST. A RST means
      the batch was (at least partly) unread → raise, and the caller resends it. A clean FIN means
      it was read. Nothing within ``settle`` means the receiver is alive and has it.

    ``connect_probe`` watches a new connection briefly: receivers that refuse a client *after*
    accepting it (rsyslog: sender not allowed; TLS client certificate missing — checked after the
    handshake) close at once, and anything written before would be lost.
    """

    name = "tcp"

    def __init__(self, host: str, port: int, *, timeout: float = 5.0, connect_probe: float = 0.1) -> None:
        self.host, self.port, self.timeout = host, int(port), timeout
        self.connect_probe = connect_probe
        self._sock: socket.socket | None = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def _open(self) -> socket.socket:
        s = socket.create_connection((self.host, self.port), timeout=self.timeout)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return s

    def connect(self) -> None:
        self.close()
        s = self._sock = self._open()
        if self._watch(s, self.connect_probe) != ALIVE:
            self.close()
            raise ConnectionAbortedError(f"{self.host}:{self.port} closed the connection right after connect")

    def send(self, messages: Sequence[bytes]) -> None:
        if self._sock is None:
            raise OSError("not connected")
        self._sock.sendall(b"".join(octet_frame(m) for m in messages))

    def confirm(self, settle: float) -> bool:
        """After ``send``: True = delivered, connection usable; False = delivered, peer closed
        cleanly (reconnect before the next batch). Raises ``OSError`` when the batch must be resent.
        """
        s = self._sock
        if s is None:
            raise OSError("not connected")
        deadline = time.monotonic() + self.timeout
        while _send_queue_bytes(s) > 0:  # peer's TCP has not ACKed everything yet
            if time.monotonic() > deadline:
                raise TimeoutError("receiver did not acknowledge the data in time")
            state = self._watch(s, 0.002)
            if state == RESET:
                raise ConnectionResetError("connection reset before the data was acknowledged")
            if state == EOF:
                break  # FIN: an RST for unread data, if any, follows immediately; settle catches it
        state = self._watch(s, settle)
        if state == RESET:
            raise ConnectionResetError("connection reset: the receiver discarded unread data")
        return state == ALIVE

    def peer_closed(self) -> bool:
        s = self._sock
        return s is None or self._watch(s, 0.0) != ALIVE

    def _watch(self, s: socket.socket, duration: float) -> str:
        """Watch ``s`` for up to ``duration`` s: ALIVE (nothing happened), EOF or RESET."""
        deadline = time.monotonic() + duration
        while True:
            try:
                readable, _, errored = select.select([s], [], [s], max(0.0, deadline - time.monotonic()))
            except (OSError, ValueError):
                return RESET
            if errored:
                return RESET
            if readable:
                state = self._probe(s)
                if state != ALIVE:
                    return state
            if time.monotonic() >= deadline:
                return ALIVE

    def _probe(self, s: socket.socket) -> str:
        try:
            data = s.recv(4096, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return ALIVE
        except OSError:
            return RESET
        if data:
            return ALIVE  # junk from the receiver: discarded
        return self._eof_or_reset(s)

    @staticmethod
    def _eof_or_reset(s: socket.socket) -> str:
        # After a FIN, recv() returns b"" even if a RST followed; the RST is only in SO_ERROR.
        try:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:
            return RESET
        return RESET if err else EOF

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


class TlsTransport(TcpTransport):
    """RFC 5425 syslog over TLS (octet-counted inside the TLS stream).

    Verification is on by default: the server certificate must chain to ``ca_file``/``ca_path``
    (or the system trust store when neither is given) and match ``server_hostname`` (default:
    ``host``; IP addresses are matched against IP SANs). ``certfile``/``keyfile`` add a client
    certificate for receivers that require mutual TLS. TLS 1.2 is the minimum (RFC 9662).
    """

    name = "tls"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ca_file: str | None = None,
        ca_path: str | None = None,
        verify: bool = True,
        check_hostname: bool = True,
        server_hostname: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        timeout: float = 5.0,
        connect_probe: float = 0.1,
        context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(host, port, timeout=timeout, connect_probe=connect_probe)
        self.server_hostname = server_hostname or host
        if context is None:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file, capath=ca_path)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if not verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                context.check_hostname = check_hostname
            if certfile:
                context.load_cert_chain(certfile, keyfile)
        self.context = context

    def _open(self) -> socket.socket:
        raw = super()._open()
        try:
            return self.context.wrap_socket(raw, server_hostname=self.server_hostname)
        except BaseException:
            raw.close()
            raise

    def _probe(self, s: socket.socket) -> str:
        # The raw socket is also readable for TLS records that carry no data (TLS 1.3 session
        # tickets, key updates); only a non-blocking TLS read tells close_notify/EOF from those.
        try:
            s.settimeout(0.0)
            data = s.recv(4096)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return ALIVE
        except OSError:
            return RESET
        finally:
            try:
                s.settimeout(self.timeout)
            except OSError:
                pass
        if data:
            return ALIVE
        return self._eof_or_reset(s)


def transport_from_url(url: str, **tls_options) -> UdpTransport | TcpTransport | TlsTransport:
    """``udp://host:514``, ``tcp://host:514``, ``tls://host:6514`` → a transport.

    ``tls_options`` go to :class:`TlsTransport` (``ca_file=…``, ``certfile=…``, …); ``max_size``
    to :class:`UdpTransport`; ``timeout`` to TCP/TLS.
    """
    u = urlsplit(url)
    if not u.hostname:
        raise ValueError(f"syslog url {url!r}: missing host")
    scheme = u.scheme.lower()
    defaults = {"udp": 514, "tcp": 514, "tls": 6514}
    if scheme not in defaults:
        raise ValueError(f"syslog url {url!r}: scheme must be udp, tcp or tls")
    port = u.port or defaults[scheme]
    if scheme == "udp":
        return UdpTransport(u.hostname, port, **{k: v for k, v in tls_options.items() if k == "max_size"})
    if scheme == "tcp":
        tcp_keys = ("timeout", "connect_probe")
        return TcpTransport(u.hostname, port, **{k: v for k, v in tls_options.items() if k in tcp_keys})
    return TlsTransport(u.hostname, port, **{k: v for k, v in tls_options.items() if k != "max_size"})
