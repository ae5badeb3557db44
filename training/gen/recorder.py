"""Record real DICOM (pynetdicom/pydicom) and HL7 (hl7 package) exchanges over loopback.

A small recording relay sits between a real client and a real server, both bound to 127.0.0.1.
It keeps each direction's bytes in arrival order. Recordings are then re-framed into whole PDUs
(DICOM) or MLLP frames (HL7), because the way loopback TCP chops the stream varies from run to
run, but the PDU sequence of these request/response protocols does not: the result is a
deterministic list of ``(direction, pdu_bytes)`` with direction 0 = client to server.

Timing is *not* taken from the loopback run (it is not reproducible); ``compose`` assigns
seeded delays. Only these bytes are real.

Example::

    >>> with Recorder() as rec:
    ...     conn = rec.echo(fp_scu, fp_scp)
    >>> [d for d, _ in conn]
    [0, 1, 0, 1, 0, 1]
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from dataclasses import dataclass

import hl7
import hl7.client
import pynetdicom._config as _pcfg
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.sop_class import (
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from .site import Fingerprint

# PHI rule: pynetdicom must never log identifiers (these are synthetic, but the rule holds).
_pcfg.LOG_REQUEST_IDENTIFIERS = False
_pcfg.LOG_RESPONSE_IDENTIFIERS = False
logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)

STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
_PDU_HDR = struct.Struct(">BxI")
LOOPBACK = "127.0.0.1"
Conn = list[tuple[int, bytes]]


class _Tap:
    """One relayed TCP connection: chunks in arrival order, direction 0 = client->server."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, bytes]] = []
        self.done = threading.Event()
        self._open = 2


