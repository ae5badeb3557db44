"""The rate-shift detector (sensor.detect.rates): calibration, detection, caps, persistence."""

from __future__ import annotations

import json
import math
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from sensor.detect.rates import SERIES, Capture, RateModel, RateTracker, poisson_quantile

SPAN = 60.0
DAY = 86400.0
T0 = datetime(2026, 3, 2, tzinfo=ZoneInfo("UTC")).timestamp()  # a Monday
WS, PACS = "10.0.0.21", "10.0.0.10"


def _day(day: int, rng: np.random.Generator, ws_rate: float, boost: float = 1.0, boost_from_h: float = 24.0):
    """One day of windows: WS retrieves at ws_rate/window in 08-17h (×boost after boost_from_h);
    the PACS sends C-STOREs all day. Only windows with activity exist (as the window builder makes)."""
    t0 = T0 + day * DAY
    keys, starts, rows = [], [], {s.name: [] for s in SERIES}
    for i in range(int(DAY / SPAN)):
        t = t0 + i * SPAN
        h = (t - t0) / 3600
        lam = ws_rate * (boost if h >= boost_from_h else 1.0) if 8 <= h < 17 else 0.0
        n = rng.poisson(lam) if lam else 0
        if n:
            keys.append(WS)
            starts.append(t)
            rows["retrievals"].append(n)
            rows["queries"].append(n + rng.poisson(0.5))
            rows["stores"].append(0)
        m = rng.poisson(3.0)
        if m:
            keys.append(PACS)
            starts.append(t)
            rows["retrievals"].append(0)
            rows["queries"].append(0)
            rows["stores"].append(m)
    return Capture(keys, np.asarray(starts), {k: np.asarray(v, dtype=float) for k, v in rows.items()},
                   t0, t0 + DAY - 1)


def _feed(model: RateModel, cap: Capture):
    tr = RateTracker(model)
    out = []
    order = np.argsort(cap.starts, kind="stable")
    for r in order:
        feats = {"dimse.c_move_rq": cap.counts["retrievals"][r], "dimse.c_find_rq": cap.counts["queries"][r],
                 "dimse.c_store_rq": cap.counts["stores"][r]}
        t = float(cap.starts[r])
        out += [(cap.keys[r], f) for f in tr.update(cap.keys[r], t, t + SPAN, feats)]
    return out


@pytest.fixture(scope="module")
def baseline():
    rng = np.random.default_rng(7)
    days = [_day(d, rng, ws_rate=0.15) for d in range(5)]
    return RateModel.fit(days, SPAN, "UTC", budget=0.1), rng


def test_poisson_quantile_matches_cdf():
    for mean in (0.3, 2.0, 10.0, 57.5):
        n = poisson_quantile(mean, 0.99)
        cdf = lambda k: sum(math.exp(-mean) * mean ** i / math.factorial(i) for i in range(k + 1))  # noqa: E731
        assert cdf(n) >= 0.99 > cdf(n - 1)


def test_profiles_learn_time_of_day(baseline):
    model, _ = baseline
    prof = model.profiles[(WS, "retrievals")]
    day, night = prof.rates[0, 12], prof.rates[0, 2]
    assert 0.1 < day < 0.2  # generated at 0.15 per window
    assert night < 0.02
    assert (PACS, "retrievals") not in model.profiles  # never retrieves: not tracked
    assert model.meta["method"] == "leave_one_capture_out"
    assert prof.h >= 4.0


def test_normal_days_stay_quiet_and_tripled_rate_is_caught(baseline):
    model, rng = baseline
    quiet = sum(len(_feed(model, _day(10 + d, rng, ws_rate=0.15))) for d in range(3))
    assert quiet <= 1  # budget 0.1 per device-day over 6 device-days, split over 3 series
    found = _feed(model, _day(20, rng, ws_rate=0.15, boost=3.0, boost_from_h=10.0))
    ws = [f for ip, f in found if ip == WS and f.series == "retrievals"]
    assert ws, found
    first = ws[0]
    t_rise = T0 + 20 * DAY + 10 * 3600
    assert first.end > t_rise
    assert first.end - t_rise < 3 * 3600  # a 3x rise at ~0.3/min shows within hours, not at day end
    assert first.observed > first.expected * 1.5
    assert all(ip == WS for ip, _ in found)


def test_one_burst_window_is_capped(baseline):
    model, _ = baseline
    tr = RateTracker(model)
    t = T0 + 30 * DAY + 12 * 3600
    # fifty retrievals in one minute is a window-model matter; the rate detector counts it as the
    # device's usual burst size
    assert tr.update(WS, t, t + SPAN, {"dimse.c_move_rq": 50}) == []
    st = tr._state[(WS, "retrievals")]
    cap = model.profiles[(WS, "retrievals")].cap
    assert cap < 50
    assert st.s <= cap * math.log(2)  # the statistic saw the capped count...
    assert st.obs == 50  # ...the evidence reports what was on the wire


