"""The compiled DIMSE command-set decoder against its reference: the same Command for every input.

``sensor._fast._fastpath.parse_command`` (C) and ``dimse._parse_command_py`` (the reference) are
compared field by field, value and type, on random bytes, on random element layouts (US/UL/odd
lengths, text with non-ASCII bytes and padding around the 64-byte cut, foreign groups, trailing and
truncated bytes), on pynetdicom's own command sets for every DIMSE message type (checked against
the values pydicom holds too), on every kind of buffer and offset/length, and end to end: a
``radsensor decode`` of pcaps/attack-day.pcap with ``RADSENSOR_FAST=0`` writes the same event logs
as the compiled run. The C code must also survive a million hostile calls without leaking.
"""

from __future__ import annotations

import array
import gc
import io
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pynetdicom._config
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pynetdicom import dimse_messages, dimse_primitives

from sensor import _fast
from sensor._fast import _fastpath  # imported directly: these tests need the C helper built
from sensor.protocols.dicom import dimse
from sensor.protocols.dicom.dimse import Command, _parse_command_py

pynetdicom._config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom._config.LOG_RESPONSE_IDENTIFIERS = False

ROOT = Path(__file__).resolve().parent.parent
FIELDS = Command.__slots__
# Registering is idempotent; done here too so the comparison runs even under RADSENSOR_FAST=0.
_fastpath.command_type(Command, Command.__slots__, dimse._ELEMENTS, dimse._N_TEXT)
C_PARSE = _fastpath.parse_command
_HDR = struct.Struct("<HHI").pack


def fields(cmd) -> tuple:
    assert type(cmd) is Command
    return tuple((name, type(getattr(cmd, name)), getattr(cmd, name)) for name in FIELDS)


def outcome(parse, *args, **kw):
    """The Command's fields, or the exception type (and message for ValueError) it raised."""
    try:
        return fields(parse(*args, **kw))
    except ValueError as exc:
        return ValueError, str(exc)
    except TypeError:
        return TypeError


def same(*args, **kw):
    c, p = outcome(C_PARSE, *args, **kw), outcome(_parse_command_py, *args, **kw)
    assert c == p
    return c


# -- strategies --------------------------------------------------------------------------------

TEXT_BYTES = st.sampled_from([b"1.2.840.10008.5.1.4.1.1.2", b"DEST_AE", b"\xc3\xa9\xff\x80", b" ", b"\x00", b"A\x00 ",
                              b"\x7f\x01", b"9" * 30])
ELEMS = st.one_of(st.sampled_from(dimse._ELEMENTS + (0x0000, 0x0001, 0x0901, 0x0902, 0x1000, 0x1030, 0x1031)),
                  st.integers(0, 0xFFFF))


@st.composite
def text_value(draw) -> bytes:
    """UI/AE-like text: ASCII and non-ASCII pieces, padded, often near the 64-byte cut."""
    body = b"".join(draw(st.lists(TEXT_BYTES, max_size=6)))
    if draw(st.booleans()):
        body = body[: draw(st.integers(58, 70))].ljust(draw(st.integers(60, 68)), b"X")
    pad = draw(st.sampled_from([b"", b" ", b"\x00", b" \x00", b"\x00 \x00", b"  ", b"\xff "]))
    return body + pad


@st.composite
def element(draw) -> bytes:
    group = draw(st.sampled_from([0] * 12 + [1, 8, 0xFFFF]))
    kind = draw(st.sampled_from(["us", "ul", "text", "raw"]))
    if kind == "us":
        value = struct.pack("<H", draw(st.integers(0, 0xFFFF)))
    elif kind == "ul":
        value = struct.pack("<I", draw(st.integers(0, 0xFFFFFFFF)))
    elif kind == "text":
        value = draw(text_value())
    else:
        value = draw(st.binary(max_size=80))
    declared = len(value) + draw(st.sampled_from([0] * 10 + [-3, -1, 1, 2, 6]))
    if draw(st.integers(0, 30)) == 0:
        declared = draw(st.sampled_from([0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 0x10000]))
    return _HDR(group, draw(ELEMS), declared & 0xFFFFFFFF) + value


@st.composite
def command_sets(draw) -> bytes:
    buf = b"".join(draw(st.lists(element(), max_size=14)))
    if draw(st.booleans()):
        buf += draw(st.binary(max_size=9))  # trailing garbage (too short for a header, or not)
    if buf and draw(st.integers(0, 3)) == 0:
        buf = buf[: draw(st.integers(0, len(buf)))]  # truncated
    return buf


