"""Each transport driven for real: a pseudo-terminal as the serial port (unplugged and plugged back),
a local TCP device server (dropping and coming back), a polled rate meter, a log file being appended,
truncated and rotated. No network beyond 127.0.0.1; no broker or database."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import time
import tty
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from isoperf.backoff import Backoff
from services.acquisition.devices import (
    BadLine,
    ClockJump,
    DeviceDriver,
    DeviceProfile,
    DeviceReading,
    DeviceStatus,
    DriverItem,
    load_profile,
)
from services.acquisition.devices.commission import main as commission

ROOT = Path(__file__).resolve().parents[2]

PUMP_LINE = b"2024-11-22 14:05:07,1200,185,38.5,850\r\n"


def local(year: int, month: int, day: int, hour: int, minute: int, second: int) -> float:
    """Unix time of a naive local (gateway) date-time, as a "local" timezone profile reads it."""
    return datetime(year, month, day, hour, minute, second).timestamp()


def profile(name: str, **sections: dict[str, Any]) -> DeviceProfile:
    """A shipped profile with some keys of some sections replaced."""
    data = load_profile(ROOT / "deploy" / "devices" / name).model_dump()
    for section, values in sections.items():
        if section == "transport":
            data["transport"] = values
        else:
            data[section] = {**(data.get(section) or {}), **values}
    return DeviceProfile.model_validate(data)


class Collector:
    """Runs a driver in the background and lets a test wait for the items it expects."""

    def __init__(self, driver: DeviceDriver) -> None:
        self.driver = driver
        self.items: list[DriverItem] = []
        self._queue: asyncio.Queue[DriverItem] = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with contextlib.aclosing(self.driver.items()) as items:
            async for item in items:
                self.items.append(item)
                self._queue.put_nowait(item)

    async def expect(self, match: Callable[[DriverItem], bool], within_s: float = 3.0) -> DriverItem:
        async with asyncio.timeout(within_s):
            while True:
                item = await self._queue.get()
                if match(item):
                    return item

    async def status(self, state: str, contains: str = "", within_s: float = 3.0) -> DeviceStatus:
        item = await self.expect(
            lambda i: isinstance(i, DeviceStatus) and i.state == state and contains in i.reason, within_s
        )
        assert isinstance(item, DeviceStatus)
        return item

    async def reading(self, signal: str, within_s: float = 3.0) -> DeviceReading:
        item = await self.expect(lambda i: isinstance(i, DeviceReading) and i.signal == signal, within_s)
        assert isinstance(item, DeviceReading)
        return item

    async def bad(self, contains: str, within_s: float = 3.0) -> BadLine:
        item = await self.expect(lambda i: isinstance(i, BadLine) and contains in i.reason, within_s)
        assert isinstance(item, BadLine)
        return item

    async def close(self) -> None:
        self.driver.stop()
        await asyncio.wait_for(self._task, 5.0)


@pytest.fixture
async def run() -> AsyncIterator[Callable[..., Collector]]:
    collectors: list[Collector] = []

    def start(p: DeviceProfile, **kwargs: Any) -> Collector:
        c = Collector(DeviceDriver(p, backoff=Backoff(0.05, 0.3), **kwargs))
        collectors.append(c)
        return c

    yield start
    for c in collectors:
        await c.close()
    for c in collectors:  # after stop, the driver always says so last
        last = c.items[-1]
        assert isinstance(last, DeviceStatus) and last.state == "disconnected", last


# ----------------------------------------------------------------------------- serial (pty)


class FakeSerialPort:
    """A pseudo-terminal behind a stable name, like /dev/serial/by-id/...: unplug removes it."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master: int | None = None
        self.slave: int | None = None

    def plug(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.symlink(os.ttyname(self.slave), self.link)

    def unplug(self) -> None:
        assert self.master is not None and self.slave is not None
        os.close(self.master)
        os.close(self.slave)
        self.link.unlink()
        self.master = self.slave = None

    def send(self, data: bytes) -> None:
        assert self.master is not None
        os.write(self.master, data)


@pytest.fixture
def serial_port(tmp_path: Path) -> Iterator[FakeSerialPort]:
    port = FakeSerialPort(tmp_path / "ttyPUMP")
    port.plug()
    yield port
    if port.master is not None:
        port.unplug()


async def test_serial_reads_scales_survives_garbage_and_reconnects_after_unplugging(
    serial_port: FakeSerialPort, run: Callable[..., Collector]
) -> None:
    p = profile("pump-console.toml", transport={"type": "serial", "port": str(serial_port.link), "baudrate": 9600})
    c = run(p)
    connected = await c.status("connected")
    assert f"serial port {serial_port.link}" in connected.reason and "9600 8N1" in connected.reason

    serial_port.send(b"time,flow,pressure,temperature,reservoir\r\n" + PUMP_LINE)
    flow = await c.reading("flow")
    assert (flow.v, flow.unit, flow.t, flow.dt) == (1200.0, "mL/min", local(2024, 11, 22, 14, 5, 7), 1.0)
    assert flow.to_reading().v == 1200.0
    reservoir = await c.reading("reservoir")
    assert (reservoir.v, reservoir.unit, reservoir.line) == (850.0, "mL", flow.line)

    serial_port.send(b"\x00\xff\xfe noise\r\n2024-11-22 14:05:08,12x0,185,38.5,850\r\n" + b"z" * 400)
    assert "non-printable byte 0x00" in (await c.bad("non-printable")).reason
    assert (await c.bad("not a number")).raw == b"2024-11-22 14:05:08,12x0,185,38.5,850"
    serial_port.send(b"\r\n2024-11-22 14:05:09,1210,186,38.6,849\r\n")
    assert (await c.bad("line too long")).raw == b"z" * 160
    assert (await c.reading("flow")).v == 1210.0, "the driver goes on after garbage"

    serial_port.unplug()
    await c.status("disconnected", f"serial port {serial_port.link} vanished")
    await c.status("disconnected", "not found")  # the retries find nothing while it is unplugged
    serial_port.plug()
    await c.status("connected")
    serial_port.send(b"2024-11-22 14:05:10,1220,187,38.7,848\r\n")
    assert (await c.reading("flow")).v == 1220.0
    assert c.driver.stats.connects == 2 and c.driver.stats.disconnects == 1


async def test_serial_silence_and_garbage_states(serial_port: FakeSerialPort, run: Callable[..., Collector]) -> None:
    p = profile(
        "pump-console.toml",
        transport={"type": "serial", "port": str(serial_port.link)},
        health={"silent_after_s": 0.4, "garbage_after": 3},
    )
    c = run(p)
    await c.status("connected")
    t0 = time.monotonic()
    assert "no valid line for 0.4 s" in (await c.status("silent")).reason
    assert time.monotonic() - t0 >= 0.35
    serial_port.send(PUMP_LINE)
    assert (await c.status("connected", "valid lines again")).state == "connected"
    serial_port.send(b"bad\r\n" * 3)
    assert "3 bad lines in a row" in (await c.status("garbage")).reason
    serial_port.send(PUMP_LINE)
    await c.status("connected", "valid lines again")
    assert c.driver.stats.lines_bad == 3 and c.driver.stats.lines_good == 2


async def test_serial_port_missing_at_start(tmp_path: Path, run: Callable[..., Collector]) -> None:
    c = run(profile("pump-console.toml", transport={"type": "serial", "port": str(tmp_path / "ttyNONE")}))
    status = await c.status("disconnected")
    assert status.reason == f"serial port {tmp_path / 'ttyNONE'} not found (not plugged in, or another port name?)"


# ----------------------------------------------------------------------------- TCP device server


class DeviceServer:
    """A serial-to-Ethernet device server on 127.0.0.1 that can be switched off and on again."""

    def __init__(self, on_client: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]) -> None:
        self.on_client = on_client
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.handlers: set[asyncio.Task[Any]] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            await self.on_client(reader, writer)
        self.handlers.discard(task)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.handlers:
            task.cancel()
        for w in self.writers:
            w.close()
        self.writers.clear()
        await self.server.wait_closed()


