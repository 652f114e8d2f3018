"""A session's time window: wild times kept out, true ones in, a real jump followed."""

from __future__ import annotations

from isoperf.timewindow import SessionWindows, WindowRules

KEY = ("th-1", "se-1")
T0 = 1_767_225_600.0


def test_a_wild_time_is_refused_with_its_reason_and_moves_nothing() -> None:
    w = SessionWindows(WindowRules(before_s=3600, after_s=900, ahead_s=300))
    w.started(KEY, T0)
    now = T0 + 600
    for t in range(int(T0), int(T0) + 600):
        assert w.judge(KEY, float(t), now) is None
    ahead = w.judge(KEY, T0 + 5 * 3600, now)
    assert ahead is not None and "5 h ahead of this service's clock" in ahead.reason
    assert ahead.offset_s == 5 * 3600 - 600
    behind = w.judge(KEY, T0 - 3 * 3600, now)
    assert behind is not None and "3 h before the session's start" in behind.reason
    # In a replay (the service's clock far ahead of the session) only the session bounds hold.
    later = w.judge(KEY, T0 + 4 * 3600, now=T0 + 86_400)
    assert later is not None and "after the session's latest input" in later.reason
    year_3000 = w.judge(KEY, 32_503_680_000.0, now=T0 + 86_400 * 3650)
    assert year_3000 is not None
    assert w.judge(KEY, T0 + 600, now) is None, "the true times go on as if nothing had come"


def test_a_burst_of_wild_times_never_moves_the_window_but_a_session_that_jumps_on_does() -> None:
    w = SessionWindows(WindowRules(after_s=900, confirm_s=120))
    w.started(KEY, T0)
    assert w.judge(KEY, T0 + 10, T0 + 10) is None
    far = T0 + 7200
    now = far
    assert all(w.judge(KEY, far, now=now) is not None for _ in range(100)), "a batch at one time"
    assert all(w.judge(KEY, far + i, now=now) is not None for i in range(100)), "a burst of wild times"
    # A gateway back after two hours of silence: its readings keep coming, one a second; after two
    # minutes of them (and no true input between) the window follows.
    refused = [w.judge(KEY, far + 100 + i, now=now + i) for i in range(1, 131)]
    assert all(r is not None for r in refused[:119]) and all(r is None for r in refused[120:])
    # One true input between wild ones starts it again: a device with a wrong clock beside true ones.
    w2 = SessionWindows(WindowRules(after_s=900, confirm_s=120))
    assert w2.judge(KEY, T0, T0) is None
    for i in range(300):
        assert w2.judge(KEY, far + i, now=T0 + i) is not None
        assert w2.judge(KEY, T0 + i, now=T0 + i) is None


def test_lab_results_drawn_long_before_their_report_are_inside_and_move_nothing() -> None:
    w = SessionWindows()
    w.started(KEY, T0)
    w.judge(KEY, T0 + 3000, T0 + 3000)
    assert w.judge(KEY, T0 + 1200, now=T0 + 86_400, moves=False) is None
    assert w.judge(KEY, T0 - 7200, now=T0 + 86_400, moves=False) is not None
