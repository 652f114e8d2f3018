"""Every board read as Grafana resolves it (tests/grafana.py): series names, overrides, units,
thresholds, staleness, time ranges, links, alarm panels. The shipped boards pass; each defect
found on them before (issue: the record and the boards) is put back into a copy, and the check
must report it."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest

from isoperf.tools import boards
from tests import grafana

Boards = dict[str, dict[str, Any]]


def shipped() -> Boards:
    return {b["uid"]: b for b in (build() for build in boards.BOARDS.values())}


def panel(bs: Boards, uid: str, title: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [p for p in bs[uid]["panels"] if p["title"].startswith(title)]
    assert len(found) >= 1, title
    return found[0]


def test_the_shipped_boards_read_as_intended() -> None:
    assert grafana.problems(shipped()) == []


def test_series_names_follow_grafanas_influxql_rules() -> None:
    q = 'SELECT mean("percent") AS "leakage", mean("ci_low") FROM "leakage" WHERE x GROUP BY time(1s), "site"'
    series = [{"name": "leakage", "columns": ["time", "leakage", "mean"], "tags": {"site": "circuit"}}]
    assert grafana.display_names({"query": q}, series) == [
        "leakage.leakage { site: circuit }",
        "leakage.mean { site: circuit }",
    ]
    assert grafana.display_names({"query": q, "alias": "$col"}, series) == ["leakage", "mean"]
    assert grafana.display_names({"query": q, "alias": "x $tag_site [[col]] $tag_nope"}, series) == [
        "x circuit leakage $tag_nope",
        "x circuit mean $tag_nope",
    ]
    assert grafana.display_names({"query": q, "resultFormat": "table"}, series) == ["Time", "site", "leakage", "mean"]
    # Read from the query itself: the columns, and the series per tag value.
    assert grafana.from_query({"query": q}) == [
        {"name": "leakage", "columns": ["time", "leakage", "mean"], "tags": {"site": s}}
        for s in ("circuit", "systemic")
    ]


def test_the_band_series_are_named_as_the_overrides_expect() -> None:
    live = shipped()["isoperf-theatre-live"]
    leak = live["panels"][0]
    names = [n for t in leak["targets"] for n in grafana.display_names(t, grafana.from_query(t))]
    assert names == ["leakage", "95% low", "95% high", boards.RELEASED]
    fills = [
        p["value"] for o in leak["fieldConfig"]["overrides"] for p in o["properties"] if p["id"] == "custom.fillBelowTo"
    ]
    assert fills == ["95% low"]


def _drop_alias(uid: str, title: str) -> Callable[[Boards], None]:
    def put_back(bs: Boards) -> None:
        panel(bs, uid, title)["targets"][0].pop("alias")

    return put_back


def _unit(uid: str, title: str) -> Callable[[Boards], None]:
    def put_back(bs: Boards) -> None:
        panel(bs, uid, title)["fieldConfig"]["defaults"]["unit"] = "none"

    return put_back


def _no_thresholds(uid: str, title: str) -> Callable[[Boards], None]:
    def put_back(bs: Boards) -> None:
        panel(bs, uid, title)["fieldConfig"]["defaults"].pop("thresholds")

    return put_back


def _stale(bs: Boards) -> None:
    t = panel(bs, "isoperf-theatre-live", "Leakage now")["targets"][0]
    t["query"] = t["query"].replace(f" AND {boards.FRESH}", "")


def _no_links(bs: Boards) -> None:
    for b in bs.values():
        b.pop("links", None)
        for p in b["panels"]:
            p["fieldConfig"]["defaults"].pop("links", None)


def _link_without_time(bs: Boards) -> None:
    link = panel(bs, "isoperf-theatre-live", "Session:")["fieldConfig"]["defaults"]["links"][0]
    link["url"] = re.sub(r"&from=.*", "", link["url"])


def _link_to_nowhere(bs: Boards) -> None:
    bs["isoperf-overview"]["links"][0]["url"] = "/d/isoperf-theatre/theatre"


def _stats_over_all_time(bs: Boards) -> None:
    """The review's stats read the whole session while its curves show the last hours."""
    t = panel(bs, "isoperf-session-review", "Peak leakage during isolation")["targets"][0]
    t["query"] = t["query"].replace(" AND $timeFilter", "")


