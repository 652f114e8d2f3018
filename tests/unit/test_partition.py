"""The one partition function: stable across processes, documented, and a fair split."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from isoperf.partition import partition_of, share, theatres_in_share
from isoperf.runtime import service_subscriptions
from isoperf.settings import ServiceSettings
from isoperf.topics import Topics

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


def test_the_shares_cover_every_theatre_once() -> None:
    theatres = [f"or-{i}" for i in range(50)]
    parts = [theatres_in_share(theatres, 8, i, 3) for i in range(3)]
    assert sorted(t for p in parts for t in p) == sorted(theatres)
    assert [share(8, i, 3) for i in range(3)] == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert theatres_in_share(theatres, 8, 0, 1) == theatres
    # As many instances as partitions: instance i takes exactly partition i.
    assert theatres_in_share(theatres, 4, 2, 4) == [t for t in theatres if partition_of(t, 4) == 2]


@pytest.mark.parametrize(("index", "count"), [(0, 0), (3, 3), (-1, 2)])
def test_bad_shares_are_refused(index: int, count: int) -> None:
    with pytest.raises(ValueError, match="share"):
        share(4, index, count)


def test_an_instance_subscribes_to_its_partition_or_its_share(tmp_path: Path) -> None:
    listed = tmp_path / "theatres.txt"
    theatres = [f"or-{i}" for i in range(1, 9)]
    listed.write_text("\n".join(theatres) + "\n")
    topics = Topics("perfusion")
    kinds = ("raw/counts", "event", "status")
    subs = [
        service_subscriptions(
            ServiceSettings(partitions=4, partition_share=f"{p}/4", theatres_file=listed), topics, kinds
        )
        for p in range(4)
    ]
    for p, mine in enumerate(subs):
        expected = [t for t, k in zip(theatres, KNOWN, strict=True) if k == p]
        assert {s.split("/")[1] for s in mine if "/status/" not in s} == set(expected)
        assert len(mine) == 2 * len(expected) + (p == 0)  # the services' status: partition 0 only
    assert sum(len(s) for s in subs) == 2 * len(theatres) + 1
    shared = service_subscriptions(ServiceSettings(share_group="rec"), topics, ("raw/+",))
    assert shared == ["$share/rec/perfusion/+/+/raw/+"]
    assert service_subscriptions(ServiceSettings(), topics, ("raw/+",)) == ["perfusion/+/+/raw/+"]


def test_a_share_outside_its_count_is_refused() -> None:
    with pytest.raises(ValueError, match=r"ISOPERF_PARTITION_SHARE=2/2: the index must be below the count"):
        ServiceSettings(partition_share="2/2")
