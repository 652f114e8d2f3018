"""The gateway's store and forward: every message is written to an on-disk journal before it is
published, and leaves it only when the recorder confirms that it is stored.

SQLite in WAL mode with ``synchronous=NORMAL``: a committed message survives a crash of the
gateway process or of the broker (not necessarily a power cut of the gateway's own machine,
which ``ISOPERF_JOURNAL_SYNC_FULL`` covers at the cost of an fsync per batch). Each message
carries its journal sequence number ``journal_seq`` in its payload; the recorder publishes, per
session, the sequence numbers it has stored (topic ``stored``), and only those rows are
deleted. After a reconnection, and for anything published but unconfirmed for longer than
the gateway's resend wait (``gateway.ResendWait``), the gateway publishes again; storage is
idempotent, so a duplicate changes nothing.

The journal is bounded (``max_bytes``): past ``warn_fraction`` of it the gateway says so in
its status (an alarm), and a full journal refuses new messages with an error in the log
rather than grow without limit.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY,
    theatre TEXT NOT NULL,
    session TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL,
    sent_at REAL
);
CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 0), last_seq INTEGER NOT NULL);
INSERT OR IGNORE INTO counter VALUES (0, 0);
"""


class JournalFull(RuntimeError):  # noqa: N818  (a state of the journal, named as the operator reads it)
    """The journal holds ``max_bytes``: nothing more can be kept until the recorder confirms."""


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True, slots=True)
class Backlog:
    messages: int
    bytes: int
    unsent: int
    capacity_bytes: int

    @property
    def fill(self) -> float:
        return self.bytes / self.capacity_bytes


@dataclass(frozen=True)
class Confirmed:
    """What a confirmation removed: how many rows, and when the earliest of them was last published
    (``None`` if none had been: a confirmation of a copy sent before a reconnection)."""

    removed: int
    oldest_sent_at: float | None


class Journal:
    """One gateway's journal file. Not shared between processes."""

    def __init__(self, path: Path, max_bytes: int = 1 << 30, *, sync_full: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.max_bytes = path, max_bytes
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if sync_full else 'NORMAL'}")
        self._db.executescript(_SCHEMA)
        self._bytes = int(self._db.execute("SELECT coalesce(sum(length(payload)), 0) FROM journal").fetchone()[0])
        self._last_seq = int(self._db.execute("SELECT last_seq FROM counter").fetchone()[0])
        # Whatever was published before a restart is unconfirmed: it goes out again.
        self._db.execute("UPDATE journal SET sent_at = NULL")
        self.changed = asyncio.Event()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One transaction (the connection is in autocommit mode otherwise)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def next_seqs(self, n: int) -> range:
        """Reserve ``n`` sequence numbers for messages about to be added (``add``)."""
        first = self._last_seq + 1
        self._last_seq += n
        return range(first, first + n)

    def add(self, items: Iterable[tuple[int, str, str, str, bytes, bool]], *, force: bool = False) -> None:
        """Keep messages ``(seq, theatre, session, topic, payload, retain)`` in one transaction
        (``force``: even past the bound, for the gateway's own status that says it is full)."""
        rows = list(items)
        size = sum(len(r[4]) for r in rows)
        if self._bytes + size > self.max_bytes and not force:
            raise JournalFull(
                f"journal {self.path} is full ({self._bytes} of {self.max_bytes} bytes): "
                f"{len(rows)} messages refused; is the recorder running and the broker reachable?"
            )
        with self._tx():
            self._db.executemany("INSERT INTO journal VALUES (?, ?, ?, ?, ?, ?, NULL)", rows)
            self._db.execute("UPDATE counter SET last_seq = max(last_seq, ?)", (self._last_seq,))
        self._bytes += size
        self.changed.set()

    def unsent(self, limit: int = 500) -> list[Entry]:
        cur = self._db.execute(
            "SELECT seq, topic, payload, retain FROM journal WHERE sent_at IS NULL ORDER BY seq LIMIT ?", (limit,)
        )
        return [Entry(s, t, bytes(p), bool(r)) for s, t, p, r in cur]

    def mark_sent(self, seqs: Iterable[int], at: float | None = None) -> None:
        when = time.time() if at is None else at
        with self._tx():
            self._db.executemany("UPDATE journal SET sent_at = ? WHERE seq = ?", ((when, s) for s in seqs))
        self.changed.set()  # the unsent backlog shrank: a source held back by it may go on

    def confirm(self, theatre: str, session: str, ranges: Iterable[tuple[int, int]]) -> Confirmed:
        """The recorder stored these sequence numbers of a session: forget them. Says how many rows
        went and when the earliest of them had last been published."""
        removed, oldest = 0, None
        with self._tx():
            for lo, hi in ranges:
                args = (theatre, session, lo, hi)
                where = "theatre = ? AND session = ? AND seq BETWEEN ? AND ?"
                size, sent = self._db.execute(
                    f"SELECT coalesce(sum(length(payload)), 0), min(sent_at) FROM journal WHERE {where}", args
                ).fetchone()
                self._bytes -= int(size)
                if sent is not None:
                    oldest = float(sent) if oldest is None else min(oldest, float(sent))
                removed += self._db.execute(f"DELETE FROM journal WHERE {where}", args).rowcount
        if removed:
            self.changed.set()
        return Confirmed(removed, oldest)

    def resend(self, older_than: float | None = None) -> int:
        """Mark unconfirmed messages for publication again: all of them (after a reconnection), or
        those published before ``older_than`` (a confirmation that never came)."""
        with self._tx():
            if older_than is None:
                n = self._db.execute("UPDATE journal SET sent_at = NULL WHERE sent_at IS NOT NULL").rowcount
            else:
                n = self._db.execute("UPDATE journal SET sent_at = NULL WHERE sent_at < ?", (older_than,)).rowcount
        if n:
            self.changed.set()
        return n

    @property
    def fill(self) -> float:
        """How full the journal is, by the bytes of the messages it holds."""
        return self._bytes / self.max_bytes

    def backlog(self) -> Backlog:
        n, unsent = self._db.execute("SELECT count(*), count(*) - count(sent_at) FROM journal").fetchone()
        return Backlog(int(n), self._bytes, int(unsent), self.max_bytes)
