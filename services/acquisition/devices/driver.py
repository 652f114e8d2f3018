"""One device, run for as long as the gateway runs: connect, poll, frame, parse, reconnect.

``DeviceDriver(profile).items()`` is an async iterator of :class:`DeviceReading` (one per
signal and line), :class:`DeviceStatus` (on each change of state), :class:`BadLine` (to be kept
aside) and :class:`ClockJump`. Nothing the device sends stops it: a bad line is an item, a
lost connection is a status followed by reconnection attempts with exponential backoff and
jitter (``Backoff``), reset by the first valid line.

States: ``connected`` (open and, as far as known, well), ``disconnected`` (with the reason),
``silent`` (no valid line for ``[health] silent_after_s``, or no reply to a poll within
``reply_timeout_s``), ``garbage`` (``[health] garbage_after`` bad lines in a row).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Literal

from isoperf.backoff import Backoff
from isoperf.schemas import SIGNALS, Reading
from services.acquisition.devices.parsing import LineError, LineParser, ParsedLine
from services.acquisition.devices.profile import DeviceProfile, FileSpec, SerialSpec, TcpSpec
from services.acquisition.devices.transports import Frame, Framer, Transport, TransportError, make_transport

log = logging.getLogger(__name__)
State = Literal["connected", "disconnected", "silent", "garbage"]


@dataclass(frozen=True, slots=True)
class DeviceReading:
    """One value of one signal; ``line`` numbers the device's valid lines (readings of a line share it)."""

    device: str
    signal: str
    t: float
    v: float
    dt: float
    unit: str = ""
    line: int = 0

    def to_reading(self) -> Reading:
        """The contract's ``Reading`` (isoperf signals: counts, flow, pressure, temperature, reservoir)."""
        if self.signal not in SIGNALS:
            raise ValueError(f"{self.signal} is an extension signal, not one of {', '.join(SIGNALS)}")
        return Reading(t=self.t, v=self.v, dt=self.dt)


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    device: str
    state: State
    reason: str
    t: float


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that gave no reading (or a value dropped from a line): keep ``raw`` aside."""

    device: str
    raw: bytes
    reason: str
    t: float


@dataclass(frozen=True, slots=True)
class ClockJump:
    """The device clock's offset from the gateway (device - gateway, s) changed beyond tolerance."""

    device: str
    offset_s: float
    t: float
    previous_offset_s: float = 0.0


DriverItem = DeviceReading | DeviceStatus | BadLine | ClockJump


@dataclass
class DriverStats:
    """Counts since the driver started (for the commissioning summary and health pages)."""

    lines_good: int = 0
    lines_bad: int = 0
    lines_skipped: int = 0
    values_rejected: int = 0
    bytes_read: int = 0
    connects: int = 0
    disconnects: int = 0
    missed_replies: int = 0
    readings: dict[str, int] = field(default_factory=dict)
    last_value: dict[str, float] = field(default_factory=dict)
    clock_offset_s: float | None = None  # device - gateway of the last live line (0 for a gateway clock)
    clock_offset_min_s: float | None = None
    clock_offset_max_s: float | None = None
    clock_jumps: int = 0


_STOP = object()
_POLLED = object()


def _reason(transport: Transport, e: Exception) -> str:
    """A transport's own reason, or, for an exception it did not expect, one naming it (logged: a bug)."""
    if isinstance(e, TransportError):
        return e.reason
    log.error("%s: unexpected %r", transport.label, e, exc_info=e)
    return f"{transport.label}: unexpected error {e!r}"


