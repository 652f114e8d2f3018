"""A session's time window: the event times its inputs may carry. Pure, no I/O.

One reading stamped far from its session's time (a device whose clock was reset, a gateway
that publishes "now" into a replayed session, a batch with every sample at one wrong time)
must not move the session's clock, its watermarks or its state: every service would take the
true readings after it as late. So every service judges each input's time against its
session's window before it is handled (:class:`isoperf.runtime.ServiceLoop`):

- never more than ``ahead_s`` ahead of the service's own clock;
- no earlier than the session's start (its metadata, else its first accepted input) minus
  ``before_s``;
- no later than the latest time accepted in the session plus ``after_s``.

A time outside is kept aside with its reason and never moves the window. A batch is judged
sample by sample. When a session's inputs really jump on (a gateway back after a long
silence), inputs past the bound that keep coming for ``confirm_s`` of the service's clock,
with none accepted between and agreeing within ``after_s``, move the window there: those
were kept aside, the rest is accepted. A burst of wild inputs never does (it does not last),
nor a device whose clock is wrong beside true ones (the next true input starts it again).

Lab results are drawn earlier than they are reported (hours, days): only the start bound
and the clock bound apply to them, and they do not move the window.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

SESSIONS_REMEMBERED = 10_000


@dataclass(frozen=True, slots=True)
class WindowRules:
    before_s: float = 3600.0
    after_s: float = 900.0
    ahead_s: float = 300.0
    confirm_s: float = 120.0


@dataclass(frozen=True, slots=True)
class Rejection:
    """An input time outside its session's window: why, and how far off (seconds, signed)."""

    t: float
    reason: str
    offset_s: float


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _span(s: float) -> str:
    s = abs(s)
    if s >= 7200:
        return f"{s / 3600:.0f} h"
    if s >= 120:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s"


@dataclass(slots=True)
class _Window:
    start: float | None = None
    latest: float = -math.inf
    jumped_t: float | None = None  # the latest time past the bound, none accepted since
    jumped_since: float | None = None  # the service's clock when such times began to come


class SessionWindows:
    """The windows of the sessions a service has seen."""

    def __init__(self, rules: WindowRules | None = None) -> None:
        self.rules = rules or WindowRules()
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()

    def _window(self, key: tuple[str, str]) -> _Window:
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Window()
            if len(self._windows) > SESSIONS_REMEMBERED:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(key)
        return w

    def started(self, key: tuple[str, str], t: float) -> None:
        """The session's metadata says when it started."""
        self._window(key).start = t

    def judge(self, key: tuple[str, str], t: float, now: float, *, moves: bool = True) -> Rejection | None:
        """None if ``t`` is inside the window (then, if ``moves``, the window takes it in)."""
        r, w = self.rules, self._window(key)
        if t > now + r.ahead_s:
            return Rejection(t, f"time {_when(t)} is {_span(t - now)} ahead of this service's clock", t - now)
        if w.start is not None and t < w.start - r.before_s:
            return Rejection(t, f"time {_when(t)} is {_span(w.start - t)} before the session's start", t - w.start)
        # Before the first input, the session's start stands for its latest.
        latest = w.latest if w.latest > -math.inf else (w.start if w.start is not None else -math.inf)
        if moves and latest > -math.inf and t > latest + r.after_s:
            if self._confirmed(w, t, now):
                w.latest = t
                return None
            why = f"time {_when(t)} is {_span(t - latest)} after the session's latest input"
            return Rejection(t, why, t - latest)
        if moves:
            w.jumped_t = w.jumped_since = None
            w.latest = max(w.latest, t)
            if w.start is None:
                w.start = t
        return None

    def take_all(self, key: tuple[str, str], first: float, low: float, high: float, now: float) -> bool:
        """A batch whose times (the first, the lowest, the highest) all lie inside the window as it
        stands is taken in at once and True returned; otherwise nothing changes (judge each)."""
        r, w = self.rules, self._window(key)
        if high > now + r.ahead_s or (w.start is not None and low < w.start - r.before_s):
            return False
        latest = w.latest if w.latest > -math.inf else (w.start if w.start is not None else -math.inf)
        if latest == -math.inf:
            latest = first  # the first sample opens the window
        if high > latest + r.after_s:
            return False
        w.jumped_t = w.jumped_since = None
        w.latest = max(w.latest, high)
        if w.start is None:
            w.start = first
        return True

    def _confirmed(self, w: _Window, t: float, now: float) -> bool:
        """Inputs past the bound keep coming for ``confirm_s``, agreeing with each other, with none
        accepted between: the session moved on."""
        if w.jumped_t is None or w.jumped_since is None or abs(t - w.jumped_t) > self.rules.after_s:
            w.jumped_since = now  # the first, or one that agrees with none before it
        w.jumped_t = t
        if now - w.jumped_since < self.rules.confirm_s:
            return False
        w.jumped_t = w.jumped_since = None
        return True
