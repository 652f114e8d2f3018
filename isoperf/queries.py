"""Small InfluxQL queries about one stored session, shared by the demo, the benchmark and the tests."""

from __future__ import annotations

from typing import Any, Protocol

from isoperf.schemas import ISOLATION_STATES

# The leakage of the isolated circuit, for a WHERE clause: not the tracer released from the
# organ after the clamps come off (state ``released``), which is expected and not a leak.
DURING_ISOLATION = "(" + " OR ".join(f"\"state\" = '{s}'" for s in ISOLATION_STATES) + ")"


class RowSource(Protocol):
    """Anything that runs InfluxQL synchronously and returns rows (``LocalStack`` does)."""

    def rows(self, q: str) -> list[dict[str, Any]]: ...


def _q(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def session_where(theatre: str, session: str) -> str:
    return f"theatre='{_q(theatre)}' AND session='{_q(session)}'"


def count(stack: RowSource, q: str) -> int:
    """The first ``count`` column of a ``SELECT count(...)`` query; 0 when nothing matches."""
    r = stack.rows(q)
    return int(r[0]["count"]) if r else 0


def leakage_caught_up(stack: RowSource, theatre: str, session: str) -> bool:
    """Whether the stored leakage series has reached the last stored count."""
    w = session_where(theatre, session)
    last_count = stack.rows(f"SELECT last(value) FROM reading WHERE {w} AND signal='counts'")
    last_leak = stack.rows(f"SELECT last(state) FROM leakage WHERE {w}")
    return bool(last_count and last_leak and last_leak[0]["time"] >= last_count[0]["time"])