def test_silence_resets_the_statistic(baseline):
    model, _ = baseline
    tr = RateTracker(model)
    t = T0 + 40 * DAY + 9 * 3600
    for i in range(4):
        tr.update(WS, t + i * SPAN, t + (i + 1) * SPAN, {"dimse.c_move_rq": 1})
    assert tr._state[(WS, "retrievals")].s > 0
    later = t + 6 * 3600  # six quiet working hours pay the statistic back
    tr.update(WS, later, later + SPAN, {})
    assert tr._state[(WS, "retrievals")].s == 0


def test_local_time_zone_shifts_the_profile():
    rng = np.random.default_rng(3)
    days = [_day(d, rng, ws_rate=0.2) for d in range(3)]
    utc = RateModel.fit(days, SPAN, "UTC")
    ny = RateModel.fit(days, SPAN, "America/New_York")  # UTC-5 in early March
    assert utc.profiles[(WS, "retrievals")].rates[0, 12] > 0.1
    assert ny.profiles[(WS, "retrievals")].rates[0, 7] > 0.1  # 12:00 UTC is 07:00 in New York
    assert ny.profiles[(WS, "retrievals")].rates[0, 12] < 0.1


def test_round_trip_gives_identical_findings(baseline):
    model, rng = baseline
    again = RateModel.from_dict(json.loads(json.dumps(model.to_dict())))
    day = _day(50, rng, ws_rate=0.15, boost=4.0, boost_from_h=9.0)
    a, b = _feed(model, day), _feed(again, day)
    assert [(ip, f.series, f.end) for ip, f in a] == [(ip, f.series, f.end) for ip, f in b]
    assert a


def test_from_dict_rejects_nonsense(baseline):
    model, _ = baseline
    d = model.to_dict()
    d["profiles"][0]["rates"] = [0.0] * 48
    with pytest.raises(ValueError):
        RateModel.from_dict(d)


def test_evidence_counts_match_the_decoded_dimse_on_real_traffic():
    """Findings on the attack sample, checked against the DIMSE events themselves."""
    from sensor.detect.artifact import ModelArtifact
    from sensor.events import DimseMessage
    from sensor.features.windows import iter_windows
    from sensor.pipeline import iter_events

    art = ModelArtifact.load("models/demo.rsm")
    assert art.rates is not None
    events = list(iter_events(["pcaps/attack-day.pcap"]))
    tr = RateTracker(art.rates)
    found = []
    for w in sorted(iter_windows(events, art.window), key=lambda w: w.start):
        found += [(w.ip, f) for f in tr.update(w.ip, w.start, w.end, w.features)]
    retr = [(ip, f) for ip, f in found if f.series == "retrievals"]
    assert retr, "the attack sample's retrieval increase gives no rate finding"
    for ip, f in retr:
        # windows attribute a request to its device window by request time, [start, end)
        sent = sum(1 for e in events if isinstance(e, DimseMessage) and e.command in ("C-MOVE", "C-GET")
                   and e.requested_by == "requestor" and e.client.ip == ip and f.start <= e.ts < f.end)
        assert f.observed == sent, (ip, f)
        assert f.observed > f.expected


def test_evidence_older_than_a_shift_does_not_carry_into_an_alert():
    from sensor.detect.rates import Profile

    # a device that is almost never busy: silence pays S back very slowly
    model = RateModel(SPAN, "UTC", {(WS, "retrievals"): Profile(np.full((2, 24), 0.001), 1, 6.0)})
    t = T0 + 70 * DAY + 2 * 3600
    tr = RateTracker(model)
    for k in range(8):  # 8 x ln 2 = 5.5 nats: just under the threshold
        assert tr.update(WS, t + k * SPAN, t + (k + 1) * SPAN, {"dimse.c_move_rq": 1}) == []
    later = t + 9 * 3600
    found = []
    for k in range(2):  # two more reads would make 6.9 nats with the night's
        found += tr.update(WS, later + k * SPAN, later + (k + 1) * SPAN, {"dimse.c_move_rq": 1})
    assert found == []
    assert tr._state[(WS, "retrievals")].run_start >= later
    # the same two reads within the shift do alert
    tr2 = RateTracker(model)
    for k in range(10):
        found += tr2.update(WS, t + k * SPAN, t + (k + 1) * SPAN, {"dimse.c_move_rq": 1})
    assert [f.series for f in found] == ["retrievals"] and found[0].observed == 9
