"""Alerts: the ``radsensor.alert/1`` schema, wire formats, syslog transports, sinks and spool.

Modules, one job each: ``schema`` (typed records, merging), ``formats`` (JSON/CEF/LEEF/ECS/text),
``syslog`` (RFC 5424 messages, UDP/TCP/TLS transports), ``spool`` (bounded on-disk FIFO),
``sinks`` (stdout, JSONL, syslog, fan-out).
"""

from sensor.alerts.schema import (
    SCHEMA,
    Alert,
    AlertKind,
    AlertMerger,
    DeviceRef,
    Evidence,
    Peer,
    Severity,
)

__all__ = ["SCHEMA", "Alert", "AlertKind", "AlertMerger", "DeviceRef", "Evidence", "Peer", "Severity"]
