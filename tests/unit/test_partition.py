"""The one partition function: stable across processes, documented, and a fair split."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter

import pytest

from isoperf.partition import partition_of, theatres_of

KNOWN = [1, 3, 2, 1, 0, 1, 0, 1]


def test_the_documented_formula() -> None:
    for theatre in ("or-1", "theatre-12", "Hôpital-3"):
        digest = hashlib.sha256(theatre.encode("utf-8")).digest()
        assert partition_of(theatre, 7) == int.from_bytes(digest[:8], "big") % 7


def test_known_values_do_not_change() -> None:
    # Fixed here so a change of the function (which would move theatres between
    # partitions of a running deployment) fails the suite.
    assert [partition_of(f"or-{i}", 4) for i in range(1, 9)] == KNOWN


def test_the_same_in_another_process() -> None:
    code = "from isoperf.partition import partition_of; print([partition_of(f'or-{i}', 4) for i in range(1, 9)])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert out.stdout.strip() == str(KNOWN)


def test_a_fair_split_of_many_theatres() -> None:
    counts = Counter(partition_of(f"theatre-{i}", 4) for i in range(2000))
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 400


def test_theatres_of_covers_every_theatre_once() -> None:
    theatres = [f"or-{i}" for i in range(50)]
    parts = [theatres_of(theatres, i, 3) for i in range(3)]
    assert sorted(t for p in parts for t in p) == sorted(theatres)
    assert theatres_of(theatres, 0, 1) == theatres


@pytest.mark.parametrize(("index", "count"), [(0, 0), (3, 3), (-1, 2)])
def test_bad_partitions_are_refused(index: int, count: int) -> None:
    with pytest.raises(ValueError, match="partition"):
        theatres_of(["or-1"], index, count)
