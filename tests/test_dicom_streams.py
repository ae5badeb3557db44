"""Real DICOM byte streams for the analyzer tests, recorded from pynetdicom over 127.0.0.1.

A pynetdicom SCU talks to a pynetdicom SCP through a tiny in-process TCP relay that records each
direction's bytes in the order they were received. Each scenario is recorded once per test
session (``record``). The SCP handlers also record the oracle: the exact encoded length of every
data set / identifier they received, so tests can compare the analyzer's byte arithmetic with
what the real stack put on the wire.

All patient-like values are synthetic. Identifier logging in pynetdicom is switched off.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time

import pynetdicom
import pynetdicom._config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import (
    AsynchronousOperationsWindowNegotiation,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from sensor.events import Counters, Endpoint
from sensor.protocols.base import FlowContext
from sensor.protocols.dicom.analyzer import DicomAnalyzer

pynetdicom._config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom._config.LOG_RESPONSE_IDENTIFIERS = False
logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)

SCP_AE = "ARCHIVE"
SCU_AE = "MODALITY1"
DEST_AE = "DESTAE"
SECRET = b"s3cr3t-Pa55"  # user identity secondary field: must never show up in any event
USERNAME = b"tech-user-42"
STORE_MAX_PDU = 2048  # the SCP's max PDU in the store scenario: forces PDV fragmentation
N_IMAGES = 3
PIXEL_BYTES = 9000

CLIENT = Endpoint("127.0.0.1", 40000)
SERVER = Endpoint("127.0.0.1", 104)


def make_image(i: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.PatientName = "SYNTH^PATIENT%d" % i
    ds.PatientID = "SYN%04d" % i
    ds.Modality = "CT"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 30, 150, 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes((j * 7 + i) & 0xFF for j in range(PIXEL_BYTES))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


class Oracle:
    """What the SCP (or the SCU for C-GET) saw: encoded data set lengths by kind."""

    def __init__(self) -> None:
        self.store: list[int] = []
        self.identifiers: list[int] = []
        self.action: list[int] = []


class Relay:
    """Accept one connection, connect upstream, pump both ways and record every recv()."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.chunks: list[tuple[bool, float, bytes]] = []
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:  # record before forwarding: causality order is preserved
                    self.chunks.append((from_client, time.monotonic() - self.t0, data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _run(self) -> None:
        self.lsock.settimeout(10)
        try:
            conn, _ = self.lsock.accept()
        except OSError:
            self.done.set()
            return
        up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
        conn.settimeout(10)
        a = threading.Thread(target=self._pump, args=(conn, up, True), daemon=True)
        b = threading.Thread(target=self._pump, args=(up, conn, False), daemon=True)
        a.start()
        b.start()
        a.join(15)
        b.join(15)
        conn.close()
        up.close()
        self.lsock.close()
        self.done.set()

    def wait(self) -> list[tuple[bool, float, bytes]]:
        self.done.wait(20)
        return list(self.chunks)


def _scp(oracle: Oracle, store_port_holder: list[int]) -> tuple[AE, object]:
    ae = AE(ae_title=SCP_AE)
    ae.require_called_aet = True
    ae.maximum_pdu_size = STORE_MAX_PDU
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    ae.add_supported_context(PatientRootQueryRetrieveInformationModelFind, ImplicitVRLittleEndian)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind, ExplicitVRLittleEndian)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_supported_context(CTImageStorage, scu_role=False, scp_role=True)
    ae.add_supported_context(StorageCommitmentPushModel)
    ae.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)  # C-MOVE sub-operations

    def on_store(event):
        oracle.store.append(len(event.request.DataSet.getvalue()))
        return 0x0000

    def on_find(event):
        oracle.identifiers.append(len(event.request.Identifier.getvalue()))
        for k in range(2):
            match = Dataset()
            match.QueryRetrieveLevel = event.identifier.QueryRetrieveLevel
            match.PatientName = "SYNTH^MATCH%d" % k
            yield 0xFF00, match

    def on_move(event):
        oracle.identifiers.append(len(event.request.Identifier.getvalue()))
        yield "127.0.0.1", store_port_holder[0]
        yield 1
        yield 0xFF00, make_image(9)

    def on_get(event):
        oracle.identifiers.append(len(event.request.Identifier.getvalue()))
        yield 2
        yield 0xFF00, make_image(7)
        yield 0xFF00, make_image(8)

    def on_action(event):
        oracle.action.append(len(event.request.ActionInformation.getvalue()))
        return 0x0000, None

    handlers = [
        (evt.EVT_C_STORE, on_store),
        (evt.EVT_C_FIND, on_find),
        (evt.EVT_C_MOVE, on_move),
        (evt.EVT_C_GET, on_get),
        (evt.EVT_N_ACTION, on_action),
    ]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    return ae, server


def _dest_scp() -> tuple[AE, object]:
    ae = AE(ae_title=DEST_AE)
    ae.add_supported_context(CTImageStorage)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0)])
    return ae, server


