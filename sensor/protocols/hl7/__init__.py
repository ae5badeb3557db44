"""HL7 v2 over MLLP: framing (``mllp``), MSH/MSA fields (``msh``), the stream analyzer (``analyzer``)."""