async def test_tcp_drop_refused_and_back(run: Callable[..., Collector]) -> None:
    lines: asyncio.Queue[bytes] = asyncio.Queue()

    async def feed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            writer.write(await lines.get())
            await writer.drain()

    server = DeviceServer(feed)
    await server.start()
    p = profile("probe-scaler.toml", transport={"type": "tcp", "url": f"socket://127.0.0.1:{server.port}"})
    c = run(p)
    assert (await c.status("connected")).reason == f"tcp 127.0.0.1:{server.port}: open"
    lines.put_nowait(b"  12 11/22/24 14:05:07 000015 023456 006 S PT-BED-3\r\n")
    counts = await c.reading("counts")
    assert (counts.v, counts.dt, counts.t, counts.unit) == (23456.0, 6.0, local(2024, 11, 22, 14, 5, 7), "counts")

    await server.stop()
    await c.status("disconnected", f"tcp 127.0.0.1:{server.port} closed the connection")
    await c.status("disconnected", f"tcp 127.0.0.1:{server.port} refused the connection")
    await server.start()  # the same port
    await c.status("connected")
    lines.put_nowait(b"  13 11/22/24 14:05:13 000016 023999 006 S PT-BED-3\r\n")
    assert (await c.reading("counts")).v == 23999.0
    await server.stop()


