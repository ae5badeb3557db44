"""The compiled fast path against the pure-Python reference: same events, same counters.

Helpers (also used by test_fastpath_props.py): ``run_both`` decodes a capture both ways;
``resegment`` re-cuts TCP payload at a smaller MSS; ``mangle`` reorders/duplicates/drops/corrupts.

Every committed capture (pcaps/, tests/fixtures/) and captures made here (re-segmented at
MSS 1448 like an Ethernet MTU-1500 VLAN; reordered/duplicated/lost/corrupted frames; both pcap
byte orders; a tight flow table that sweeps and evicts constantly) are decoded with
``PipelineConfig(fast=True)`` and ``fast=False`` and compared event by event.
"""

from __future__ import annotations

import gzip
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sensor import _fast
from sensor.capture import CaptureReader, open_capture, open_captures
from sensor.capture.batch import PacketBatch
from sensor.capture.pcap import PcapBlock
from sensor.events import Counters
from sensor.flows.table import FlowConfig
from sensor.pipeline import Pipeline, PipelineConfig

ROOT = Path(__file__).resolve().parent.parent


def sample_captures() -> list[Path]:
    """Every committed capture: pcaps/* and tests/fixtures/*."""
    found = []
    for folder, pattern in ((ROOT / "pcaps", "*.pcap*"), (ROOT / "tests" / "fixtures", "*.pcap*")):
        found += sorted(p for p in folder.glob(pattern) if p.is_file())
    return found


def run(paths, fast: bool, flows: FlowConfig = FlowConfig(), batch_size: int = 4096):
    events: list = []
    counters = Counters()
    pipe = Pipeline(events.append, PipelineConfig(flows=flows, batch_size=batch_size, fast=fast), counters)
    src = open_captures([str(p) for p in paths], batch_size=batch_size)
    for batch in src:
        pipe.feed(batch)
    pipe.finish()
    dicts = [(type(e).__name__, e.to_dict()) for e in events]
    totals = (pipe.packets, pipe.bytes, pipe.first_ts, pipe.last_ts, pipe.flows.now, len(pipe.flows.flows))
    return dicts, dict(counters.values), totals, pipe.driver.stats()


def run_both(paths, flows: FlowConfig = FlowConfig(), batch_size: int = 4096):
    return run(paths, True, flows, batch_size), run(paths, False, flows, batch_size)


# -- pcap I/O --------------------------------------------------------------------------------------