def _query(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def _run_scenario(name: str, scp_port: int, oracle: Oracle) -> list[tuple[bool, float, bytes]]:
    relay = Relay(scp_port)
    ae = AE(ae_title=SCU_AE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    called = SCP_AE
    ext: list = []
    handlers: list = []
    if name == "echo":
        ae.add_requested_context(Verification)
        aw = AsynchronousOperationsWindowNegotiation()
        aw.maximum_number_operations_invoked = 1
        aw.maximum_number_operations_performed = 1
        ui = UserIdentityNegotiation()
        ui.user_identity_type = 2
        ui.primary_field = USERNAME
        ui.secondary_field = SECRET
        ext = [aw, ui]
    elif name == "store":
        ae.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)
        ae.add_requested_context(Verification)
    elif name == "query":
        ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind, ImplicitVRLittleEndian)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, ExplicitVRLittleEndian)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove, ImplicitVRLittleEndian)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet, ImplicitVRLittleEndian)
        ae.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = CTImageStorage
        role.scu_role = False
        role.scp_role = True
        ext = [role]

        def on_store(event):
            oracle.store.append(len(event.request.DataSet.getvalue()))
            return 0x0000

        handlers = [(evt.EVT_C_STORE, on_store)]
    elif name == "commit":
        ae.add_requested_context(StorageCommitmentPushModel)
    elif name == "reject":
        ae.add_requested_context(Verification)
        called = "WRONGAE"
    elif name == "abort":
        ae.add_requested_context(Verification)
    assoc = ae.associate(
        "127.0.0.1", relay.port, ae_title=called, max_pdu=16384, ext_neg=ext or None, evt_handlers=handlers
    )
    try:
        if assoc.is_established:
            if name == "echo":
                assoc.send_c_echo()
            elif name == "store":
                for i in range(N_IMAGES):
                    assoc.send_c_store(make_image(i))
                assoc.send_c_echo()
            elif name == "query":
                for _ in assoc.send_c_find(
                    _query("PATIENT", PatientName="SYNTH*", PatientID=""),
                    PatientRootQueryRetrieveInformationModelFind,
                ):
                    pass
                for _ in assoc.send_c_find(
                    _query(
                        "STUDY",
                        PatientName="SY?TH*",
                        StudyDate="20240101-",
                        ModalitiesInStudy="C*",
                        StudyInstanceUID="",
                    ),
                    StudyRootQueryRetrieveInformationModelFind,
                ):
                    pass
                for _ in assoc.send_c_move(
                    _query("STUDY", StudyInstanceUID="1.2.826.0.1.3680043.8.498.1"),
                    DEST_AE,
                    StudyRootQueryRetrieveInformationModelMove,
                ):
                    pass
                for _ in assoc.send_c_get(
                    _query("STUDY", StudyInstanceUID="1.2.826.0.1.3680043.8.498.1"),
                    StudyRootQueryRetrieveInformationModelGet,
                ):
                    pass
            elif name == "commit":
                ds = Dataset()
                ds.TransactionUID = "1.2.826.0.1.3680043.8.498.99"
                ref = Dataset()
                ref.ReferencedSOPClassUID = CTImageStorage
                ref.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.100"
                ds.ReferencedSOPSequence = [ref]
                assoc.send_n_action(ds, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
            if name == "abort":
                assoc.abort()
            else:
                assoc.release()
    finally:
        if assoc.is_alive():
            assoc.abort()
        ae.shutdown()
    return relay.wait()


@functools.cache
def recordings() -> dict[str, tuple[list[tuple[bool, float, bytes]], Oracle]]:
    """Record every scenario once; returns name → (chunks in order, oracle)."""
    out = {}
    dest_ae, dest_server = _dest_scp()
    holder = [dest_server.server_address[1]]
    oracles: dict[str, Oracle] = {}
    current: list[Oracle] = [Oracle()]

    class _Proxy(Oracle):  # the SCP handlers write into the current scenario's oracle
        def __getattribute__(self, item):
            return getattr(current[0], item)

    scp_ae, server = _scp(_Proxy(), holder)
    try:
        for name in ("echo", "store", "query", "commit", "reject", "abort"):
            current[0] = oracles[name] = Oracle()
            chunks = _run_scenario(name, server.server_address[1], current[0])
            out[name] = (chunks, oracles[name])
    finally:
        server.shutdown()
        dest_server.shutdown()
        scp_ae.shutdown()
        dest_ae.shutdown()
    return out


def runs(chunks: list[tuple[bool, float, bytes]]) -> list[tuple[bool, float, bytes]]:
    """Coalesce consecutive same-direction chunks (each run keeps its first timestamp)."""
    out: list[tuple[bool, float, bytes]] = []
    for fc, ts, data in chunks:
        if out and out[-1][0] == fc:
            out[-1] = (fc, out[-1][1], out[-1][2] + data)
        else:
            out.append((fc, ts, data))
    return out


def make_ctx(mid_stream: bool = False) -> tuple[FlowContext, list]:
    events: list = []
    return FlowContext(CLIENT, SERVER, events.append, Counters(), mid_stream=mid_stream), events


def feed(chunks, mid_stream: bool = False, close: bool = True, chunk_size: int | None = None):
    """Feed (from_client, ts, bytes) chunks to a fresh analyzer; return (events, counters)."""
    ctx, events = make_ctx(mid_stream)
    an = DicomAnalyzer(ctx)
    last = 0.0
    for fc, ts, data in chunks:
        mv = memoryview(data)
        step = chunk_size or len(data) or 1
        for i in range(0, len(data), step):
            an.data(fc, ts, mv[i : i + step])
        last = ts
    if close:
        an.close(last + 1.0, "fin")
    return events, ctx.counters


def test_recordings_exist_and_are_two_sided():
    recs = recordings()
    for name, (chunks, _) in recs.items():
        sides = {fc for fc, _, _ in chunks}
        assert sides == {True, False}, name
    assert len(recs["store"][1].store) == N_IMAGES
