"""DICOM upper layer + DIMSE stream analyzer: bytes → PDUs → command sets → events.

Per TCP direction a small state machine walks PDU headers and, inside P-DATA-TF, PDV headers.
Python runs once per PDU/PDV header and once per chunk, never per byte. Command fragments are
accumulated (they are small) and decoded when the last fragment arrives; data-set fragments are
skipped by length, except C-FIND/C-MOVE/C-GET request identifiers, which are copied (bounded) to
read the query level and which keys are wildcards. Malformed input is counted through
``ctx.weird("dicom.<reason>")`` and the direction resynchronises on the next plausible PDU header.

Example::

    >>> looks_like_dicom(b"\\x05\\x00\\x00\\x00\\x00\\x04\\x00\\x00\\x00\\x00", True)
    True
    >>> looks_like_dicom(b"GET / HTTP/1.1\\r\\n", True)
    False
"""

from __future__ import annotations

import dataclasses
import struct

from sensor.events import DicomAssociation, DimseMessage, PresentationContext
from sensor.protocols.base import FlowContext
from sensor.protocols.dicom import pdu as P
from sensor.protocols.dicom.association import AssociateInfo, parse_abort, parse_associate, parse_reject
from sensor.protocols.dicom.dimse import (
    IDENTIFIER_COMMANDS,
    KNOWN_NAMES,
    MAX_COMMAND_LEN,
    NO_DATASET,
    PENDING,
    Command,
    parse_command,
)
from sensor.protocols.dicom.identifiers import MAX_IDENTIFIER_LEN, is_explicit, scan_identifier

PDU_HEADER_UNPACK = P.PDU_HEADER.unpack_from
PDV_HEADER_UNPACK = P.PDV_HEADER.unpack_from
# A P-DATA-TF header directly followed by its first PDV header, decoded in one call: the common
# case on bulk transfers (one PDV per PDU), so Python walks 12 header bytes in one step.
PDATA_PDV_UNPACK = struct.Struct(">BBIIBB").unpack_from
PDU_NAMES = P.PDU_NAMES
P_DATA_TF = P.P_DATA_TF
P_DATA_NAME = PDU_NAMES[P_DATA_TF]
MIN_PDATA_LEN = P.MIN_PDATA_LEN
MAX_PDATA_LEN = P.MAX_PDATA_LEN
_UNKNOWN_NAMES = ("UNKNOWN", "UNKNOWN-RQ", False)  # a Command without command field (never counted)
_NO_SUB_OPS = (None, None, None, None)

# Status value → its key "0x0000", made once per value. Statuses are 16-bit, but hostile input
# must not grow a table: past the first few values, keys are made on each use and not kept.
_STATUS_KEYS: dict[int, str] = {}
_MAX_STATUS_KEYS = 256


def _status_key(status: int) -> str:
    skey = "0x%04X" % status
    if len(_STATUS_KEYS) < _MAX_STATUS_KEYS:
        _STATUS_KEYS[status] = skey
    return skey


# _emit_msg builds DimseMessage (once per DIMSE message) with positional arguments: CPython 3.11
# compiles a call with 20 keyword arguments into building a dict first (CALL_FUNCTION_EX), which
# costs ~0.7 us per event. The positional order is this one, checked against the record at import.
_DIMSE_FIELDS = (
    "ts", "ts_response", "client", "server", "calling_ae", "called_ae", "command", "requested_by",
    "sop_class", "message_id", "priority", "move_destination", "status", "pending", "latency",
    "dataset_bytes", "response_dataset_bytes", "query_level", "wildcard_keys", "sub_ops",
)  # fmt: skip
if tuple(f.name for f in dataclasses.fields(DimseMessage)) != _DIMSE_FIELDS:
    raise ImportError("sensor.events.DimseMessage fields changed: update _DIMSE_FIELDS and _emit_msg")

# Largest non-P-DATA PDU body we copy; bigger ones are counted and skipped.
MAX_BODY = 1 << 17
# Outstanding requests per association; beyond this the oldest is emitted unanswered.
MAX_PENDING = 4096

# Direction states
S_HDR, S_BODY, S_SKIP, S_PDV_HDR, S_PDV_CMD, S_PDV_DATA, S_RESYNC = range(7)


