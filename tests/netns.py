"""A throw-away network namespace with a veth pair whose BOTH ends live inside it.

Replayed packets are put on one end (``tx``) and appear on the other (``rx``), where the sensor
captures. Nothing can leave the machine: the namespace has no route, no uplink and no forwarding,
and its only other interface is its own loopback (used for the metrics endpoint and test
receivers). Names carry a random suffix so parallel runs do not collide; ``close()`` deletes the
namespace, which deletes the veth pair with it.

Example::

    with NetNs() as ns:
        proc = ns.popen(["radsensor", "run", "-i", ns.rx, ...])
        ns.run(["tcpreplay", "-i", ns.tx, "capture.pcap"])
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Sequence


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


class NetNs:
    def __init__(self, prefix: str = "rs") -> None:
        tag = secrets.token_hex(3)
        self.name = f"{prefix}-{tag}"
        # Interface names are limited to 15 bytes.
        self.tx = f"{prefix}tx{tag}"
        self.rx = f"{prefix}rx{tag}"
        self._open = False

    def open(self) -> NetNs:
        if os.geteuid() != 0:
            raise PermissionError("network namespace tests need root (CI runs them as root)")
        _ip("netns", "add", self.name)
        self._open = True
        try:
            # No IPv6 on the pair: link-up router solicitations and MLD reports would add packets
            # the test did not replay (the kernel retransmits them seconds later).
            for key in ("all", "default"):
                self.run(["sh", "-c", f"echo 1 > /proc/sys/net/ipv6/conf/{key}/disable_ipv6"])
            # Created inside the namespace directly: the pair never exists in the host namespace.
            _ip("-n", self.name, "link", "add", self.tx, "type", "veth", "peer", "name", self.rx)
            # veth leaves GRO off unless XDP is attached, so each replayed frame arrives as one
            # packet; a large MTU lets jumbo frames of a capture through unchanged.
            for dev in (self.tx, self.rx):
                _ip("-n", self.name, "link", "set", dev, "mtu", "9000", "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._open:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)
            self._open = False

    def __enter__(self) -> NetNs:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _wrap(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0,
            **kw) -> subprocess.CompletedProcess:
        """Run a command inside the namespace and wait for it."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self._wrap(argv), check=check, timeout=timeout, **kw)

    def popen(self, argv: Sequence[str], **kw) -> subprocess.Popen:
        """Start a command inside the namespace (``ip netns exec`` execs it: the PID is the command's)."""
        return subprocess.Popen(self._wrap(argv), **kw)

    def replay(self, pcap: str, *, pps: int | None = None, mbps: float | None = None, loop: int = 1,
               topspeed: bool = False, timeout: float = 60.0) -> str:
        """tcpreplay ``pcap`` onto ``tx`` (seen on ``rx``); returns tcpreplay's summary text."""
        argv = ["tcpreplay", "-i", self.tx, "-q", f"--loop={loop}"]
        if topspeed:
            argv.append("--topspeed")
        elif pps:
            argv.append(f"--pps={pps}")
        elif mbps:
            argv.append(f"--mbps={mbps}")
        argv.append(pcap)
        res = self.run(argv, timeout=timeout)
        return res.stdout + res.stderr

    def http_get(self, url: str, timeout: float = 5.0) -> str:
        """GET a URL from inside the namespace (its loopback is not the host's)."""
        code = ("import sys, urllib.request;"
                f"sys.stdout.write(urllib.request.urlopen({url!r}, timeout={timeout}).read().decode())")
        return self.run([_python(), "-c", code], timeout=timeout + 10).stdout


def _python() -> str:
    import sys

    return sys.executable
