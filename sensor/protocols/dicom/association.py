"""A-ASSOCIATE-RQ/-AC/-RJ and A-ABORT bodies (PS3.8 §9.3.2-9.3.4, §9.3.8, Annex D) → plain data.

Bodies are the bytes after the 6-byte PDU header. Parsing never raises: problems are returned
as error names (``item_overrun``, ``bad_item``...) for the caller to count. The user-identity
primary/secondary fields may be a cleartext password: only the identity *type* is read.

Example::

    >>> body = bytes(2) + b"\\x00\\x00" + b"PACS".ljust(16) + b"MODALITY".ljust(16) + bytes(32)
    >>> info = parse_associate(b"\\x00\\x01" + body[2:], is_ac=False)
    >>> info.called_ae, info.calling_ae, info.errors
    ('PACS', 'MODALITY', [])
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sensor.protocols.dicom.pdu import ASSOC_FIXED_LEN, U16, U32, iter_items

MAX_UID_LEN = 64
MAX_VERSION_NAME_LEN = 16

# Item types (PS3.8 Table 9-12 ff., Annex D)
ITEM_APP_CONTEXT = 0x10
ITEM_PCTX_RQ = 0x20
ITEM_PCTX_AC = 0x21
ITEM_ABSTRACT = 0x30
ITEM_TRANSFER = 0x40
ITEM_USER_INFO = 0x50
SUB_MAX_LENGTH = 0x51
SUB_IMPL_UID = 0x52
SUB_ASYNC_OPS = 0x53
SUB_ROLE = 0x54
SUB_IMPL_VERSION = 0x55
SUB_USER_IDENTITY_RQ = 0x58


# Identifier fields travel on to logs, syslog and SIEM parsers: a fuzzed PDU must not smuggle
# control characters, escapes or non-ASCII bytes into them. Anything outside printable ASCII
# becomes "?" (PS3.5 forbids control characters in AE, UI and SH values anyway).
_PRINTABLE = bytes(b if 0x20 <= b < 0x7F else 0x3F for b in range(256))


def text(raw: bytes | memoryview, limit: int) -> str:
    """An identifier field (UID, AE title, version name): printable ASCII, padding stripped, bounded."""
    return bytes(raw[:limit]).rstrip(b" \x00").translate(_PRINTABLE).decode("ascii")


def ae_title(raw: bytes | memoryview) -> str:
    """AE title: leading/trailing spaces are insignificant (PS3.5 AE); non-printables become '?'."""
    return bytes(raw).strip(b" \x00").translate(_PRINTABLE).decode("ascii")


@dataclass(slots=True)
class ContextItem:
    id: int
    abstract_syntax: str | None = None
    transfer_syntaxes: list[str] = field(default_factory=list)
    result: int | None = None  # AC only


@dataclass(slots=True)
class AssociateInfo:
    """Decoded A-ASSOCIATE-RQ or -AC. Built once per association: not a hot path."""

    called_ae: str | None = None
    calling_ae: str | None = None
    version: int | None = None
    application_context: str | None = None
    contexts: list[ContextItem] = field(default_factory=list)
    max_pdu: int | None = None
    impl_uid: str | None = None
    impl_version: str | None = None
    async_ops: tuple[int, int] | None = None
    roles: list[tuple[str, bool, bool]] = field(default_factory=list)
    user_identity_type: int | None = None
    errors: list[str] = field(default_factory=list)


def parse_associate(body: bytes, is_ac: bool) -> AssociateInfo:
    """Decode an A-ASSOCIATE-RQ (``is_ac`` False) or -AC body. Never raises."""
    info = AssociateInfo()
    end = len(body)
    if end < ASSOC_FIXED_LEN:
        info.errors.append("short_associate")
        return info
    info.version = U16.unpack_from(body, 0)[0]
    info.called_ae = ae_title(body[4:20])
    info.calling_ae = ae_title(body[20:36])
    for itype, off, ilen in iter_items(body, ASSOC_FIXED_LEN, end):
        if itype == ITEM_APP_CONTEXT:
            info.application_context = text(body[off : off + ilen], MAX_UID_LEN)
        elif itype == ITEM_PCTX_RQ and not is_ac or itype == ITEM_PCTX_AC and is_ac:
            _presentation_context(body, off, ilen, is_ac, info)
        elif itype == ITEM_USER_INFO:
            _user_info(body, off, off + ilen, info)
        elif itype == -1:
            info.errors.append("item_overrun")
        else:
            info.errors.append("unexpected_item")
    return info


def _presentation_context(body: bytes, off: int, ilen: int, is_ac: bool, info: AssociateInfo) -> None:
    if ilen < 4:
        info.errors.append("bad_item")
        return
    ctx = ContextItem(body[off])
    if is_ac:
        ctx.result = body[off + 2]
    for stype, soff, slen in iter_items(body, off + 4, off + ilen):
        if stype == ITEM_ABSTRACT and not is_ac:
            ctx.abstract_syntax = text(body[soff : soff + slen], MAX_UID_LEN)
        elif stype == ITEM_TRANSFER:
            ctx.transfer_syntaxes.append(text(body[soff : soff + slen], MAX_UID_LEN))
        elif stype == -1:
            info.errors.append("item_overrun")
        else:
            info.errors.append("unexpected_item")
    info.contexts.append(ctx)


def _user_info(body: bytes, off: int, end: int, info: AssociateInfo) -> None:
    for stype, soff, slen in iter_items(body, off, end):
        if stype == SUB_MAX_LENGTH:
            if slen == 4:
                info.max_pdu = U32.unpack_from(body, soff)[0]
            else:
                info.errors.append("bad_item")
        elif stype == SUB_IMPL_UID:
            info.impl_uid = text(body[soff : soff + slen], MAX_UID_LEN)
        elif stype == SUB_IMPL_VERSION:
            info.impl_version = text(body[soff : soff + slen], MAX_VERSION_NAME_LEN)
        elif stype == SUB_ASYNC_OPS:
            if slen == 4:
                info.async_ops = (U16.unpack_from(body, soff)[0], U16.unpack_from(body, soff + 2)[0])
            else:
                info.errors.append("bad_item")
        elif stype == SUB_ROLE:
            # UID length(2) UID SCU-role(1) SCP-role(1)
            ulen = U16.unpack_from(body, soff)[0] if slen >= 2 else -1
            if ulen < 0 or 2 + ulen + 2 != slen:
                info.errors.append("bad_item")
                continue
            uid = text(body[soff + 2 : soff + 2 + ulen], MAX_UID_LEN)
            info.roles.append((uid, body[soff + 2 + ulen] == 1, body[soff + 3 + ulen] == 1))
        elif stype == SUB_USER_IDENTITY_RQ:
            # type(1) response-requested(1) primary-length(2) primary... : read the type only.
            if slen >= 1:
                info.user_identity_type = body[soff]
            else:
                info.errors.append("bad_item")
        elif stype == -1:
            info.errors.append("item_overrun")
        # 0x56/0x57 extended negotiation and 0x59 identity response: nothing to keep.


def parse_reject(body: bytes) -> dict[str, int]:
    """A-ASSOCIATE-RJ body: reserved(1) result(1) source(1) reason/diag(1).

    >>> parse_reject(b"\\x00\\x01\\x01\\x07")
    {'result': 1, 'source': 1, 'reason': 7}
    """
    return {"result": body[1], "source": body[2], "reason": body[3]}


def parse_abort(body: bytes) -> dict[str, int]:
    """A-ABORT body: reserved(2) source(1) reason/diag(1).

    >>> parse_abort(b"\\x00\\x00\\x02\\x00")
    {'source': 2, 'reason': 0}
    """
    return {"source": body[2], "reason": body[3]}


REJECT_REASONS = {
    (1, 1): "no-reason-given",
    (1, 2): "application-context-name-not-supported",
    (1, 3): "calling-AE-title-not-recognized",
    (1, 7): "called-AE-title-not-recognized",
    (2, 1): "no-reason-given",
    (2, 2): "protocol-version-not-supported",
    (3, 1): "temporary-congestion",
    (3, 2): "local-limit-exceeded",
}