def _strided(b: bytes) -> memoryview:
    twice = bytearray(2 * len(b))
    twice[::2] = b
    return memoryview(bytes(twice))[::2]  # 1-D, not contiguous


def _f_order(b: bytes):
    """A 2-D Fortran-ordered array whose C-order bytes are b (not C-contiguous unless trivial)."""
    if len(b) % 2:
        return np.frombuffer(b, dtype=np.uint8).copy()
    return np.asfortranarray(np.frombuffer(b, dtype=np.uint8).reshape(2, len(b) // 2))


BUFFERS = {
    "bytes": bytes,
    "bytearray": bytearray,
    "memoryview": memoryview,
    "memoryview-of-bytearray": lambda b: memoryview(bytearray(b)),
    "offset-view": lambda b: memoryview(b"\x00\x00\x00" + b + b"\x01")[3:-1],
    "strided-view": _strided,
    "array-B": lambda b: array.array("B", b),
    "cast-H": lambda b: memoryview(b).cast("H") if len(b) % 2 == 0 else memoryview(b),
    "numpy-F": _f_order,
    "bytes-subclass": type("B2", (bytes,), {}),
}


# -- properties ----------------------------------------------------------------------------------

@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_decode_the_same(buf):
    same(buf)
    same(bytearray(buf))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command_sets())
def test_random_element_layouts_decode_the_same(buf):
    assert isinstance(same(buf), tuple)  # bytes always decode: an error is a field, never an exception


@settings(max_examples=400, deadline=None)
@given(command_sets(), st.sampled_from(sorted(BUFFERS)))
def test_every_buffer_kind_decodes_like_its_bytes(buf, kind):
    obj = BUFFERS[kind](buf)
    assert same(obj) == same(buf)


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=12), command_sets(), st.binary(max_size=12), st.sampled_from(["bytes", "bytearray", "memoryview",
                                                                                         "strided-view"]))
def test_offset_and_length_decode_the_slice_in_place(head, buf, tail, kind):
    whole = BUFFERS[kind](head + buf + tail)
    expect = same(buf)
    assert same(whole, len(head), len(buf)) == expect
    assert same(whole, offset=len(head), length=len(buf)) == expect
    assert same(whole, len(head)) == same(buf + tail)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.one_of(st.integers(-3, 45), st.none(), st.just(2**70), st.just(-2**70), st.just(1.0),
                                          st.just("1"), st.just(True)),
       st.one_of(st.integers(-3, 45), st.none(), st.just(2**70), st.just(-2**70), st.just(2.0)))
def test_bad_offsets_and_lengths_fail_alike(buf, offset, length):
    same(buf, offset, length)
    same(memoryview(buf), offset, length=length)


def test_argument_errors_fail_alike():
    for args, kw in [((), {}), ((b"",), {"buf": b""}), ((b"", 0, None, 1), {}), ((b"",), {"size": 1}),
                     (("text",), {}), ((12,), {}), (([1, 2],), {}), ((None,), {}), ((), {"buf": b"", "offset": 0})]:
        same(*args, **kw)
    with pytest.raises(TypeError):
        C_PARSE(b"", **{"offset": 0, "length": None, "x": 1})
    with pytest.raises(ValueError, match="offset outside the buffer"):
        C_PARSE(b"abc", 4)
    with pytest.raises(ValueError, match="length outside the buffer"):
        C_PARSE(bytearray(b"abc"), 1, 3)


# -- known command sets ----------------------------------------------------------------------------

def el(elem: int, value: bytes, group: int = 0) -> bytes:
    return _HDR(group, elem, len(value)) + value


def us(v: int) -> bytes:
    return struct.pack("<H", v)


