"""The analyzer's fast paths (whole P-DATA-TF + PDV header, one-fragment command set, skip credit)
decode exactly what the byte-at-a-time path decodes, including on the odd layouts they must leave
to the generic code; and parse_command's table-driven loop keeps the old edge-case behaviour."""

from __future__ import annotations

import struct

from sensor.protocols.dicom.analyzer import DicomAnalyzer
from sensor.protocols.dicom.dimse import Command, parse_command
from tests.test_dicom_streams import make_ctx, recordings, runs

_el = struct.Struct("<HHI").pack


def el(elem: int, value: bytes) -> bytes:
    return _el(0, elem, len(value)) + value


def us(v: int) -> bytes:
    return struct.pack("<H", v)


def pdata(*pdvs: tuple[int, int, bytes], pad: bytes = b"") -> bytes:
    """A P-DATA-TF with the given (context id, control, data) PDVs and optional trailing bytes."""
    body = b"".join(struct.pack(">IBB", len(data) + 2, ctx, ctrl) + data for ctx, ctrl, data in pdvs) + pad
    return struct.pack(">BBI", 4, 0, len(body)) + body


STORE_RQ = el(0x0002, b"1.2.840.10008.5.1.4.1.1.7\x00") + el(0x0100, us(0x0001)) + el(0x0110, us(5)) \
    + el(0x0700, us(0)) + el(0x0800, us(0x0000)) + el(0x1000, b"1.2.3.4\x00")
STORE_RSP = el(0x0002, b"1.2.840.10008.5.1.4.1.1.7\x00") + el(0x0100, us(0x8001)) + el(0x0120, us(5)) \
    + el(0x0800, us(0x0101)) + el(0x0900, us(0))


def _run(stream, chunk_size=None, use_credit=False):
    """Feed (from_client, ts, bytes); optionally let skip credit swallow pieces like the flow layer."""
    ctx, events = make_ctx(True)
    an = DicomAnalyzer(ctx)
    for fc, ts, data in stream:
        step = chunk_size or len(data)
        for i in range(0, len(data), step):
            piece = data[i : i + step]
            if use_credit and len(piece) <= an.skip_credit[fc]:
                an.skip_credit[fc] -= len(piece)
            else:
                an.data(fc, ts, memoryview(piece))
    an.close(99.0, "eof")
    return [e.to_dict() for e in events], ctx.counters.values


def _same_every_way(stream):
    whole = _run(stream)
    for size in (1, 5, 11, 12, 13, 700):
        assert _run(stream, size) == whole, size
        assert _run(stream, size, use_credit=True) == whole, size
    return whole


def test_odd_layouts_decode_the_same_whole_and_byte_by_byte():
    data = b"\x00" * 3000
    stream = [
        (True, 1.0, pdata((1, 3, STORE_RQ)) + pdata((1, 0, data)) + pdata((1, 2, data))),
        (False, 2.0, pdata((1, 3, STORE_RSP))),
        # Command and data in one PDU; a command PDU with 3 trailing bytes (pdv_trailing_bytes).
        (True, 3.0, pdata((1, 3, STORE_RQ.replace(us(5), us(6))), (1, 2, data))),
        (False, 4.0, pdata((1, 3, STORE_RSP.replace(us(5), us(6))), pad=b"\x00\x00\x00")),
        # A two-fragment command set, then a data PDV inside an unfinished command.
        (True, 5.0, pdata((1, 1, STORE_RQ[:20])) + pdata((1, 3, STORE_RQ[20:]))),
        (True, 6.0, pdata((1, 1, STORE_RQ[:10])) + pdata((1, 2, data))),
        # Empty PDVs and an even context id (counted weird, generic path).
        (True, 7.0, pdata((1, 0, b"")) + pdata((2, 2, b"ab"))),
    ]
    events, counters = _same_every_way(stream)
    kinds = [e.get("command") for e in events if "command" in e]
    assert kinds.count("C-STORE") == 3  # message ids 5, 6 and 5 again (the two-fragment command)
    assert counters["weird.dicom.pdv_trailing_bytes"] == 1
    assert counters["weird.dicom.dataset_inside_command"] == 1
    assert counters["weird.dicom.bad_pdv_context"] == 1
    assert counters.get("weird.dicom.internal", 0) == 0


def test_real_store_stream_decodes_the_same_with_skip_credit():
    stream = runs(recordings()["store"][0])
    events, counters = _same_every_way(stream)
    assert sum(1 for e in events if e.get("command") == "C-STORE") == 3
    assert not any(k.startswith("weird.") for k in counters)


def test_parse_command_edge_cases():
    long_uid = b"1." + b"9" * 100
    cmd = parse_command(
        el(0x0100, us(0x8021))
        + el(0x0120, struct.pack("<I", 0x00010007))  # UL where US is expected: low 16 bits
        + el(0x0900, b"\x01")  # bad length: error, but parsing goes on
        + el(0x0002, long_uid)
        + el(0x1021, us(4))
        + el(0x0600, b"DEST  \x00")
        + el(0x0600, b"DEST2 ")  # repeated element: the last one wins
    )
    assert cmd.error == "bad_command_element"
    assert (cmd.key, cmd.name, cmd.is_response, cmd.responded_id) == ("C-MOVE-RSP", "C-MOVE", True, 7)
    assert cmd.status is None and cmd.affected_sop_class == long_uid[:64].decode()
    assert cmd.sub_ops == (0, 4, 0, 0) and cmd.move_destination == "DEST2"
    odd = parse_command(el(0x0100, us(0x1234)) + el(0x0800, us(0x0101)))
    assert (odd.error, odd.name, odd.key, odd.has_dataset) == (None, "0x1234", "0x1234-RQ", False)
    empty = Command()
    assert (empty.name, empty.key, empty.is_response, empty.sub_ops, empty.error) == ("UNKNOWN", "UNKNOWN-RQ", False, None, None)
    assert parse_command(memoryview(STORE_RQ)).key == "C-STORE-RQ"


def test_abort_mid_data_set_books_credited_bytes_to_the_aborted_association():
    # Mid-stream (no A-ASSOCIATE): a C-STORE data set in 1,000-byte pieces, the acceptor aborts
    # before it ends. Bytes the flow layer swallowed by skip credit belong to that association.
    abort = struct.pack(">BBIBBBB", 7, 0, 4, 0, 0, 2, 0)
    data_set = bytes(range(256)) * 40
    stream = [(True, 1.0, pdata((1, 3, STORE_RQ))),
              (True, 1.1, pdata((1, 0, data_set))[:6000]),
              (False, 1.2, abort)]
    whole = _same_every_way(stream)
    (assoc,) = [e for e in whole[0] if "dataset_bytes" in e and "pdu_counts" in e]
    assert assoc["result"] == "aborted"
    assert assoc["dataset_bytes"] == 6000 - 12
