"""radsensor: a passive DICOM/HL7 network sensor for hospital imaging networks."""

__version__ = "0.1.0"