async def test_polled_rate_meter_answers_rr_and_falls_silent(run: Callable[..., Collector]) -> None:
    polls: list[float] = []
    answering = asyncio.Event()
    answering.set()

    async def meter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while command := await reader.readuntil(b"\r\n"):
            polls.append(time.monotonic())
            if command == b"RR\r\n" and answering.is_set():
                writer.write(b"000012,001234,000056\r\n")
                await writer.drain()

    server = DeviceServer(meter)
    await server.start()
    p = profile(
        "ludlum-2363.toml",
        transport={"type": "tcp", "host": "127.0.0.1", "port": server.port},
        poll={"interval_s": 0.2, "reply_timeout_s": 0.15},
        health={"silent_after_s": 5.0},  # longer than the test: silence here comes from unanswered polls
    )
    fixed_now = 1_732_284_307.0
    c = run(p, clock=lambda: fixed_now)
    await c.status("connected")
    gamma = await c.reading("gamma_rate")
    assert (gamma.v, gamma.unit, gamma.t, gamma.dt) == (12.34, "uSv/h", fixed_now, 1.0), "gateway clock"
    assert (await c.reading("dose")).v == 5.6
    assert (await c.reading("neutron_rate")).v == 12.0
    await c.reading("gamma_rate")
    assert len(polls) >= 2 and 0.15 < polls[1] - polls[0] < 0.5, "one RR per interval"

    answering.clear()
    assert (await c.status("silent", within_s=0.6)).reason == "no reply to 'RR\\r\\n' within 0.15 s"
    answering.set()
    await c.status("connected", "valid lines again")
    assert c.driver.stats.missed_replies >= 1 and c.driver.stats.clock_offset_s == 0.0
    await server.stop()


# ----------------------------------------------------------------------------- log file


async def test_file_follows_appends_truncation_and_rotation(tmp_path: Path, run: Callable[..., Collector]) -> None:
    log = tmp_path / "pump.log"
    log.write_bytes(b"2024-11-22 14:00:00,1000,100,37.0,800\r\n")  # before the driver: not read (start = end)
    p = profile("pump-console.toml", transport={"type": "file", "path": str(log), "poll_interval_s": 0.05})
    c = run(p)
    await c.status("connected", f"file {log}: open")
    with log.open("ab") as f:
        f.write(PUMP_LINE + b"2024-11-22 14:05:08,junk\r\n")
    first = await c.reading("flow")
    assert (first.v, first.t) == (1200.0, local(2024, 11, 22, 14, 5, 7)), "the old line was skipped"
    assert "wrong field count: 2 fields, expected 5" in (await c.bad("wrong field count")).reason

    log.write_bytes(b"2024-11-22 14:06:00,1300,1,37,1\r\n")  # truncated and rewritten, shorter than before
    assert (await c.reading("flow")).v == 1300.0
    await asyncio.sleep(0.1)
    same_size = b"2024-11-22 14:06:01,1310,1,37,1\r\n"  # rewritten again to the very same size
    log.write_bytes(same_size)
    assert (await c.reading("flow")).v == 1310.0, "a rewrite is seen even when the size does not shrink"

    log.rename(tmp_path / "pump.log.1")
    log.write_bytes(b"2024-11-22 14:07:00,1400,1,37,1\r\n2024-11-22 14:07:01,1401,1,37,1\r\n")
    assert (await c.reading("flow")).v == 1400.0, "the new file is read from its start"
    assert (await c.reading("flow")).v == 1401.0
    flows = [i.v for i in c.items if isinstance(i, DeviceReading) and i.signal == "flow"]
    assert flows == [1200.0, 1300.0, 1310.0, 1400.0, 1401.0]


async def test_file_vanishes_and_comes_back(tmp_path: Path, run: Callable[..., Collector]) -> None:
    log = tmp_path / "cdi.log"
    log.write_bytes(b"")
    p = profile("pump-console.toml", transport={"type": "file", "path": str(log), "poll_interval_s": 0.05})
    c = run(p)
    await c.status("connected")
    log.unlink()
    await c.status("disconnected", f"file {log} vanished", within_s=4.0)
    log.write_bytes(PUMP_LINE)
    await c.status("connected")
    assert (await c.reading("flow")).v == 1200.0, "a new file is read from its start"


