"""Event-time order across input streams (isoperf.eventtime)."""

from __future__ import annotations

import pytest

from isoperf.eventtime import EventTimeOrder


def order(hold_s: float = 30.0) -> EventTimeOrder[str]:
    return EventTimeOrder(("readings", "events", "leakage"), hold_s)


def test_a_stream_not_expected_holds_nothing_back() -> None:
    o = order()
    o.add("readings", 10.0, "r10", now=0.0)
    o.add("events", 11.0, "e11", now=0.0)
    assert [r.item for r in o.ready(now=0.0)] == ["r10", "e11"]


def test_inputs_wait_until_the_slower_stream_has_passed_their_time_then_go_in_event_time_order() -> None:
    o = order()
    o.expect("leakage")
    o.add("readings", 10.0, "r10", now=0.0)
    o.add("events", 12.0, "isolation_end", now=0.0)
    o.add("readings", 13.0, "r13", now=0.0)
    assert o.ready(now=1.0) == [] and len(o) == 3
    assert o.behind(12.0) == ["leakage"]
    o.add("leakage", 11.0, "l11", now=1.0)
    assert [r.item for r in o.ready(now=1.0)] == ["r10", "l11"]
    o.add("leakage", 12.0, "l12", now=2.0)
    released = o.ready(now=2.0)
    assert [r.item for r in released] == ["isolation_end", "l12"], "at equal times in arrival order"
    assert not any(r.forced or r.late for r in released)
    assert [r.item for r in o.ready(now=2.0)] == [] and len(o) == 1


def test_progress_without_an_input_releases_too() -> None:
    o = order()
    o.expect("leakage")
    o.add("events", 5.0, "e5", now=0.0)
    o.advance("leakage", 5.0)
    assert [r.item for r in o.ready(now=0.0)] == ["e5"]


def test_the_bound_lets_inputs_go_on_with_everything_before_them_then_late_ones_go_at_once() -> None:
    o = order(hold_s=30.0)
    o.expect("leakage")
    o.add("readings", 10.0, "r10", now=0.0)
    o.add("events", 20.0, "session_end", now=5.0)
    o.add("readings", 30.0, "r30", now=40.0)
    released = o.ready(now=35.0)
    assert [(r.item, r.forced) for r in released] == [("r10", True), ("session_end", True)]
    assert o.released_until == 20.0 and len(o) == 1, "r30 has its own 30 s"
    o.add("leakage", 15.0, "l15", now=36.0)
    late = o.ready(now=36.0)
    assert [(r.item, r.late, r.forced) for r in late] == [("l15", True, False)], "too late to hold: at once"
    assert [r.item for r in o.ready(now=70.0)] == ["r30"]


def test_watermarks_only_move_forward_and_streams_are_named() -> None:
    o = order()
    o.advance("leakage", 10.0)
    o.advance("leakage", 5.0)
    assert o.watermarks["leakage"] == 10.0
    o.expect("leakage")
    assert o.frontier == 10.0
    o.expect("events")
    assert o.frontier == -float("inf"), "an expected stream never heard of holds the frontier at the start"
    with pytest.raises(KeyError, match="unknown stream"):
        o.add("lab", 1.0, "x", now=0.0)
    assert order().frontier == float("inf"), "nothing expected: nothing holds"
    assert order().oldest_wait(now=5.0) == 0.0


def test_held_lists_what_is_waiting_in_event_time_order() -> None:
    o = order()
    o.expect("leakage")
    o.add("readings", 3.0, "r3", now=0.0)
    o.add("events", 1.0, "e1", now=0.0)
    assert o.held() == [("events", 1.0, "e1"), ("readings", 3.0, "r3")]
    assert o.oldest_wait(now=4.0) == 4.0
