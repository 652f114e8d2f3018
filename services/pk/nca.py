"""Non-compartmental analysis of melphalan concentrations: pure functions, no I/O.

Times in minutes, concentrations in ug/mL, so AUCs are in ug*min/mL (the unit
of the published IHHP figures). Both AUC methods are always reported, named:

* ``linear``: the linear trapezoid on every interval;
* ``linlog``: linear-up/log-down, the usual default in PK: the linear
  trapezoid where the concentration rises or stays level, the log trapezoid
  ``(c1 - c2) * dt / ln(c1 / c2)`` where it falls and both ends are above zero
  (a fall to zero is linear: the log of zero is undefined).

Cmax and Tmax are observed values (the first time the maximum is seen).
Fewer than two samples give no AUC, and say so.

After the release (``after_release``): the systemic samples drawn at or after the isolation's
end, apart from those during it. Cmax and Tmax are theirs; the AUC after the release (the
IHHP series' "AUC after washout") runs from the isolation's end to the last sample, the
concentration at the isolation's end taken as that of the last systemic sample drawn before it
(0 without one), so the rise from the release is counted from the release.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Method = Literal["linear", "linlog"]


@dataclass(frozen=True)
class Profile:
    """NCA of one concentration-time profile."""

    n: int
    auc_linear: float | None
    auc_linlog: float | None
    cmax: float | None
    tmax: float | None
    note: str = ""


def _segment(t1: float, c1: float, t2: float, c2: float, method: Method) -> float:
    dt = t2 - t1
    if method == "linlog" and c2 < c1 and c2 > 0.0:
        return (c1 - c2) * dt / math.log(c1 / c2)
    return (c1 + c2) * dt / 2.0


def _check(t: Sequence[float], c: Sequence[float]) -> None:
    if len(t) != len(c):
        raise ValueError("times and concentrations differ in length")
    if any(b <= a for a, b in itertools.pairwise(t)):
        raise ValueError("times must be strictly increasing")
    if any(x < 0 or not math.isfinite(x) for x in c):
        raise ValueError("concentrations must be finite and not negative")


def auc(t: Sequence[float], c: Sequence[float], method: Method) -> float:
    """AUC from the first to the last sample; needs at least two samples."""
    _check(t, c)
    if len(t) < 2:
        raise ValueError("an AUC needs at least two samples")
    return math.fsum(_segment(t[i], c[i], t[i + 1], c[i + 1], method) for i in range(len(t) - 1))


def _at(t1: float, c1: float, t2: float, c2: float, x: float, method: Method) -> float:
    """The concentration at ``x`` between two samples, by the method's own interpolation."""
    f = (x - t1) / (t2 - t1)
    if method == "linlog" and c2 < c1 and c2 > 0.0:
        return c1 * math.pow(c2 / c1, f)
    return c1 + f * (c2 - c1)


def auc_window(t: Sequence[float], c: Sequence[float], start: float, end: float, method: Method) -> float:
    """AUC over ``[start, end]``, interpolating at the edges; the window must lie within the samples."""
    _check(t, c)
    if len(t) < 2 or not t[0] <= start < end <= t[-1]:
        raise ValueError(f"window {start:g}..{end:g} min is not within the samples ({t[0]:g}..{t[-1]:g} min)")
    parts = []
    for i in range(len(t) - 1):
        lo, hi = max(t[i], start), min(t[i + 1], end)
        if lo < hi:
            a = _at(t[i], c[i], t[i + 1], c[i + 1], lo, method)
            b = _at(t[i], c[i], t[i + 1], c[i + 1], hi, method)
            parts.append(_segment(lo, a, hi, b, method))
    return math.fsum(parts)


def profile(t: Sequence[float], c: Sequence[float]) -> Profile:
    """Both AUCs, Cmax and Tmax of one profile (samples in time order)."""
    _check(t, c)
    if not t:
        return Profile(0, None, None, None, None, "no samples")
    i = max(range(len(c)), key=lambda k: (c[k], -k))  # the first time the maximum is seen
    if len(t) == 1:
        return Profile(1, None, None, c[0], t[0], "one sample: no AUC")
    return Profile(len(t), auc(t, c, "linear"), auc(t, c, "linlog"), c[i], t[i])


def peak_after(t: Sequence[float], c: Sequence[float], after: float) -> tuple[float, float] | None:
    """``(Cmax, Tmax)`` of the samples drawn at or after ``after`` (e.g. the end of isolation)."""
    later = [(ci, ti) for ti, ci in zip(t, c, strict=True) if ti >= after]
    if not later:
        return None
    cmax = max(ci for ci, _ in later)
    return cmax, next(ti for ci, ti in later if ci == cmax)


def after_release(t: Sequence[float], c: Sequence[float], release: float) -> Profile | None:
    """NCA of the samples drawn at or after ``release`` (minutes), anchored at the release; None
    without such a sample."""
    _check(t, c)
    after = [(ti, ci) for ti, ci in zip(t, c, strict=True) if ti >= release]
    if not after:
        return None
    before = [ci for ti, ci in zip(t, c, strict=True) if ti < release]
    pts = after if after[0][0] == release else [(release, before[-1] if before else 0.0), *after]
    ts, cs = [x for x, _ in pts], [y for _, y in pts]
    i = max(range(len(after)), key=lambda k: (after[k][1], -k))
    return Profile(len(after), auc(ts, cs, "linear"), auc(ts, cs, "linlog"), after[i][1], after[i][0])


def from_zero(t: Sequence[float], c: Sequence[float]) -> tuple[list[float], list[float]]:
    """The profile with a zero at the drug start (0 min) when no sample was drawn at or before it."""
    if t and t[0] <= 0.0:
        return list(t), list(c)
    return [0.0, *t], [0.0, *c]


def ratio(regional: float | None, systemic: float | None) -> float | None:
    """Regional/systemic ratio; None when either is missing or the systemic figure is zero."""
    if regional is None or systemic is None or systemic <= 0.0:
        return None
    return regional / systemic
