"""Live capture from network interfaces through libpcap (pcapy-ng), in batches, never blocking.

A :class:`LiveCapture` is one interface and one libpcap handle, opened with ``pcapy.create()`` so
snaplen, promiscuous mode, read timeout and the kernel ring size (default 64 MiB: with 2 MiB a
burst of small frames overflows it) are set before ``activate()``. The handle is non-blocking:
``read()`` returns what the ring holds now, up to ``batch_size`` packets, as the same
``PacketBatch`` the file readers produce, so ``Pipeline.feed(batch)`` cannot tell the difference.
Waiting happens in ``select()`` on ``fileno()`` (or several, see :class:`LiveSource`), with a
timeout, so an idle link still lets windows close on the clock and signals be served — a blocking
``pcap_next`` on a quiet interface may never return.

On Linux libpcap uses TPACKET_V3: the kernel hands over a ring block when it is full or when the
read timeout (``timeout_ms``) expires, so ``timeout_ms`` bounds the latency of a packet on a quiet
link, not the rate.

Two read paths: with a snaplen of at least 64 KiB a frame is never cut, so the captured length is
the wire length and ``next_batch`` reads a whole ring block in one C call (frames are zero-copy
``memoryview`` slices of one buffer). With a shorter snaplen we need each packet's wire length (to
report the bytes not captured), which only the per-packet header of ``dispatch`` carries.

Example::

    >>> cap = LiveCapture("eth1", LiveOptions(bpf="tcp or udp")).open()   # doctest: +SKIP
    >>> batch = cap.read()          # None when the ring is empty right now  # doctest: +SKIP
    >>> cap.stats().kernel_drops    # doctest: +SKIP
    0
"""

from __future__ import annotations

import os
import select
import struct
from dataclasses import dataclass

from sensor.capture import CaptureError, PacketBatch

# next_batch metadata: (sec, usec, offset, caplen) as native uint32, one record per packet.
_META = struct.Struct("=IIII")
_U32 = 1 << 32
# Below this snaplen a frame can be cut, so the per-packet wire length must be read.
FULL_SNAPLEN = 65535

DEFAULT_BUFFER = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LiveOptions:
    """How to open an interface. ``fanout_group`` joins a PACKET_FANOUT group (``--workers``)."""

    snaplen: int = 262144
    promisc: bool = True
    buffer_size: int = DEFAULT_BUFFER
    timeout_ms: int = 100
    bpf: str = ""
    batch_size: int = 4096
    fanout_group: int | None = None


@dataclass(frozen=True, slots=True)
class CaptureStats:
    """Monotonic counters for one interface (libpcap's 32-bit counters unwrapped)."""

    received: int = 0
    kernel_drops: int = 0  # ps_drop: the ring was full
    if_drops: int = 0  # ps_ifdrop: dropped by the interface/driver


class _Unwrap:
    """libpcap's ``pcap_stat`` fields are ``u_int`` and wrap after 4 Gi packets (weeks on a busy
    SPAN port); accumulate deltas modulo 2**32 so the exported counters only ever go up."""

    __slots__ = ("last", "total")

    def __init__(self) -> None:
        self.last = 0
        self.total = 0

    def update(self, raw: int) -> int:
        self.total += (raw - self.last) % _U32
        self.last = raw
        return self.total


