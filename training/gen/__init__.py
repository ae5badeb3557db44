"""Reference-traffic generator internals (entry point: ``python -m training.generate``).

site (TOML model) -> schedule (sessions per day) -> recorder (real pynetdicom/hl7 bytes over
loopback, once per run) -> compose (sessions -> PDU exchanges) -> render (Ethernet/IPv4/TCP/UDP
frames) -> pcap, plus a JSON record of what was generated and labels.json for attacks.
"""