EDGE_CASES = {
    "empty": b"",
    "header-only": el(0x0100, b"")[:8],
    "seven-bytes": b"\x00" * 7,
    "us-ok": el(0x0100, us(0x8030)),
    "ul-masked": el(0x0100, struct.pack("<I", 0xABCD8030)),
    "us-3-bytes": el(0x0100, b"\x01\x00\x00"),
    "us-0-bytes-then-good": el(0x0100, b"") + el(0x0100, us(1)),
    "good-then-bad-length": el(0x0100, us(1)) + el(0x0110, b"\x01"),
    "dup-text-last-wins": el(0x0100, us(1)) + el(0x0002, b"1.2 ") + el(0x0002, b"3.4\x00"),
    "text-only-padding": el(0x0100, us(1)) + el(0x0600, b" \x00 \x00"),
    "text-65-with-pad-at-64": el(0x0100, us(1)) + el(0x0002, b"1" * 63 + b" 2"),
    "text-non-ascii": el(0x0100, us(1)) + el(0x0600, b"AE\xc3\xa9\xff \x00"),
    "text-huge-declared": el(0x0100, us(1)) + _HDR(0, 0x0002, 0xFFFFFFFF) + b"1.2",
    "foreign-group": el(0x0100, us(1)) + el(0x0010, b"SMITH", group=8),
    "trailing-5": el(0x0100, us(1)) + b"\x00" * 5,
    "trailing-8-zeros": el(0x0100, us(1)) + b"\x00" * 8,
    "no-field": el(0x0110, us(1)),
    "no-field-and-bad": el(0x0110, us(1)) + b"\x01",
    "unknown-elements": el(0x0100, us(0x0FFF)) + el(0x1234, b"x" * 300) + el(0x0000, struct.pack("<I", 10)),
}


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_cases_decode_the_same(name):
    buf = EDGE_CASES[name]
    got = dict((n, v) for n, _, v in same(buf))
    if name == "ul-masked":
        assert got["command_field"] == 0x8030 and got["error"] is None
    if name == "text-65-with-pad-at-64":
        assert got["affected_sop_class"] == "1" * 63  # cut at 64, then the pad stripped
    if name == "text-non-ascii":
        assert got["move_destination"] == "AE\ufffd\ufffd\ufffd"
    if name == "text-only-padding":
        assert got["move_destination"] == ""
    if name in ("us-3-bytes", "good-then-bad-length", "text-huge-declared", "foreign-group", "trailing-5",
                "no-field-and-bad", "header-only", "seven-bytes"):
        assert got["error"] == "bad_command_element"
    if name == "trailing-8-zeros":  # that is element (0000,0000) of length 0: well formed
        assert got["error"] is None
    if name in ("empty", "no-field"):
        assert got["error"] == "no_command_field"


def command_bytes(msg_cls, prim):
    """(the implicit VR LE command set pynetdicom sends for ``prim``, pydicom's view of it)."""
    from tests.test_dicom_pdu import command_bytes as encoded

    msg = msg_cls()
    msg.primitive_to_message(prim)
    return encoded(msg_cls, prim), msg.command_set


MESSAGES = sorted(dimse_messages._COMMAND_SET_KEYWORDS)
SLOT_KEYWORDS = {
    "affected_sop_class": "AffectedSOPClassUID",
    "requested_sop_class": "RequestedSOPClassUID",
    "move_destination": "MoveDestination",
    "command_field": "CommandField",
    "message_id": "MessageID",
    "responded_id": "MessageIDBeingRespondedTo",
    "priority": "Priority",
    "dataset_type": "CommandDataSetType",
    "status": "Status",
    "remaining": "NumberOfRemainingSuboperations",
    "completed": "NumberOfCompletedSuboperations",
    "failed": "NumberOfFailedSuboperations",
    "warning": "NumberOfWarningSuboperations",
}
UIDS = st.from_regex(r"1\.2(\.[1-9][0-9]{0,5}){1,8}", fullmatch=True)  # at most 59 characters
AES = st.from_regex(r"[A-Z][A-Z0-9_]{0,15}", fullmatch=True)
U16 = st.integers(0, 0xFFFF)
VALUES = {
    "AffectedSOPClassUID": UIDS, "RequestedSOPClassUID": UIDS, "AffectedSOPInstanceUID": UIDS,
    "RequestedSOPInstanceUID": UIDS, "MessageID": U16, "MessageIDBeingRespondedTo": U16,
    "Priority": st.integers(0, 2), "Status": st.sampled_from([0, 0xFF00, 0xFF01, 0xB000, 0xA700, 0xC123, 0x0122, 0xFE00]),
    "MoveDestination": AES, "MoveOriginatorApplicationEntityTitle": AES, "MoveOriginatorMessageID": U16,
    "NumberOfRemainingSuboperations": U16, "NumberOfCompletedSuboperations": U16,
    "NumberOfFailedSuboperations": U16, "NumberOfWarningSuboperations": U16, "EventTypeID": U16,
    "ActionTypeID": U16, "ErrorID": U16, "ErrorComment": st.from_regex(r"[a-z ]{1,60}", fullmatch=True),
}
DATASET_FIELD = {"C_STORE_RQ": "DataSet", "C_FIND_RQ": "Identifier", "C_FIND_RSP": "Identifier",
                 "C_MOVE_RQ": "Identifier", "C_GET_RQ": "Identifier", "N_ACTION_RQ": "ActionInformation",
                 "N_CREATE_RQ": "AttributeList", "N_SET_RQ": "ModificationList", "N_GET_RSP": "AttributeList"}


