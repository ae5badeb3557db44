"""Hypothesis properties: segmentation never changes what is decoded; garbage never raises."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.events import DicomAssociation, DimseMessage, Weird
from sensor.protocols.dicom.analyzer import DicomAnalyzer, looks_like_dicom
from tests.test_dicom_streams import feed, make_ctx, recordings, runs

SCENARIOS = ("echo", "store", "query", "commit", "reject", "abort")
_REFERENCE: dict[str, list[dict]] = {}


def _reference(name: str) -> list[dict]:
    if name not in _REFERENCE:
        events, _ = feed(runs(recordings()[name][0]))
        _REFERENCE[name] = [e.to_dict() for e in events]
    return _REFERENCE[name]


def _rechunk(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(SCENARIOS), seed_cuts=st.lists(st.integers(0, 1 << 20), max_size=40))
def test_any_rechunking_gives_identical_events(name, seed_cuts):
    # Each run (consecutive bytes of one direction) keeps its timestamp and is cut at random
    # places; the two directions stay interleaved in their recorded order.
    stream = []
    for fc, ts, data in runs(recordings()[name][0]):
        for piece in _rechunk(data, seed_cuts):
            stream.append((fc, ts, piece))
    events, counters = feed(stream)
    assert [e.to_dict() for e in events] == _reference(name)
    assert counters.get("weird.dicom.internal") == 0


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(SCENARIOS), size=st.integers(1, 97))
def test_fixed_small_chunks_give_identical_events(name, size):
    events, _ = feed(runs(recordings()[name][0]), chunk_size=size)
    assert [e.to_dict() for e in events] == _reference(name)


def _only_counted(events, counters) -> None:
    assert counters.get("weird.dicom.internal") == 0
    for e in events:
        assert isinstance(e, (Weird, DicomAssociation, DimseMessage))
        if isinstance(e, Weird):
            assert e.name.startswith("dicom.")
            assert not any(ch.isalpha() for ch in e.detail)  # numbers only, never payload


@settings(max_examples=200, deadline=None)
@given(blobs=st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=12), mid=st.booleans())
def test_random_bytes_never_raise(blobs, mid):
    ctx, events = make_ctx(mid)
    an = DicomAnalyzer(ctx)
    for i, (fc, blob) in enumerate(blobs):
        an.data(fc, float(i), memoryview(blob))
        if i % 5 == 4:
            an.gap(fc, float(i), len(blob) + 1)
    an.close(99.0, "eof")
    _only_counted(events, ctx.counters)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(SCENARIOS),
    mutations=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=10),
)
def test_mutated_real_streams_never_raise(name, mutations, cuts):
    stream = []
    for fc, ts, data in runs(recordings()[name][0]):
        buf = bytearray(data)
        for at, val in mutations:
            buf[at % len(buf)] = val
        for piece in _rechunk(bytes(buf), cuts):
            stream.append((fc, ts, piece))
    events, counters = feed(stream)
    _only_counted(events, counters)


@settings(max_examples=300, deadline=None)
@given(first=st.binary(max_size=80), from_client=st.booleans())
def test_probe_never_raises(first, from_client):
    assert looks_like_dicom(first, from_client) in (True, False, None)
