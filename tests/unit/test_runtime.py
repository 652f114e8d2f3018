"""The message path in-process, on an in-memory source: batching, acknowledgement after storage,
dead letters, reconnection, status; the outbox; the dead-letter file."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from isoperf.codec import encode
from isoperf.deadletter import DeadLetters
from isoperf.messages import Inbound, Readings
from isoperf.outbox import Emitter, Outbox
from isoperf.runtime import ServiceLoop, health_file
from isoperf.schemas import Leakage, LeakageSeries, Reading, ReadingBatch
from isoperf.settings import ServiceSettings
from isoperf.sources import Connection, ConnectionLost, Delivery
from isoperf.sources.amqp import AmqpConnection
from isoperf.timewindow import Rejection
from tests.fakes import TOPICS, FakePublisher, FakeWriter

T = 1_767_225_600.0


class MemoryConnection:
    def __init__(self, source: MemorySource) -> None:
        self.source = source

    def backlog(self) -> int:
        return self.source.queue.qsize()

    async def receive(self) -> Delivery:
        item = await self.source.queue.get()
        if item is None:
            raise ConnectionLost("the broker went away")
        return item

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self.source.acked.extend(d.token for d in deliveries)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.source.published.append((topic, payload, retain))


class MemorySource:
    """A broker in a queue: ``put`` delivers, ``drop`` breaks the connection once."""

    name = "memory"
    last_will = True

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Delivery | None] = asyncio.Queue()
        self.acked: list[int] = []
        self.published: list[tuple[str, bytes, bool]] = []
        self.connections = 0
        self.subscribed: list[str] = []
        self._token = 0

    def put(self, topic: str, payload: bytes) -> int:
        self._token += 1
        self.queue.put_nowait(Delivery(topic, payload, self._token))
        return self._token

    def drop(self) -> None:
        self.queue.put_nowait(None)

    @asynccontextmanager
    async def connect(self, subscriptions: Sequence[str]) -> AsyncIterator[Connection]:
        self.connections += 1
        self.subscribed = list(subscriptions)
        yield MemoryConnection(self)


class GatedHandler:
    """Counts readings; its flush stores only when the test opens the gate."""

    kinds: tuple[str, ...] = ("raw/counts",)

    def __init__(self, fail_on: float | None = None) -> None:
        self.handled: list[float] = []
        self.stored: list[float] = []
        self.flushes: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_on = fail_on
        self._buffer: list[float] = []
        self.closed = False

    async def start(self) -> None:
        pass

    async def handle(self, message: Inbound) -> None:
        assert isinstance(message.body, Readings)
        for r in message.body.readings:
            if r.v == self.fail_on:
                raise RuntimeError("a bug in the handler")
            self.handled.append(r.v)
            self._buffer.append(r.v)

    async def flush(self) -> None:
        batch, self._buffer = self._buffer, []
        await self.gate.wait()
        self.stored.extend(batch)
        self.flushes.append(len(batch))

    async def close(self) -> None:
        self.closed = True


def settings(tmp_path: Path, **extra: object) -> ServiceSettings:
    return ServiceSettings(deadletter_dir=tmp_path / "dead", instance="test", **extra)  # type: ignore[arg-type]


def reading(v: float) -> tuple[str, bytes]:
    return TOPICS.raw("or-1", "s-1", "counts"), encode(Reading(t=T + v, v=v))


async def until(predicate: Callable[[], object], seconds: float = 5.0) -> None:
    """Poll ``predicate`` until it holds: these tests watch a loop they do not control."""
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


@pytest.fixture
def source() -> MemorySource:
    return MemorySource()


async def run_loop(loop: ServiceLoop) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    return stop, asyncio.create_task(loop.run(stop))


async def test_nothing_is_acknowledged_before_it_is_stored(tmp_path: Path, source: MemorySource) -> None:
    handler = GatedHandler()
    loop = ServiceLoop(settings(tmp_path), "test", source, handler=handler)
    stop, task = await run_loop(loop)
    await until(lambda: source.published)  # online: connected and subscribed
    handler.gate.clear()
    tokens = [source.put(*reading(v)) for v in (1.0, 2.0, 3.0)]
    await until(lambda: len(handler.handled) == 3)
    await asyncio.sleep(0.05)
    assert source.acked == [], "handled but not yet stored: nothing acknowledged"
    handler.gate.set()
    await until(lambda: source.acked == tokens)
    assert handler.stored == [1.0, 2.0, 3.0]
    stop.set()
    await task
    assert handler.closed


async def test_a_backlog_is_stored_in_bounded_batches_and_all_acknowledged_in_order(
    tmp_path: Path, source: MemorySource
) -> None:
    handler = GatedHandler()
    tokens = [source.put(*reading(float(v))) for v in range(1, 1201)]
    loop = ServiceLoop(settings(tmp_path, flush_max_messages=500), "test", source, handler=handler)
    stop, task = await run_loop(loop)
    await until(lambda: len(source.acked) == 1200)
    assert source.acked == tokens
    assert handler.stored == [float(v) for v in range(1, 1201)]
    assert max(handler.flushes) <= 500 and len(handler.flushes) >= 3
    stop.set()
    await task


async def test_bad_input_is_kept_aside_acknowledged_and_never_reaches_the_handler(
    tmp_path: Path, source: MemorySource
) -> None:
    handler = GatedHandler()
    loop = ServiceLoop(settings(tmp_path), "test", source, handler=handler)
    stop, task = await run_loop(loop)
    source.put(*reading(1.0))
    bad = source.put(TOPICS.raw("or-1", "s-1", "counts"), b"\xc1\x00 serial noise")
    wrong_kind = source.put(TOPICS.raw("or-1", "s-1", "flow"), encode(Reading(t=T, v=100.0)))
    source.put(*reading(2.0))
    await until(lambda: len(source.acked) == 4)
    assert handler.stored == [1.0, 2.0] and bad in source.acked and wrong_kind in source.acked
    records = [json.loads(x) for x in (tmp_path / "dead" / "test.jsonl").read_text().splitlines()]
    assert [r["reason"][:22] for r in records] == ["not MessagePack or JSO", "the test service does "]
    assert base64.b64decode(records[0]["payload_b64"]) == b"\xc1\x00 serial noise"
    stop.set()
    await task


@pytest.mark.allow_logged_errors
async def test_a_handler_bug_is_logged_kept_aside_and_the_loop_goes_on(
    tmp_path: Path, source: MemorySource, caplog: pytest.LogCaptureFixture
) -> None:
    handler = GatedHandler(fail_on=2.0)
    loop = ServiceLoop(settings(tmp_path), "test", source, handler=handler)
    stop, task = await run_loop(loop)
    for v in (1.0, 2.0, 3.0):
        source.put(*reading(v))
    await until(lambda: len(source.acked) == 3)
    assert handler.stored == [1.0, 3.0] and loop.deadletters.count == 1
    assert any(r.exc_info for r in caplog.records if "handler failed" in r.getMessage())
    stop.set()
    await task


async def test_a_lost_connection_reconnects_resubscribes_and_goes_on(tmp_path: Path, source: MemorySource) -> None:
    handler = GatedHandler()
    loop = ServiceLoop(settings(tmp_path), "test", source, handler=handler)
    stop, task = await run_loop(loop)
    source.put(*reading(1.0))
    await until(lambda: len(source.acked) == 1)
    source.drop()
    await until(lambda: source.connections == 2, seconds=10)
    source.put(*reading(2.0))
    await until(lambda: len(source.acked) == 2)
    assert source.subscribed == ["perfusion/+/+/raw/counts"]
    online = [p for t, p, retain in source.published if t == "perfusion/status/test/test" and retain]
    assert online == [b"online", b"online"]
    stop.set()
    await task
    assert source.published[-1] == ("perfusion/status/test/test", b"offline", True)


async def test_without_a_last_will_a_service_beats_while_connected_and_only_then(
    tmp_path: Path, source: MemorySource
) -> None:
    """AMQP has no last will: the runtime repeats ``online`` every heartbeat and touches the file
    ``isoperf health`` reads; with MQTT's last will it sends ``online`` once a connection."""
    source.last_will = False
    beat = settings(tmp_path, heartbeat_s=0.05, health_dir=tmp_path / "health")
    loop = ServiceLoop(beat, "test", source, handler=GatedHandler())
    stop, task = await run_loop(loop)
    status = [b"online"] * 4
    await until(lambda: [p for t, p, _ in source.published if t == "perfusion/status/test/test"][:4] == status, 30)
    alive = health_file(beat, "test")
    assert time.time() - alive.stat().st_mtime < 5
    stop.set()
    await task
    assert source.published[-1] == ("perfusion/status/test/test", b"offline", True)
    sent = len(source.published)
    await asyncio.sleep(0.2)
    assert len(source.published) == sent, "no beat once stopped"

    willed = MemorySource()  # a last will: online once, no beats
    loop = ServiceLoop(settings(tmp_path, heartbeat_s=0.05), "test", willed, handler=GatedHandler())
    stop, task = await run_loop(loop)
    await until(lambda: willed.published)
    await asyncio.sleep(0.3)
    assert willed.published == [("perfusion/status/test/test", b"online", True)]
    stop.set()
    await task


