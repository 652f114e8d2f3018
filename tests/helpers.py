"""Queries the integration and end-to-end tests share."""

from __future__ import annotations

from typing import Any

from isoperf.stack import LocalStack


def rows(stack: LocalStack, q: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in stack.influxql(q):
        for values in s["values"]:  # type: ignore[union-attr]
            out.append(dict(zip(s["columns"], values, strict=True)))  # type: ignore[arg-type]
    return out


def where(theatre: str, session: str) -> str:
    return f"theatre='{theatre}' AND session='{session}'"


def count(stack: LocalStack, q: str) -> int:
    r = rows(stack, q)
    return int(r[0]["count"]) if r else 0


def caught_up(stack: LocalStack, theatre: str, session: str) -> bool:
    """The leakage series has reached the last stored count."""
    w = where(theatre, session)
    last_count = rows(stack, f"SELECT last(value) FROM reading WHERE {w} AND signal='counts'")
    last_leak = rows(stack, f"SELECT last(state) FROM leakage WHERE {w}")
    return bool(last_count and last_leak and last_leak[0]["time"] >= last_count[0]["time"])
