"""Sustained rate shifts: a per-device CUSUM on access counts against its time-of-day baseline.

The window model judges one window at a time. A workstation that quietly reads two or three times
its usual number of studies over a working day produces windows that each look normal (one read
here, one there); only the *rate* is wrong. This detector keeps, per device and per access series
(studies retrieved, C-FIND queries, C-STORE requests sent), a one-sided Poisson CUSUM:

    S ← max(0, S + x·ln k − (k − 1)·λ(t))

with ``x`` the window's count (capped at the device's usual per-window burst, so a single busy
minute is the window model's business, not this one's), ``λ(t)`` the device's baseline expected
count per window at that hour of the day (weekday/weekend apart when the baseline covers both,
site time zone), and ``k = 2``: the log-likelihood ratio of "rate doubled" against "baseline
rate". Windows in which the device was silent subtract their expected counts. An alert is raised
when ``S`` reaches the series' threshold ``h``; its evidence is the count observed since the
CUSUM last stood at zero against what the baseline expected over that span.

``h`` is calibrated leave-one-capture-out: each baseline capture is scored with rates learnt from
the others; the heights of its excursions (from 0 back to 0) are collected per device and series,
and ``h`` is set where their fitted exponential tail is crossed ``budget`` times per device-day. Devices with too few
baseline events for a series are not tracked for it: a device that starts doing something it
never did is the novelty rules' and the window model's case.

Example::

    >>> rm = RateModel.fit(parts, span=60.0, tz="Europe/Berlin")      # doctest: +SKIP
    >>> tracker = RateTracker(rm)                                      # doctest: +SKIP
    >>> tracker.update("10.20.2.11", w.start, w.end, w.features)       # doctest: +SKIP
    [RateFinding(series='retrievals', ...)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

K_SHIFT = 2.0  # the rate multiple the CUSUM is tuned to detect
LN_K = math.log(K_SHIFT)
MIN_EVENTS = 20  # baseline events of a series before a device is tracked for it
MIN_SLOTS = 60  # windows of coverage per (day class, hour) before weekday/weekend are kept apart
H_FLOOR = 4.0  # nats: never alert on less evidence than a ~55:1 likelihood ratio
GAP_HOURS_MAX = 72  # decay over longer silences is not worth computing: S is 0 long before
DAY = 86400.0
MAX_RUN = 8 * 3600.0  # evidence older than a shift does not carry into a new alert


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    features: tuple[str, ...]
    description: str
    attack: tuple[str, ...]


SERIES: tuple[Series, ...] = (
    Series("retrievals", ("dimse.c_move_rq", "dimse.c_get_rq"), "studies retrieved (C-MOVE/C-GET requests)",
           ("T1005",)),
    Series("queries", ("dimse.c_find_rq",), "C-FIND queries", ("T1119",)),
    Series("stores", ("dimse.c_store_rq",), "C-STORE requests sent", ("T1048",)),
)
SERIES_BY_NAME = {s.name: s for s in SERIES}


@dataclass(slots=True)
class Capture:
    """One baseline capture as the rate model needs it (from ``training.baseline.CaptureWindows``)."""

    keys: Sequence[str]
    starts: np.ndarray
    counts: dict[str, np.ndarray]  # series name → per-window count (raw, uncapped)
    t0: float | None
    t1: float | None


@dataclass(slots=True)
class Profile:
    rates: np.ndarray  # (2, 24): expected count per window, [weekday, weekend] × local hour
    cap: int  # per-window count cap
    h: float = math.inf  # alert threshold (nats), set by calibration


@dataclass(slots=True)
class RateFinding:
    series: str
    start: float  # when the CUSUM last stood at zero
    end: float
    observed: float  # count since start (as counted on the wire; the statistic uses capped counts)
    expected: float  # baseline expectation over the same span
    statistic: float
    threshold: float

    @property
    def ratio(self) -> float:
        return self.observed / self.expected if self.expected > 0 else math.inf


def tail_threshold(heights: np.ndarray, device_days: float, budget: float) -> float:
    """The excursion height reached at most ``budget`` times per device-day.

    CUSUM excursion heights have an exponential tail, so the tail above the 90th percentile is
    fitted (peaks over threshold, mean excess) and extrapolated when the budget lies beyond what
    the baseline could show; with too few excursions, twice the highest one.

    >>> rng = np.random.default_rng(0)
    >>> h = tail_threshold(rng.exponential(1.0, 10_000), device_days=10, budget=1.0)
    >>> 6.0 < h < 8.5   # 10 of 10,000 draws above h: about ln(1000) = 6.9
    True
    """
    heights = np.sort(np.asarray(heights, dtype=np.float64))
    if heights.size < 20:
        return max(H_FLOOR, 2.0 * float(heights[-1]) if heights.size else H_FLOOR)
    u0 = float(np.quantile(heights, 0.9))
    over = heights[heights > u0] - u0
    if over.size < 5:
        return max(H_FLOOR, 2.0 * float(heights[-1]))
    rate_u0 = over.size / max(device_days, 1e-9)
    if rate_u0 <= budget:
        return max(H_FLOOR, u0)
    return max(H_FLOOR, u0 + float(over.mean()) * math.log(rate_u0 / budget))


def poisson_quantile(mean: float, q: float = 0.99) -> int:
    """Smallest n with P(N ≤ n) ≥ q for N ~ Poisson(mean).

    >>> poisson_quantile(10.0), poisson_quantile(0.0)
    (18, 0)
    """
    if mean <= 0:
        return 0
    if mean > 500:  # normal approximation; the exact sum underflows
        return int(math.ceil(mean + 2.326 * math.sqrt(mean)))
    n, p = 0, math.exp(-mean)
    c = p
    while c < q:
        n += 1
        p *= mean / n
        c += p
    return n


class _Clock:
    """Local (day class, hour) of a window start, cached per UTC hour."""

    __slots__ = ("tz", "_cache")

    def __init__(self, tz: str) -> None:
        self.tz = ZoneInfo(tz)
        self._cache: dict[int, tuple[int, int]] = {}

    def slot(self, t: float) -> tuple[int, int]:
        hour = int(t // 3600)
        v = self._cache.get(hour)
        if v is None:
            lt = datetime.fromtimestamp(hour * 3600 + 1800, self.tz)  # mid-hour: half-hour zones too
            v = self._cache[hour] = (1 if lt.weekday() >= 5 else 0, lt.hour)
            if len(self._cache) > 100_000:
                self._cache.clear()
        return v


def _coverage(captures: Sequence[Capture], span: float, clock: _Clock) -> np.ndarray:
    """Windows of capture time per (day class, hour), summed over ``captures``."""
    cov = np.zeros((2, 24))
    for c in captures:
        if c.t0 is None or c.t1 is None:
            continue
        t = math.floor(c.t0 / span) * span
        while t <= c.t1:
            # whole UTC hours at a time: every window in it has the same slot
            nxt = min((math.floor(t / 3600) + 1) * 3600, c.t1 + span)
            n = max(1, math.ceil((nxt - t) / span))
            cls, h = clock.slot(t)
            cov[cls, h] += n
            t += n * span
    return cov


def _rates(total: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Expected count per window per (day class, hour), smoothed over neighbouring hours."""
    pooled_total, pooled_cov = total.sum(0), cov.sum(0)
    overall = pooled_total.sum() / max(pooled_cov.sum(), 1.0)
    out = np.empty((2, 24))
    for cls in (0, 1):
        for h in range(24):
            if cov[cls, h] >= MIN_SLOTS:
                out[cls, h] = total[cls, h] / cov[cls, h]
            elif pooled_cov[h] > 0:
                out[cls, h] = pooled_total[h] / pooled_cov[h]
            else:
                out[cls, h] = overall
    # Shifts and schedules wander by an hour; a read at 07:55 is not a surprise because 08:00 is busy.
    smooth = 0.5 * out + 0.25 * (np.roll(out, 1, axis=1) + np.roll(out, -1, axis=1))
    floor = max(0.05 * overall, 1.0 / max(pooled_cov.sum(), 1.0))
    return np.maximum(smooth, floor)