@st.composite
def pynetdicom_command(draw):
    name = draw(st.sampled_from(MESSAGES)).replace("-", "_")
    prim = getattr(dimse_primitives, name.rsplit("_", 1)[0])()
    for kw in dimse_messages._COMMAND_SET_KEYWORDS[name.replace("_", "-")]:
        if kw in VALUES and hasattr(prim, kw) and draw(st.integers(0, 5)):
            setattr(prim, kw, draw(VALUES[kw]))
    if name in DATASET_FIELD and draw(st.booleans()):
        setattr(prim, DATASET_FIELD[name], io.BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "))
    return name, *command_bytes(getattr(dimse_messages, name), prim)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pynetdicom_command())
def test_pynetdicom_command_sets_decode_the_same_and_right(case):
    name, buf, cs = case
    got = dict((n, v) for n, _, v in same(buf))
    assert got["error"] is None, name
    for slot, kw in SLOT_KEYWORDS.items():  # what pydicom holds for the command set pynetdicom wrote
        want = cs.get(kw)
        assert got[slot] == (None if want is None else str(want) if slot in FIELDS[:3] else int(want)), (name, slot)
    assert C_PARSE(buf).key == name.replace("_", "-")


def test_the_issue_examples_decode_the_same():
    # C-STORE-RQ, C-FIND-RSP, C-MOVE-RQ with MoveDestination, N-ACTION-RQ, fixed values.
    store = dimse_primitives.C_STORE()
    store.MessageID, store.AffectedSOPClassUID, store.AffectedSOPInstanceUID = 9, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5"
    store.Priority, store.DataSet = 2, io.BytesIO(b"x")
    find = dimse_primitives.C_FIND()
    find.MessageIDBeingRespondedTo, find.AffectedSOPClassUID, find.Status = 4, "1.2.840.10008.5.1.4.1.2.2.1", 0xFF00
    find.Identifier = io.BytesIO(b"x")
    move = dimse_primitives.C_MOVE()
    move.MessageID, move.AffectedSOPClassUID, move.MoveDestination, move.Priority = 11, "1.2.840.10008.5.1.4.1.2.2.2", "DEST", 0
    move.Identifier = io.BytesIO(b"x")
    action = dimse_primitives.N_ACTION()
    action.MessageID, action.RequestedSOPClassUID, action.RequestedSOPInstanceUID, action.ActionTypeID = 2, "1.2.840.10008.1.20.1", \
        "1.2.840.10008.1.20.1.1", 1
    cases = [(dimse_messages.C_STORE_RQ, store, ("C-STORE-RQ", "message_id", 9)),
             (dimse_messages.C_FIND_RSP, find, ("C-FIND-RSP", "status", 0xFF00)),
             (dimse_messages.C_MOVE_RQ, move, ("C-MOVE-RQ", "move_destination", "DEST")),
             (dimse_messages.N_ACTION_RQ, action, ("N-ACTION-RQ", "requested_sop_class", "1.2.840.10008.1.20.1"))]
    for cls, prim, (key, field, value) in cases:
        buf, _ = command_bytes(cls, prim)
        same(buf)
        cmd = C_PARSE(buf)
        assert (cmd.key, getattr(cmd, field), cmd.error) == (key, value, None)
        for cut in range(len(buf)):  # every truncation, too
            same(buf, 0, cut)


# -- wiring ----------------------------------------------------------------------------------------

def test_compiled_decoder_is_the_one_in_use():
    assert dimse.COMPILED == _fast.COMPILED
    assert (dimse.parse_command is C_PARSE) == _fast.COMPILED
    if not _fast.COMPILED:
        assert dimse.parse_command is _parse_command_py


