"""From one framed line to values: pure functions, no I/O.

``LineParser(profile).parse(raw, received_t)`` returns a :class:`ParsedLine`, ``None`` for a
line to skip (blank, or a header matching ``[framing] skip``), or raises :class:`LineError`
with a reason a biomedical engineer can act on. Nothing else escapes: whatever bytes the
device sends, the worst outcome is a ``LineError``.

Each value is ``float(field) * scale + offset``. A field matching an out-of-bounds marker
(``missing``) is left out, which is not an error. A value outside the signal's plausible
range is rejected on its own (listed in ``ParsedLine.rejected``); the rest of the line stands.
"""

from __future__ import annotations

import math
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo

from isoperf.schemas import T_MAX, T_MIN
from services.acquisition.devices.profile import (
    DelimitedParse,
    DeviceProfile,
    FieldRef,
    FixedParse,
    RegexParse,
    SignalSpec,
)

# A plain decimal number: no "nan", "inf", "1_000" or hex, which float() would take.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?")
_SHOWN = 40  # characters of a bad field quoted in a reason


class LineError(ValueError):
    """A line that is not a valid reading; ``reason`` says why, for people."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ParsedLine:
    """One valid line: event time ``t``, the values present, and the device's own time if any.

    ``t`` is the device time plus ``[clock] offset_s`` for a device clock, else the gateway's
    receipt time. ``dt`` is the counting interval (s) ending at ``t``.
    """

    t: float
    values: Mapping[str, float]
    dt: float
    device_t: float | None = None
    text: str = ""
    missing: tuple[str, ...] = ()  # signals whose field held an out-of-bounds marker
    rejected: tuple[str, ...] = field(default=())  # reasons for values dropped as implausible


def _scaled(x: float, scale: float) -> float:
    """``x * scale``; implied decimals (scale 0.1, 0.01, ...) divide, so 000056 * 0.1 is 5.6 exactly as printed."""
    inverse = 1.0 / scale
    if inverse > 1.0 and abs(inverse - round(inverse)) < 1e-9:
        return x / round(inverse)
    return x * scale


def _quote(s: str) -> str:
    return repr(s if len(s) <= _SHOWN else s[:_SHOWN] + "...")


def decode_line(raw: bytes, encoding: str, max_length: int) -> str:
    """Bytes to text, refusing over-long lines, undecodable and non-printable bytes (tab allowed)."""
    if len(raw) > max_length:
        raise LineError(f"line too long: {len(raw)} bytes (max_line_length {max_length})")
    raw = raw.strip(b"\r\n")
    for i, b in enumerate(raw):
        if (b < 0x20 and b != 0x09) or b == 0x7F or (0x80 <= b <= 0x9F):
            raise LineError(f"non-printable byte 0x{b:02x} at column {i}: wrong baud rate or line noise?")
        if b >= 0x80 and encoding == "ascii":
            raise LineError(f"non-ASCII byte 0x{b:02x} at column {i}: wrong baud rate, parity or encoding?")
    return raw.decode("latin-1")  # ascii is a subset: every byte is checked above


class _Clock:
    """Reads the device's time text; time-of-day-only formats take the date nearest receipt."""

    def __init__(self, fmt: str, timezone: str, offset_s: float) -> None:
        self.fmt, self.offset_s = fmt, offset_s
        self.tz: tzinfo | None = None if timezone == "local" else zoneinfo.ZoneInfo(timezone)
        self.has_date = any(f"%{d}" in fmt for d in "dmjbBcxUW")
        self.has_year = any(f"%{d}" in fmt for d in "yYcx")

    def _ts(self, naive: datetime) -> float:
        return naive.replace(tzinfo=self.tz).timestamp() if self.tz is not None else naive.timestamp()

    def read(self, text: str, received_t: float) -> float:
        text = text.strip()
        try:
            if self.fmt in ("epoch", "epoch_ms"):
                if not _NUMBER.fullmatch(text):
                    raise ValueError
                t = float(text) / (1000.0 if self.fmt == "epoch_ms" else 1.0)
            else:
                parsed = datetime.strptime(text, self.fmt)
                t = parsed.timestamp() if parsed.tzinfo is not None else self._nearest(parsed, received_t)
        except (ValueError, OverflowError, OSError):
            raise LineError(f"time not parseable: {_quote(text)} (format {self.fmt!r})") from None
        t += self.offset_s
        if not T_MIN <= t <= T_MAX:
            raise LineError(f"device time {_quote(text)} is outside 2000-2100: is the device clock set?")
        return t

    def _nearest(self, parsed: datetime, received_t: float) -> float:
        if self.has_date and self.has_year:
            return self._ts(parsed)
        ref = datetime.fromtimestamp(received_t, self.tz) if self.tz else datetime.fromtimestamp(received_t)
        ref = ref.replace(tzinfo=None)
        candidates: list[datetime] = []
        if not self.has_date:  # a time of day only: yesterday, today or tomorrow
            candidates = [datetime.combine(ref.date() + timedelta(days=d), parsed.time()) for d in (-1, 0, 1)]
        else:  # a date without a year
            for year in (ref.year - 1, ref.year, ref.year + 1):
                try:
                    candidates.append(parsed.replace(year=year))
                except ValueError:  # 29 February
                    continue
        return min((self._ts(c) for c in candidates), key=lambda t: abs(t - received_t))