class Relay:
    """Accepts on an ephemeral loopback port and forwards every connection to ``target``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.taps: list[_Tap] = []
        self._lock = threading.Lock()
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                cli, _ = self.sock.accept()
            except OSError:
                return
            srv = socket.create_connection((LOOPBACK, self.target_port))
            tap = _Tap()
            with self._lock:
                self.taps.append(tap)
            threading.Thread(target=self._pump, args=(tap, cli, srv, 0), daemon=True).start()
            threading.Thread(target=self._pump, args=(tap, srv, cli, 1), daemon=True).start()

    def _pump(self, tap: _Tap, src: socket.socket, dst: socket.socket, direction: int) -> None:
        try:
            while True:
                data = src.recv(1 << 20)
                if not data:
                    break
                with self._lock:  # one lock orders both directions' chunks
                    tap.chunks.append((direction, data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            with self._lock:
                tap._open -= 1
                if tap._open == 0:
                    src.close()
                    dst.close()
                    tap.done.set()

    def take(self, n: int = 1, timeout: float = 20.0, wait_done: bool = True) -> list[_Tap]:
        """Wait for the first ``n`` recorded connections to finish and hand them over."""
        for _ in range(int(timeout * 100)):
            with self._lock:
                ready = len(self.taps) >= n
            if ready:
                break
            threading.Event().wait(0.01)
        with self._lock:
            taps, self.taps = self.taps[:n], self.taps[n:]
        for t in taps:
            if wait_done and not t.done.wait(timeout):
                raise RuntimeError("recorded connection did not finish")
        return taps

    def close(self) -> None:
        self._closing = True
        self.sock.close()


def _merge_runs(chunks: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    runs: list[tuple[int, bytearray]] = []
    for d, b in chunks:
        if runs and runs[-1][0] == d:
            runs[-1][1].extend(b)
        else:
            runs.append((d, bytearray(b)))
    return [(d, bytes(b)) for d, b in runs]


def split_dicom(tap: _Tap) -> Conn:
    """Re-frame a recorded DICOM connection into whole PDUs (type, reserved, length)."""
    out: Conn = []
    for d, run in _merge_runs(tap.chunks):
        off = 0
        while off < len(run):
            _, length = _PDU_HDR.unpack_from(run, off)
            out.append((d, run[off:off + 6 + length]))
            off += 6 + length
    return out


def split_mllp(tap: _Tap) -> Conn:
    """Re-frame a recorded MLLP connection into whole frames (0x0B ... 0x1C 0x0D)."""
    out: Conn = []
    for d, run in _merge_runs(tap.chunks):
        start = 0
        while start < len(run):
            end = run.index(b"\x1c\x0d", start) + 2
            out.append((d, run[start:end]))
            start = end
    return out


@dataclass
class _Job:
    """What the servers answer for the exchange being recorded (set before each recording)."""

    find_results: list[Dataset]
    move_datasets: list[Dataset]
    move_target: int = 0
    status: int = 0x0000


_STORE_STATUS = 0x0000


class Recorder:
    """Runs real pynetdicom/hl7 peers on loopback and records their exchanges."""

    def __init__(self, max_pdu: int = 16382) -> None:
        self.max_pdu = max_pdu
        self.job = _Job([], [])
        self._servers: dict[tuple, tuple[object, Relay]] = {}
        self._hl7: tuple[socket.socket, Relay] | None = None
        self._closed = False

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for server, relay in self._servers.values():
            server.shutdown()
            relay.close()
        self._servers.clear()
        if self._hl7:
            self._hl7[0].close()
            self._hl7[1].close()
            self._hl7 = None

    # ------------------------------------------------------------------ peers
    def _ae(self, fp: Fingerprint, title: str = "SCU") -> AE:
        ae = AE(ae_title=title)
        ae.implementation_class_uid = fp.uid
        ae.implementation_version_name = fp.version
        ae.maximum_pdu_size = self.max_pdu
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        return ae

    def _server(self, fp: Fingerprint, kind: str = "scp") -> Relay:
        """A full-service SCP (storage, Q/R, MWL, commitment, echo) with one fingerprint.

        kind "reject-calling" / "reject-called" give A-ASSOCIATE-RJ reason 3 / 7.
        """
        key = (fp.uid, fp.version, kind)
        if key in self._servers:
            return self._servers[key][1]
        ae = self._ae(fp, "SCP")
        from pynetdicom import AllStoragePresentationContexts
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, scu_role=True, scp_role=True)
        for uid in (Verification, ModalityWorklistInformationFind,
                    PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind,
                    PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove,
                    PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet):
            ae.add_supported_context(uid)
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        ae.maximum_associations = 64
        if kind == "fuzz":
            ae.network_timeout = 0.5  # hung half-PDUs are dropped quickly
        if kind == "reject-calling":
            ae.require_calling_aet = ["ONLY_KNOWN"]
        elif kind == "reject-called":
            ae.require_called_aet = True
        handlers = [
            (evt.EVT_C_ECHO, lambda e: 0x0000),
            (evt.EVT_C_STORE, lambda e: _STORE_STATUS),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_N_ACTION, lambda e: (0x0000, None)),
            (evt.EVT_N_EVENT_REPORT, lambda e: (0x0000, None)),
        ]
        server = ae.start_server((LOOPBACK, 0), block=False, evt_handlers=handlers)
        relay = Relay(server.server_address[1])
        self._servers[key] = (server, relay)
        return relay

    def _on_find(self, event):
        for ds in self.job.find_results:
            yield 0xFF00, ds
        yield 0x0000, None

    def _on_move(self, event):
        # propose exactly the storage contexts needed, as PACS implementations do
        sops = dict.fromkeys(ds.SOPClassUID for ds in self.job.move_datasets)
        ctxs = [build_context(sop, "1.2.840.10008.1.2.1") for sop in sops]
        yield LOOPBACK, self.job.move_target, {"contexts": ctxs}
        yield len(self.job.move_datasets)
        for ds in self.job.move_datasets:
            yield 0xFF00, ds

    def _on_get(self, event):
        yield len(self.job.move_datasets)
        for ds in self.job.move_datasets:
            yield 0xFF00, ds

    def _assoc(self, ae: AE, relay: Relay, ext_neg=None, called: str = "SCP"):
        assoc = ae.associate(LOOPBACK, relay.port, ae_title=called, ext_neg=ext_neg)
        return assoc

    # ------------------------------------------------------------------ DICOM exchanges
    def echo(self, scu: Fingerprint, scp: Fingerprint) -> Conn:
        relay = self._server(scp)
        ae = self._ae(scu)
        ae.add_requested_context(Verification)
        assoc = self._assoc(ae, relay)
        assoc.send_c_echo()
        assoc.release()
        return split_dicom(relay.take()[0])

    def reject(self, scu: Fingerprint, scp: Fingerprint, which: str = "called") -> Conn:
        relay = self._server(scp, "reject-" + which)
        ae = self._ae(scu, "GUESS")
        ae.add_requested_context(Verification)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = self._assoc(ae, relay, called="GUESS")
        if assoc.is_established:
            assoc.release()
        return split_dicom(relay.take()[0])

    def store(self, scu: Fingerprint, scp: Fingerprint, datasets: list[Dataset]) -> Conn:
        relay = self._server(scp)
        ae = self._ae(scu)
        for sop in dict.fromkeys(ds.SOPClassUID for ds in datasets):
            ae.add_requested_context(sop, "1.2.840.10008.1.2.1")
        assoc = self._assoc(ae, relay)
        for ds in datasets:
            assoc.send_c_store(ds)
        assoc.release()
        return split_dicom(relay.take()[0])

    def find(self, scu: Fingerprint, scp: Fingerprint, model: str, query: Dataset,
             results: list[Dataset]) -> Conn:
        relay = self._server(scp)
        self.job.find_results = results
        ae = self._ae(scu)
        ae.add_requested_context(model)
        assoc = self._assoc(ae, relay)
        for _ in assoc.send_c_find(query, model):
            pass
        assoc.release()
        return split_dicom(relay.take()[0])

    def move(self, scu: Fingerprint, scp: Fingerprint, dest: Fingerprint, dest_ae: str,
             query: Dataset, datasets: list[Dataset]) -> tuple[Conn, Conn]:
        """C-MOVE: control association and the SCP's C-STORE sub-association to ``dest``."""
        relay = self._server(scp)
        dest_relay = self._server(dest)
        self.job.move_datasets = datasets
        self.job.move_target = dest_relay.port
        ae = self._ae(scu)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = self._assoc(ae, relay)
        for _ in assoc.send_c_move(query, dest_ae, StudyRootQueryRetrieveInformationModelMove):
            pass
        assoc.release()
        control = split_dicom(relay.take()[0])
        sub = split_dicom(dest_relay.take()[0])
        return control, sub

    def get(self, scu: Fingerprint, scp: Fingerprint, query: Dataset, datasets: list[Dataset]) -> Conn:
        relay = self._server(scp)
        self.job.move_datasets = datasets
        ae = self._ae(scu)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        roles = []
        for sop in dict.fromkeys(ds.SOPClassUID for ds in datasets):
            ae.add_requested_context(sop, "1.2.840.10008.1.2.1")
            roles.append(build_role(sop, scp_role=True))
        assoc = ae.associate(LOOPBACK, relay.port, ae_title="SCP", ext_neg=roles,
                             evt_handlers=[(evt.EVT_C_STORE, lambda e: 0x0000)])
        for _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
            pass
        assoc.release()
        return split_dicom(relay.take()[0])

    def commit_action(self, scu: Fingerprint, scp: Fingerprint, request: Dataset) -> Conn:
        """Storage commitment N-ACTION-RQ (modality -> PACS)."""
        relay = self._server(scp)
        ae = self._ae(scu)
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = self._assoc(ae, relay)
        assoc.send_n_action(request, 1, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
        assoc.release()
        return split_dicom(relay.take()[0])

    def commit_report(self, pacs: Fingerprint, modality: Fingerprint, report: Dataset) -> Conn:
        """Storage commitment N-EVENT-REPORT on a new association PACS -> modality (SCP role)."""
        relay = self._server(modality)
        ae = self._ae(pacs)
        ae.add_requested_context(StorageCommitmentPushModel)
        role = build_role(StorageCommitmentPushModel, scp_role=True)
        assoc = self._assoc(ae, relay, ext_neg=[role])
        assoc.send_n_event_report(report, 1, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
        assoc.release()
        return split_dicom(relay.take()[0])

    # ------------------------------------------------------------------ HL7 over MLLP
    def _hl7_server(self) -> Relay:
        if self._hl7:
            return self._hl7[1]
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((LOOPBACK, 0))
        srv.listen(8)
        relay = Relay(srv.getsockname()[1])
        self._hl7 = (srv, relay)
        threading.Thread(target=self._hl7_accept, args=(srv,), daemon=True).start()
        return relay

    def _hl7_accept(self, srv: socket.socket) -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=self._hl7_serve, args=(conn,), daemon=True).start()

    def _hl7_serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\x1c\x0d" in buf:
                    frame, buf = buf.split(b"\x1c\x0d", 1)
                    text = frame.lstrip(b"\x0b").decode("ascii")
                    msg = hl7.parse(text)
                    code = self.job_ack_code
                    ack = msg.create_ack(ack_code=code, message_id="ACK" + str(msg.segment("MSH")(10))[-10:])
                    ack.segment("MSH").assign_field(str(msg.segment("MSH")(7)), 7)  # deterministic time
                    if code != "AA":
                        ack.segment("MSA").assign_field("Invalid or unknown patient/order", 3)
                    conn.sendall(b"\x0b" + str(ack).encode("ascii") + b"\x1c\x0d")

    job_ack_code = "AA"

    def hl7(self, messages: list[str], ack_code: str = "AA") -> Conn:
        """Send ``messages`` over one MLLP connection with hl7.client; the server ACKs each."""
        relay = self._hl7_server()
        self.job_ack_code = ack_code
        with hl7.client.MLLPClient(LOOPBACK, relay.port) as client:
            for m in messages:
                client.send_message(m)
        return split_mllp(relay.take()[0])


def _raw_send(port: int, payloads: list[bytes], linger: float) -> None:
    s = socket.create_connection((LOOPBACK, port))
    s.settimeout(linger)
    try:
        for p in payloads:
            s.sendall(p)
        while s.recv(65536):
            pass
    except OSError:
        pass
    finally:
        s.close()


def record_raw(rec: Recorder, scp: Fingerprint, payloads: list[bytes], linger: float = 1.0) -> Conn:
    """Send raw (malformed/fuzzed) bytes to a real pynetdicom acceptor and record its reaction.

    Runs are kept as they were seen (no PDU framing: the bytes are not valid PDUs). The client
    waits for the server to close (its network timeout is 0.5 s, ``linger`` is longer), so the
    recorded reaction does not depend on timing."""
    fresh = (scp.uid, scp.version, "fuzz") not in rec._servers
    relay = rec._server(scp, "fuzz")
    if fresh:  # a fresh acceptor may drop its very first bogus connection silently: warm it up
        _raw_send(relay.port, [b"\x09\x00\x00\x00\x00\x00"], linger)
        relay.take(wait_done=False)
    for attempt in range(4):
        _raw_send(relay.port, payloads, linger)
        tap = relay.take(wait_done=False)[0]
        with relay._lock:
            runs = _merge_runs(list(tap.chunks))
        sent = b"".join(b for d, b in runs if d == 0)
        reply = b"".join(b for d, b in runs if d == 1)
        # pynetdicom's reaction to garbage is racy (one A-ABORT per parsed bogus PDU, and a fresh
        # server sometimes drops a bogus PDU silently): keep the first A-ABORT only, retry up to 4 times
        if reply[:1] == b"\x07":
            return [(0, sent), (1, reply[:10])]
    return [(0, sent)]
