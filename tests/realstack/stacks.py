"""Other DICOM stacks on loopback: Orthanc as the PACS, the dcmtk command-line tools as SCUs/SCP.

Everything runs as a child process of the test, on 127.0.0.1 only, with bounded waits, and is
stopped by PID. Readiness is read from /proc/net/tcp (a LISTEN socket on the port) rather than by
connecting, so no probe connection ever reaches a peer or a capture.

Example::

    with StoreScp(tmp / "in", "STORESCP_T") as scp, \\
            Orthanc(tmp / "orthanc", "ORTHANC_T", {"STORESCP_T": scp.port}) as pacs:
        res = dcmtk("echoscu", "-aet", "ECHO_T", "-aec", pacs.aet, "127.0.0.1", str(pacs.dicom_port))

The synthetic studies (``make_studies``) carry only invented, non-PHI values ("TEST^ONE").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from tests.realstack.capture import free_port

HOST = "127.0.0.1"
ORTHANC = "Orthanc"
DCMTK_TOOLS = ("echoscu", "storescu", "findscu", "movescu", "getscu", "storescp")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
TOOL_TIMEOUT = 30.0
_TCP_LISTEN = "0A"  # /proc/net/tcp state column


class StackError(RuntimeError):
    pass


def require_tools() -> dict[str, str]:
    """Paths of Orthanc and the dcmtk tools; raises (the test fails) when any is missing."""
    out, missing = {}, []
    for name in (ORTHANC, *DCMTK_TOOLS):
        path = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
        if path is None:
            missing.append(name)
        else:
            out[name] = path
    if missing:
        raise StackError("missing tools (apt-get install dcmtk orthanc): " + ", ".join(missing))
    return out


def tool_version(argv: Sequence[str]) -> str:
    res = subprocess.run(list(argv) + ["--version"], capture_output=True, text=True, timeout=10)
    return (res.stdout + res.stderr).strip().splitlines()[0]


def _listening(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == _TCP_LISTEN and int(cols[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            continue
    return False


def wait_listening(port: int, proc: subprocess.Popen, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{what} exited with {proc.returncode} before listening on {port}")
        if _listening(port):
            return
        time.sleep(0.05)
    raise StackError(f"{what} not listening on {port} after {timeout:.0f} s")


def stop_pid(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> int | None:
    """Stop one child we started: ``sig``, bounded wait, then SIGKILL."""
    if proc is None:
        return None
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT)
    return proc.returncode


class _Child:
    """A long-running child with its output in a log file; context manager, stopped by PID."""

    proc: subprocess.Popen | None = None
    log_path: Path

    def _spawn(self, argv: Sequence[str], port: int, what: str) -> None:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(list(argv), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        try:
            wait_listening(port, self.proc, what)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        rc = stop_pid(proc)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        return rc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Orthanc(_Child):
    """Orthanc with a temporary JSON config: own storage, free DICOM/HTTP ports, called-AE check on.

    ``modalities`` maps AE title → port on 127.0.0.1 (C-MOVE destinations). Find/get/move are
    allowed for any calling AE, so each dcmtk run can use its own calling AE title.
    """

    def __init__(self, directory: Path, aet: str, modalities: Mapping[str, int], binary: str = ORTHANC) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.dicom_port = free_port(HOST)
        self.http_port = free_port(HOST)
        while self.http_port == self.dicom_port:
            self.http_port = free_port(HOST)
        self.config_path = self.dir / "orthanc.json"
        self.log_path = self.dir / "orthanc.log"
        storage = self.dir / "storage"
        self.config = {
            "Name": "radsensor-interop",
            "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "StorageCompression": False, "Plugins": [], "LuaScripts": [], "ConcurrentJobs": 1,
            "SaveJobs": False,
            "HttpServerEnabled": True, "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "OrthancExplorerEnabled": False, "WebDavEnabled": False,
            "DicomServerEnabled": True, "DicomAet": aet, "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True, "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True,
            "DicomScpTimeout": 15, "DicomScuTimeout": 15,
            # Close the C-MOVE sub-association as soon as the move is done, not 5 s later.
            "DicomAssociationCloseDelay": 0,
            "DicomModalities": {name: [name, HOST, port] for name, port in modalities.items()},
        }
        self.config_path.write_text(json.dumps(self.config, indent=1))
        self.binary = binary

    def start(self) -> Self:
        self._spawn([self.binary, "--no-jobs", str(self.config_path)], self.dicom_port, "Orthanc")
        return self

    def __enter__(self) -> Self:
        return self.start()


class StoreScp(_Child):
    """dcmtk ``storescp`` (no fork: one association at a time), the C-MOVE destination."""

    def __init__(self, directory: Path, aet: str, binary: str = "storescp") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.port = free_port(HOST)
        self.log_path = self.dir.parent / f"{self.dir.name}.storescp.log"
        self.binary = binary

    def start(self) -> Self:
        self._spawn([self.binary, "-aet", self.aet, "-od", str(self.dir), "-dhl", "-v", str(self.port)],
                    self.port, "storescp")
        return self

    def __enter__(self) -> Self:
        return self.start()

    def received(self) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if p.is_file())


def dcmtk(tool: str, *args: str, timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess:
    """Run one dcmtk tool to completion (bounded); output captured, exit status not checked."""
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# ---- synthetic studies ---------------------------------------------------------------------------

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
MF_GRAY_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
UID_ROOT = "1.2.826.0.1.3680043.10.1153.9"  # same private root as the other real-stack tests


@dataclass
class Study:
    patient_name: str  # invented, e.g. "TEST^ONE"
    patient_id: str
    description: str
    uid: str
    files: list[Path] = field(default_factory=list)
    sop_classes: list[str] = field(default_factory=list)
    pixel_bytes: list[int] = field(default_factory=list)


def _image(study: Study, series_uid: str, n: int, sop_class: str, rows: int, cols: int, frames: int,
           modality: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = f"{series_uid}.{n}"
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20200101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study.description
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = n
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = 0x00181063  # FrameTime
        ds.FrameTime = 40
    # A deterministic ramp: cheap, and not all-zero so nothing downstream can shortcut it.
    pix = (np.arange(rows * cols * frames, dtype=np.uint32) * 7 % 4096).astype("<u2")
    ds.PixelData = pix.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def make_studies(directory: Path) -> list[Study]:
    """Three studies, six instances, ~2.6 MB: three small CTs (TEST^ONE), one 8-frame secondary
    capture (TEST^TWO), one 1024×1024 MR of 2 MiB plus a small CT (TEST^THREE)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plan = [
        ("TEST^ONE", "TID0001", "CHEST SYN", [(CT_IMAGE, 64, 64, 1, "CT")] * 3),
        ("TEST^TWO", "TID0002", "SYNTH MULTIFRAME", [(MF_GRAY_WORD_SC, 128, 128, 8, "OT")]),
        ("TEST^THREE", "TID0003", "SYNTH LARGE", [(MR_IMAGE, 1024, 1024, 1, "MR"), (CT_IMAGE, 32, 32, 1, "CT")]),
    ]
    studies = []
    for i, (name, pid, desc, images) in enumerate(plan, 1):
        st = Study(name, pid, desc, f"{UID_ROOT}.{i}")
        for n, (sop, rows, cols, frames, modality) in enumerate(images, 1):
            series = f"{st.uid}.{1 if modality != 'CT' or i == 1 else 2}"
            ds = _image(st, series, n, sop, rows, cols, frames, modality)
            path = directory / f"s{i}_{n}.dcm"
            ds.save_as(path, enforce_file_format=True)
            st.files.append(path)
            st.sop_classes.append(sop)
            st.pixel_bytes.append(rows * cols * frames * 2)
        studies.append(st)
    return studies