class RateModel:
    """Per-device time-of-day rate profiles, each with its CUSUM threshold."""

    def __init__(self, span: float, tz: str, profiles: dict[tuple[str, str], Profile],
                 meta: dict[str, Any] | None = None) -> None:
        self.span, self.tz = float(span), tz
        self.profiles = profiles
        self.meta = meta or {}

    # ---- fitting ------------------------------------------------------------------------------

    @staticmethod
    def _profiles(captures: Sequence[Capture], slots: Sequence[np.ndarray], span: float,
                  clock: _Clock) -> dict[tuple[str, str], Profile]:
        # per device: which captures it appears in (its coverage), counts per slot, burst cap;
        # slots[i]: (day class, hour) of each window of captures[i]
        seen: dict[str, list[int]] = {}
        for i, c in enumerate(captures):
            for k in set(c.keys):
                seen.setdefault(k, []).append(i)
        cov_cache: dict[tuple[int, ...], np.ndarray] = {}
        out: dict[tuple[str, str], Profile] = {}
        keys_a = [np.asarray(c.keys) for c in captures]
        for ip, idx in seen.items():
            ck = tuple(idx)
            if ck not in cov_cache:
                cov_cache[ck] = _coverage([captures[i] for i in idx], span, clock)
            cov = cov_cache[ck]
            for s in SERIES:
                total = np.zeros((2, 24))
                nonzero: list[np.ndarray] = []
                for i in idx:
                    m = keys_a[i] == ip
                    x = captures[i].counts[s.name][m]
                    sl = slots[i][m]
                    np.add.at(total, (sl[:, 0], sl[:, 1]), x)
                    nonzero.append(x[x > 0])
                nz = np.concatenate(nonzero) if nonzero else np.zeros(0)
                if nz.sum() < MIN_EVENTS:
                    continue
                cap = max(1, int(math.ceil(np.quantile(nz, 0.95))))
                out[(ip, s.name)] = Profile(_rates(total, cov), cap)
        return out

    @classmethod
    def fit(cls, captures: Sequence[Capture], span: float, tz: str, budget: float = 0.1) -> RateModel:
        """Profiles from every capture; a threshold per (device, series) from leave-one-capture-out
        CUSUM excursions.

        ``budget``: alerts per device-day allowed on the baseline, shared equally by the series.
        """
        clock = _Clock(tz)
        slots = [np.array([clock.slot(t) for t in c.starts], dtype=np.int64).reshape(-1, 2) for c in captures]
        profiles = cls._profiles(captures, slots, span, clock)
        peaks: dict[tuple[str, str], list[float]] = {k: [] for k in profiles}
        days: dict[str, float] = {}
        method = "leave_one_capture_out" if len(captures) >= 2 else "in_sample"
        for i, c in enumerate(captures):
            others = [j for j in range(len(captures)) if j != i]
            held = profiles if not others else cls._profiles(
                [captures[j] for j in others], [slots[j] for j in others], span, clock)
            for key, m in cls(span, tz, held)._excursions(c, clock).items():
                if key in peaks:
                    peaks[key] += m
            if c.t0 is not None and c.t1 is not None:
                for ip in set(c.keys):
                    days[ip] = days.get(ip, 0.0) + max((c.t1 - c.t0) / DAY, 1 / 24)
        per_series = budget / len(SERIES)
        for (ip, name), prof in profiles.items():
            prof.h = tail_threshold(np.asarray(peaks[(ip, name)]), days.get(ip, 1.0), per_series)
        meta = {"method": method, "k": K_SHIFT, "budget_per_device_day": budget,
                "device_days": round(sum(days.values()), 2)}
        return cls(span, tz, profiles, meta)

    def _excursions(self, c: Capture, clock: _Clock) -> dict[tuple[str, str], list[float]]:
        """Per tracked (device, series): the height of every CUSUM excursion over capture ``c``."""
        out: dict[tuple[str, str], list[float]] = {}
        keys = np.asarray(c.keys)
        order = np.argsort(c.starts, kind="stable")
        for ip in sorted(set(c.keys)):
            rows = order[keys[order] == ip]
            for s in SERIES:
                prof = self.profiles.get((ip, s.name))
                if prof is None or not rows.size:
                    continue
                st = _State(c.t0 if c.t0 is not None else float(c.starts[rows[0]]))
                x_all = c.counts[s.name]
                heights: list[float] = []
                top = 0.0
                for r in rows:
                    t = float(c.starts[r])
                    self._step(st, prof, t, t + self.span, float(x_all[r]), clock)
                    if st.s > top:
                        top = st.s
                    elif st.s == 0.0 and top > 0.0:
                        heights.append(top)
                        top = 0.0
                if top > 0.0:
                    heights.append(top)
                out[(ip, s.name)] = heights
        return out

    # ---- the CUSUM step -----------------------------------------------------------------------

    def expected(self, prof: Profile, t0: float, t1: float, clock: _Clock) -> float:
        """Expected count between t0 and t1 (window units, hour by hour)."""
        if t1 <= t0:
            return 0.0
        total, t = 0.0, t0
        end = min(t1, t0 + GAP_HOURS_MAX * 3600)
        while t < end:
            nxt = min((math.floor(t / 3600) + 1) * 3600, end)
            cls, h = clock.slot(t)
            total += prof.rates[cls, h] * (nxt - t) / self.span
            t = nxt
        return total

    def _step(self, st: _State, prof: Profile, start: float, end: float, x: float, clock: _Clock) -> None:
        if start > st.t:  # silent windows since the last update
            lam = self.expected(prof, st.t, start, clock)
            st.s -= (K_SHIFT - 1) * lam
            st.exp += lam
            if st.s <= 0:
                st.reset(start)
        if start - st.run_start > MAX_RUN:
            # Night rates are near zero, so a few off-hours reads would otherwise linger in S until
            # the morning's ordinary traffic tips it over; a rise the analyst can act on is recent.
            st.reset(start)
        cls, h = clock.slot(start)
        lam = prof.rates[cls, h] * (end - start) / self.span
        xc = min(x, prof.cap)
        st.s += xc * LN_K - (K_SHIFT - 1) * lam
        st.obs += x
        st.exp += lam
        st.t = end
        if st.s <= 0:
            st.reset(end)

    # ---- persistence --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "span": self.span, "tz": self.tz, "k": K_SHIFT, "meta": self.meta,
            # full float repr: a loaded model must score exactly as the one that was saved
            "profiles": [{"ip": ip, "series": s, "cap": p.cap, "h": float(p.h),
                          "rates": [float(v) for v in p.rates.ravel()]}
                         for (ip, s), p in sorted(self.profiles.items())],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RateModel:
        profiles = {}
        for p in d["profiles"]:
            if p["series"] not in SERIES_BY_NAME:
                continue  # a series this version does not know: ignore, do not guess
            rates = np.asarray(p["rates"], dtype=np.float64)
            h = float(p["h"])
            if rates.size != 48 or not np.all(np.isfinite(rates)) or np.any(rates <= 0) or not h >= H_FLOOR:
                raise ValueError("bad rate profile")
            profiles[(str(p["ip"]), p["series"])] = Profile(rates.reshape(2, 24), int(p["cap"]), h)
        return cls(float(d["span"]), str(d["tz"]), profiles, d.get("meta", {}))

    def summary(self) -> str:
        parts = []
        for s in SERIES:
            hs = [p.h for k, p in self.profiles.items() if k[1] == s.name]
            parts.append(f"{s.name} {len(hs)} devices" + (f" (h {min(hs):.1f}-{max(hs):.1f})" if hs else ""))
        return f"CUSUM k={K_SHIFT:g}: " + ", ".join(parts)