class LineParser:
    """Parses the lines of one profile; build once, call :meth:`parse` for every line."""

    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile
        spec = profile.parse
        self._framing = profile.framing
        self._skip = [re.compile(p) for p in profile.framing.skip]
        self._regex = re.compile(spec.pattern) if isinstance(spec, RegexParse) else None
        self._missing: dict[str, list[re.Pattern[str]]] = {
            s.name: [re.compile(p) for p in (*spec.missing, *s.missing)] for s in profile.signals
        }
        clock = profile.clock
        self._clock = (
            _Clock(clock.format, clock.timezone, clock.offset_s)
            if clock.source == "device" and clock.format is not None
            else None
        )
        refs: list[FieldRef] = [s.field for s in profile.signals]
        refs += [r for r in (clock.field, clock.date_field, clock.dt_field) if r is not None]
        self._min_fields = 1 + max((r for r in refs if isinstance(r, int)), default=-1)

    def parse(self, raw: bytes, received_t: float) -> ParsedLine | None:
        """One framed line (terminator removed) received at ``received_t`` (Unix s)."""
        text = decode_line(raw, self._framing.encoding, self._framing.max_line_length)
        if not text.strip() or any(p.search(text) for p in self._skip):
            return None
        get = self._fields(text)
        values: dict[str, float] = {}
        missing: list[str] = []
        rejected: list[str] = []
        for sig in self.profile.signals:
            raw_value = get(sig.field, sig.name)
            if raw_value is None or any(p.fullmatch(raw_value) for p in self._missing[sig.name]):
                missing.append(sig.name)
                continue
            v = _scaled(self._number(raw_value, sig.name), sig.scale) + sig.offset
            low, high = sig.bounds
            if not math.isfinite(v):
                raise LineError(f"{sig.name}: value {_quote(raw_value)} is out of range")
            if not low <= v <= high:
                rejected.append(f"{sig.name} {v:g} {sig.display_unit} outside plausible range [{low:g}, {high:g}]")
                continue
            values[sig.name] = v
        if rejected and not values:
            raise LineError("; ".join(rejected))
        clock = self.profile.clock
        device_t: float | None = None
        if self._clock is not None and clock.field is not None:
            stamp = get(clock.field, "time") or ""
            if clock.date_field is not None:
                stamp = f"{(get(clock.date_field, 'date') or '').strip()} {stamp.strip()}"
            device_t = self._clock.read(stamp, received_t)
        dt = clock.dt_s
        if clock.dt_field is not None:
            dt_text = get(clock.dt_field, "count time") or ""
            dt = self._number(dt_text, "count time") * clock.dt_scale
            if not 0 < dt <= 3600:
                raise LineError(f"count time {dt:g} s is outside (0, 3600] s")
        return ParsedLine(
            t=device_t if device_t is not None else received_t,
            values=values,
            dt=dt,
            device_t=device_t,
            text=text,
            missing=tuple(missing),
            rejected=tuple(rejected),
        )

    def _number(self, s: str, what: str) -> float:
        s = s.strip()
        if self.profile.parse.decimal == ",":
            s = s.replace(",", ".", 1)
        if not _NUMBER.fullmatch(s):
            raise LineError(f"{what}: not a number: {_quote(s)}")
        return float(s)

    def _fields(self, text: str) -> _Getter:
        spec = self.profile.parse
        if isinstance(spec, DelimitedParse):
            parts = text.split() if spec.separator is None else text.split(spec.separator)
            if spec.fields is not None and len(parts) != spec.fields:
                raise LineError(f"wrong field count: {len(parts)} fields, expected {spec.fields}")
            if len(parts) < self._min_fields:
                raise LineError(f"wrong field count: {len(parts)} fields, expected at least {self._min_fields}")
            return _Getter(parts=parts)
        if isinstance(spec, FixedParse):
            return _Getter(text=text)
        assert self._regex is not None
        m = self._regex.fullmatch(text)
        if m is None:
            raise LineError(f"line does not match the pattern: {_quote(text)}")
        groups = m.groupdict()
        for group, want in spec.require.items():
            if groups.get(group) != want:
                raise LineError(f"{group} is {groups.get(group)!r}, the profile requires {want!r}")
        return _Getter(groups=groups)


@dataclass(frozen=True, slots=True)
class _Getter:
    """The fields of one line, by reference (index, [start, end] or group)."""

    parts: list[str] | None = None
    text: str | None = None
    groups: dict[str, str | None] | None = None

    def __call__(self, ref: FieldRef, what: str) -> str | None:
        if self.parts is not None and isinstance(ref, int):
            return self.parts[ref].strip()
        if self.text is not None and isinstance(ref, tuple):
            start, end = ref
            if start >= len(self.text):
                raise LineError(f"line too short: {len(self.text)} characters, {what} is at columns {start}-{end}")
            return self.text[start:end].strip()
        if self.groups is not None and isinstance(ref, str):
            value = self.groups.get(ref)
            return None if value is None else value.strip()
        raise LineError(f"{what}: field {ref!r} does not fit the parse format")  # prevented by the profile check


def parse_line(raw: bytes, profile: DeviceProfile, received_t: float) -> ParsedLine | None:
    """Parse one line with a fresh :class:`LineParser` (convenient; the driver keeps one)."""
    return LineParser(profile).parse(raw, received_t)


def spec_of(profile: DeviceProfile, name: str) -> SignalSpec:
    """The ``[[signal]]`` entry called ``name``."""
    for s in profile.signal:
        if s.name == name:
            return s
    raise KeyError(name)
