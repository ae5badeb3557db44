"""Synthetic but valid DICOM data sets (pydicom): images, queries, worklist items, commitment.

Everything identifying is obviously fake: patients are ``TEST^PATIENT000123`` / ``SYN000123``,
accession numbers ``ACC0000123``. UIDs are fixed-width under pydicom's generated-UID root so the
composer can patch per-study/per-image numbers in place without changing any length.

Example::

    >>> ds = image("ct", 4096, study=7, series=1, instance=1)
    >>> ds.Modality, len(ds.PixelData)
    ('CT', 4096)
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from .site import MODALITY_CODE, SOP_CLASS

ROOT = "1.2.826.0.1.3680043.8.498"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def study_uid(n: int) -> str:
    return f"{ROOT}.11{n:010d}"


def series_uid(n: int, s: int) -> str:
    return f"{ROOT}.12{n:07d}{s:03d}"


def sop_uid(n: int, s: int, i: int) -> str:
    return f"{ROOT}.13{n:07d}{s:03d}{i:05d}"


def patient_name(p: int) -> str:
    return f"TEST^PATIENT{p:06d}"


def patient_id(p: int) -> str:
    return f"SYN{p:06d}"


def accession(n: int) -> str:
    return f"ACC{n:07d}"


def image(role: str, nbytes: int, study: int = 1, series: int = 1, instance: int = 1,
          patient: int = 1, seed: int = 0) -> Dataset:
    """A minimal valid image SOP instance of ``nbytes`` pixel bytes (16-bit, noise)."""
    ds = Dataset()
    ds.SOPClassUID = SOP_CLASS[role]
    ds.SOPInstanceUID = sop_uid(study, series, instance)
    ds.StudyDate = "20000101"
    ds.StudyTime = "000000"
    ds.AccessionNumber = accession(study)
    ds.Modality = MODALITY_CODE[role]
    ds.Manufacturer = "SYNTHETIC"
    ds.PatientName = patient_name(patient)
    ds.PatientID = patient_id(patient)
    ds.PatientBirthDate = "19000101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid(study)
    ds.SeriesInstanceUID = series_uid(study, series)
    ds.StudyID = "1"
    ds.SeriesNumber = series
    ds.InstanceNumber = instance
    px = max(4, nbytes // 2)
    cols = 2
    while cols * cols < px:
        cols *= 2
    rows = max(1, px // cols)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(seed)
    # low-amplitude noise: realistic entropy for an uncompressed 12-bit image
    ds.PixelData = rng.integers(0, 4096, rows * cols, dtype="<u2").tobytes()
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = EXPLICIT_LE
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    return ds


def study_query(patient: int | None, level: str = "STUDY", wildcard: str | None = None) -> Dataset:
    """Workstation query. With ``wildcard`` it becomes a PATIENT-level harvesting sweep."""
    q = Dataset()
    q.QueryRetrieveLevel = level
    if wildcard is not None:
        q.PatientName = wildcard
        q.PatientID = "*"
        q.PatientBirthDate = ""
        q.PatientSex = ""
        if level == "STUDY":
            q.StudyInstanceUID = ""
            q.StudyDate = ""
        return q
    q.PatientID = patient_id(patient or 0)
    q.PatientName = ""
    q.StudyDate = ""
    q.StudyInstanceUID = ""
    q.AccessionNumber = ""
    q.ModalitiesInStudy = ""
    q.StudyDescription = ""
    return q


def study_result(patient: int, study: int, role: str, level: str = "STUDY") -> Dataset:
    r = Dataset()
    r.QueryRetrieveLevel = level
    r.PatientName = patient_name(patient)
    r.PatientID = patient_id(patient)
    if level == "PATIENT":
        r.PatientBirthDate = "19000101"
        r.PatientSex = "O"
        return r
    r.StudyDate = "20000101"
    r.StudyInstanceUID = study_uid(study)
    r.AccessionNumber = accession(study)
    r.ModalitiesInStudy = MODALITY_CODE[role]
    r.StudyDescription = "SYNTHETIC " + MODALITY_CODE[role]
    return r


def retrieve_query(study: int) -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = study_uid(study)
    return q


def mwl_query(modality: str, station_ae: str = "STATION") -> Dataset:
    q = Dataset()
    q.PatientName = ""
    q.PatientID = ""
    q.PatientBirthDate = ""
    q.PatientSex = ""
    q.AccessionNumber = ""
    q.StudyInstanceUID = ""
    q.RequestedProcedureID = ""
    sps = Dataset()
    sps.Modality = modality
    sps.ScheduledStationAETitle = ""
    sps.ScheduledProcedureStepStartDate = "20000101"
    sps.ScheduledProcedureStepStartTime = ""
    sps.ScheduledProcedureStepID = ""
    sps.ScheduledProcedureStepDescription = ""
    q.ScheduledProcedureStepSequence = Sequence([sps])
    return q


def mwl_item(patient: int, study: int, modality: str) -> Dataset:
    r = Dataset()
    r.PatientName = patient_name(patient)
    r.PatientID = patient_id(patient)
    r.PatientBirthDate = "19000101"
    r.PatientSex = "O"
    r.AccessionNumber = accession(study)
    r.StudyInstanceUID = study_uid(study)
    r.RequestedProcedureID = f"RP{study:07d}"
    sps = Dataset()
    sps.Modality = modality
    sps.ScheduledStationAETitle = "STATION"
    sps.ScheduledProcedureStepStartDate = "20000101"
    sps.ScheduledProcedureStepStartTime = "080000"
    sps.ScheduledProcedureStepID = f"SPS{study:07d}"
    sps.ScheduledProcedureStepDescription = "SYNTHETIC PROCEDURE"
    r.ScheduledProcedureStepSequence = Sequence([sps])
    return r


def commitment(role: str, study: int, n: int, failed: bool = False) -> Dataset:
    """Storage commitment request / event information with ``n`` referenced instances."""
    ds = Dataset()
    ds.TransactionUID = f"{ROOT}.14{study:010d}"
    items = []
    for i in range(n):
        it = Dataset()
        it.ReferencedSOPClassUID = SOP_CLASS[role]
        it.ReferencedSOPInstanceUID = sop_uid(study, 1, i + 1)
        items.append(it)
    ds.ReferencedSOPSequence = Sequence(items)
    return ds
