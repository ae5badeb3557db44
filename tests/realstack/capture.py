"""tcpdump around a scenario: start, wait until it really captures, stop by PID with SIGINT.

Example::

    with Capture(tmp_path / "echo.pcap", ports=[11112]) as cap:
        run_scenario()
    cap.path  # a complete pcap

The filter names the scenario's ports, so traffic other processes put on loopback at the same time
stays out of the capture.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

TCPDUMP = "tcpdump"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# Packets written after the scenario's last send: loopback delivery is synchronous, but tcpdump
# reads from a ring buffer in its own time. Immediate mode plus a short settle is enough.
SETTLE = 0.15


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on ``host`` (bound then released; fine for tests on loopback)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def bpf_filter(ports: Sequence[int], host: str = "127.0.0.1") -> str:
    proto = "ip6 host" if ":" in host else "host"
    ports_expr = " or ".join(f"tcp port {p}" for p in ports)
    return f"{proto} {host} and ({ports_expr})"


class CaptureError(RuntimeError):
    pass


class Capture:
    """Context manager running ``tcpdump -i lo -w PATH -U -s 0 FILTER`` for the ``with`` body."""

    # Real stacks (dcmtk, Orthanc) push megabytes over loopback in milliseconds; with tcpdump's
    # default 2 MiB buffer the kernel dropped 52 of 622 packets. 64 MiB is plenty.
    BUFFER_KIB = 65536

    def __init__(self, path: str | os.PathLike, ports: Sequence[int], host: str = "127.0.0.1",
                 iface: str = "lo") -> None:
        self.path = Path(path)
        self.ports = list(ports)
        self.host = host
        self.iface = iface
        self.proc: subprocess.Popen | None = None
        self.stderr_lines: list[str] = []
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))
            if "listening on" in line:
                self._listening.set()
        self._listening.set()  # EOF: unblock the starter, which then checks the exit status

    def start(self) -> Capture:
        cmd = [TCPDUMP, "-i", self.iface, "-w", str(self.path), "-U", "-s", "0", "--immediate-mode",
               "-B", str(self.BUFFER_KIB), "-n", bpf_filter(self.ports, self.host)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._listening.wait(START_TIMEOUT) or self.proc.poll() is not None:
            self.stop()
            raise CaptureError("tcpdump did not start: " + " | ".join(self.stderr_lines))
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            time.sleep(SETTLE)
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT)
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def dropped_by_kernel(self) -> int | None:
        """tcpdump's final 'N packets dropped by kernel' line (None when not printed)."""
        for line in self.stderr_lines:
            if "dropped by kernel" in line:
                return int(line.split()[0])
        return None
