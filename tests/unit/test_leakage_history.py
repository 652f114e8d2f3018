"""Rebuilding a session's estimator from storage (after a restart, on a takeover)."""

from __future__ import annotations

from isoperf.influx import Row
from services.leakage.estimator import LeakageEstimator
from services.leakage.history import load_session


class StoredRows:
    """An in-memory reader: the rows InfluxDB would answer, by measurement."""

    def __init__(self, counts: list[Row]) -> None:
        self.counts = counts

    async def rows(self, q: str) -> list[Row]:
        return self.counts if "FROM reading" in q else []


async def test_a_count_caught_mid_write_without_its_value_is_left_out_not_a_crash() -> None:
    """A point being written while the query ran showed its ``dt`` and no ``value``: the
    rebuild raised TypeError and the message that asked for it went to the dead letters."""
    t0 = 1_767_225_600_000
    stored: list[Row] = [
        {"time": t0, "value": 100.0, "dt": 1.0},
        {"time": t0 + 1000, "value": None, "dt": 1.0},
        {"time": t0 + 2000, "value": 102.0, "dt": None},
    ]
    est = LeakageEstimator()
    n = await load_session(StoredRows(stored), "or-1", "s-1", est, isotope_known=True)
    assert n == 2
    # The left-out time is still free: the reading, when its message comes, is taken.
    assert est.add_counts((t0 + 1000) / 1000.0, 101.0, 1.0)