def looks_like_dicom(first: bytes, from_client: bool) -> bool | None:
    """Does a direction's first payload start with a DICOM PDU? None = need more bytes.

    Accepts A-ASSOCIATE-RQ (and -AC/-RJ) headers, or for captures that start mid-association a
    P-DATA-TF whose first PDV header checks out, or an A-RELEASE/A-ABORT of exact length.

    >>> looks_like_dicom(b"\\x04\\x00\\x00\\x00\\x00\\x0c\\x00\\x00\\x00\\x08\\x01\\x03", False)
    True
    >>> looks_like_dicom(b"\\x16\\x03\\x01\\x02\\x00\\x01", True)
    False
    """
    try:
        n = len(first)
        if n == 0:
            return None
        t = first[0]
        if t not in PDU_NAMES or (n > 1 and first[1] != 0):
            return False
        if n < P.PDU_HEADER_LEN:
            return None
        _, r, length = PDU_HEADER_UNPACK(first, 0)
        if t in (P.A_ASSOCIATE_RQ, P.A_ASSOCIATE_AC):
            if not P.ASSOC_FIXED_LEN <= length <= P.MAX_ASSOC_LEN:
                return False
        elif t == P_DATA_TF:
            if not P.MIN_PDATA_LEN <= length <= P.MAX_PDATA_LEN:
                return False
        elif length != 4:
            return False
        verdict = P.check_candidate(first, 0)
        if verdict == P.NEED_MORE:
            # A P-DATA candidate whose 2nd PDV header is far away: the first header decided it.
            if t == P_DATA_TF and n >= 12:
                return True
            return None
        return verdict == P.FOUND
    except Exception:  # noqa: BLE001 - never let a probe raise into the flow layer
        return False


class _Msg:
    """An outstanding DIMSE request, completed by its final response."""

    __slots__ = (
        "command",
        "ds",
        "message_id",
        "move_destination",
        "pending",
        "priority",
        "query_level",
        "requested_by",
        "rsp_ds",
        "sop_class",
        "status",
        "sub_ops",
        "ts",
        "ts_response",
        "wildcard_keys",
    )

    def __init__(self, ts: float, cmd: Command, requested_by: str, name: str) -> None:
        self.ts = ts
        self.ts_response: float | None = None
        self.command = name
        self.requested_by = requested_by
        self.sop_class = cmd.affected_sop_class or cmd.requested_sop_class  # cmd.sop_class, inlined
        self.message_id = cmd.message_id
        self.priority = cmd.priority
        self.move_destination = cmd.move_destination
        self.status: str | None = None
        self.pending = 0
        self.ds = 0
        self.rsp_ds = 0
        self.query_level: str | None = None
        self.wildcard_keys: tuple[str, ...] = ()
        self.sub_ops: tuple[int, int, int, int] | None = None


class _Assoc:
    """Everything known about the current association; becomes a DicomAssociation at its end."""

    __slots__ = (
        "abort",
        "ac",
        "bytes",
        "ctx_ts",
        "dataset_bytes",
        "decode_errors",
        "dimse",
        "mid_stream",
        "move_destinations",
        "pdu_counts",
        "pdv_fragments",
        "pending",
        "query_levels",
        "reject",
        "released",
        "req_from_client",
        "role_known",
        "rq",
        "sop_classes",
        "statuses",
        "ts_end",
        "ts_start",
        "wildcard_keys",
    )

    def __init__(self, ts: float, req_from_client: bool, mid_stream: bool, errors: int) -> None:
        self.ts_start = ts
        self.ts_end = ts
        self.req_from_client = req_from_client
        self.rq: AssociateInfo | None = None
        self.ac: AssociateInfo | None = None
        self.reject: dict | None = None
        self.abort: dict | None = None
        self.released = False
        self.mid_stream = mid_stream
        # Without the A-ASSOCIATE exchange, the first DIMSE command tells who the requestor is.
        self.role_known = not mid_stream
        self.pdu_counts: dict[str, int] = {}
        self.dimse: dict[str, int] = {}
        self.statuses: dict[str, int] = {}
        self.sop_classes: dict[str, int] = {}
        self.move_destinations: dict[str, int] = {}
        self.query_levels: dict[str, int] = {}
        self.wildcard_keys: dict[str, int] = {}
        self.bytes = [0, 0]  # by sender, indexed like _Dir.index: [server's, client's]
        self.dataset_bytes = 0
        self.pdv_fragments = 0
        self.decode_errors = errors
        self.pending: dict[tuple[bool, int | None], _Msg] = {}
        self.ctx_ts: dict[int, str] = {}  # context id → accepted transfer syntax


