"""The reference capture: built once by the reference-traffic generator, cached under bench/out/.

A normal day of the synthetic radiology VLAN (training/sites/default.toml): bulk C-STORE of
multi-image studies at MTU 1500 carries most bytes; C-FIND/C-MOVE/C-GET, storage commitment, HL7
over MLLP and background DNS/HTTP(S)/SMB/NTP/syslog make up the rest. ``image_scale`` is chosen so
the day holds a little over 2 million packets. A JSON sidecar keeps the packet and byte counts so
later runs do not rescan the file.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
REF_SEED = 2026
REF_IMAGE_SCALE = 0.08  # 0.25 gives ~7.5 M packets / 7.5 GB a day; 0.08 gives ~2.4 M
MIN_PACKETS = 2_000_000
TRAIN_SEED = 77
TRAIN_IMAGE_SCALE = 0.004  # the model learns from event counts, not image sizes: small is enough

_REC = struct.Struct("<IIII")


def _generate(kind: str, seed: int, scale: float, out: Path, days: int = 1) -> None:
    cmd = [sys.executable, "-m", "training.generate", "--kind", kind, "--seed", str(seed),
           "--image-scale", str(scale), "--days", str(days), "--out", str(out)]
    print("bench: generating", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parent.parent)


def scan(path: Path) -> dict:
    """Packets, captured bytes and wire bytes of a little-endian microsecond pcap, by record headers."""
    packets = cap = wire = 0
    with open(path, "rb") as f:
        head = f.read(24)
        if head[:4] != b"\xd4\xc3\xb2\xa1":
            raise SystemExit(f"{path}: expected a little-endian classic pcap")
        pos = 24
        size = os.fstat(f.fileno()).st_size
        while pos + 16 <= size:
            f.seek(pos)
            _, _, incl, orig = _REC.unpack(f.read(16))
            packets += 1
            cap += incl
            wire += orig
            pos += 16 + incl
    return {"packets": packets, "captured_bytes": cap, "wire_bytes": wire, "file_bytes": size}


def _meta(path: Path) -> dict:
    side = path.with_suffix(".bench.json")
    st = path.stat()
    if side.exists():
        meta = json.loads(side.read_text())
        if meta.get("file_bytes") == st.st_size and meta.get("mtime") == int(st.st_mtime):
            return meta
    print(f"bench: counting packets in {path.name}", flush=True)
    meta = scan(path)
    meta["mtime"] = int(st.st_mtime)
    side.write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def reference_capture() -> tuple[Path, dict]:
    """(path, {"packets", "captured_bytes", "wire_bytes", "file_bytes"}) of the cached reference day."""
    d = OUT / "ref"
    path = d / "normal-01.pcap"
    if not path.exists():
        _generate("normal", REF_SEED, REF_IMAGE_SCALE, d)
    meta = _meta(path)
    if meta["packets"] < MIN_PACKETS:
        raise SystemExit(f"{path}: only {meta['packets']:,} packets (< {MIN_PACKETS:,}); delete it and retry")
    return path, meta


def training_captures() -> list[Path]:
    """Two small normal days (other seeds) for the detect row's baseline model."""
    d = OUT / "train"
    files = sorted(d.glob("normal-*.pcap"))
    if len(files) < 2:
        _generate("normal", TRAIN_SEED, TRAIN_IMAGE_SCALE, d, days=2)
        files = sorted(d.glob("normal-*.pcap"))
    return files


def slice_capture(path: Path, packets: int, skip: int = 0) -> tuple[Path, dict]:
    """``packets`` consecutive records of ``path`` after the first ``skip``, as their own pcap.

    Slow baselines run on a slice from mid-day (``skip`` ≈ 45 % of the day): the first packets
    of a day are night-time background traffic, not the bulk DICOM the day is made of.
    """
    out = OUT / f"slice-{skip}-{packets}.pcap"
    src = path.stat()
    stamp = out.with_suffix(".bench.json")
    if out.exists() and stamp.exists():
        meta = json.loads(stamp.read_text())
        if meta.get("source_mtime") == int(src.st_mtime) and meta.get("packets") == packets:
            return out, meta
    n = cap = wire = 0
    with open(path, "rb") as f, open(out, "wb") as w:
        w.write(f.read(24))
        for _ in range(skip):
            hdr = f.read(16)
            if len(hdr) < 16:
                break
            f.seek(_REC.unpack(hdr)[2], os.SEEK_CUR)
        while n < packets:
            hdr = f.read(16)
            if len(hdr) < 16:
                break
            _, _, incl, orig = _REC.unpack(hdr)
            w.write(hdr)
            w.write(f.read(incl))
            n += 1
            cap += incl
            wire += orig
    meta = {"packets": n, "captured_bytes": cap, "wire_bytes": wire, "file_bytes": out.stat().st_size,
            "source_mtime": int(src.st_mtime), "skip": skip}
    stamp.write_text(json.dumps(meta, indent=1) + "\n")
    return out, meta
