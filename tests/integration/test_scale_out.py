"""More than one instance of a service on one Mosquitto (docs/scaling.md): recorders sharing one
subscription, leakage services each taking the theatres of their partition."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from isoperf.partition import partition_of
from tests.conftest import ServiceProcess, wait_for
from tests.helpers import count, where
from tests.stack import ControlledStack

pytestmark = pytest.mark.integration

N_COUNTS = 3960
N_READINGS = N_COUNTS * 5


def theatres_split_in_two(prefix: str) -> list[str]:
    """Four theatres, two in each of two partitions."""
    by_part: dict[int, list[str]] = {0: [], 1: []}
    i = 0
    while min(len(v) for v in by_part.values()) < 2:
        name = f"{prefix}-{i}"
        if len(by_part[partition_of(name, 2)]) < 2:
            by_part[partition_of(name, 2)].append(name)
        i += 1
    return by_part[0] + by_part[1]


def play(services: Callable[..., ServiceProcess], theatres: list[str], session: str) -> None:
    plays = [
        services(
            "acquisition", ISOPERF_THEATRE=t, ISOPERF_SESSION=session, ISOPERF_SIM_SPEED="0", ISOPERF_SIM_SEED=str(i)
        )
        for i, t in enumerate(theatres)
    ]
    for p in plays:
        assert p.wait(timeout=300) == 0, p.output()


def test_recorders_sharing_a_subscription_store_every_reading_once(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str]
) -> None:
    prefix, session = ids
    recorders = [services("recorder", ISOPERF_SHARE_GROUP="recorders") for _ in range(2)]
    theatres = [f"{prefix}-{i}" for i in range(3)]
    play(services, theatres, session)

    def all_stored() -> bool:
        return all(
            count(stack, f"SELECT count(value) FROM reading WHERE {where(t, session)}") == N_READINGS for t in theatres
        )

    wait_for(all_stored, timeout=240, interval=1.0)
    for r in recorders:
        assert r.stop() == 0
    took = [int(m.group(1)) for r in recorders for m in re.finditer(r"(\d+) readings stored since start", r.output())]
    assert len(took) == 2 and min(took) > 0, took  # each took a share
    assert sum(took) == 3 * N_READINGS  # and none was delivered to both


def test_leakage_partitioned_by_theatre(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str], tmp_path: Path
) -> None:
    prefix, session = ids
    theatres = theatres_split_in_two(prefix)
    listed = tmp_path / "theatres.txt"
    listed.write_text("# the test's theatres\n" + "\n".join(theatres) + "\n")
    services("recorder")
    parts = [
        services("leakage", ISOPERF_PARTITIONS="2", ISOPERF_PARTITION_SHARE=f"{i}/2", ISOPERF_THEATRES_FILE=str(listed))
        for i in range(2)
    ]
    play(services, theatres, session)

    def computed() -> bool:
        return all(
            count(stack, f"SELECT count(state) FROM leakage WHERE {where(t, session)}") == N_COUNTS for t in theatres
        )

    wait_for(computed, timeout=240, interval=1.0)
    for i, p in enumerate(parts):
        assert p.stop() == 0
        mine = [t for t in theatres if partition_of(t, 2) == i]
        out = p.output()
        assert f"share {i}/2 of 2 partitions: 2 of the 4 theatres of {listed} ({', '.join(mine)})" in out
        taken = set(re.findall(r"session ([\w-]+)/[\w-]+ taken", out))
        assert taken == set(mine)  # its own theatres, and no other's
