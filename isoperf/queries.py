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


PkSeries = dict[Any, dict[str, Any]]


def pk_series(stack: RowSource, theatre: str, session: str) -> PkSeries:
    """A session's stored pk estimates by time, without the theatre tag (so two plays of one session
    under different theatre names compare equal)."""
    found = stack.rows(f"SELECT * FROM pk WHERE {session_where(theatre, session)}")
    return {r.pop("time"): {k: v for k, v in r.items() if k != "theatre"} for r in found}


def pk_differences(a: PkSeries, b: PkSeries, names: tuple[str, str] = ("first", "second")) -> list[str]:
    """Where two pk series differ: times (ms) in one only, and the fields that differ at a common time."""
    out = [f"t {t} ms: only in the {names[0] if t in a else names[1]}" for t in sorted(a.keys() ^ b.keys())]
    for t in sorted(a.keys() & b.keys()):
        fields = sorted(k for k in a[t].keys() | b[t].keys() if a[t].get(k) != b[t].get(k))
        if fields:
            shown = ", ".join(f"{k} {a[t].get(k)} vs {b[t].get(k)}" for k in fields[:4])
            out.append(f"t {t} ms: {shown}")
    return out
