"""Captured runs shared by the test modules: each scenario set is run and captured once per session.

Example::

    run = dicom_run(tmp_dir)      # {"pcap": Path, "expected": {...}, "ports": [...]}
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.realstack import dicom_scenarios, hl7_scenarios
from tests.realstack.capture import Capture, free_port

_CACHE: dict[str, dict[str, Any]] = {}
_LOCK = threading.Lock()


def _once(key: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = make()
        return _CACHE[key]


def dicom_run(directory: Path, host: str = "127.0.0.1", scenarios=dicom_scenarios.SCENARIOS,
              name: str = "dicom") -> dict[str, Any]:
    """All DICOM scenarios against one SCP (+ C-MOVE destination), captured into one pcap."""
    def make() -> dict[str, Any]:
        scp, dest = free_port(host), free_port(host)
        pcap = Path(directory) / f"{name}.pcap"
        with Capture(pcap, [scp, dest], host=host) as cap:
            expected = dicom_scenarios.run_all(host, scp, dest, scenarios)
        return {"pcap": pcap, "expected": expected, "ports": [scp, dest], "host": host,
                "tcpdump": cap.stderr_lines, "dropped": cap.dropped_by_kernel}
    return _once(f"{name}:{host}", make)


def hl7_run(directory: Path, host: str = "127.0.0.1") -> dict[str, Any]:
    def make() -> dict[str, Any]:
        port = free_port(host)
        pcap = Path(directory) / "hl7.pcap"
        with Capture(pcap, [port], host=host) as cap:
            sent = hl7_scenarios.run_all(host, port)
        return {"pcap": pcap, "sent": sent, "ports": [port], "host": host, "dropped": cap.dropped_by_kernel}
    return _once(f"hl7:{host}", make)


def ipv6_run(directory: Path) -> dict[str, Any]:
    return dicom_run(directory, host="::1",
                     scenarios=(dicom_scenarios.scenario_echo, dicom_scenarios.scenario_store), name="dicom6")


def all_test_captures() -> list[dict[str, Any]]:
    """Every capture made so far in this session (the oracle test runs over all of them)."""
    with _LOCK:
        return list(_CACHE.values())
