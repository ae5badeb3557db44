"""Real-stack test helpers: loopback captures of pynetdicom and hl7 peers, and the tshark oracle.

``capture`` runs tcpdump around a scenario; ``dicom_scenarios`` and ``hl7_scenarios`` drive the real
stacks and return what they did as plain dicts; ``oracle`` extracts the same fields with tshark.
"""