async def test_clock_jumps_only_between_live_lines(tmp_path: Path, run: Callable[..., Collector]) -> None:
    log = tmp_path / "pump.log"
    # A backlog spanning hours, read from the start: not live, so no jump however far apart.
    log.write_bytes(b"2024-11-22 09:00:00,1,1,37,1\r\n2024-11-22 12:00:00,2,1,37,1\r\n")
    now = [local(2024, 11, 22, 14, 5, 8)]
    p = profile("pump-console.toml", transport={"type": "file", "path": str(log), "start": "start"})
    c = run(p, clock=lambda: now[0])
    assert (await c.reading("flow")).v == 1.0 and (await c.reading("flow")).v == 2.0
    await asyncio.sleep(0.5)  # reach the end: from here on lines are live

    def append(line: bytes, at: float) -> None:
        now[0] = at
        with log.open("ab") as f:
            f.write(line)

    append(PUMP_LINE, local(2024, 11, 22, 14, 5, 8))  # the device runs 1 s behind
    await c.reading("flow")
    append(b"2024-11-22 14:05:10,3,1,37,1\r\n", local(2024, 11, 22, 14, 5, 11))  # same offset: no jump
    await c.reading("flow")
    append(b"2024-11-22 15:05:12,4,1,37,1\r\n", local(2024, 11, 22, 14, 5, 12))  # set an hour ahead
    jump = await c.expect(lambda i: isinstance(i, ClockJump))
    assert isinstance(jump, ClockJump)
    assert (jump.previous_offset_s, jump.offset_s) == (-1.0, 3600.0)
    assert jump.t == local(2024, 11, 22, 14, 5, 12)
    assert sum(isinstance(i, ClockJump) for i in c.items) == 1
    assert c.driver.stats.clock_offset_min_s == -1.0 and c.driver.stats.clock_offset_max_s == 3600.0


class BrokenTransport:
    """A transport with a bug: its second read raises something no transport should."""

    label, live, resets = "test transport", True, 0

    def __init__(self) -> None:
        self.reads = 0
        self.opens = 0

    async def open(self) -> None:
        self.opens += 1

    async def read(self, max_bytes: int = 4096) -> bytes:
        self.reads += 1
        if self.reads == 2:
            raise RuntimeError("bug in a transport")
        await asyncio.sleep(0.01)
        return PUMP_LINE

    async def write(self, data: bytes) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.mark.allow_logged_errors
async def test_an_unexpected_transport_error_is_a_disconnection_not_the_end(run: Callable[..., Collector]) -> None:
    broken = BrokenTransport()
    c = run(profile("pump-console.toml"), transport_factory=lambda spec: broken)
    await c.reading("flow")
    status = await c.status("disconnected")
    assert status.reason == "test transport: unexpected error RuntimeError('bug in a transport')"
    await c.status("connected")
    await c.reading("flow")
    assert broken.opens == 2


# ----------------------------------------------------------------------------- commissioning


def test_commissioning_prints_rows_bad_lines_and_a_summary(tmp_path: Path) -> None:
    log = tmp_path / "pump.log"
    log.write_bytes(
        b"time,flow,pressure,temp,res\r\n" + PUMP_LINE + b"2024-11-22 14:05:08,12x0,185,38.5,850\r\n"
        b"2024-11-22 14:05:09,1210,---,38.4,850\r\n"
    )
    out = io.StringIO()
    argv = [str(ROOT / "deploy/devices/pump-console.toml"), "--file", str(log), "--from-start", "--seconds", "0.6"]
    assert commission(argv, out=out) == 0
    text = out.getvalue()
    assert "transport  file " + str(log) in text
    assert "flow 1200 mL/min  pressure 185 mmHg  temperature 38.5 degC  reservoir 850 mL  dt 1 s" in text
    assert "(no value: pressure)" in text
    assert "BAD         flow: not a number: '12x0'" in text
    assert "lines      2 good, 1 bad, 1 skipped" in text
    assert "** CONNECTED" in text and "** DISCONNECTED: driver stopped" in text


def test_commissioning_says_why_nothing_came(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = io.StringIO()
    profile_path = str(ROOT / "deploy/devices/ludlum-2363.toml")
    argv = [profile_path, "--host", "127.0.0.1", "--tcp-port", str(port), "--seconds", "0.5"]
    assert commission(argv, out=out) == 1
    text = out.getvalue()
    assert f"DISCONNECTED: tcp 127.0.0.1:{port} refused the connection" in text
    assert "CHECK: the device could not be opened" in text
    assert commission(["/nonexistent.toml"], out=out) == 2
    assert "cannot read the profile" in capsys.readouterr().err
