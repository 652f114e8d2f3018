"""Queries the integration and end-to-end tests share (thin names over isoperf.queries)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from isoperf.queries import count, session_where
from isoperf.tools.stack import LocalStack, find_binary

where = session_where
__all__ = ["count", "mosquitto_pub", "rows", "settled", "where"]


def rows(stack: LocalStack, q: str) -> list[dict[str, Any]]:
    return stack.rows(q)


SESSION_COUNTS = 3960  # counting intervals in the default simulated session (66 min at 1 s)


def settled(stack: LocalStack, theatre: str, session: str, n_counts: int = SESSION_COUNTS) -> bool:
    """Every count of the session is stored and has its leakage point (one per counting interval)."""
    w = where(theatre, session)
    return (
        count(stack, f"SELECT count(value) FROM reading WHERE {w} AND signal='counts'") == n_counts
        and count(stack, f"SELECT count(state) FROM leakage WHERE {w}") == n_counts
    )


def mosquitto_pub(stack: LocalStack, topic: str, payload: bytes, login: list[str] | None = None) -> None:
    """Publish as a person would by hand, with mosquitto_pub (QoS 1); an empty payload is sent with -n.
    ``login``: the address, TLS and credential arguments (default: the stack's own)."""
    argv = [find_binary("mosquitto_pub"), *(login or stack.mosquitto_client_args()), "-q", "1", "-t", topic]
    subprocess.run([*argv, "-s"] if payload else [*argv, "-n"], input=payload, check=True, timeout=10)


def replay(stack: LocalStack, theatre: str, session: str, new: str) -> str:
    """``isoperf replay`` of a stored session as ``new``, as fast as possible; its output (it must succeed)."""
    done = subprocess.run(
        [sys.executable, "-m", "isoperf.tools.cli", "replay", theatre, session, "--as", new, "--speed", "0"],
        env={**os.environ, **stack.env()},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
