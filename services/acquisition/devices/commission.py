"""``isoperf devices test PROFILE``: commission one device in theatre.

Opens the device as its profile says (``--port``, ``--host``/``--tcp-port`` or ``--file``
override the profile's transport), prints each valid line as a row of values with units,
each bad line with its reason, each change of state, and ends with a summary: lines good and
bad, signals seen and their rates, the device clock's offset from the gateway, and what to
check. Exit status: 0 if valid lines came, 1 if none did, 2 for a profile or usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import signal
import sys
import time
from collections import Counter
from datetime import datetime
from typing import TextIO

from services.acquisition.devices.driver import (
    BadLine,
    ClockJump,
    DeviceDriver,
    DeviceReading,
    DeviceStatus,
    DriverItem,
)
from services.acquisition.devices.profile import (
    DeviceProfile,
    FileSpec,
    ProfileError,
    SerialSpec,
    TcpSpec,
    load_profile,
)

_TERMINATORS = {"\r\n": "CR LF", "\n": "LF", "\r": "CR"}


DESCRIPTION = "Open a device per its profile and show what it sends: parsed rows, bad lines, status, a summary."


def _parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="isoperf devices test", description=DESCRIPTION))


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("profile", help="device profile (TOML), e.g. deploy/devices/terumo-cdi500.toml")
    p.add_argument("--port", help="serial port instead of the profile's, e.g. /dev/ttyUSB0 or socket://HOST:PORT")
    p.add_argument("--baudrate", type=int, help="with --port: baud rate (default: the profile's, or 9600)")
    p.add_argument("--host", help="device server host instead of the profile's transport (with --tcp-port)")
    p.add_argument("--tcp-port", type=int, help="device server TCP port (with --host)")
    p.add_argument("--file", help="read this log file instead of the profile's transport")
    p.add_argument("--from-start", action="store_true", help="with a file: read it from its start, not its end")
    p.add_argument("--seconds", type=float, default=60.0, help="how long to listen (default 60; 0: until Ctrl-C)")
    return p


def _override(profile: DeviceProfile, args: argparse.Namespace) -> DeviceProfile:
    chosen = [name for name in ("port", "host", "file") if getattr(args, name)]
    if len(chosen) > 1:
        raise ProfileError(f"give only one of --port, --host, --file (got {', '.join('--' + c for c in chosen)})")
    if (args.host is None) != (args.tcp_port is None):
        raise ProfileError("--host and --tcp-port go together")
    current = profile.transport
    if args.port and args.port.startswith("socket://"):
        return profile.with_transport(TcpSpec.model_validate({"type": "tcp", "url": args.port}))
    if args.port:
        base = current.model_dump() if isinstance(current, SerialSpec) else {"type": "serial"}
        base["port"] = args.port
        if args.baudrate:
            base["baudrate"] = args.baudrate
        return profile.with_transport(SerialSpec.model_validate(base))
    if args.host:
        timeout = current.connect_timeout_s if isinstance(current, TcpSpec) else 5.0
        spec = {"type": "tcp", "host": args.host, "port": args.tcp_port, "connect_timeout_s": timeout}
        return profile.with_transport(TcpSpec.model_validate(spec))
    if args.file:
        base = current.model_dump() if isinstance(current, FileSpec) else {"type": "file"}
        base["path"] = args.file
        base["start"] = "start" if args.from_start else base.get("start", "end")
        return profile.with_transport(FileSpec.model_validate(base))
    if args.from_start and isinstance(current, FileSpec):
        return profile.with_transport(current.model_copy(update={"start": "start"}))
    return profile


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


def describe(profile: DeviceProfile) -> list[str]:
    """What the profile will do, in words: printed before listening."""
    d, tr, fr, ck = profile.device, profile.transport, profile.framing, profile.clock
    how = f"{tr.label} ({tr.settings})" if isinstance(tr, SerialSpec) else tr.label
    if isinstance(tr, FileSpec):
        how += f", from its {tr.start}, checked every {tr.poll_interval_s:g} s"
    lines = [
        f"device     {d.name} ({d.kind}){': ' + d.description if d.description else ''}",
        f"transport  {how}",
        f"framing    lines end with {_TERMINATORS[fr.terminator]}, at most {fr.max_line_length} bytes, {fr.encoding}"
        + (f", skipping lines matching {', '.join(map(repr, fr.skip))}" if fr.skip else ""),
        f"parse      {profile.parse.format}",
        "signals    " + ", ".join(f"{s.name} [{s.display_unit}]" for s in profile.signals),
    ]
    if ck.source == "device":
        lines.append(f"clock      device: {ck.format!r}, timezone {ck.timezone}, offset_s {ck.offset_s:+g}")
    else:
        lines.append("clock      gateway (the device sends no time: offset recorded as 0)")
    dt = f"field {ck.dt_field!r} x {ck.dt_scale:g} s" if ck.dt_field is not None else f"{ck.dt_s:g} s"
    lines.append(f"interval   dt = {dt}")
    if profile.poll:
        p = profile.poll
        lines.append(f"polling    {p.command!r} every {p.interval_s:g} s, reply within {p.reply_timeout_s:g} s")
    h = profile.health
    lines.append(f"health     silent after {h.silent_after_s:g} s, garbage after {h.garbage_after} bad lines in a row")
    return lines


class _Report:
    """Prints items as rows, one row per device line, and collects what the summary needs."""

    def __init__(self, profile: DeviceProfile, out: TextIO) -> None:
        self.profile, self.out = profile, out
        self.units = {s.name: s.display_unit for s in profile.signals}
        self.row: list[DeviceReading] = []
        self.last_line = 0
        self.empty_lines = 0
        self.bad_reasons: Counter[str] = Counter()
        self.states: Counter[str] = Counter()
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def flush_row(self) -> None:
        if not self.row:
            return
        r0 = self.row[0]
        values = "  ".join(f"{r.signal} {r.v:g} {r.unit}".rstrip() for r in self.row)
        absent = [n for n in self.units if n not in {r.signal for r in self.row}]
        tail = f"  (no value: {', '.join(absent)})" if absent else ""
        self.print(f"{_clock(r0.t)}  line {r0.line:<5} {values}  dt {r0.dt:g} s{tail}")
        self.row = []

    def add(self, item: DriverItem) -> None:
        if isinstance(item, DeviceReading):
            if self.row and item.line != self.row[0].line:
                self.flush_row()
            if item.line > self.last_line + 1:
                self.empty_lines += item.line - self.last_line - 1
                self.print(f"{'':12}  {item.line - self.last_line - 1} line(s) with every value out of bounds")
            self.last_line = item.line
            self.row.append(item)
            self.first.setdefault(item.signal, item.t)
            self.last[item.signal] = item.t
            return
        self.flush_row()
        if isinstance(item, BadLine):
            self.bad_reasons[re.sub(r"'[^']*'(\.\.\.)?", "'...'", item.reason)[:90]] += 1
            self.print(f"{_clock(item.t)}  BAD         {item.reason}\n{'':26}raw {item.raw[:120]!r}")
        elif isinstance(item, DeviceStatus):
            self.states[item.state] += 1
            self.print(f"{_clock(item.t)}  ** {item.state.upper()}: {item.reason}")
        elif isinstance(item, ClockJump):
            self.print(
                f"{_clock(item.t)}  ** CLOCK JUMP: device clock offset {item.previous_offset_s:+.1f} s "
                f"-> {item.offset_s:+.1f} s (device clock changed?)"
            )

    def summary(self, driver: DeviceDriver, elapsed: float) -> list[str]:
        s, ck = driver.stats, self.profile.clock
        total = s.lines_good + s.lines_bad
        lines = [
            "",
            f"Summary after {elapsed:.1f} s",
            f"  lines      {s.lines_good} good, {s.lines_bad} bad, {s.lines_skipped} skipped (header or blank)"
            + (f", {self.empty_lines} without any value" if self.empty_lines else ""),
            f"  link       {s.connects} connection(s), {s.disconnects} drop(s), {s.bytes_read} bytes",
        ]
        if self.profile.poll:
            lines.append(f"  polling    {s.missed_replies} poll(s) unanswered")
        for reason, n in self.bad_reasons.most_common(5):
            lines.append(f"  bad        {n} x {reason}")
        lines.append("  signals")
        for name, unit in self.units.items():
            n = s.readings.get(name, 0)
            if not n:
                lines.append(f"    {name:<22} never seen")
                continue
            span = self.last[name] - self.first[name]
            rate = f"{(n - 1) / span:.3g}/s" if n > 1 and span > 0 else "-"
            lines.append(f"    {name:<22} {n:>6} readings  {rate:>9}  last {s.last_value[name]:g} {unit}")
        if ck.source == "gateway":
            lines.append("  clock      gateway clock: offset 0 by definition")
        elif s.clock_offset_s is None:
            lines.append("  clock      device clock: no live line to compare with the gateway's")
        else:
            lines.append(
                f"  clock      device - gateway = {s.clock_offset_s:+.1f} s (min {s.clock_offset_min_s:+.1f}, "
                f"max {s.clock_offset_max_s:+.1f}; includes transmission delay), {s.clock_jumps} jump(s)"
            )
        lines += ["", *self._advice(driver, total)]
        return lines

    def _advice(self, driver: DeviceDriver, total: int) -> list[str]:
        s, ck = driver.stats, self.profile.clock
        advice: list[str] = []
        if s.connects == 0:
            advice.append("CHECK: the device could not be opened (see the DISCONNECTED reason above).")
        elif s.bytes_read == 0:
            advice.append(
                "CHECK: connected but nothing arrived: cable (null modem?), device output switched on, polling."
            )
        elif total == 0:
            advice.append("CHECK: bytes arrived but no complete line: [framing] terminator?")
        if s.lines_bad and s.lines_bad >= s.lines_good:
            advice.append("CHECK: mostly bad lines: baud rate and parity, then [parse] against a raw line above.")
        advice.extend(
            f"CHECK: {name} never had a value: its field, or its out-of-bounds marker."
            for name in self.units
            if not s.readings.get(name)
        )
        if ck.source == "device" and s.clock_offset_s is not None and abs(s.clock_offset_s) > ck.jump_tolerance_s:
            advice.append(
                f"CHECK: the device clock is {s.clock_offset_s:+.0f} s off the gateway's: set the device clock, "
                f"or [clock] offset_s = {ck.offset_s - s.clock_offset_s:.0f}."
            )
        return advice or ["OK: valid lines, every signal seen."]


class _NoteHandler(logging.Handler):
    """Shows among the rows what the rows do not: a log file truncated or rotated, a device clock far off,
    an unexpected error. State changes are logged too, but they are rows already."""

    def __init__(self, report: _Report) -> None:
        super().__init__(logging.INFO)
        self.report = report

    def filter(self, record: logging.LogRecord) -> bool:
        return (
            record.name.endswith(".transports")
            or record.levelno >= logging.ERROR
            or "the device clock is" in record.getMessage()
        )

    def emit(self, record: logging.LogRecord) -> None:
        self.report.flush_row()
        self.report.print(f"{_clock(record.created)}  ** NOTE: {record.getMessage()}")


async def _run(profile: DeviceProfile, seconds: float, out: TextIO) -> int:
    report = _Report(profile, out)
    for line in describe(profile):
        report.print(line)
    until = f"for {seconds:g} s" if seconds > 0 else "until Ctrl-C"
    report.print(f"\nListening {until}. Local times: a row's is the line's own time (device clock + offset_s,")
    report.print("or receipt on a gateway clock); status and BAD lines show the gateway's time of receipt.\n")
    driver = DeviceDriver(profile)
    notes = _NoteHandler(report)
    package_log = logging.getLogger("services.acquisition.devices")
    level = package_log.level
    package_log.addHandler(notes)
    package_log.setLevel(logging.INFO)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, driver.stop)
    timer = loop.call_later(seconds, driver.stop) if seconds > 0 else None
    start = time.monotonic()
    try:
        async with contextlib.aclosing(driver.items()) as items:
            async for item in items:
                report.add(item)
    finally:
        if timer is not None:
            timer.cancel()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)
        package_log.removeHandler(notes)
        package_log.setLevel(level)
    report.flush_row()
    for line in report.summary(driver, time.monotonic() - start):
        report.print(line)
    return 0 if driver.stats.lines_good else 1


def main(argv: list[str], *, out: TextIO | None = None) -> int:
    """Entry point; ``argv`` are the arguments after ``isoperf devices test``."""
    return run(_parser().parse_args(argv), out=out)


def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Commission the device the parsed ``args`` name."""
    out = out or sys.stdout
    try:
        profile = _override(load_profile(args.profile), args)
    except ProfileError as e:
        print(f"isoperf devices test: {e}", file=sys.stderr)
        return 2
    if args.seconds < 0:
        print("isoperf devices test: --seconds must be 0 (until Ctrl-C) or more", file=sys.stderr)
        return 2
    return asyncio.run(_run(profile, args.seconds, out))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