def test_command_type_refuses_what_it_cannot_fill():
    names, elements = Command.__slots__, dimse._ELEMENTS
    with pytest.raises(ValueError):
        _fastpath.command_type(Command, names, elements[:-1] + (0x1024,), dimse._N_TEXT)
    with pytest.raises(ValueError):
        _fastpath.command_type(Command, names, elements, dimse._N_TEXT + 1)
    with pytest.raises(TypeError):
        _fastpath.command_type(Command, names[:-1] + ("names",), elements, dimse._N_TEXT)  # a method
    with pytest.raises(TypeError):
        _fastpath.command_type(type("Sub", (Command,), {"__slots__": ()}), names, elements, dimse._N_TEXT)
    with pytest.raises(TypeError):
        _fastpath.command_type(int, names, elements, dimse._N_TEXT)
    with pytest.raises(TypeError):
        _fastpath.command_type(Command, names[:1] * 14, elements, dimse._N_TEXT)  # one slot named twice
    # a refusal changes nothing
    assert C_PARSE(el(0x0100, us(0x30))).key == "C-ECHO-RQ"


def test_fallback_in_a_subprocess_writes_the_same_events(tmp_path):
    """RADSENSOR_FAST=0 selects the reference decoder; the event logs do not change by a byte."""
    cap = ROOT / "pcaps" / "attack-day.pcap"
    code = ("import runpy, sys; from sensor.protocols.dicom import dimse; "
            "sys.stderr.write('PARSE=%s\\n' % getattr(dimse.parse_command, '__qualname__', '')); "
            "sys.argv = ['radsensor'] + sys.argv[1:]; runpy.run_module('sensor.cli', run_name='__main__')")
    logs = {}
    for fast in ("1", "0"):
        out = tmp_path / fast
        env = dict(os.environ, RADSENSOR_FAST=fast)
        res = subprocess.run([sys.executable, "-c", code, "decode", str(cap), "--no-progress", "--logs", str(out)],
                             env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert res.returncode == 0, res.stderr
        assert f"PARSE={'parse_command' if fast == '1' else '_parse_command_py'}" in res.stderr
        logs[fast] = {p.name: p.read_bytes() for p in sorted(out.glob("*.jsonl"))}
    assert logs["1"] == logs["0"]
    assert len(logs["1"]["dimse.jsonl"].splitlines()) > 1000
    assert b"bad_command_element" in logs["1"]["weird.jsonl"]  # the error path is on the wire too


# -- robustness ------------------------------------------------------------------------------------

def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _random_pool(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    pool = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randrange(12)):
            value = rng.choice([us(rng.randrange(65536)), struct.pack("<I", rng.getrandbits(32)),
                                rng.randbytes(rng.randrange(80)), b"1.2.840.10008.5.1.4.1.1.2\x00", b"AE\xff  "])
            group = 0 if rng.random() < 0.95 else rng.randrange(65536)
            declared = len(value) if rng.random() < 0.95 else rng.getrandbits(32)
            parts.append(_HDR(group, rng.choice(dimse._ELEMENTS + (0x1000, rng.randrange(65536))), declared) + value)
        pool.append(b"".join(parts) + rng.randbytes(rng.choice([0, 0, 0, rng.randrange(10)])))
    return pool


def test_a_million_hostile_calls_leak_nothing():
    pool = _random_pool(4096, 6)
    kinds = [Command, None, "bad_command_element", "no_command_field"]
    assert {C_PARSE(b).error for b in pool} == {None, "bad_command_element", "no_command_field"}
    parse = C_PARSE
    views = [memoryview(b) for b in pool[:512]]
    for b in pool * 20:  # warm up the allocator
        parse(b)
    gc.collect()
    refs0 = [sys.getrefcount(k) for k in kinds]
    rss0 = _rss()
    for _ in range(230):  # 230 * 4096 ≈ 0.94 M calls on bytes
        for b in pool:
            parse(b)
    for v in views * 100:  # and on buffers, with offsets (51,200)
        parse(v, 1 if len(v) else 0)
    for v in views * 20:  # and failing (10,240)
        try:
            parse(v, len(v) + 1)
        except ValueError:
            pass
    gc.collect()
    grown = _rss() - rss0
    refs1 = [sys.getrefcount(k) for k in kinds]
    assert grown < 4 << 20, grown
    assert all(abs(a - b) < 100 for a, b in zip(refs0, refs1)), (refs0, refs1)
