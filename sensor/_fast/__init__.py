"""The compiled per-packet loop, with a pure-Python fallback of the same API.

``impl`` is the C extension ``sensor._fast._fastpath`` when it was built (setup.py builds it as an
optional extension) and the environment does not say ``RADSENSOR_FAST=0``; otherwise it is
``sensor._fast.fallback``, which is also the reference semantics the C code is tested against.
``COMPILED`` says which one is in use.

API of both (see fallback.py for the docstrings)::

    scan_pcap(buf, pos, swapped, limit, max_records) -> (pos, count, captured_bytes, status)
    parse_pcap(buf, start, count, swapped, units) -> (ts, frames, wirelen)
    pcap_ts(buf, start, count, swapped, units) -> ts
    decode(linktype, ts, frames, bad) -> [Packet tuples]          # decode_batch without Counters
    FastTable(flow_table)  .process_pcap / .process_frames / .track / .release / .merge_all / .stats

The compiled module also has ``parse_command(buf, offset=0, length=None)`` and ``command_type``,
the DIMSE command-set decoder; its pure-Python reference is ``_parse_command_py`` in
sensor/protocols/dicom/dimse.py, which picks one of the two (and is what callers import).

Example::

    >>> from sensor import _fast
    >>> _fast.impl.decode(1, [0.0], [b"\\x00" * 10], bad := {}), bad
    ([], {'truncated_ethernet': 1})
"""

from __future__ import annotations

import os

from sensor._fast import fallback

COMPILED = False
impl = fallback
if os.environ.get("RADSENSOR_FAST", "1").strip().lower() not in ("0", "no", "off", "false"):
    try:
        from sensor._fast import _fastpath as impl  # type: ignore[no-redef]

        COMPILED = True
    except ImportError:  # not built (no compiler at install time): the fallback is complete
        impl = fallback


def new_table(flow_table, fast: bool = True):
    """The per-packet driver for ``flow_table``: compiled when available and ``fast``, else the reference."""
    return (impl if fast else fallback).FastTable(flow_table)
