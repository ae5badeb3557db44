"""Regenerate the committed golden captures in tests/fixtures/ from the real stacks.

    .venv/bin/python -m tests.realstack.make_fixtures [--out tests/fixtures]

Writes ``realstack-dicom.pcap.gz``, ``realstack-hl7.pcap.gz`` (gzip: the synthetic pixel data
compresses to almost nothing; total well under 2 MB) and ``realstack-expected.json``: what the
scenarios did (AE titles, UIDs, counts, sizes; no patient data), keyed by capture file name.
Needs root (tcpdump on lo).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
from pathlib import Path

from tests.realstack.runs import dicom_run, hl7_run

LIMIT = 2 * 1024 * 1024


def _gz(src: Path, dst: Path) -> int:
    with open(src, "rb") as f, gzip.GzipFile(dst, "wb", compresslevel=9, mtime=0) as g:
        shutil.copyfileobj(f, g)
    return dst.stat().st_size


def _plain(o):
    if isinstance(o, bytes):
        return None  # raw HL7 bytes carry the fake PHI; only derived fields are kept
    if isinstance(o, Path):
        return o.name
    raise TypeError(type(o))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "fixtures")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from tests.realstack.hl7_scenarios import expected_fields
    with tempfile.TemporaryDirectory() as tmp:
        d = dicom_run(Path(tmp))
        h = hl7_run(Path(tmp))
        total = _gz(d["pcap"], args.out / "realstack-dicom.pcap.gz")
        total += _gz(h["pcap"], args.out / "realstack-hl7.pcap.gz")
        hl7_expected = [{"client_port": x["client_port"], "request": expected_fields(x["request"]),
                         "reply": expected_fields(x["reply"])} for x in h["sent"]["exchanges"]]
        expected = {
            "realstack-dicom.pcap.gz": {"ports": d["ports"], "associations": d["expected"]["associations"]},
            "realstack-hl7.pcap.gz": {"ports": h["ports"], "messages": hl7_expected},
        }
        (args.out / "realstack-expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True,
                                                                      default=_plain) + "\n")
    print(f"wrote {total} bytes of captures to {args.out}")
    if total > LIMIT:
        print(f"captures exceed {LIMIT} bytes")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
