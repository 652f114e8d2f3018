"""The report's own figures and helpers, on hand-checked values."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from isoperf.tools.report import table
from isoperf.tools.report_figures import Clock, _stagger, matching_auc

T0 = pd.Timestamp("2026-07-01 08:00:00", tz="UTC")


def test_close_event_labels_are_staggered_and_distant_ones_are_not() -> None:
    assert _stagger([0.0, 0.5, 1.0, 10.0, 20.0], width=2.0) == [0, 1, 2, 0, 0]


def test_elapsed_and_local_time_in_the_hospitals_zone() -> None:
    clock = Clock(T0, ZoneInfo("Europe/Amsterdam"), "session start")
    t = T0 + pd.Timedelta(minutes=75, seconds=5)
    assert clock.elapsed(t) == "1:15:05" and clock.elapsed(T0 - pd.Timedelta(seconds=30)) == "-0:00:30"
    assert clock.local(t) == "11:15:05"  # summer time: UTC+2
    assert clock.zone() == "CEST (Europe/Amsterdam)"
    assert list(clock.minutes([t])) == pytest.approx([75 + 5 / 60])


def test_the_auc_ratio_is_taken_over_the_window_both_sites_were_sampled() -> None:
    def at(minutes: list[float]) -> pd.DatetimeIndex:
        return pd.DatetimeIndex([T0 + pd.Timedelta(minutes=m) for m in minutes])

    circuit = pd.DataFrame({"site": "circuit", "melphalan_ug_ml": 10.0}, index=at([0, 10, 20, 30]))
    systemic = pd.DataFrame({"site": "systemic", "melphalan_ug_ml": 0.1}, index=at([5, 20, 40, 60]))
    m = matching_auc({"sample": pd.concat([circuit, systemic])}, T0)
    assert m is not None
    assert (m["start_min"], m["end_min"]) == (5.0, 30.0)
    assert m["regional"] == pytest.approx(250.0) and m["systemic"] == pytest.approx(2.5)
    assert m["ratio"] == pytest.approx(100.0)
    assert m["windows"] == {"circuit": (0.0, 30.0), "systemic": (5.0, 60.0)}
    # Over their own windows the AUCs would be 300 and 5.5: a ratio of 55, comparing unlike things.
    assert matching_auc({"sample": circuit}, T0) is None


def test_tables_have_no_index_column_and_say_in_words_when_empty() -> None:
    html = str(table(["a", "b"], [[1, "<x>"]], "Nothing."))
    assert html.count("<th>") == 2 and "&lt;x&gt;" in html
    assert str(table(["a"], [], "No alarm was raised in this session.")) == (
        '<p class="empty">No alarm was raised in this session.</p>'
    )