def read_pcap(path: Path) -> tuple[int, list[tuple[int, int, bytes, int]]]:
    """(linktype, [(sec, usec, frame, wirelen)]) of a little-endian microsecond pcap (gz ok)."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    assert raw[:4] == b"\xd4\xc3\xb2\xa1", "test helper reads little-endian microsecond pcaps only"
    linktype = struct.unpack_from("<I", raw, 20)[0]
    out, pos = [], 24
    while pos + 16 <= len(raw):
        sec, usec, incl, orig = struct.unpack_from("<IIII", raw, pos)
        out.append((sec, usec, raw[pos + 16:pos + 16 + incl], orig))
        pos += 16 + incl
    return linktype, out


def write_pcap(path: Path, linktype: int, records, order: str = "<") -> Path:
    parts = [struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype)]
    for sec, usec, frame, wire in records:
        parts.append(struct.pack(order + "IIII", sec, usec, len(frame), wire) + frame)
    path.write_bytes(b"".join(parts))
    return path


# -- shaping --------------------------------------------------------------------------------------

def resegment(records, mss: int = 1448):
    """Split Ethernet/IPv4/TCP frames whose payload exceeds ``mss`` into MSS-sized frames.

    Sequence numbers, IP total length and the TCP flags (FIN/PSH only on the last piece) are
    rewritten; checksums are not (the sensor does not verify them).
    """
    out = []
    for sec, usec, f, wire in records:
        if len(f) < 34 or f[12:14] != b"\x08\x00" or f[23] != 6:
            out.append((sec, usec, f, wire))
            continue
        ihl = (f[14] & 0x0F) * 4
        total = struct.unpack_from("!H", f, 16)[0]
        l4 = 14 + ihl
        doff = (f[l4 + 12] >> 4) * 4
        pay = f[l4 + doff:14 + total]
        if len(pay) <= mss or len(f) < 14 + total:
            out.append((sec, usec, f, wire))
            continue
        seq = struct.unpack_from("!I", f, l4 + 4)[0]
        flags = f[l4 + 13]
        head = bytearray(f[:l4 + doff])
        for i in range(0, len(pay), mss):
            piece = pay[i:i + mss]
            h = bytearray(head)
            struct.pack_into("!H", h, 16, ihl + doff + len(piece))
            struct.pack_into("!I", h, l4 + 4, (seq + i) & 0xFFFFFFFF)
            last = i + mss >= len(pay)
            h[l4 + 13] = flags if last else flags & ~0x09  # FIN and PSH only on the last piece
            frame = bytes(h) + piece
            out.append((sec, usec, frame, len(frame)))
    return out


def mangle(records, seed: int, rate: float = 0.02):
    """Reorder neighbours, duplicate, drop, truncate and corrupt frames (seeded)."""
    rng = random.Random(seed)
    recs = list(records)
    out = []
    i = 0
    while i < len(recs):
        sec, usec, f, wire = recs[i]
        r = rng.random()
        if r < rate and i + 1 < len(recs):  # swap with the next one (reordering)
            out.append(recs[i + 1])
            out.append(recs[i])
            i += 2
            continue
        if r < 2 * rate:  # retransmission
            out.append((sec, usec, f, wire))
        elif r < 3 * rate:  # lost
            i += 1
            continue
        elif r < 4 * rate and len(f) > 20:  # snaplen cut
            f = f[:rng.randrange(14, len(f))]
        elif r < 5 * rate and f:  # corrupt one header byte
            b = bytearray(f)
            b[rng.randrange(min(len(b), 80))] = rng.randrange(256)
            f = bytes(b)
        out.append((sec, usec, f, wire))
        i += 1
    return out


SAMPLES = sample_captures()
TIGHT = FlowConfig(max_flows=3, sweep_every=0.25, tcp_idle=2.0, udp_idle=1.0, closed_linger=0.5,
                   max_hold_segments=4, max_hold_bytes=8192)
DICOM_FIXTURE = ROOT / "tests" / "fixtures" / "realstack-dicom.pcap.gz"


def test_compiled_helper_is_built_and_used():
    # `make install` builds sensor._fast._fastpath; only RADSENSOR_FAST=0 may turn it off.
    off = os.environ.get("RADSENSOR_FAST", "1").strip().lower() in ("0", "no", "off", "false")
    assert _fast.COMPILED != off
    if _fast.COMPILED:
        assert _fast.impl.__name__ == "sensor._fast._fastpath"


def test_environment_switch_selects_the_fallback():
    code = "import sensor._fast as f; print(f.COMPILED, f.impl.__name__)"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, RADSENSOR_FAST="0"),
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
    assert out == ["False", "sensor._fast.fallback"]


def test_there_are_sample_captures():
    assert len(SAMPLES) >= 2, SAMPLES


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_sample_capture_fast_equals_fallback(path):
    (ev_f, c_f, tot_f, st_f), (ev_s, c_s, tot_s, _) = run_both([path])
    assert ev_f == ev_s
    assert c_f == c_s
    assert tot_f == tot_s
    assert ev_f, "a sample capture without events proves nothing"
    if _fast.COMPILED and tot_f[0] >= 10_000:
        # the point of the exercise: on a day's traffic most packets never reach Python as tuples
        assert st_f["fast_packets"] + st_f["delivered_packets"] > st_f["slow_packets"]


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_sample_capture_tight_table_fast_equals_fallback(path):
    # Sweeps and evictions every few packets: the compiled loop must write its counts back first.
    (ev_f, c_f, tot_f, _), (ev_s, c_s, tot_s, _) = run_both([path], flows=TIGHT, batch_size=97)
    assert ev_f == ev_s and c_f == c_s and tot_f == tot_s
    if tot_f[0] >= 10_000:
        reasons = {d["close_reason"] for name, d in ev_f if name == "FlowRecord"}
        assert "timeout" in reasons and c_f.get("flows.evicted", 0) > 0


def _mtu1500(tmp_path, src=DICOM_FIXTURE, order="<"):
    linktype, recs = read_pcap(src)
    return write_pcap(tmp_path / f"mtu1500-{order == '<'}.pcap", linktype, resegment(recs), order), len(recs)


@pytest.mark.parametrize("order", ["<", ">"])
def test_resegmented_dicom_fast_equals_fallback_and_uses_skip_credit(tmp_path, order):
    path, n_orig = _mtu1500(tmp_path, order=order)
    (ev_f, c_f, tot_f, st_f), (ev_s, c_s, tot_s, _) = run_both([path])
    assert tot_f[0] > n_orig  # really re-cut
    assert ev_f == ev_s and c_f == c_s and tot_f == tot_s
    dicom = [d for name, d in ev_f if name == "DicomAssociation"]
    assert dicom and all(d["decode_errors"] == 0 for d in dicom)
    if _fast.COMPILED:
        assert st_f["fast_packets"] > 0 and st_f["delivered_packets"] > 0


@pytest.mark.parametrize("seed", range(6))
def test_mangled_streams_fast_equals_fallback(tmp_path, seed):
    linktype, recs = read_pcap(DICOM_FIXTURE)
    hl7_lt, hl7 = read_pcap(ROOT / "tests" / "fixtures" / "realstack-hl7.pcap.gz")
    assert hl7_lt == linktype
    merged = sorted(resegment(recs, 536 + 97 * seed) + hl7, key=lambda r: (r[0], r[1]))
    path = write_pcap(tmp_path / f"mangled-{seed}.pcap", linktype, mangle(merged, seed, rate=0.01 * (seed + 1)))
    for flows in (FlowConfig(), TIGHT):
        (ev_f, c_f, tot_f, _), (ev_s, c_s, tot_s, _) = run_both([path], flows=flows, batch_size=13 + seed)
        assert ev_f == ev_s and c_f == c_s and tot_f == tot_s


def test_several_files_and_gzip_fast_equals_fallback(tmp_path):
    path, _ = _mtu1500(tmp_path)
    files = [path, *SAMPLES[:2]]
    (ev_f, c_f, tot_f, _), (ev_s, c_s, tot_s, _) = run_both(files)
    assert ev_f == ev_s and c_f == c_s and tot_f == tot_s


def test_live_style_batches_use_the_compiled_loop_too(tmp_path):
    # Lists of frames (pcapng files, live capture) take process_frames instead of process_pcap.
    path, _ = _mtu1500(tmp_path)
    with open_capture(path, batch_size=64) as r:
        batches = list(r)
    results = []
    for fast in (True, False):
        events: list = []
        pipe = Pipeline(events.append, PipelineConfig(fast=fast), Counters())
        for b in batches:
            pipe.feed(PacketBatch(b.linktype, list(b.ts), [bytes(f) for f in b.frames], list(b.wirelen), b.source))
        pipe.finish()
        results.append(([e.to_dict() for e in events], pipe.counters.values, pipe.driver.stats()))
    assert results[0][:2] == results[1][:2]
    if _fast.COMPILED:
        assert results[0][2]["fast_packets"] > 0


def test_pcap_blocks_read_like_the_record_loop(tmp_path, monkeypatch):
    # The compiled reader yields PcapBlocks; their lazy columns equal the per-record loop's lists.
    path, _ = _mtu1500(tmp_path)
    flat = {}
    for compiled in (True, False):
        monkeypatch.setattr(_fast, "COMPILED", compiled and _fast.impl is not _fast.fallback)
        with open_capture(path, batch_size=50) as r:
            rows = []
            for b in r:
                assert isinstance(b, PcapBlock) == (compiled and _fast.COMPILED)
                rows += [(t, bytes(f), w) for t, f, w in zip(b.ts, b.frames, b.wirelen)]
            flat[compiled] = (rows, r.records, r.bytes, r.truncated, r.warnings)
    assert flat[True] == flat[False]


def test_damaged_files_warn_identically(tmp_path, monkeypatch):
    path, _ = _mtu1500(tmp_path)
    data = path.read_bytes()
    cases = {
        "cut-in-record": data[:len(data) // 2 + 7],
        "cut-in-header": data[:24 + 16 + 60 + 5],
        "corrupt-caplen": data[:24] + b"\0" * 8 + (10_000_000).to_bytes(4, "little") + data[36:],
    }
    for name, blob in cases.items():
        p = tmp_path / f"{name}.pcap"
        p.write_bytes(blob)
        seen = []
        for compiled in (True, False):
            monkeypatch.setattr(_fast, "COMPILED", compiled and _fast.impl is not _fast.fallback)
            for read_size in (100, 4096, 1 << 20):
                with CaptureReader(p, 7, read_size=read_size) as r:
                    frames = [bytes(f) for b in r for f in b.frames]
                    seen.append((frames, r.records, r.bytes, r.truncated, r.warnings))
        assert all(s == seen[0] for s in seen), name
        assert seen[0][3] == 1 and seen[0][4], name


def test_driver_stats_and_release():
    # After finish every flow was released: nothing left registered on the compiled side.
    (_, _, tot, st), _ = run_both([DICOM_FIXTURE])
    assert tot[5] == 0 and st["flows"] == 0
