"""Which partition a theatre belongs to: the one function every transport uses.

A stateful service (leakage, pk, alerts) keeps a session's state in one process, so all of
a theatre's messages must reach the same instance. The theatres are split into ``count``
partitions by a stable hash of the theatre id:

    partition = int.from_bytes(sha256(theatre.encode("utf-8")).digest()[:8], "big") % count

SHA-256 is used (not Python's ``hash``, which is salted per process) so every process, every
language and every restart agrees; it is documented so that a broker topology declared by
another tool (RabbitMQ bindings, a Kafka partitioner) can compute the same split. The same
function decides which MQTT topic filters an instance subscribes to on Mosquitto and which
partition queue a theatre is bound to on a RabbitMQ cluster.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from isoperf.topics import check_id


def partition_of(theatre: str, count: int) -> int:
    """The partition (0 .. count - 1) of a theatre."""
    if count < 1:
        raise ValueError(f"the number of partitions must be at least 1, not {count}")
    digest = hashlib.sha256(theatre.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def share(partitions: int, index: int, count: int) -> list[int]:
    """The partitions that instance ``index`` of ``count`` takes: ``p`` with ``p % count == index``
    (on Mosquitto it subscribes to their theatres; on a cluster it consumes their queues first and
    stands by for the rest)."""
    if not 0 <= index < count:
        raise ValueError(f"share {index}/{count}: the index must be below the count")
    return [p for p in range(partitions) if p % count == index]


def theatres_in_share(theatres: Iterable[str], partitions: int, index: int, count: int) -> list[str]:
    """The theatres of instance ``index`` of ``count``'s share, in the given order."""
    mine = set(share(partitions, index, count))
    return [t for t in theatres if partition_of(t, partitions) in mine]


def read_theatres(path: Path) -> list[str]:
    """Theatre ids, one a line (``#`` starts a comment); each ``[a-z0-9-]{1,64}``, none twice."""
    theatres: list[str] = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        name = raw.split("#", 1)[0].strip()
        if not name:
            continue
        try:
            check_id(name, "theatre")
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: {exc}") from None
        if name in theatres:
            raise ValueError(f"{path}:{n}: theatre {name!r} listed twice")
        theatres.append(name)
    if not theatres:
        raise ValueError(f"{path}: no theatre listed")
    return theatres
