"""The gateway's journal and the technical alarms it and the devices raise."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgpack
import pytest

from isoperf.schemas import Event, GatewayStatus, Reading
from services.acquisition.gateway import Gateway, ResendWait
from services.acquisition.journal import Journal, JournalFull
from services.alerts.engine import SessionAlerts
from services.alerts.rules import AlertRules
from services.recorder.handler import ranges
from tests.fakes import TOPICS, FakePublisher

T = 1_767_225_600.0


def test_a_message_leaves_the_journal_only_when_confirmed_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "th-1.sqlite"
    journal = Journal(path)
    gateway = Gateway(journal, TOPICS, "th-1")
    topic = TOPICS.raw("th-1", "s-1", "counts")
    gateway.put([(topic, Reading(t=T + i, v=float(i)), False) for i in range(5)])
    entries = journal.unsent()
    assert [msgpack.unpackb(e.payload)["journal_seq"] for e in entries] == [1, 2, 3, 4, 5]
    journal.mark_sent(e.seq for e in entries)
    assert journal.backlog().unsent == 0 and journal.backlog().messages == 5
    assert journal.confirm("th-1", "other-session", [(1, 5)]).removed == 0, "another session's removes nothing"
    assert journal.confirm("th-1", "s-1", [(1, 2), (4, 4)]).removed == 3
    journal.close()
    again = Journal(path)  # a restarted gateway sends what is unconfirmed, and numbers on
    assert [e.seq for e in again.unsent()] == [3, 5]
    assert list(again.next_seqs(2)) == [6, 7]


def test_a_full_journal_refuses_and_says_so_before(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite", max_bytes=1 << 20)
    gateway = Gateway(journal, TOPICS, "th-1", warn_fraction=0.5)
    topic = TOPICS.session("th-1", "s-1", "event")
    note = Event(t=T, type="note", text="x" * 1900)
    for _ in range(535):  # just under 1 MiB of notes (1,943 bytes each)
        gateway.put([(topic, note, False)])
    with pytest.raises(JournalFull, match="is full"):
        gateway.put([(topic, note, False)] * 20)
    statuses = [e for e in journal.unsent(100_000) if e.topic.endswith("/device")]
    assert len(statuses) == 1 and msgpack.unpackb(statuses[0].payload)["state"] == "journal_filling"


def test_confirmed_ranges_are_compact() -> None:
    assert ranges({1, 2, 3, 7, 8, 10}) == [(1, 3), (7, 8), (10, 10)]


def test_device_faults_and_clock_jumps_are_technical_alarms() -> None:
    engine = SessionAlerts("s-1", AlertRules())
    down = engine.on_device(GatewayStatus(t=T, source="pump-console", state="disconnected", reason="tcp refused"))
    assert [(a.rule, a.severity, a.status) for a in down] == [("device:pump-console", "warning", "firing")]
    assert engine.on_device(GatewayStatus(t=T + 1, source="pump-console", state="silent", reason="")) == []
    back = engine.on_device(GatewayStatus(t=T + 5, source="pump-console", state="connected", reason="open"))
    assert [(a.rule, a.status) for a in back] == [("device:pump-console", "resolved")]
    jump = engine.on_device(
        GatewayStatus(t=T + 6, source="probe-scaler", state="clock_jump", reason="+3600 s", offset_s=3600.0)
    )
    assert jump[0].rule == "clock:probe-scaler" and "jumped" in jump[0].message and jump[0].value == 3600.0


async def test_unconfirmed_messages_go_again_while_data_keeps_flowing_and_backpressure_lifts(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    gateway = Gateway(journal, TOPICS, "th-1", resend_after_s=0.3)
    pub = FakePublisher()
    topic = TOPICS.raw("th-1", "s-1", "counts")
    gateway.put([(topic, Reading(t=T + i, v=float(i)), False) for i in range(10)])
    held = asyncio.create_task(gateway.wait_below(0))
    sender = asyncio.create_task(gateway.drain_to(pub))
    async with asyncio.timeout(2):
        await held  # published: a source held back by the unsent backlog goes on
    for i in range(10, 30):  # new data all the time, and no confirmation ever comes
        gateway.put([(topic, Reading(t=T + i, v=float(i)), False)])
        await asyncio.sleep(0.05)
    sender.cancel()
    first = [p for t, p in pub.sent if msgpack.unpackb(p)["journal_seq"] == 1]
    assert len(first) >= 2, "an unconfirmed message is sent again although the journal keeps changing"
    journal.close()


async def test_copies_of_an_unconfirmed_message_come_further_and_further_apart(tmp_path: Path) -> None:
    """With no confirmation, a fixed wait of 0.2 s would send the first message 7 or 8 times in 1.6 s;
    the doubling wait sends it at about 0, 0.2, 0.6 and 1.4 s."""
    journal = Journal(tmp_path / "j.sqlite")
    gateway = Gateway(journal, TOPICS, "th-1", resend_after_s=0.2)
    pub = FakePublisher()
    gateway.put([(TOPICS.raw("th-1", "s-1", "counts"), Reading(t=T, v=1.0), False)])
    sender = asyncio.create_task(gateway.drain_to(pub))
    await asyncio.sleep(1.6)
    sender.cancel()
    sends = len(pub.sent)
    assert 2 <= sends <= 4, f"sent {sends} times"
    assert gateway.resend_wait.wait_s >= 0.2 * 2 ** (sends - 1)
    journal.close()


def test_the_resend_wait_follows_how_long_confirmations_take() -> None:
    wait = ResendWait(30.0)
    wait.confirmed(5.0)
    assert wait.wait_s == 30.0, "never below the configured wait"
    wait.confirmed(40.0)
    assert wait.wait_s == 80.0, "twice what the slowest confirmation took"
    for _ in range(3):
        wait.resent()
    assert wait.wait_s == 600.0, "doubled by each resend, up to 20 times the configured wait"
    wait.confirmed(1.0)
    assert wait.wait_s == 540.0, "falling by a tenth a confirmation at most"
    for _ in range(40):
        wait.confirmed(1.0)
    assert wait.wait_s == 30.0


def test_a_confirmation_says_when_its_earliest_message_was_published(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    gateway = Gateway(journal, TOPICS, "th-1")
    gateway.put([(TOPICS.raw("th-1", "s-1", "counts"), Reading(t=T + i, v=1.0), False) for i in range(4)])
    journal.mark_sent([1, 2], at=100.0)
    journal.mark_sent([3], at=90.0)
    done = journal.confirm("th-1", "s-1", [(1, 4)])
    assert (done.removed, done.oldest_sent_at) == (4, 90.0), "the unsent fourth counts, its time does not"
    assert journal.confirm("th-1", "s-1", [(1, 4)]).oldest_sent_at is None
    journal.close()
