"""Turn recorded exchanges into per-session item lists ``(direction, delay_us, payload)``.

A library of real exchanges is recorded once per run (keyed by fingerprints, SOP class, image
size, result count...), then every scheduled session re-uses those bytes with in-place patches of
fixed-width fields only, so every length stays valid:

* A-ASSOCIATE-RQ/AC: called and calling AE titles (16-byte fields at offsets 10 and 26).
* DIMSE command sets: Message ID (0000,0110), Message ID Being Responded To (0000,0120),
  sub-operation counts (0000,1020-1023), Affected SOP Instance UID (fixed-width UIDs).
* The first P-DATA-TF of each data set: study/series/instance UIDs, patient name/ID and
  accession number (all generated fixed-width, see dicomdata).
* HL7: MSH-7 timestamp and MSH-10 control ID (fixed width).

Pixel data PDUs after the first are shared bytes objects, never copied per image.

Example::

    >>> lib = Library(site, recorder, image_scale=0.01)
    >>> items, rec = lib.store(site.by_name["CT1"], site.by_name["PACS"], study=12, patient=3, n=40, rng=rng)
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from dataclasses import dataclass

from pynetdicom.sop_class import (
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from . import dicomdata as dd
from .recorder import Conn, Recorder
from .site import MODALITY_CODE, Device, Site

_CMD_FIELD = b"\x00\x00\x00\x01\x02\x00\x00\x00"
_MSG_ID = b"\x00\x00\x10\x01\x02\x00\x00\x00"
_MSG_ID_RSP = b"\x00\x00\x20\x01\x02\x00\x00\x00"
_DS_TYPE = b"\x00\x00\x00\x08\x02\x00\x00\x00"
_SUBOPS = [b"\x00\x00" + bytes([0x20 + k, 0x10]) + b"\x02\x00\x00\x00" for k in range(4)]
_U16 = struct.Struct("<H")

COMMAND_NAMES = {
    0x0001: "C-STORE-RQ", 0x8001: "C-STORE-RSP", 0x0010: "C-GET-RQ", 0x8010: "C-GET-RSP",
    0x0020: "C-FIND-RQ", 0x8020: "C-FIND-RSP", 0x0021: "C-MOVE-RQ", 0x8021: "C-MOVE-RSP",
    0x0030: "C-ECHO-RQ", 0x8030: "C-ECHO-RSP", 0x0100: "N-EVENT-REPORT-RQ",
    0x8100: "N-EVENT-REPORT-RSP", 0x0130: "N-ACTION-RQ", 0x8130: "N-ACTION-RSP",
}


def command_of(pdu: bytes) -> int | None:
    """Command field of a P-DATA-TF carrying a command PDV, else None."""
    if pdu[0] != 4 or not (pdu[11] & 1):
        return None
    i = pdu.find(_CMD_FIELD, 12)
    return _U16.unpack_from(pdu, i + 8)[0] if i >= 0 else None


def ends_message(pdu: bytes) -> bool:
    """True when this P-DATA-TF completes a DIMSE message (last fragment of data, or bare command)."""
    if pdu[0] != 4:
        return True
    flags = pdu[11]
    if not flags & 2:
        return False
    if not flags & 1:
        return True
    i = pdu.find(_DS_TYPE, 12)
    return i >= 0 and _U16.unpack_from(pdu, i + 8)[0] == 0x0101


def count_dimse(conn_or_items) -> Counter:
    """DIMSE command counts in a PDU list (what tshark should see)."""
    c: Counter = Counter()
    for it in conn_or_items:
        pdu = it[-1]
        cmd = command_of(pdu)
        if cmd is not None and pdu[11] & 2:
            c[COMMAND_NAMES.get(cmd, hex(cmd))] += 1
    return c


def ae_field(ae: str) -> bytes:
    return ae.encode("ascii").ljust(16, b" ")


def patch_assoc(pdu: bytes, called: str, calling: str) -> bytes:
    b = bytearray(pdu)
    b[10:26] = ae_field(called)
    b[26:42] = ae_field(calling)
    return bytes(b)


def _set_u16(b: bytearray, tag: bytes, value: int) -> None:
    i = b.find(tag, 12)
    if i >= 0:
        _U16.pack_into(b, i + 8, value & 0xFFFF)


class _Patcher:
    """Offsets of the placeholder identifiers (study 1, series 1, instance 1, patient 1) in a PDU."""

    def __init__(self, pdu: bytes) -> None:
        self.pdu = pdu
        self.spots: list[tuple[int, str]] = []
        for kind, val in (("study", dd.study_uid(1)), ("series", dd.series_uid(1, 1)),
                          ("sop", dd.sop_uid(1, 1, 1)), ("pname", dd.patient_name(1)),
                          ("pid", dd.patient_id(1)), ("acc", dd.accession(1))):
            enc = val.encode()
            start = 0
            while (i := pdu.find(enc, start)) >= 0:
                self.spots.append((i, kind))
                start = i + len(enc)

    def make(self, study: int, instance: int, patient: int, msg_id: int | None = None,
             rsp_id: int | None = None) -> bytes:
        if not self.spots and msg_id is None and rsp_id is None:
            return self.pdu
        b = bytearray(self.pdu)
        for i, kind in self.spots:
            if kind == "study":
                v = dd.study_uid(study)
            elif kind == "series":
                v = dd.series_uid(study, 1)
            elif kind == "sop":
                v = dd.sop_uid(study, 1, instance)
            elif kind == "pname":
                v = dd.patient_name(patient)
            elif kind == "pid":
                v = dd.patient_id(patient)
            else:
                v = dd.accession(study)
            e = v.encode()
            b[i:i + len(e)] = e
        if msg_id is not None:
            _set_u16(b, _MSG_ID, msg_id)
        if rsp_id is not None:
            _set_u16(b, _MSG_ID_RSP, rsp_id)
        return bytes(b)


@dataclass
class StoreTemplate:
    rq: bytes
    ac: bytes
    cmd: _Patcher
    data0: _Patcher
    data_rest: list[bytes]
    rsp: _Patcher
    rel: list[tuple[int, bytes]]
    image_bytes: int


def _us(rng: random.Random, lo_ms: float, hi_ms: float) -> int:
    return int(rng.uniform(lo_ms, hi_ms) * 1000)


class Library:
    """Records exchanges on first use and composes sessions from them (cache per run)."""

    def __init__(self, site: Site, recorder: Recorder, image_scale: float) -> None:
        self.site = site
        self.rec = recorder
        self.scale = image_scale
        self._cache: dict[tuple, object] = {}
        self._pacs = site.one("pacs")

    def fp(self, dev: Device):
        return self.site.fp(dev)

    def image_bytes(self, dev: Device) -> int:
        # keep even and at least one row so the data set stays a valid image
        return max(64, int(dev.image_bytes * self.scale) // 64 * 64)

    # ---------------------------------------------------------------- generic
    def _get(self, key: tuple, make):
        v = self._cache.get(key)
        if v is None:
            v = make()
            self._cache[key] = v
        return v

    def generic(self, conn: Conn, calling: str, called: str, rng: random.Random,
                resp_ms: tuple[float, float] = (0.5, 4.0), gap_ms: tuple[float, float] = (0.05, 0.5)) -> list:
        """Assoc RQ/AC patched; a reply waits ``resp_ms``; a new message in the same direction ``gap_ms``."""
        items = []
        prev_dir = None
        prev_end = True
        for d, pdu in conn:
            if pdu[0] in (1, 2):
                pdu = patch_assoc(pdu, called, calling)
            if prev_dir is None:
                delay = 0
            elif d != prev_dir:
                delay = _us(rng, *resp_ms)
            else:
                delay = _us(rng, *gap_ms) if prev_end else 0
            items.append((d, delay, pdu))
            prev_dir = d
            prev_end = ends_message(pdu)
        return items

    # ---------------------------------------------------------------- C-STORE
    def store_template(self, scu: Device, scp: Device, role: str, nbytes: int) -> StoreTemplate:
        def make():
            ds = dd.image(role, nbytes, study=1, series=1, instance=1, patient=1, seed=nbytes)
            conn = self.rec.store(self.fp(scu), self.fp(scp), [ds])
            rq, ac = conn[0][1], conn[1][1]
            body = conn[2:-2]
            cmd = body[0][1]
            data = [p for d, p in body[1:] if d == 0]
            rsp = [p for d, p in body[1:] if d == 1][0]
            return StoreTemplate(rq, ac, _Patcher(cmd), _Patcher(data[0]), data[1:], _Patcher(rsp),
                                 conn[-2:], nbytes)
        return self._get(("store", self.fp(scu), self.fp(scp), role, nbytes), make)

    def store(self, scu: Device, scp: Device, role: str, nbytes: int, study: int, patient: int, n: int,
              rng: random.Random, calling: str | None = None, called: str | None = None,
              first_instance: int = 1, think_ms=(0.5, 6.0), proc_ms=(1.0, 12.0)) -> list:
        t = self.store_template(scu, scp, role, nbytes)
        calling = calling or scu.ae
        called = called or scp.ae
        items = [(0, 0, patch_assoc(t.rq, called, calling)), (1, _us(rng, 0.5, 3), patch_assoc(t.ac, called, calling))]
        rest = [(0, 0, p) for p in t.data_rest]
        for k in range(n):
            inst = first_instance + k
            mid = (k + 1) & 0xFFFF
            items.append((0, _us(rng, *think_ms), t.cmd.make(study, inst, patient, msg_id=mid)))
            items.append((0, 0, t.data0.make(study, inst, patient)))
            items.extend(rest)
            items.append((1, _us(rng, *proc_ms), t.rsp.make(study, inst, patient, rsp_id=mid)))
        items.append((0, _us(rng, 0.5, 5), t.rel[0][1]))
        items.append((1, _us(rng, 0.3, 2), t.rel[1][1]))
        return items

    # ---------------------------------------------------------------- simple exchanges
    def echo(self, scu: Device, scp: Device, rng: random.Random, calling: str | None = None) -> list:
        conn = self._get(("echo", self.fp(scu), self.fp(scp)), lambda: self.rec.echo(self.fp(scu), self.fp(scp)))
        return self.generic(conn, calling or scu.ae, scp.ae, rng)

    def reject(self, scu_fp, scp: Device, which: str, rng: random.Random, calling: str, called: str) -> list:
        conn = self._get(("rj", scu_fp, self.fp(scp), which), lambda: self.rec.reject(scu_fp, self.fp(scp), which))
        return self.generic(conn, calling, called, rng)

    def mwl(self, scu: Device, mwl: Device, n_items: int, rng: random.Random) -> list:
        code = MODALITY_CODE[scu.role]

        def make():
            res = [dd.mwl_item(1, 1, code) for _ in range(n_items)]
            return self.rec.find(self.fp(scu), self.fp(mwl), ModalityWorklistInformationFind,
                                 dd.mwl_query(code), res)
        conn = self._get(("mwl", self.fp(scu), self.fp(mwl), code, n_items), make)
        return self.generic(conn, scu.ae, mwl.ae, rng, resp_ms=(5, 60))

    def find(self, scu_fp, scp: Device, n_results: int, rng: random.Random, calling: str,
             level: str = "STUDY", wildcard: str | None = None) -> list:
        model = PatientRootQueryRetrieveInformationModelFind if level == "PATIENT" else \
            StudyRootQueryRetrieveInformationModelFind

        def make():
            res = [dd.study_result(1 + i, 1 + i, "ct", level) for i in range(n_results)]
            return self.rec.find(scu_fp, self.fp(scp), model, dd.study_query(1, level, wildcard), res)
        conn = self._get(("find", scu_fp, self.fp(scp), level, wildcard, n_results), make)
        return self.generic(conn, calling, scp.ae, rng, resp_ms=(3, 40), gap_ms=(0.1, 1.5))

    def commit(self, mod: Device, pacs: Device, n: int, rng: random.Random) -> tuple[list, list]:
        """Storage commitment: N-ACTION (modality->PACS) and N-EVENT-REPORT (PACS->modality)."""
        nb = min(512, 1 << max(0, (n - 1).bit_length()))  # bucketed reference count
        a = self._get(("nact", self.fp(mod), self.fp(pacs), mod.role, nb),
                      lambda: self.rec.commit_action(self.fp(mod), self.fp(pacs), dd.commitment(mod.role, 1, nb)))
        r = self._get(("nevr", self.fp(pacs), self.fp(mod), mod.role, nb),
                      lambda: self.rec.commit_report(self.fp(pacs), self.fp(mod), dd.commitment(mod.role, 1, nb)))
        return (self.generic(a, mod.ae, pacs.ae, rng, resp_ms=(2, 15)),
                self.generic(r, pacs.ae, mod.ae, rng, resp_ms=(2, 15)))

    # ---------------------------------------------------------------- retrieval
    def move(self, scu: Device, pacs: Device, dest_dev: Device, dest_ae: str, role: str, nbytes: int,
             study: int, patient: int, n: int, rng: random.Random, calling: str | None = None,
             dest_rate: int = 1_000_000_000, sub_offset: int = 10_000):
        """C-MOVE: (control items, sub-association items); the sub-association starts ``sub_offset`` µs
        after the control connection (the scheduler decides it, so both can be built lazily)."""
        def make():
            ds = [dd.image(role, 64, study=1, instance=1 + i) for i in range(2)]
            ctl, _ = self.rec.move(self.fp(scu), self.fp(pacs), self.fp(dest_dev), dest_ae,
                                   dd.retrieve_query(1), ds)
            return ctl
        ctl = self._get(("move", self.fp(scu), self.fp(pacs), self.fp(dest_dev), dest_ae, role), make)
        calling = calling or scu.ae
        sub = self.store(pacs, dest_dev, role, nbytes, study, patient, n, rng, calling=pacs.ae, called=dest_ae,
                         think_ms=(0.2, 2), proc_ms=(1, 8))
        per_image = (nbytes * 8_000_000 // dest_rate) + 6000
        rq = [p for d, p in ctl if d == 0 and p[0] == 4]
        rsp = [p for d, p in ctl if d == 1 and p[0] == 4]
        pending, final = rsp[0], rsp[-1]
        items = [(0, 0, patch_assoc(ctl[0][1], pacs.ae, calling)),
                 (1, _us(rng, 0.5, 3), patch_assoc(ctl[1][1], pacs.ae, calling))]
        items.append((0, _us(rng, 0.3, 2), rq[0]))
        items.extend((0, 0, p) for p in rq[1:])
        first = True
        for k in range(n):
            b = bytearray(pending)
            for tag, v in zip(_SUBOPS, (n - k - 1, k + 1, 0, 0)):
                _set_u16(b, tag, v)
            delay = (sub_offset + per_image + 8000) if first else per_image
            first = False
            items.append((1, delay, bytes(b)))
        b = bytearray(final)
        for tag, v in zip(_SUBOPS, (0, n, 0, 0)):
            _set_u16(b, tag, v)
        items.append((1, 20000, bytes(b)))
        items.append((0, _us(rng, 0.5, 5), ctl[-2][1]))
        items.append((1, _us(rng, 0.3, 2), ctl[-1][1]))
        return items, sub

    def get(self, scu: Device, pacs: Device, role: str, nbytes: int, study: int, patient: int, n: int,
            rng: random.Random) -> list:
        """C-GET: C-STORE sub-operations on the same association."""
        def make():
            ds = [dd.image(role, nbytes, study=1, instance=1, patient=1, seed=nbytes)]
            return self.rec.get(self.fp(scu), self.fp(pacs), dd.retrieve_query(1), ds)
        conn = self._get(("get", self.fp(scu), self.fp(pacs), role, nbytes), make)
        body = conn[2:-2]
        get_rq = [p for d, p in body if d == 0 and command_of(p) != 0x8001 and p[0] == 4]
        # per-image unit: store cmd, data PDUs (server); store rsp (client); pending (server)
        i_store = next(i for i, (d, p) in enumerate(body) if command_of(p) == 0x0001)
        i_rsp = next(i for i, (d, p) in enumerate(body) if command_of(p) == 0x8001)
        store_cmd = _Patcher(body[i_store][1])
        data = [p for _, p in body[i_store + 1:i_rsp]]
        data0, rest = _Patcher(data[0]), data[1:]
        store_rsp = _Patcher(body[i_rsp][1])
        gets = [p for d, p in body[i_rsp + 1:] if command_of(p) == 0x8010]
        pending, final = gets[0], gets[-1]
        items = [(0, 0, patch_assoc(conn[0][1], pacs.ae, scu.ae)),
                 (1, _us(rng, 0.5, 3), patch_assoc(conn[1][1], pacs.ae, scu.ae))]
        items.append((0, _us(rng, 0.3, 2), get_rq[0]))
        items.extend((0, 0, p) for p in get_rq[1:])
        restitems = [(1, 0, p) for p in rest]
        for k in range(n):
            inst = k + 1
            mid = (k + 1) & 0xFFFF
            if k:
                b = bytearray(pending)
                for tag, v in zip(_SUBOPS, (n - k, k, 0, 0)):
                    _set_u16(b, tag, v)
                items.append((1, _us(rng, 0.2, 1), bytes(b)))
                items.append((1, _us(rng, 0.1, 1), store_cmd.make(study, inst, patient, msg_id=mid)))
            else:
                items.append((1, _us(rng, 5, 30), store_cmd.make(study, inst, patient, msg_id=mid)))
            items.append((1, 0, data0.make(study, inst, patient)))
            items.extend(restitems)
            items.append((0, _us(rng, 1, 8), store_rsp.make(study, inst, patient, rsp_id=mid)))
        b = bytearray(pending)
        for tag, v in zip(_SUBOPS, (0, n, 0, 0)):
            _set_u16(b, tag, v)
        items.append((1, _us(rng, 0.2, 1), bytes(b)))
        b = bytearray(final)
        for tag, v in zip(_SUBOPS, (0, n, 0, 0)):
            _set_u16(b, tag, v)
        items.append((1, _us(rng, 0.2, 1), bytes(b)))
        items.append((0, _us(rng, 0.5, 5), conn[-2][1]))
        items.append((1, _us(rng, 0.3, 2), conn[-1][1]))
        return items