def dataset_len(path: Path) -> int:
    """Bytes of the data set of a Part 10 file (after the file meta group), as stored."""
    raw = path.read_bytes()
    # Preamble (128) + "DICM" (4) + group 0002 whose length is its first element's value.
    off = 132
    assert raw[off:off + 4] == b"\x02\x00\x00\x00", "file meta group length element expected first"
    glen = int.from_bytes(raw[off + 8:off + 12], "little")
    return len(raw) - (off + 12 + glen)


# ---- the traffic ---------------------------------------------------------------------------------

# Calling AE title of every association the run makes (the C-MOVE sub-association is Orthanc's).
ECHO, STORE, FIND_PATIENT, FIND_STUDY, MOVE, GET, REJECT, ABORT = (
    "ECHO_T", "STORE_T", "FINDP_T", "FINDS_T", "MOVE_T", "GET_T", "REJECT_T", "ABORT_T")
WRONG_CALLED_AE = "WRONG_AE"
FIND_PATIENT_KEYS = ("QueryRetrieveLevel=PATIENT", "PatientName=T*", "PatientID")
FIND_STUDY_KEYS = ("QueryRetrieveLevel=STUDY", "PatientName=TEST^T*", "StudyDescription=SYN*", "StudyInstanceUID")


def retrieve_keys(study: Study) -> tuple[str, ...]:
    """C-MOVE / C-GET identifier keys for one whole study."""
    return ("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.uid}")