class DeviceDriver:
    """Runs one device per its profile. ``clock`` gives the gateway time (Unix s) of each receipt."""

    def __init__(
        self,
        profile: DeviceProfile,
        *,
        clock: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
        transport_factory: Callable[[SerialSpec | TcpSpec | FileSpec], Transport] = make_transport,
    ) -> None:
        self.profile = profile
        self.device = profile.device.name
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.stats = DriverStats()
        self._factory = transport_factory
        self._parser = LineParser(profile)
        self._units = {s.name: s.display_unit for s in profile.signals}
        self._state: State | None = None
        self._reason = ""
        self._stop = asyncio.Event()
        self._queue: asyncio.Queue[object] | None = None
        self._poll_sent: float | None = None  # loop time of the last poll still awaiting its reply
        self._last_valid = 0.0  # loop time of the last valid line (or of the connection)
        self._bad_in_row = 0
        self._line_no = 0
        self._offset: float | None = None

    @property
    def state(self) -> State | None:
        return self._state

    def stop(self) -> None:
        """End :meth:`items` soon (it closes the transport and yields a last ``disconnected``)."""
        self._stop.set()
        if self._queue is not None:
            with contextlib.suppress(asyncio.QueueFull):  # then the session sees the event at its next item
                self._queue.put_nowait(_STOP)

    def _status(self, state: State, reason: str) -> DeviceStatus | None:
        if state == self._state and (state != "disconnected" or reason == self._reason):
            return None
        level = logging.INFO if state == "connected" or reason == "driver stopped" else logging.WARNING
        log.log(level, "%s: %s: %s", self.device, state, reason)
        self._state, self._reason = state, reason
        return DeviceStatus(self.device, state, reason, self.clock())

    async def items(self) -> AsyncGenerator[DriverItem, None]:
        """Run until :meth:`stop`; use ``contextlib.aclosing`` so that an early exit closes the device."""
        transport = self._factory(self.profile.transport)  # one for the driver's life: a file keeps its place
        while not self._stop.is_set():
            try:
                await transport.open()
            except Exception as e:
                if status := self._status("disconnected", _reason(transport, e)):
                    yield status
                await self._sleep(self.backoff.next_delay())
                continue
            self.stats.connects += 1
            if status := self._status("connected", f"{transport.label}: open"):
                yield status
            reason = "driver stopped"
            try:
                async with contextlib.aclosing(self._session(transport)) as session:
                    async for item in session:
                        if isinstance(item, str):
                            reason = item
                        else:
                            yield item
            finally:
                self._queue = None
                await transport.close()
            self.stats.disconnects += 1
            if status := self._status("disconnected", reason):
                yield status
            if not self._stop.is_set():
                await self._sleep(self.backoff.next_delay())

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    async def _session(self, transport: Transport) -> AsyncGenerator[DriverItem | str, None]:
        """One connection; ends with the reason it ended (a ``str``)."""
        framing = self.profile.framing
        framer = Framer(framing.terminator.encode("ascii"), framing.max_line_length)
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=256)
        self._queue = queue
        loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(self._reader(transport, queue), name=f"{self.device}-reader")]
        self._poll_sent = None
        if self.profile.poll is not None:
            tasks.append(asyncio.create_task(self._poller(transport, queue), name=f"{self.device}-poller"))
        self._last_valid = loop.time()
        resets = transport.resets
        try:
            while True:
                try:
                    got = await asyncio.wait_for(queue.get(), max(0.0, self._deadline() - loop.time()))
                except TimeoutError:
                    for status in self._on_timeout(loop.time()):
                        yield status
                    continue
                if got is _STOP or self._stop.is_set():
                    return
                if got is _POLLED:
                    continue
                if isinstance(got, TransportError):
                    yield got.reason
                    return
                assert isinstance(got, tuple)
                if transport.resets != resets:  # a truncated or rotated file: a partial line is stale
                    resets = transport.resets
                    framer.reset()
                for item in self._on_data(framer, *got):
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if dropped := framer.reset():
                log.debug("%s: dropped a partial line of %d bytes", self.device, dropped)

    def _on_data(self, framer: Framer, received_t: float, data: bytes, live: bool) -> list[DriverItem]:
        self.stats.bytes_read += len(data)
        out: list[DriverItem] = []
        for frame in framer.feed(data):
            self._poll_sent = None  # any line answers a poll
            out += self._handle(frame, received_t, live)
        return out

    def _deadline(self) -> float:
        """Loop time at which silence (or an unanswered poll) is due."""
        deadline = self._last_valid + self.profile.health.silent_after_s
        if self.profile.poll is not None and self._poll_sent is not None:
            deadline = min(deadline, self._poll_sent + self.profile.poll.reply_timeout_s)
        return deadline

    def _on_timeout(self, now: float) -> list[DeviceStatus]:
        out: list[DeviceStatus] = []
        poll, silent_after = self.profile.poll, self.profile.health.silent_after_s
        if poll is not None and self._poll_sent is not None and now >= self._poll_sent + poll.reply_timeout_s:
            self._poll_sent = None
            self.stats.missed_replies += 1
            if status := self._status("silent", f"no reply to {poll.command!r} within {poll.reply_timeout_s:g} s"):
                out.append(status)
        if now >= self._last_valid + silent_after:
            self._last_valid = now  # report once per period, not in a busy loop
            if status := self._status("silent", f"no valid line for {silent_after:g} s"):
                out.append(status)
        return out

    async def _reader(self, transport: Transport, queue: asyncio.Queue[object]) -> None:
        while True:
            live = transport.live  # before the read: bytes read after reaching the end are new
            try:
                data = await transport.read()
            except Exception as e:
                await queue.put(TransportError(_reason(transport, e)))
                return
            await queue.put((self.clock(), data, live))

    async def _poller(self, transport: Transport, queue: asyncio.Queue[object]) -> None:
        poll = self.profile.poll
        assert poll is not None
        command = poll.command.encode(self.profile.framing.encoding, errors="replace")
        loop = asyncio.get_running_loop()
        while True:
            self._poll_sent = loop.time()  # before writing: a quick reply must find the poll pending
            try:
                await transport.write(command)
            except Exception as e:
                await queue.put(TransportError(_reason(transport, e)))
                return
            await queue.put(_POLLED)  # the session's wait now has a reply deadline
            await asyncio.sleep(poll.interval_s)

    def _handle(self, frame: Frame, received_t: float, live: bool) -> list[DriverItem]:
        if frame.overlong:
            term = self.profile.framing.terminator.encode("ascii")
            return self._bad(
                frame.raw,
                f"line too long: over {self.profile.framing.max_line_length} bytes without the terminator {term!r} "
                "(check [framing] terminator and the baud rate)",
                received_t,
            )
        try:
            parsed = self._parser.parse(frame.raw, received_t)
        except LineError as e:
            return self._bad(frame.raw, e.reason, received_t)
        except Exception as e:  # a bug in the parser must not stop the device
            log.exception("%s: parser failed on %r", self.device, frame.raw[:80])
            return self._bad(frame.raw, f"internal parser error: {e!r}", received_t)
        if parsed is None:
            self.stats.lines_skipped += 1
            return []
        return self._good(frame.raw, parsed, received_t, live)

    def _bad(self, raw: bytes, reason: str, t: float) -> list[DriverItem]:
        self.stats.lines_bad += 1
        self._bad_in_row += 1
        out: list[DriverItem] = [BadLine(self.device, raw, reason, t)]
        if self._bad_in_row >= self.profile.health.garbage_after:
            status = self._status("garbage", f"{self._bad_in_row} bad lines in a row; last: {reason}")
            if status:
                out.append(status)
        return out

    def _good(self, raw: bytes, parsed: ParsedLine, received_t: float, live: bool) -> list[DriverItem]:
        out: list[DriverItem] = []
        self.stats.lines_good += 1
        self._bad_in_row = 0
        self._line_no += 1
        self._last_valid = asyncio.get_running_loop().time()
        self.backoff.reset()
        if self._state in ("silent", "garbage") and (status := self._status("connected", "valid lines again")):
            out.append(status)
        if parsed.device_t is None:
            self.stats.clock_offset_s = 0.0
        elif live:
            out += self._clock_check(parsed.device_t - received_t, received_t)
        for name, v in parsed.values.items():
            out.append(DeviceReading(self.device, name, parsed.t, v, parsed.dt, self._units[name], self._line_no))
            self.stats.readings[name] = self.stats.readings.get(name, 0) + 1
            self.stats.last_value[name] = v
        if parsed.rejected:
            self.stats.values_rejected += len(parsed.rejected)
            out.append(BadLine(self.device, raw, "value dropped: " + "; ".join(parsed.rejected), received_t))
        return out

    def _clock_check(self, offset: float, t: float) -> list[DriverItem]:
        s = self.stats
        s.clock_offset_s = offset
        s.clock_offset_min_s = offset if s.clock_offset_min_s is None else min(s.clock_offset_min_s, offset)
        s.clock_offset_max_s = offset if s.clock_offset_max_s is None else max(s.clock_offset_max_s, offset)
        previous, self._offset = self._offset, offset
        tolerance = self.profile.clock.jump_tolerance_s
        if previous is None:
            if abs(offset) > tolerance:
                hint = self.profile.clock.offset_s - offset
                log.warning(
                    "%s: the device clock is %+.1f s off the gateway's: set it, or [clock] offset_s = %.0f",
                    self.device,
                    offset,
                    hint,
                )
            return []
        if abs(offset - previous) <= tolerance:
            return []
        s.clock_jumps += 1
        log.warning("%s: device clock jumped: offset %+.1f s -> %+.1f s", self.device, previous, offset)
        return [ClockJump(self.device, offset, t, previous)]