class _Dir:
    """Decoder state of one TCP direction."""

    __slots__ = (
        "body",
        "cmd",
        "cmd_over",
        "from_client",
        "hbuf",
        "ident",
        "index",
        "msg",
        "msg_final",
        "msg_rsp",
        "pdu_type",
        "pdv_cmd",
        "pdv_ctx",
        "pdv_last",
        "pdv_left",
        "quiet",
        "rbuf",
        "remaining",
        "skipped",
        "state",
    )

    def __init__(self, from_client: bool, mid_stream: bool) -> None:
        self.from_client = from_client
        self.index = 1 if from_client else 0  # from_client as a list index (bools index slowly)
        self.hbuf = bytearray()  # partial 6-byte PDU/PDV header split across chunks
        self.pdu_type = 0
        self.remaining = 0  # bytes left in the current PDU body
        self.body: bytearray | None = None
        self.pdv_left = 0  # bytes left in the current PDV's data
        self.pdv_ctx = 0
        self.pdv_last = False
        self.pdv_cmd = False
        self.cmd: bytearray | None = None  # command fragments so far
        self.cmd_over = False
        self.ident: bytearray | None = None  # identifier being captured
        self.msg: _Msg | None = None  # message the following data set belongs to
        self.msg_rsp = False  # ... as a response data set
        self.msg_final = False  # ... and it is the final response: emit when the data set ends
        # Mid-stream: the first byte need not be a PDU boundary; find one quietly.
        self.state = S_RESYNC if mid_stream else S_HDR
        self.rbuf = bytearray()
        self.quiet = mid_stream
        self.skipped = 0


