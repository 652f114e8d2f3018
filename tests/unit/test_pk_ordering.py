"""The pk service in event-time order: a session whose leakage comes late (the leakage service
stopped for minutes) ends with the same stored estimates as one whose leakage came in time."""

from __future__ import annotations

import asyncio
import functools

import pytest

from isoperf.codec import decode, encode
from isoperf.schemas import SERIES_MAX_POINTS, Leakage, LeakageSeries
from services.acquisition.simulator import LeakScenario, SimConfig, simulate
from services.pk.handler import PkHandler
from tests.fakes import TOPICS, FakePublisher, FakeWriter, deliver

THEATRE, SESSION = "th-1", "se-1"
LEAKAGE_LAG_S = 0.5  # the leakage service's usual delay after the counts
HOLD_S = 30.0


STEADY = SimConfig(leak=LeakScenario(kind="steady", rate_pct_min=0.05))
# The clamps come off 3 s after a leakage point that starts an interval (a 1010 mL washout at 200 mL/min):
# the estimate there is not one of those at the leakage points.
OFF_THE_INTERVAL = SimConfig(leak=LeakScenario(kind="steady", rate_pct_min=0.05), washout_ml=1010.0)


def inputs(
    outage: tuple[float, float] | None, until_s: float = 1200.0, cfg: SimConfig = STEADY
) -> list[tuple[float, str, bytes]]:
    """(arrival time, kind, payload) of a simulated session's pk inputs; during ``outage`` (from,
    minutes) no leakage comes, and what it would have sent comes at its end."""
    s = simulate(cfg, 4)
    out: list[tuple[float, str, bytes]] = [(cfg.start_t, "meta", encode(s.meta))]
    out += [(e.t, "event", encode(e)) for e in s.events]
    out += [(arrived, "sample", encode(x)) for arrived, x in s.samples]
    for t, pct in s.truth:
        arrived = t + LEAKAGE_LAG_S
        if outage is not None and outage[0] <= t < outage[0] + outage[1] * 60:
            arrived = outage[0] + outage[1] * 60  # restarted, it sends its backlog first, in order
        out.append((arrived, "leakage", encode(Leakage(t=t, state="monitoring", percent=pct))))
    until = cfg.start_t + cfg.drug_start_at_s + until_s  # by default 20 minutes of drug: two lab results come in it
    return sorted((x for x in out if x[0] < until), key=lambda x: x[0])


def in_series(arrivals: list[tuple[float, str, bytes]], most: int) -> list[tuple[float, str, bytes]]:
    """The same inputs with runs of leakage points arriving together as ``leakage/series`` messages of
    at most ``most`` points, when the last of them would have come (a batch of counts)."""
    out: list[tuple[float, str, bytes]] = []
    run: list[tuple[float, Leakage]] = []

    def close() -> None:
        if run:
            series = LeakageSeries(points=[point for _, point in run])
            out.append((run[-1][0], "leakage/series", encode(series)))
            run.clear()

    for arrived, kind, payload in arrivals:
        if kind != "leakage":
            close()
            out.append((arrived, kind, payload))
            continue
        run.append((arrived, Leakage.model_validate(decode(payload))))
        if len(run) == most:
            close()
    close()
    return out


def _point(line: str) -> tuple[str, str]:
    return line.split(",", 1)[0], line.rsplit(" ", 1)[1]  # measurement, time


def stored_by_time(lines: list[str], measurement: str = "pk") -> dict[tuple[str, str], str]:
    """The stored points, the later write of one time replacing the earlier (as InfluxDB does)."""
    return {_point(line): line for line in lines if _point(line)[0] == measurement}


def first_by_time(lines: list[str], measurement: str = "pk") -> dict[tuple[str, str], str]:
    """The points as first sent, before any correction."""
    return {_point(line): line for line in reversed(lines) if _point(line)[0] == measurement}