_DEBUG_FIELD = re.compile(r"^D: (Our|Their) (Implementation Class UID|Implementation Version Name|"
                          r"Max PDU Receive Size):\s*(\S*)\s*$", re.M)


def negotiated_identity(debug_output: str) -> dict[str, str]:
    """dcmtk's own account (``-d``) of the association as accepted: the last block of
    "Our/Their Implementation Class UID / Version Name / Max PDU Receive Size" lines."""
    out: dict[str, str] = {}
    for side, what, value in _DEBUG_FIELD.findall(debug_output):
        out[f"{side.lower()} {what}"] = value  # later blocks (after A-ASSOCIATE-AC) overwrite
    return out


def run_traffic(pacs: Orthanc, scp: StoreScp, studies: Sequence[Study], get_dir: Path) -> dict[str, subprocess.CompletedProcess]:
    """One association per step, in this order; each step's exit status and output are returned.

    C-MOVE moves study 1 (three CTs) to ``scp``; C-GET fetches study 2 (the multi-frame image).
    """
    peer = (HOST, str(pacs.dicom_port))
    call = ("-aec", pacs.aet)
    get_dir.mkdir(parents=True, exist_ok=True)
    files = [str(f) for s in studies for f in s.files]
    out: dict[str, subprocess.CompletedProcess] = {}
    # -d: dcmtk prints both sides' implementation identity and max PDU (no identifiers in a C-ECHO).
    out[ECHO] = dcmtk("echoscu", "-d", "-aet", ECHO, *call, *peer)
    # -R: only the contexts the files need (storescu would otherwise propose ~120 storage classes).
    out[STORE] = dcmtk("storescu", "-R", "-aet", STORE, *call, *peer, *files)
    out[FIND_PATIENT] = dcmtk("findscu", "-P", "-aet", FIND_PATIENT, *call,
                              *[a for k in FIND_PATIENT_KEYS for a in ("-k", k)], *peer)
    out[FIND_STUDY] = dcmtk("findscu", "-S", "-aet", FIND_STUDY, *call,
                            *[a for k in FIND_STUDY_KEYS for a in ("-k", k)], *peer)
    out[MOVE] = dcmtk("movescu", "-S", "-aet", MOVE, *call, "-aem", scp.aet,
                      *[a for k in retrieve_keys(studies[0]) for a in ("-k", k)], *peer)
    out[GET] = dcmtk("getscu", "-S", "-aet", GET, *call, "-od", str(get_dir),
                     *[a for k in retrieve_keys(studies[1]) for a in ("-k", k)], *peer)
    out[REJECT] = dcmtk("echoscu", "-aet", REJECT, "-aec", WRONG_CALLED_AE, *peer)
    out[ABORT] = dcmtk("echoscu", "--abort", "-aet", ABORT, *call, *peer)
    return out


def orthanc_statistics(pacs: Orthanc) -> dict:
    """Orthanc's own count of what it stored (REST on its loopback HTTP port, not captured)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{HOST}:{pacs.http_port}/statistics", timeout=5) as r:
        return json.loads(r.read())
