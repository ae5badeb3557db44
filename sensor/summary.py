"""What ``radsensor decode`` prints: devices, associations, commands, statuses, HL7 types, errors."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sensor.events import Counters, DicomAssociation, DimseMessage, Event, FlowRecord, Hl7Message, Weird


@dataclass
class DecodeSummary:
    """Accumulates counts from the event stream (constant memory per device, not per event)."""

    devices: dict[str, dict] = field(default_factory=dict)
    flows: Counter = field(default_factory=Counter)
    apps: Counter = field(default_factory=Counter)
    associations: Counter = field(default_factory=Counter)
    dimse: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    hl7_types: Counter = field(default_factory=Counter)
    hl7_acks: Counter = field(default_factory=Counter)
    weird: Counter = field(default_factory=Counter)

    def _device(self, ep) -> dict:
        dev = self.devices.get(ep.ip)
        if dev is None:
            dev = self.devices[ep.ip] = {"macs": set(), "ae_titles": set(), "flows": 0}
        if ep.mac:
            dev["macs"].add(ep.mac)
        return dev

    def add(self, event: Event) -> None:
        if isinstance(event, FlowRecord):
            self.flows[event.proto] += 1
            self.apps[event.app or "other"] += 1
            self._device(event.client)["flows"] += 1
            self._device(event.server)["flows"] += 1
        elif isinstance(event, DicomAssociation):
            self.associations[event.result] += 1
            if event.calling_ae:
                self._device(event.client)["ae_titles"].add(event.calling_ae)
            if event.called_ae and event.result == "accepted":
                self._device(event.server)["ae_titles"].add(event.called_ae)
            for status, n in event.statuses.items():
                self.statuses[status] += n
        elif isinstance(event, DimseMessage):
            self.dimse[event.command] += 1
        elif isinstance(event, Hl7Message):
            self.hl7_types[event.msh_type or "?"] += 1
            if event.ack_code:
                self.hl7_acks[event.ack_code] += 1
        elif isinstance(event, Weird):
            self.weird[event.name] += 1

    def render(self, counters: Counters, packets: int, seconds: float, console=None) -> None:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        console = console or Console()
        rate = packets / seconds if seconds > 0 else 0.0
        console.print(f"[bold]{packets:,}[/] packets in {seconds:.2f} s ({rate:,.0f} packets/s)")

        def table(title: str, rows, headers=("name", "count")) -> None:
            rows = list(rows)
            if not rows:
                return
            t = Table(title=title, title_justify="left")
            for h in headers:
                t.add_column(h)
            for row in rows:
                # Text, not markup: AE titles and app names come off the wire ("[red]" is data).
                t.add_row(*[Text(f"{c:,}" if isinstance(c, int) else str(c)) for c in row])
            console.print(t)

        table("Devices", ((ip, ", ".join(sorted(d["macs"])) or "-", ", ".join(sorted(d["ae_titles"])) or "-",
                           d["flows"]) for ip, d in sorted(self.devices.items())),
              ("ip", "mac", "AE titles", "flows"))
        table("Flows by protocol / application",
              [(f"proto {k}", v) for k, v in sorted(self.flows.items())]
              + [(f"app {k}", v) for k, v in sorted(self.apps.items())])
        table("DICOM associations", sorted(self.associations.items()), ("result", "count"))
        table("DIMSE operations", sorted(self.dimse.items()), ("command", "count"))
        table("DIMSE statuses", sorted(self.statuses.items()), ("status", "responses"))
        table("HL7 messages", sorted(self.hl7_types.items()) + [(f"ack {k}", v) for k, v in
                                                            sorted(self.hl7_acks.items())],
              ("MSH-9 / MSA-1", "count"))
        errors = {k: v for k, v in counters.values.items()
                  if k.startswith(("decode.", "weird.", "capture.", "tcp.", "flows.evicted", "analyzer."))
                  and k != "decode.ip_packets"}
        table("Decode errors and anomalies", sorted(errors.items()), ("counter", "count"))