class _State:
    __slots__ = ("s", "t", "run_start", "obs", "exp")

    def __init__(self, t: float) -> None:
        self.t = t
        self.reset(t)

    def reset(self, t: float) -> None:
        self.s, self.run_start, self.obs, self.exp = 0.0, t, 0.0, 0.0


class RateTracker:
    """Detection-time state: feed each device's finished windows in time order."""

    def __init__(self, model: RateModel) -> None:
        self.model = model
        self.clock = _Clock(model.tz)
        self._state: dict[tuple[str, str], _State] = {}
        self._by_ip: dict[str, list[tuple[Series, Profile]]] = {}
        for s in SERIES:  # a fixed series order: findings come out in the same order however loaded
            for (ip, name), prof in model.profiles.items():
                if name == s.name:
                    self._by_ip.setdefault(ip, []).append((s, prof))

    def tracked(self, ip: str) -> bool:
        return ip in self._by_ip

    def update(self, ip: str, start: float, end: float, features: dict[str, float]) -> list[RateFinding]:
        out: list[RateFinding] = []
        for s, prof in self._by_ip.get(ip, ()):
            st = self._state.get((ip, s.name))
            if st is None:
                st = self._state[(ip, s.name)] = _State(start)
            elif start < st.t:
                continue  # out of order (should not happen: windows finish in time order)
            x = 0.0
            for f in s.features:
                x += features.get(f, 0.0)
            self.model._step(st, prof, start, end, x, self.clock)
            h = prof.h
            if st.s >= h:
                out.append(RateFinding(s.name, st.run_start, end, st.obs, st.exp, st.s, h))
                st.reset(end)
        return out


__all__ = ["SERIES", "Capture", "RateFinding", "RateModel", "RateTracker", "Series", "poisson_quantile"]