def _inc(d: dict, key: str, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


class DicomAnalyzer:
    """Stream analyzer for DICOM upper layer (PS3.8) and DIMSE (PS3.7). See sensor.protocols.base."""

    app = "dicom"

    def __init__(self, ctx: FlowContext) -> None:
        self.ctx = ctx
        self._dirs = (_Dir(False, ctx.mid_stream), _Dir(True, ctx.mid_stream))
        self._assoc: _Assoc | None = None
        self._ended_any = False
        self._orphan_errors = 0
        # Skip credit (base.py): opaque data-set bytes the flow layer may consume without calling
        # us, indexed by from_client. `_granted` remembers what we offered, to settle lazily.
        self.skip_credit = [0, 0]
        self._granted = [0, 0]

    # ---- public contract -----------------------------------------------------------------

    def data(self, from_client: bool, ts: float, chunk: memoryview) -> None:
        # Called once per PDU boundary on bulk traffic (~260k times on a busy capture): lists are
        # indexed by int (CPython indexes them by bool the slow way) and _grant is inlined.
        i = 1 if from_client else 0
        d = self._dirs[i]
        granted = self._granted
        try:
            if granted[i]:
                self._settle(d, i)
            if granted[1 - i]:
                # Bytes the flow layer consumed on the other direction came earlier in time: book
                # them before this chunk can end the association (an A-ABORT mid data set).
                self._settle(self._dirs[1 - i], 1 - i)
            self._feed(d, ts, chunk)
        except Exception:  # noqa: BLE001 - a bug must not take the sensor down: count, resync
            self._weird(ts, "internal")
            self._abandon(d, ts)
        # _grant, inlined
        c = d.pdv_left - 1 if d.state == S_PDV_DATA and d.ident is None else 0
        granted[i] = self.skip_credit[i] = c if c > 0 else 0

    def _settle(self, d: _Dir, from_client: int) -> None:
        """Account for the data-set bytes the flow layer consumed on our behalf."""
        used = self._granted[from_client] - self.skip_credit[from_client]
        self._granted[from_client] = self.skip_credit[from_client] = 0
        if used:
            d.pdv_left -= used
            self._count_dataset(d, used)

    def _grant(self, d: _Dir, from_client: bool) -> None:
        # Only plain data-set bytes are opaque; identifiers are looked into. Keep one byte back so
        # the PDV's end always passes through _feed.
        credit = d.pdv_left - 1 if d.state == S_PDV_DATA and d.ident is None else 0
        if credit < 0:
            credit = 0
        self._granted[from_client] = self.skip_credit[from_client] = credit

    def gap(self, from_client: bool, ts: float, length: int) -> None:
        d = self._dirs[from_client]
        try:
            if self._granted[from_client]:
                self._settle(d, from_client)
            self._weird(ts, "gap", "%d" % length)
            if d.state == S_PDV_DATA and length < d.pdv_left:
                # The gap lies inside a data-set fragment: skip it by arithmetic, no resync needed.
                d.pdv_left -= length
                self._count_dataset(d, length)
                if d.ident is not None:
                    d.ident = None
                    self._weird(ts, "identifier_gap")
            elif d.state == S_SKIP and length < d.remaining:
                d.remaining -= length
            else:
                self._abandon(d, ts)
        except Exception:  # noqa: BLE001 - never raise (base.py contract)
            self._weird(ts, "internal")
            self._abandon(d, ts)
        self._grant(d, from_client)

    def close(self, ts: float, reason: str) -> None:
        try:
            for fc in (False, True):
                if self._granted[fc]:
                    self._settle(self._dirs[fc], fc)
            for d in self._dirs:
                self._flush_dir_msg(d)
            if self._assoc is not None:
                self._end(ts, None)
        except Exception:  # noqa: BLE001 - never raise (base.py contract)
            self._weird(ts, "internal")
            self._assoc = None

    # ---- byte stream -----------------------------------------------------------------------

    def _feed(self, d: _Dir, ts: float, mv: memoryview) -> None:
        pos, n = 0, len(mv)
        # Loop and branch tests on the hot paths below are written so that their jumps are short:
        # CPython 3.11 only specialises an int compare followed by a jump without EXTENDED_ARG,
        # and a generic compare costs several times more. Hence `while True` + an early return
        # rather than `while pos < n` (whose exit jump spans the whole loop), the identifier
        # capture in its own method, and the P-DATA fast path's test as a chain of rejections.
        while True:
            if pos >= n:
                return
            st = d.state
            if st == S_PDV_DATA:
                left = d.pdv_left
                take = n - pos
                if left < take:
                    take = left
                if d.ident is not None:
                    self._capture(d, ts, mv[pos : pos + take])
                pos += take
                left -= take
                d.pdv_left = left
                # _count_dataset, inlined
                a = self._assoc
                if a is not None:
                    a.dataset_bytes += take
                msg = d.msg
                if msg is not None:
                    if d.msg_rsp:
                        msg.rsp_ds += take
                    else:
                        msg.ds += take
                if left == 0:
                    rem = d.remaining
                    if d.pdv_last or 0 < rem < 6:
                        self._pdv_end(d, ts)
                    else:  # a middle fragment ends: _pdv_end's state change only
                        d.state = S_HDR if rem == 0 else S_PDV_HDR
                continue
            if st == S_HDR and n - pos >= 12 and not d.hbuf:
                # Fast path: P-DATA-TF header + first PDV header, both sane (no weird to count),
                # in an association. Same effect as _pdu_header followed by _pdv_header.
                t, r, plen, vlen, ctx_id, control = PDATA_PDV_UNPACK(mv, pos)
                a = self._assoc
                if (
                    t != P_DATA_TF
                    or r != 0
                    or a is None
                    or plen < MIN_PDATA_LEN
                    or plen > MAX_PDATA_LEN
                    or vlen < 2
                    or vlen > plen - 4
                    or not ctx_id & 1
                    or control > 3
                ):
                    pass  # not the common case: the general header path below takes it
                else:
                    pos += 12
                    counts = a.pdu_counts
                    counts[P_DATA_NAME] = counts.get(P_DATA_NAME, 0) + 1
                    a.bytes[d.index] += 6 + plen
                    d.pdu_type = P_DATA_TF
                    rem = plen - 4 - vlen
                    left = vlen - 2
                    if control & 1:
                        if control == 3 and d.cmd is None and 0 < left <= n - pos and left <= MAX_COMMAND_LEN \
                                and (rem == 0 or rem >= 6):
                            # A whole one-fragment command set in this chunk: decode it from here.
                            a.pdv_fragments += 1
                            d.remaining = rem
                            d.pdv_left = 0
                            d.pdv_ctx = ctx_id
                            d.pdv_last = d.pdv_cmd = True
                            d.cmd_over = False
                            d.state = S_HDR if rem == 0 else S_PDV_HDR
                            start = pos
                            pos += left
                            self._command(d, ts, parse_command(mv, start, left))  # decoded in place, no copy
                            continue
                    elif left and d.cmd is None:
                        a.pdv_fragments += 1
                        d.remaining = rem
                        d.pdv_ctx = ctx_id
                        d.pdv_last = control == 2
                        d.pdv_cmd = False
                        d.state = S_PDV_DATA
                        take = n - pos
                        if left > take and d.ident is None:
                            # The chunk ends inside this data fragment (the usual case: the rest
                            # goes by skip credit). Count its bytes now, as the S_PDV_DATA branch would.
                            d.pdv_left = left - take
                            pos = n
                            a.dataset_bytes += take
                            msg = d.msg
                            if msg is not None:
                                if d.msg_rsp:
                                    msg.rsp_ds += take
                                else:
                                    msg.ds += take
                        else:
                            d.pdv_left = left
                        continue
                    d.remaining = plen
                    self._pdv_header(d, ts, vlen, ctx_id, control)
                    continue
            if st == S_HDR or st == S_PDV_HDR:
                hb = d.hbuf
                if not hb and n - pos >= 6:
                    src, at = mv, pos
                    pos += 6
                else:
                    take = min(6 - len(hb), n - pos)
                    hb += mv[pos : pos + take]
                    pos += take
                    if len(hb) < 6:
                        return
                    src, at = hb, 0
                if st == S_HDR:
                    t, r, length = PDU_HEADER_UNPACK(src, at)
                    bad = P.header_error(t, r, length)
                else:
                    length, t, r = PDV_HEADER_UNPACK(src, at)  # here t = context id, r = control
                    bad = None if 2 <= length <= d.remaining - 4 else "bad_pdv_length"
                if bad is not None:
                    d.rbuf = bytearray(src[at + 1 : at + 6])
                    hb.clear()
                    self._weird(ts, bad, "%d %d" % (t, length))
                    if st == S_HDR and t == P.A_ASSOCIATE_RQ and self._assoc is None and not self._ended_any \
                            and not self.ctx.mid_stream:
                        # A malformed A-ASSOCIATE-RQ opening the connection (a fuzzer's) still
                        # opens an association record: what the peer answers (an abort) belongs to it.
                        a = self._start(ts, d.from_client, False)
                        _inc(a.pdu_counts, PDU_NAMES[t])
                    self._abandon(d, ts, keep_rbuf=True)
                    continue
                hb.clear()
                if st == S_HDR:
                    self._pdu_header(d, ts, t, length)
                else:
                    self._pdv_header(d, ts, length, t, r)
            elif st == S_BODY:
                body = d.body
                take = min(d.remaining, n - pos)
                body += mv[pos : pos + take]  # type: ignore[operator]
                pos += take
                d.remaining -= take
                if d.remaining == 0:
                    d.state = S_HDR
                    d.body = None
                    self._pdu_body(d, ts, bytes(body))  # type: ignore[arg-type]
            elif st == S_PDV_CMD:
                take = min(d.pdv_left, n - pos)
                if not d.cmd_over:
                    if len(d.cmd) + take <= MAX_COMMAND_LEN:  # type: ignore[arg-type]
                        d.cmd += mv[pos : pos + take]  # type: ignore[operator]
                    else:
                        d.cmd_over = True
                        self._weird(ts, "oversize_command")
                pos += take
                d.pdv_left -= take
                if d.pdv_left == 0:
                    self._pdv_end(d, ts)
            elif st == S_SKIP:
                take = min(d.remaining, n - pos)
                pos += take
                d.remaining -= take
                if d.remaining == 0:
                    d.state = S_HDR
            else:  # S_RESYNC
                rb = d.rbuf
                rb += mv[pos:]
                pos = n
                verdict, i = P.scan_for_pdu(rb)
                if verdict == P.FOUND:
                    skipped = d.skipped + i
                    if not (d.quiet and skipped == 0):
                        self._weird(ts, "resync", "%d" % skipped)
                    d.quiet = False
                    d.skipped = 0
                    d.state = S_HDR
                    d.rbuf = bytearray()
                    # Continue the loop on the buffered bytes from the header on.
                    mv = memoryview(bytes(rb[i:]))
                    pos, n = 0, len(mv)
                else:
                    d.skipped += i
                    del rb[:i]

    def _capture(self, d: _Dir, ts: float, part: memoryview) -> None:
        """Append a fragment of a query/retrieve identifier, up to MAX_IDENTIFIER_LEN in all."""
        if len(d.ident) + len(part) <= MAX_IDENTIFIER_LEN:
            d.ident += part
        else:
            d.ident = None
            self._weird(ts, "oversize_identifier")

    def _pdu_header(self, d: _Dir, ts: float, t: int, length: int) -> None:
        a = self._assoc
        if a is None:
            if t != P.A_ASSOCIATE_RQ and self._ended_any:
                self._weird(ts, "pdu_after_end", "%d" % t)
                d.state, d.remaining = S_SKIP, length
                return
            a = self._start(ts, d.from_client, t != P.A_ASSOCIATE_RQ)
        elif t == P.A_ASSOCIATE_RQ:
            self._weird(ts, "associate_in_association")
            self._end(ts, None)
            a = self._start(ts, d.from_client, False)
        _inc(a.pdu_counts, PDU_NAMES[t])
        a.bytes[d.index] += 6 + length
        d.pdu_type = t
        d.remaining = length
        if t == P_DATA_TF:
            d.state = S_PDV_HDR
        elif length <= MAX_BODY:
            d.state = S_BODY
            d.body = bytearray()
        else:
            self._weird(ts, "oversize_pdu", "%d %d" % (t, length))
            d.state = S_SKIP

    def _pdv_header(self, d: _Dir, ts: float, length: int, ctx_id: int, control: int) -> None:
        a = self._assoc
        if not ctx_id & 1:
            self._weird(ts, "bad_pdv_context", "%d" % ctx_id)
        if control > 3:
            self._weird(ts, "bad_pdv_control", "%d" % control)
        if a is not None:
            a.pdv_fragments += 1
        d.remaining -= 4 + length
        d.pdv_left = length - 2
        d.pdv_ctx = ctx_id
        d.pdv_last = bool(control & 2)
        d.pdv_cmd = bool(control & 1)
        if d.pdv_cmd:
            if d.cmd is None:
                d.cmd = bytearray()
                d.cmd_over = False
            d.state = S_PDV_CMD
        else:
            if d.cmd is not None:
                # PS3.7 §9.3.1: a command's fragments all come before its data set.
                self._weird(ts, "dataset_inside_command")
                d.cmd = None
            d.state = S_PDV_DATA
        if d.pdv_left == 0:
            self._pdv_end(d, ts)

    def _pdv_end(self, d: _Dir, ts: float) -> None:
        rem = d.remaining
        if rem == 0:
            d.state = S_HDR
        elif rem >= 6:
            d.state = S_PDV_HDR
        else:  # too short for another PDV header: skip the PDU's tail
            self._weird(ts, "pdv_trailing_bytes", "%d" % rem)
            d.state = S_SKIP
        if not d.pdv_last:
            return
        if d.pdv_cmd:
            buf, over = d.cmd, d.cmd_over
            d.cmd = None
            if buf is not None and not over:
                self._command(d, ts, parse_command(buf))
            return
        # Last fragment of a data set.
        if d.ident is not None:
            self._identifier(d, ts, d.ident)
            d.ident = None
        if d.msg_final and d.msg is not None:
            self._emit_msg(d.msg)
        d.msg = None
        d.msg_final = False

    # ---- PDUs ----------------------------------------------------------------------------

    def _pdu_body(self, d: _Dir, ts: float, body: bytes) -> None:
        a = self._assoc
        if a is None:
            return
        t = d.pdu_type
        if t == P.A_ASSOCIATE_RQ or t == P.A_ASSOCIATE_AC:
            info = parse_associate(body, t == P.A_ASSOCIATE_AC)
            for err in info.errors:
                self._weird(ts, err)
            if info.version is not None and info.version != 1:
                self._weird(ts, "bad_protocol_version", "%d" % info.version)
            if t == P.A_ASSOCIATE_RQ:
                a.rq = info
            else:
                a.ac = info
                for c in info.contexts:
                    if c.result == 0 and c.transfer_syntaxes:
                        a.ctx_ts[c.id] = c.transfer_syntaxes[0]
        elif t == P.A_ASSOCIATE_RJ:
            a.reject = parse_reject(body)
            self._end(ts, "rejected")
        elif t == P.A_RELEASE_RP:
            a.released = True
            self._end(ts, "accepted")
        elif t == P.A_ABORT:
            a.abort = parse_abort(body)
            self._end(ts, "aborted")
        # A-RELEASE-RQ: counted in pdu_counts; the RP (or an abort, or the close) ends it.

    # ---- DIMSE ---------------------------------------------------------------------------

    def _command(self, d: _Dir, ts: float, cmd: Command) -> None:
        # Once per DIMSE message (~100k per busy capture): table lookups instead of Command's
        # properties (names(), sop_class), and a status key made once per status value.
        a = self._assoc
        if d.msg_final and d.msg is not None:  # _flush_dir_msg, inlined
            self._emit_msg(d.msg)
        d.msg, d.msg_final, d.ident = None, False, None
        if cmd.error is not None:
            self._weird(ts, cmd.error)
            if cmd.command_field is None:
                return
        if a is None:
            return
        if not a.role_known:
            self._infer_roles(a, d, cmd)
        name, key, is_response = KNOWN_NAMES.get(cmd.command_field) or cmd.names() or _UNKNOWN_NAMES
        counts = a.dimse
        counts[key] = counts.get(key, 0) + 1
        if is_response:
            status = cmd.status
            skey = None
            if status is not None:
                skey = _STATUS_KEYS.get(status)
                if skey is None:
                    skey = _status_key(status)
                counts = a.statuses
                counts[skey] = counts.get(skey, 0) + 1
            pkey = (not d.from_client, cmd.responded_id)
            pending = a.pending
            msg = pending.get(pkey)
            if msg is None:
                self._weird(ts, "unmatched_response", "%d" % (cmd.responded_id or 0))
                return
            if status in PENDING:
                msg.pending += 1
                final = False
            else:
                final = True
                msg.status = skey
                msg.ts_response = ts
                # cmd.sub_ops, inlined (it is asked for once per final response)
                ops = (cmd.remaining, cmd.completed, cmd.failed, cmd.warning)
                msg.sub_ops = None if ops == _NO_SUB_OPS else tuple(v or 0 for v in ops)
                del pending[pkey]
            if cmd.dataset_type != NO_DATASET:  # cmd.has_dataset
                d.msg, d.msg_rsp, d.msg_final = msg, True, final
            elif final:
                self._emit_msg(msg)
            return
        # Request
        if name == "C-CANCEL":
            return
        msg = _Msg(ts, cmd, "requestor" if d.from_client == a.req_from_client else "acceptor", name)
        sop_class = msg.sop_class
        if sop_class:
            counts = a.sop_classes
            counts[sop_class] = counts.get(sop_class, 0) + 1
        if msg.move_destination:
            _inc(a.move_destinations, msg.move_destination)
        pending = a.pending
        key = (d.from_client, msg.message_id)
        old = pending.pop(key, None)
        if old is not None:
            self._weird(ts, "duplicate_message_id", "%d" % (msg.message_id or 0))
            self._emit_msg(old)
        if len(pending) >= MAX_PENDING:
            self._weird(ts, "too_many_pending")
            self._emit_msg(pending.pop(next(iter(pending))))
        pending[key] = msg
        if cmd.dataset_type != NO_DATASET:  # cmd.has_dataset
            d.msg, d.msg_rsp, d.msg_final = msg, False, False
            if name in IDENTIFIER_COMMANDS:
                d.ident = bytearray()

    def _identifier(self, d: _Dir, ts: float, buf: bytearray) -> None:
        a, msg = self._assoc, d.msg
        if a is None or msg is None or d.msg_rsp:
            return
        explicit = is_explicit(a.ctx_ts.get(d.pdv_ctx), buf)
        if explicit is None:
            self._weird(ts, "identifier_unsupported_syntax")
            return
        level, keys, err = scan_identifier(buf, explicit)
        if err is not None:
            self._weird(ts, err)
        msg.query_level = level
        msg.wildcard_keys = keys
        if level:
            _inc(a.query_levels, level)
        for k in keys:
            _inc(a.wildcard_keys, k)

    def _count_dataset(self, d: _Dir, n: int) -> None:
        a = self._assoc
        if a is not None:
            a.dataset_bytes += n
        msg = d.msg
        if msg is not None:
            if d.msg_rsp:
                msg.rsp_ds += n
            else:
                msg.ds += n

    def _flush_dir_msg(self, d: _Dir) -> None:
        """A final response whose data set never completed: emit it now."""
        if d.msg_final and d.msg is not None:
            self._emit_msg(d.msg)
        d.msg, d.msg_final, d.ident = None, False, None

    def _infer_roles(self, a: _Assoc, d: _Dir, cmd: Command) -> None:
        """Mid-stream: requests come from the requestor, responses from the acceptor.

        C-STORE and N-EVENT-REPORT requests can also come from the acceptor (C-GET sub-operations,
        storage-commitment reports); they are taken as the requestor's, which is by far the usual
        case, until a command that only a requestor sends says otherwise.
        """
        weak = cmd.name in ("C-STORE", "N-EVENT-REPORT")
        sender_is_requestor = not cmd.is_response
        req_from_client = d.from_client if sender_is_requestor else not d.from_client
        a.req_from_client = req_from_client
        self.ctx.requestor_is_server = not req_from_client
        if not weak:
            a.role_known = True

    # ---- lifecycle -----------------------------------------------------------------------

    def _start(self, ts: float, from_client: bool, mid_stream: bool) -> _Assoc:
        # Mid-stream, the requestor is whoever the flow layer calls the client.
        req_from_client = from_client if not mid_stream else True
        a = _Assoc(ts, req_from_client, mid_stream, self._orphan_errors)
        self._orphan_errors = 0
        self._assoc = a
        return a

    def _endpoints(self, a: _Assoc):
        c, s = self.ctx.client, self.ctx.server
        return (c, s) if a.req_from_client else (s, c)

    def _emit_msg(self, m: _Msg) -> None:
        a = self._assoc
        if a is None:
            return
        ctx = self.ctx
        # _endpoints, inlined (once per DIMSE message)
        if a.req_from_client:
            client, server = ctx.client, ctx.server
        else:
            client, server = ctx.server, ctx.client
        src = a.rq or a.ac
        if src is not None:
            calling, called = src.calling_ae, src.called_ae
        else:
            calling = called = None
        ctx.emit(
            DimseMessage(  # positional, in _DIMSE_FIELDS order (see there why)
                m.ts,
                m.ts_response,
                client,
                server,
                calling,
                called,
                m.command,
                m.requested_by,
                m.sop_class,
                m.message_id,
                m.priority,
                m.move_destination,
                m.status,
                m.pending,
                None if m.ts_response is None else m.ts_response - m.ts,  # latency
                m.ds,  # dataset_bytes
                m.rsp_ds,  # response_dataset_bytes
                m.query_level,
                m.wildcard_keys,
                m.sub_ops,
            )
        )

    def _end(self, ts: float, result: str | None) -> None:
        """Emit unanswered requests and the association record; forget the association."""
        a = self._assoc
        if a is None:
            return
        for d in self._dirs:
            if d.msg is not None and d.msg_final:
                self._emit_msg(d.msg)
            d.msg, d.msg_final, d.ident = None, False, None
        for m in list(a.pending.values()):
            self._emit_msg(m)
        a.pending.clear()
        if result is None:
            if a.abort is not None:
                result = "aborted"
            elif a.released:
                result = "accepted"
            elif a.ac is not None or a.mid_stream:
                result = "incomplete"
            else:
                result = "no_response"
        rq, ac = a.rq, a.ac
        contexts = _contexts(rq, ac)
        client, server = self._endpoints(a)
        src = rq or ac
        self.ctx.emit(
            DicomAssociation(
                ts_start=a.ts_start,
                ts_end=ts,
                client=client,
                server=server,
                calling_ae=src.calling_ae if src else None,
                called_ae=src.called_ae if src else None,
                result=result,
                released=a.released,
                reject=a.reject,
                abort=a.abort,
                application_context=(rq.application_context if rq else None)
                or (ac.application_context if ac else None),
                abstract_syntaxes=tuple(
                    dict.fromkeys(c.abstract_syntax for c in contexts if c.abstract_syntax)
                ),
                transfer_syntaxes=tuple(
                    dict.fromkeys(t for c in (rq.contexts if rq else ()) for t in c.transfer_syntaxes)
                ),
                contexts=contexts,
                req_impl_uid=rq.impl_uid if rq else None,
                req_impl_version=rq.impl_version if rq else None,
                acc_impl_uid=ac.impl_uid if ac else None,
                acc_impl_version=ac.impl_version if ac else None,
                max_pdu=(rq.max_pdu if rq else None, ac.max_pdu if ac else None),
                user_identity_type=rq.user_identity_type if rq else None,
                roles=tuple(rq.roles) if rq else (),
                async_ops=rq.async_ops if rq else None,
                pdu_counts=a.pdu_counts,
                dimse=a.dimse,
                statuses=a.statuses,
                sop_classes=a.sop_classes,
                move_destinations=a.move_destinations,
                query_levels=a.query_levels,
                wildcard_keys=a.wildcard_keys,
                bytes=(a.bytes[1], a.bytes[0]) if a.req_from_client else (a.bytes[0], a.bytes[1]),
                dataset_bytes=a.dataset_bytes,
                pdv_fragments=a.pdv_fragments,
                decode_errors=a.decode_errors,
                mid_stream=a.mid_stream,
            )
        )
        self._assoc = None
        self._ended_any = True

    def _abandon(self, d: _Dir, ts: float, keep_rbuf: bool = False) -> None:
        """Drop partial PDU state of one direction and hunt for the next PDU header."""
        d.state = S_RESYNC
        d.hbuf.clear()
        d.body = None
        d.cmd = None
        d.remaining = d.pdv_left = 0
        d.skipped = 0
        d.quiet = False
        if not keep_rbuf:
            d.rbuf = bytearray()
        self._flush_dir_msg(d)

    def _weird(self, ts: float, name: str, detail: str = "") -> None:
        self.ctx.weird(ts, "dicom." + name, detail)
        if self._assoc is not None:
            self._assoc.decode_errors += 1
        else:
            self._orphan_errors += 1


def _contexts(rq: AssociateInfo | None, ac: AssociateInfo | None) -> tuple[PresentationContext, ...]:
    acc = {c.id: c for c in ac.contexts} if ac else {}
    out = []
    for c in rq.contexts if rq else ():
        r = acc.pop(c.id, None)
        out.append(
            PresentationContext(
                c.id,
                c.abstract_syntax,
                tuple(c.transfer_syntaxes),
                r.result if r else None,
                r.transfer_syntaxes[0] if r and r.result == 0 and r.transfer_syntaxes else None,
            )
        )
    for c in acc.values():  # AC without RQ (capture began after the RQ)
        out.append(
            PresentationContext(
                c.id,
                None,
                (),
                c.result,
                c.transfer_syntaxes[0] if c.result == 0 and c.transfer_syntaxes else None,
            )
        )
    return tuple(out)