def _unbounded_session_variable(bs: Boards) -> None:
    var = bs["isoperf-session-review"]["templating"]["list"][1]
    var["query"] = """SHOW TAG VALUES FROM "session" WITH KEY = "session" WHERE "theatre" = '$theatre'"""


def _no_alarm_panel(bs: Boards) -> None:
    b = bs["isoperf-theatre-live"]
    b["panels"] = [p for p in b["panels"] if not p["title"].startswith("Alarms")]


def _no_age(bs: Boards) -> None:
    panel(bs, "isoperf-overview", "Theatres:")["fieldConfig"]["overrides"] = []


def _dead_services(bs: Boards) -> None:
    panel(bs, "isoperf-overview", "Services")["targets"][0]["query"] = (
        'SELECT last("status") AS "status" FROM "service_status" GROUP BY "service", "instance"'
    )


def _peak_over_release(bs: Boards) -> None:
    """The peak stat reads every point, the release included (9 % headlined as leakage)."""
    p = panel(bs, "isoperf-session-review", "Peak leakage during isolation")
    p["targets"][0]["query"] = 'SELECT max("percent") FROM "leakage" WHERE x AND $timeFilter'
    p["fieldConfig"]["defaults"]["thresholds"] = boards.NEUTRAL


DEFECTS: dict[str, tuple[Callable[[Boards], None], str]] = {
    "leakage band matches nothing": (_drop_alias("isoperf-theatre-live", "Leakage, %"), "matches no series"),
    "melphalan band matches nothing": (_drop_alias("isoperf-session-review", "Melphalan"), "matches no series"),
    "leakage now without thresholds": (_no_thresholds("isoperf-theatre-live", "Leakage now"), "no thresholds"),
    "peak leakage without thresholds": (
        _no_thresholds("isoperf-session-review", "Peak leakage during"),
        "no thresholds",
    ),
    "last() stale during a fault": (_stale, "stale value"),
    "flow without unit": (_unit("isoperf-theatre-live", "Pump flow"), "expected 'flowmlpm'"),
    "reservoir without unit": (_unit("isoperf-session-review", "Reservoir"), "expected 'mlitre'"),
    "pressure without unit": (_unit("isoperf-theatre-live", "Circuit pressure"), "expected 'suffix:mmHg'"),
    "melphalan without unit": (_unit("isoperf-theatre-live", "Melphalan"), "expected 'suffix:µg/mL'"),
    "AUC without unit": (_unit("isoperf-session-review", "Regional AUC"), "expected 'suffix:µg·min/mL'"),
    "leak rate without unit": (_unit("isoperf-theatre-live", "Leak rate, %/min"), "expected 'suffix:%/min'"),
    "no board links to another": (_no_links, "no link to"),
    "a link without the session's time range": (_link_without_time, "does not carry the session and its time"),
    "a link to a board not shipped": (_link_to_nowhere, "leads to no shipped board"),
    "review stats over another range than its curves": (_stats_over_all_time, "not limited to the dashboard's time"),
    "session variable unbounded in time": (_unbounded_session_variable, "session variable is not limited"),
    "no alarm panel for remote staff": (_no_alarm_panel, "no alarm panel"),
    "overview without the age of the last reading": (_no_age, "no age of the last reading"),
    "overview keeps dead service instances": (_dead_services, "dead service instances"),
    "peak stat over the release": (_peak_over_release, "not the alert levels"),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_each_defect_put_back_is_reported(defect: str) -> None:
    put_back, reported = DEFECTS[defect]
    bs = copy.deepcopy(shipped())
    put_back(bs)
    found = grafana.problems(bs)
    assert any(reported in p for p in found), found
