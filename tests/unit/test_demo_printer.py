"""``isoperf demo`` prints the session in event-time order, events in words, each state once."""

from __future__ import annotations

from isoperf.tools.demo import HOLD_S, Printer

T0 = 1_767_225_600.0


def leak(dt: float, state: str, pct: float | None = None) -> dict[str, object]:
    out: dict[str, object] = {"t": T0 + dt, "state": state}
    if pct is not None:
        out |= {"percent": pct, "ci_low": pct - 0.3, "ci_high": pct + 0.3, "rate_pct_min": 0.0}
    return out


def test_lines_come_out_in_event_time_order_with_each_state_once() -> None:
    lines: list[str] = []
    p = Printer(out=lines.append, hold_s=120.0)  # the demo holds 2 s of wall time at its speed
    p.message("event", {"t": T0, "type": "session_start"})
    for dt in range(1, 301):  # five minutes of calibration: one state line, not one a minute
        p.message("leakage", leak(dt, "calibrated"))
    p.message("event", {"t": T0 + 301, "type": "drug_start", "dose_mg": 75.0, "mode": "infusion", "duration_s": 600.0})
    for dt in range(302, 420):
        p.message("leakage", leak(dt, "monitoring", 1.5))
    # The alert about t0+310 comes after leakage up to t0+419 (the alerts service is slower).
    p.message(
        "alert",
        {"t": T0 + 310, "status": "firing", "severity": "advisory", "kind": "new", "message": "Leakage 1.50 %"},
    )
    for dt in range(420, 500):
        p.message("leakage", leak(dt, "released", 5.0))
    # A pk estimate for 5:05 that comes minutes late is printed when it comes, naming its time.
    p.message(
        "pk",
        {"t": T0 + 305, "circuit_ug_ml": 50.0, "circuit_low_ug_ml": 40.0, "circuit_high_ug_ml": 60.0, "n_circuit": 2},
    )
    p.flush()
    times = [line.split()[0] for line in lines]
    minutes = [int(t.split(":")[0]) * 60 + int(t.split(":")[1]) for t in times]
    assert minutes == sorted(minutes), lines
    assert sum("calibrated" in line for line in lines) == 1
    assert sum("STATE monitoring" in line for line in lines) == 1
    assert any(line.endswith("EVENT drug start 75 mg infusion over 600 s") for line in lines), lines
    assert not any("{" in line for line in lines), "events and messages as words, not dicts"
    alert = next(i for i, line in enumerate(lines) if "ALERT ADVISORY" in line)
    assert lines[alert].split()[0] == "5:10" and "6:00" in lines[alert + 1]
    assert sum("STATE released" in line for line in lines[alert:]) == 1
    assert any("after release" in line and "[released]" in line for line in lines)
    assert lines[-1].split()[0] == "8:19" and lines[-1].endswith("(at 5:05)"), lines[-1]


def test_a_line_is_held_until_later_event_time_has_come() -> None:
    lines: list[str] = []
    p = Printer(out=lines.append)
    p.message("event", {"t": T0, "type": "session_start"})
    assert lines == []
    p.message("leakage", leak(HOLD_S + 1, "background"))
    assert [line.split()[-2:] for line in lines] == [["session", "start"]]