def run(
    outage: tuple[float, float] | None, until_s: float = 1200.0, cfg: SimConfig = STEADY, series: int = 0
) -> list[str]:
    """Every line the handler stored, in order, with its clock following the arrivals; the leakage
    in series of at most ``series`` points if given."""
    arrivals = inputs(outage, until_s, cfg)
    if series:
        arrivals = in_series(arrivals, series)
    clock = [arrivals[0][0]]
    writer = FakeWriter()
    handler = PkHandler(TOPICS, FakePublisher(), writer, None, hold_s=HOLD_S, clock=lambda: clock[0])

    async def play() -> None:
        for arrived, kind, payload in arrivals:
            while clock[0] + 1.0 < arrived:  # the service's clock ticks while nothing comes
                clock[0] += 1.0
                handler.tick()
            clock[0] = max(clock[0], arrived)
            await deliver(handler, TOPICS.session(THEATRE, SESSION, kind), payload)
        await handler.flush()

    asyncio.run(play())
    return writer.stored


def test_estimates_sent_before_the_leakage_came_are_corrected_to_those_of_a_session_in_time() -> None:
    in_time = run(None)
    cfg = SimConfig()
    # Five minutes without leakage from just before the drug start: events and samples go on after the hold.
    late = run((cfg.start_t + cfg.drug_start_at_s - 60.0, 5.0))
    assert len(stored_by_time(in_time)) >= 80  # every 15 s and on each event and result
    assert stored_by_time(late) == stored_by_time(in_time)
    # The check can fail: as first sent, the estimates of the outage lacked the leakage.
    assert first_by_time(late) != stored_by_time(in_time)


def test_leakage_in_series_gives_the_estimates_of_leakage_point_by_point() -> None:
    """Batches of counts yield the leakage as series (every 10 s here), and a restarted leakage
    service sends its backlog as series of up to 1,000 points: the same stored estimates."""
    in_time = stored_by_time(run(None))
    assert stored_by_time(run(None, series=10)) == in_time
    cfg = SimConfig()
    late = run((cfg.start_t + cfg.drug_start_at_s - 60.0, 5.0), series=SERIES_MAX_POINTS)
    assert stored_by_time(late) == in_time


@functools.cache
def _release_runs() -> tuple[list[str], list[str]]:
    cfg = OFF_THE_INTERVAL
    assert cfg.isolation_end_at_s % 15.0 == 3.0
    # Until just before the first systemic sample after the release (its curve would replace the one before).
    until_s = cfg.isolation_end_at_s - cfg.drug_start_at_s + 220.0
    # Ten minutes without leakage from two minutes before the drug stop (the leak stops with the
    # washout), past the clamps coming off: the leak's share of the release comes late.
    return run(None, until_s, cfg), run((cfg.start_t + cfg.drug_stop_at_s - 120.0, 10.0), until_s, cfg)


def test_the_post_release_curve_of_a_leakage_that_came_late_is_that_of_a_session_in_time() -> None:
    in_time, late = _release_runs()
    curve = stored_by_time(in_time, "pk_release")
    assert len(curve) == 481  # every 30 s from the drug start
    assert all("projected=false" in line for line in curve.values()), "the clamps are off: no longer projected"
    assert stored_by_time(late, "pk_release") == curve
    # The check can fail: as first sent, the curve after the release lacked the leak's share.
    sent_late = [line for line in late if line.startswith("pk_release,")]
    assert len(sent_late) > len([line for line in in_time if line.startswith("pk_release,")])


@pytest.mark.xfail(
    strict=True,
    reason="two estimates at the isolation's end (an event and a leakage point at the same time) keep a "
    "systemic exposure that differs in the fourth digit: the estimate in time was made on the event, "
    "before the leakage point of that time; the corrected one with it. (Release and NCA fields now "
    "equal: an estimate after later inputs went on is made from the session as it stood at its time.)",
)
def test_estimates_at_leakage_points_that_came_late_are_those_of_a_session_in_time() -> None:
    in_time, late = _release_runs()
    assert stored_by_time(late) == stored_by_time(in_time)
