"""msh.parse_message and the MLLP deframer on hand-written bytes (annotated fixtures)."""

from __future__ import annotations

import hl7

from sensor.protocols.hl7.mllp import MllpDeframer, raw_msh_verdict
from sensor.protocols.hl7.msh import MAX_SEGMENT_TYPES, MAX_VALUE, parse_message


def test_fields_agree_with_hl7_package():
    text = ("MSH|^~\\&|PACS^1.2.3^ISO|RAD|RIS|HOSP|20240101120000||ORM^O01^ORM_O01|CTL-9|P^T|2.5.1^NLD\r"
            "PID|1||ID1||SECRETNAME\rORC|NW\rOBR|1\r")
    msh = hl7.parse(text).segment("MSH")
    h = parse_message(text.encode())
    assert h.sending_app == str(msh[3]) == "PACS^1.2.3^ISO"
    assert h.receiving_facility == str(msh[6]) == "HOSP"
    assert h.msh_type == str(msh[9])
    assert (h.message_type, h.event, h.structure) == ("ORM", "O01", "ORM_O01")
    assert h.control_id == str(msh[10]) == "CTL-9"
    assert (h.processing_id, h.version) == ("P", "2.5.1")
    assert h.segment_types == {"MSH": 1, "PID": 1, "ORC": 1, "OBR": 1}
    assert h.problem is None
    assert "SECRETNAME" not in repr(h)


def test_ack_and_old_style_msh9():
    h = parse_message(b"MSH|^~\\&|A|B|C|D|2024||ACK|X1|P|2.2\rMSA|CA|ORIG-1|text\r")
    assert (h.message_type, h.event, h.structure) == ("ACK", None, None)
    assert (h.ack_code, h.acked_control_id) == ("CA", "ORIG-1")


def test_segment_id_validation_and_line_endings():
    h = parse_message(b"MSH|^~\\&|A\r\nPID|1\nobx|1\rOB|\rABCD|\rZ01|x\rPV1\r\r")
    assert h.segment_types == {"MSH": 1, "PID": 1, "?": 3, "Z01": 1, "PV1": 1}


def test_bounded_values_and_control_chars():
    h = parse_message(b"MSH|^~\\&|" + b"A" * 500 + b"|B\x01\x7fC|\xff\xfe|D|||ADT^A01|1|P|2.5\r")
    assert h.sending_app == "A" * MAX_VALUE
    assert h.sending_facility == "B??C"
    assert h.receiving_app == "\xff\xfe"  # not UTF-8: latin-1, never an exception


def test_distinct_segment_ids_are_capped():
    segs = b"".join(b"Z%02d|\r" % i for i in range(100))
    h = parse_message(b"MSH|^~\\&|A\r" + segs)
    assert len(h.segment_types) == MAX_SEGMENT_TYPES + 1
    assert h.segment_types["?"] == 100 + 1 - MAX_SEGMENT_TYPES
    assert sum(h.segment_types.values()) == 101


def test_problems():
    assert parse_message(b"").problem == "no MSH segment"
    assert parse_message(b"MSH").problem == "bad MSH-1 field separator"
    assert parse_message(b"MSH1^~").problem == "bad MSH-1 field separator"
    assert parse_message(b"MSH||A|B").problem == "bad MSH-2 encoding characters"
    assert parse_message(b"MSH|^~\\&|A|B").problem == "short MSH (4 fields)"
    assert parse_message(b"MSH|^~\\&|A|B|C|D|E||||").problem == "missing MSH-9"
    # batch envelope before the MSH
    h = parse_message(b"FHS|^~\\&\rBHS|^~\\&\rMSH|^~\\&|A|B|C|D|1||ADT^A01|7|P|2.5\rBTS|1\rFTS|1\r")
    assert h.problem is None and h.control_id == "7"
    assert h.segment_types == {"FHS": 1, "BHS": 1, "MSH": 1, "BTS": 1, "FTS": 1}


def test_raw_verdict():
    assert raw_msh_verdict(b"M") is None
    assert raw_msh_verdict(b"MSH|") is None
    assert raw_msh_verdict(b"MSH|^") is True
    assert raw_msh_verdict(b"MSX") is False
    assert raw_msh_verdict(b"MSH|A") is False
    assert raw_msh_verdict(b"MSH\r^") is False


def _deframe(chunks, max_frame=1 << 20):
    frames, weirds, counts = [], [], {}
    d = MllpDeframer(lambda ts, m, f: frames.append((ts, m, f)), lambda ts, n, det: weirds.append(n),
                     lambda n, k: counts.__setitem__(n, counts.get(n, 0) + k), max_frame)
    for ts, c in chunks:
        d.feed(ts, c)
    d.close(99.0)
    return frames, weirds, counts


def test_frame_ts_is_first_byte_and_split_end_block():
    frames, weirds, _ = _deframe([(1.0, b"\r\n\x0bMSH|a"), (2.0, b"bc"), (3.0, b"\x1c"), (4.0, b"\r\x0bMSH|x\x1c\r")])
    assert frames == [(1.0, b"MSH|abc", "mllp"), (4.0, b"MSH|x", "mllp")]
    assert weirds == []


def test_discard_until_next_start_block():
    frames, weirds, counts = _deframe([(1.0, b"\x0b" + b"A" * 40), (1.0, b"B" * 40 + b"\x1c\rjunk"),
                                       (1.0, b"\x0bMSH|ok\x1c\r")], max_frame=32)
    assert frames == [(1.0, b"MSH|ok", "mllp")]
    assert weirds == ["hl7.oversize_frame"]
    assert counts["hl7.discarded_bytes"] == 80 + 2 + 4
