"""The theatre's real equipment: one driver per device profile, all into the one gateway.

Readings are gathered for ``tick_s`` and journalled together (batched per signal, as the
simulator's playback does); a device's status changes and clock jumps go out on the session's
``device`` topic, which the alerts service turns into technical alarms; a bad line is kept
aside with its reason in the gateway's dead letters. Nothing a device sends stops the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from isoperf.backoff import wait_or_stop
from isoperf.deadletter import DeadLetters
from isoperf.schemas import SIGNAL_RANGES, SIGNALS, GatewayStatus, Reading
from services.acquisition.devices import (
    BadLine,
    ClockJump,
    DeviceDriver,
    DeviceReading,
    DeviceStatus,
    DriverItem,
    load_profile,
)
from services.acquisition.gateway import Gateway
from services.acquisition.journal import JournalFull
from services.acquisition.playback import Item, Playback

log = logging.getLogger(__name__)


class Equipment:
    """Runs the devices of one theatre's session until ``stop``."""

    def __init__(self, profiles: list[Path], playback: Playback, deadletters: DeadLetters, tick_s: float = 0.25):
        self.drivers = [DeviceDriver(load_profile(p)) for p in profiles]
        self.playback, self.deadletters, self.tick_s = playback, deadletters, tick_s
        self._pending: list[Item] = []
        self._unpublished: set[tuple[str, str]] = set()
        self._stopping = False

    @property
    def gateway(self) -> Gateway:
        return self.playback.gateway

    async def run(self, stop: asyncio.Event) -> None:
        names = ", ".join(d.profile.device.name for d in self.drivers)
        log.info("reading %d devices: %s", len(self.drivers), names)
        async with asyncio.TaskGroup() as tasks:
            for driver in self.drivers:
                tasks.create_task(self._read(driver))
            tasks.create_task(self._tick(stop))
            await stop.wait()
            self._stopping = True
            for driver in self.drivers:
                driver.stop()

    async def _read(self, driver: DeviceDriver) -> None:
        async with contextlib.aclosing(driver.items()) as items:
            async for item in items:
                try:
                    self._take(item)
                except JournalFull as exc:
                    log.error("%s", exc)
                except Exception:  # a bug must not silence a device
                    log.exception("device %s: could not handle %r", driver.profile.device.name, item)

    def _take(self, item: DriverItem) -> None:
        if isinstance(item, DeviceReading):
            low, high = SIGNAL_RANGES.get(item.signal, (float("-inf"), float("inf")))
            if not low <= item.v <= high:  # the recorder would refuse it, and the journal keep it for ever
                reason = f"{item.signal} value {item.v!r} outside the interface's range [{low}, {high}]"
                self.deadletters.keep(f"device/{item.device}", f"{item.signal}={item.v}".encode(), reason)
            elif item.signal in SIGNALS:
                self._pending.append((item.t, item.signal, Reading(t=item.t, v=item.v, dt=item.dt)))
            elif (item.device, item.signal) not in self._unpublished:
                self._unpublished.add((item.device, item.signal))
                log.warning("%s: signal %s is not part of the interface; not published", item.device, item.signal)
        elif isinstance(item, DeviceStatus):
            if self._stopping and item.state == "disconnected":
                return  # the gateway stopping is no device fault: no alarm for it
            level = logging.INFO if item.state == "connected" else logging.WARNING
            log.log(level, "device %s %s: %s", item.device, item.state, item.reason)
            self._status(GatewayStatus(t=item.t, source=item.device, state=item.state, reason=item.reason[:500]))
        elif isinstance(item, ClockJump):
            reason = (
                f"device clock moved by {item.offset_s - item.previous_offset_s:+.1f} s (now {item.offset_s:+.1f} s)"
            )
            log.warning("device %s: %s", item.device, reason)
            status = GatewayStatus(
                t=item.t, source=item.device, state="clock_jump", reason=reason, offset_s=item.offset_s
            )
            self._status(status)
        elif isinstance(item, BadLine):
            self.deadletters.keep(f"device/{item.device}", item.raw, item.reason)

    def _status(self, status: GatewayStatus) -> None:
        self._flush()  # what the device said before its status goes first
        p = self.playback
        self.gateway.put([(p.topics.session(p.theatre, p.session, "device"), status, False)])

    def _flush(self) -> None:
        if self._pending:
            pending, self._pending = sorted(self._pending, key=lambda i: i[0]), []
            self.playback.emit(pending)

    async def _tick(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await wait_or_stop(stop, self.tick_s)
            try:
                self._flush()
            except JournalFull as exc:
                log.error("%s", exc)
