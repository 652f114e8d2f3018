"""Queries the integration and end-to-end tests share (thin names over isoperf.queries)."""

from __future__ import annotations

from typing import Any

from isoperf.queries import count, leakage_caught_up, session_where
from isoperf.stack import LocalStack

where = session_where
caught_up = leakage_caught_up
__all__ = ["caught_up", "count", "rows", "where"]


def rows(stack: LocalStack, q: str) -> list[dict[str, Any]]:
    return stack.rows(q)