class LiveCapture:
    """One interface, one non-blocking libpcap handle."""

    def __init__(self, interface: str, options: LiveOptions = LiveOptions()) -> None:
        self.interface = interface
        self.options = options
        self.linktype = -1
        self._handle = None
        self._fd = -1
        self._fast = options.snaplen >= FULL_SNAPLEN
        self._recv, self._drop, self._ifdrop = _Unwrap(), _Unwrap(), _Unwrap()
        self._stats = CaptureStats()

    # -- lifecycle ------------------------------------------------------------------------------
    def open(self) -> LiveCapture:
        """Create, configure and activate the handle (needs CAP_NET_RAW: do it before dropping root)."""
        import pcapy  # imported here: file-only commands never load libpcap

        o = self.options
        try:
            h = pcapy.create(self.interface)
            h.set_snaplen(o.snaplen)
            h.set_promisc(bool(o.promisc))
            h.set_timeout(o.timeout_ms)
            h.set_buffer_size(o.buffer_size)
            h.activate()
            h.setnonblock(1)
            if o.fanout_group is not None:
                h.set_fanout(o.fanout_group, pcapy.PACKET_FANOUT_HASH)
        except (pcapy.PcapError, OSError, ValueError) as exc:
            raise CaptureError(f"interface {self.interface}: cannot capture: {exc}") from None
        self._handle = h
        self._fd = h.getfd()
        self.linktype = h.datalink()
        if o.bpf:
            try:
                self.set_filter(o.bpf)
            except CaptureError:
                self.close()
                raise
        return self

    def close(self) -> None:
        if self._handle is not None:
            try:
                self.stats()  # keep the final counters readable after close
            finally:
                self._handle.close()
                self._handle = None
                self._fd = -1

    def fileno(self) -> int:
        return self._fd

    def set_filter(self, bpf: str) -> None:
        """Replace the BPF filter on the open handle (SIGHUP): the ring and flow state stay."""
        import pcapy

        try:
            self._handle.setfilter(bpf or "")
        except (pcapy.BPFError, pcapy.PcapError) as exc:
            raise CaptureError(f"interface {self.interface}: bad BPF filter {bpf!r}: {exc}") from None

    # -- reading --------------------------------------------------------------------------------
    def read(self, max_packets: int | None = None) -> PacketBatch | None:
        """What the ring holds now, up to ``max_packets``; ``None`` when it is empty. Never blocks."""
        n = max_packets or self.options.batch_size
        h = self._handle
        if h is None:
            return None
        try:
            if self._fast:
                data, meta = h.next_batch(n)
                if not meta:
                    return None
                view = memoryview(data)
                recs = list(_META.iter_unpack(meta))
                ts = [s + u * 1e-6 for s, u, _, _ in recs]
                frames = [view[o:o + c] for _, _, o, c in recs]
                wirelen = [c for _, _, _, c in recs]
            else:
                ts, frames, wirelen = [], [], []
                ts_append, fr_append, wl_append = ts.append, frames.append, wirelen.append

                def on_packet(hdr, frame) -> None:
                    s, u = hdr.getts()
                    ts_append(s + u * 1e-6)
                    fr_append(frame)
                    wl_append(hdr.getlen())

                h.dispatch(n, on_packet)
                if not frames:
                    return None
        except Exception as exc:  # pcapy.PcapError: interface went down, ring error
            raise CaptureError(f"interface {self.interface}: read failed: {exc}") from None
        return PacketBatch(self.linktype, ts, frames, wirelen, self.interface)

    def stats(self) -> CaptureStats:
        """Counters since open: packets seen by the kernel, kernel (ring) drops, interface drops."""
        if self._handle is not None:
            try:
                recv, drop, ifdrop = self._handle.stats()
            except Exception:  # a vanished interface: keep the last good numbers
                return self._stats
            self._stats = CaptureStats(self._recv.update(recv), self._drop.update(drop),
                                       self._ifdrop.update(ifdrop))
        return self._stats


class LiveSource:
    """Several interfaces read as one: wait on all of them, read each ready one, merge the batches.

    Batches keep their interface as ``source``; timestamps across interfaces are only ordered
    within a batch (the flow table tolerates the small skew between rings).
    """

    def __init__(self, interfaces: list[str] | tuple[str, ...], options: LiveOptions = LiveOptions()) -> None:
        if not interfaces:
            raise CaptureError("no interface to capture on")
        self.captures = [LiveCapture(i, options) for i in interfaces]

    def open(self) -> LiveSource:
        try:
            for c in self.captures:
                c.open()
        except CaptureError:
            self.close()
            raise
        return self

    def close(self) -> None:
        for c in self.captures:
            c.close()

    def fds(self) -> list[int]:
        return [c.fileno() for c in self.captures if c.fileno() >= 0]

    def wait(self, timeout: float, extra_fds: tuple[int, ...] = ()) -> set[int]:
        """Block up to ``timeout`` s until a ring or an ``extra_fds`` (signal wake-up) is readable."""
        try:
            ready, _, _ = select.select([*self.fds(), *extra_fds], [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for clarity
            return set()
        return set(ready)

    def read_ready(self, ready: set[int], budget: int) -> list[PacketBatch]:
        """Drain the ready rings, each until empty or ``budget`` packets, so one busy interface
        cannot starve the clock (the caller gets back to timers after at most ``budget``)."""
        out: list[PacketBatch] = []
        for c in self.captures:
            if c.fileno() not in ready:
                continue
            got = 0
            while got < budget:
                batch = c.read()
                if batch is None:
                    break
                out.append(batch)
                got += len(batch.frames)
        return out

    def set_filter(self, bpf: str) -> None:
        for c in self.captures:
            c.set_filter(bpf)

    def stats(self) -> dict[str, CaptureStats]:
        return {c.interface: c.stats() for c in self.captures}

    @property
    def interfaces(self) -> list[str]:
        return [c.interface for c in self.captures]


def interface_exists(name: str) -> bool:
    """Cheap check for a config/CLI error message before libpcap's longer one (Linux sysfs)."""
    return os.path.exists(f"/sys/class/net/{name}") or not os.path.isdir("/sys/class/net")