async def test_the_outbox_keeps_a_message_until_the_broker_has_it() -> None:
    class Flaky(FakePublisher):
        def __init__(self) -> None:
            super().__init__()
            self.fail = 1

        async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
            if self.fail:
                self.fail -= 1
                raise ConnectionLost("gone")
            await super().publish(topic, payload, retain=retain)

    outbox, pub = Outbox(), Flaky()
    outbox.put("a", b"1")
    outbox.put("b", b"2")
    with pytest.raises(ConnectionLost):
        await outbox.send(pub)
    assert len(outbox) == 2  # "b" may have gone too (in the same window): it is sent again, in order
    await outbox.send(pub)
    assert len(outbox) == 0 and pub.sent[-2:] == [("a", b"1"), ("b", b"2")]


async def test_a_publication_the_amqp_client_cancels_is_a_lost_connection() -> None:
    """When a node goes down the AMQP client cancels the confirmations it still awaits; the
    flush after reconnecting raised CancelledError and stopped pk (a 20-theatre cluster run).
    A stop of the publishing task itself is still a cancellation."""

    class Closing:
        async def publish(self, *args: object, **kwargs: object) -> None:
            confirmation: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            confirmation.cancel()  # what the client does to the futures of a closed channel
            await confirmation

    class Waiting:
        async def publish(self, *args: object, **kwargs: object) -> None:
            await asyncio.Event().wait()

    closing = AmqpConnection(None, Closing(), asyncio.Event())  # type: ignore[arg-type]
    with pytest.raises(ConnectionLost, match="cancelled"):
        await closing.publish("perfusion/or-1/s-1/pk", b"x")
    waiting = AmqpConnection(None, Waiting(), asyncio.Event())  # type: ignore[arg-type]
    task = asyncio.ensure_future(waiting.publish("perfusion/or-1/s-1/pk", b"x"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_emitter_publishes_at_once_and_stores_on_flush() -> None:
    pub, writer = FakePublisher(), FakeWriter()
    emitter = Emitter(pub, writer)
    emitter.emit("perfusion/or-1/s-1/leakage", b"x", ["leakage,theatre=or-1 percent=1 1"])
    await emitter.send()  # starts publishing in the background, and returns
    await emitter.sent()
    assert pub.sent == [("perfusion/or-1/s-1/leakage", b"x")] and writer.stored == []
    await emitter.flush()
    assert writer.stored == ["leakage,theatre=or-1 percent=1 1"] and len(emitter) == 0


def test_dead_letters_keep_the_reason_and_a_bounded_payload(tmp_path: Path) -> None:
    dead = DeadLetters(tmp_path, "recorder")
    dead.keep("perfusion/or-1/s-1/raw/counts", b"x" * 100_000, "payload too large")
    dead.keep("perfusion/or-1/s-1/event", b"{}", "t: field required")
    records = [json.loads(x) for x in dead.path.read_text().splitlines()]
    assert dead.count == 2 and [r["reason"] for r in records] == ["payload too large", "t: field required"]
    assert records[0]["size"] == 100_000 and records[0]["truncated"] is True
    assert len(base64.b64decode(records[0]["payload_b64"])) == 65_536


class RejectionsHeard(GatedHandler):
    def __init__(self) -> None:
        super().__init__()
        self.rejected_times: list[float] = []

    async def rejected(self, message: Inbound, rejections: list[Rejection]) -> None:
        self.rejected_times.extend(r.t for r in rejections)


async def test_a_wild_time_is_kept_aside_sample_by_sample_and_the_handler_hears_of_it(
    tmp_path: Path, source: MemorySource
) -> None:
    handler = RejectionsHeard()
    loop = ServiceLoop(settings(tmp_path), "test", source, handler=handler)
    stop, task = await run_loop(loop)
    topic = TOPICS.raw("or-1", "s-1", "counts")
    source.put(*reading(1.0))
    wild = T + 6 * 3600
    source.put(topic, encode(ReadingBatch(samples=[(T + 2.0, 2.0), (wild, 99.0), (T + 3.0, 3.0)])))
    source.put(topic, encode(Reading(t=wild, v=98.0)))
    source.put(*reading(4.0))
    await until(lambda: len(source.acked) == 4)
    assert handler.stored == [1.0, 2.0, 3.0, 4.0], "what is inside goes on; the wild samples do not"
    assert handler.rejected_times == [wild, wild]
    records = [json.loads(x) for x in (tmp_path / "dead" / "test.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert all("6 h after the session's latest input" in r["reason"] for r in records), records
    stop.set()
    await task


class LeakageHeard(RejectionsHeard):
    kinds: tuple[str, ...] = ("raw/counts", "leakage/series")

    def __init__(self) -> None:
        super().__init__()
        self.points: list[float] = []

    async def handle(self, message: Inbound) -> None:
        if isinstance(message.body, LeakageSeries):
            self.points.extend(p.t for p in message.body.points)
        else:
            await super().handle(message)


async def test_a_wild_time_in_a_leakage_series_is_kept_aside_point_by_point(
    tmp_path: Path, source: MemorySource
) -> None:
    handler = LeakageHeard()
    loop = ServiceLoop(settings(tmp_path), "test", source, handler=handler)
    stop, task = await run_loop(loop)
    topic = TOPICS.session("or-1", "s-1", "leakage/series")
    source.put(*reading(1.0))
    wild = T + 6 * 3600

    def series(*times: float) -> bytes:
        return encode(LeakageSeries(points=[Leakage(t=t, state="background") for t in times]))

    source.put(topic, series(T + 1.0, T + 2.0))  # inside: passed on whole
    source.put(topic, series(T + 3.0, wild, T + 4.0))
    source.put(topic, series(wild, wild + 1.0))  # nothing inside: confirmed, never handled
    await until(lambda: len(source.acked) == 4)
    assert handler.points == [T + 1.0, T + 2.0, T + 3.0, T + 4.0]
    assert handler.rejected_times == [wild, wild, wild + 1.0]
    assert len((tmp_path / "dead" / "test.jsonl").read_text().splitlines()) == 2
    stop.set()
    await task


class DrainedHeard(GatedHandler):
    """Notes how many readings it had handled each time it was told the inbox is drained."""

    def __init__(self) -> None:
        super().__init__()
        self.drained_at: list[int] = []

    async def drained(self) -> None:
        self.drained_at.append(len(self.handled))


async def test_a_handler_hears_once_the_messages_received_are_all_handled(tmp_path: Path, source: MemorySource) -> None:
    handler = DrainedHeard()
    for v in range(1, 6):  # a backlog: five messages already received
        source.put(*reading(float(v)))
    loop = ServiceLoop(settings(tmp_path), "test", source, handler=handler)
    stop, task = await run_loop(loop)
    await until(lambda: len(source.acked) == 5)
    assert handler.drained_at == [5], "once, after the whole backlog, not after each message"
    source.put(*reading(6.0))  # idle: one message, then drained at once
    await until(lambda: len(source.acked) == 6)
    assert handler.drained_at == [5, 6]
    stop.set()
    await task


async def test_the_outbox_keeps_many_in_flight_and_only_the_acknowledged_prefix_leaves() -> None:
    class Slow(FakePublisher):
        def __init__(self) -> None:
            super().__init__()
            self.in_flight = self.most = 0
            self.broken_at: int | None = None

        async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            await asyncio.sleep(0.001)
            self.in_flight -= 1
            if self.broken_at is not None and int(payload) >= self.broken_at:
                raise ConnectionLost("gone")
            await super().publish(topic, payload, retain=retain)

    outbox, pub = Outbox(), Slow()
    for i in range(250):
        outbox.put("x", str(i).encode())
    pub.broken_at = 130
    with pytest.raises(ConnectionLost):
        await outbox.send(pub)
    assert pub.most > 50  # a window in flight, not one round trip a message
    assert len(outbox) == 250 - 130  # everything from the first unacknowledged one stays
    pub.broken_at = None
    await outbox.send(pub)
    assert [int(p) for _, p in pub.sent] == list(range(250)) and len(outbox) == 0


async def test_the_emitter_does_not_wait_for_the_broker_but_its_flush_does() -> None:
    class Held(FakePublisher):
        def __init__(self) -> None:
            super().__init__()
            self.release = asyncio.Event()

        async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
            await self.release.wait()
            await super().publish(topic, payload, retain=retain)

    pub, writer = Held(), FakeWriter()
    emitter = Emitter(pub, writer)
    emitter.emit("t", b"1", ["x v=1 1"])
    await asyncio.wait_for(emitter.send(), timeout=1)  # returns while the broker has not acknowledged
    assert pub.sent == [] and len(emitter) == 1
    flushing = asyncio.ensure_future(emitter.flush())
    await asyncio.sleep(0.01)
    assert not flushing.done() and writer.stored == ["x v=1 1"]
    pub.release.set()
    await asyncio.wait_for(flushing, timeout=1)
    assert pub.sent == [("t", b"1")] and len(emitter) == 0


def test_health_on_a_cluster_reads_the_heartbeat_file(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ISOPERF_TRANSPORT": "amqp",
        "ISOPERF_HEALTH_DIR": str(tmp_path),
        "ISOPERF_INSTANCE": "i-1",
        "ISOPERF_HEARTBEAT_S": "60",  # healthy for 180 s: however slowly a loaded machine starts it
    }

    def health() -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "isoperf.tools.cli", "health", "leakage"]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)

    assert (got := health()).returncode == 1 and "no heartbeat" in got.stderr
    alive = tmp_path / "leakage-i-1.alive"
    alive.touch()
    assert (got := health()).returncode == 0 and got.stdout.strip() == "online"
    os.utime(alive, (time.time() - 240, time.time() - 240))  # three heartbeats missed
    assert (got := health()).returncode == 1 and re.fullmatch(r"last heartbeat (2\d\d) s ago\n", got.stderr)
