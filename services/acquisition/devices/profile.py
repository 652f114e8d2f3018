"""Device profiles: one TOML file per piece of theatre equipment, parsed into frozen models.

A profile says how to reach the device (``[transport]``), how its byte stream is cut into
lines (``[framing]``), how a line is cut into fields (``[parse]``), which field is which
signal (``[[signal]]``), where the time comes from (``[clock]``), whether the gateway must
ask for each reading (``[poll]``) and when the device counts as silent or sending garbage
(``[health]``). ``docs/devices.md`` describes every key. Field positions are 0-based: a
column index for ``delimited``, ``[start, end]`` character columns for ``fixed`` (end
excluded, as in Python slicing), a group name for ``regex``.
"""

from __future__ import annotations

import contextlib
import math
import re
import tomllib
import zoneinfo
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from isoperf.schemas import SIGNAL_RANGES

# The unit each isoperf signal must be in after scale and offset (contract v1).
CONTRACT_UNITS = {"counts": "counts", "flow": "mL/min", "pressure": "mmHg", "temperature": "degC", "reservoir": "mL"}
STANDARD_BAUDRATES = (300, 600, 1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
DELIMITERS = {"tab": "\t", "comma": ",", "semicolon": ";", "space": " ", "whitespace": None}

FieldRef = int | str | tuple[int, int]
"""A field: column index (delimited), [start, end] columns (fixed) or group name (regex)."""


class ProfileError(ValueError):
    """A profile that cannot be used; the message says where and why, one problem a line."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{pattern!r} is not a valid regular expression: {e}") from None
    return pattern


def _one_of(allowed: tuple[float, ...], what: str) -> AfterValidator:
    def check(v: float) -> float:
        if v not in allowed:
            raise ValueError(f"{what} {v:g} is not one of {', '.join(f'{a:g}' for a in allowed)}")
        return v

    return AfterValidator(check)


Regex = Annotated[str, AfterValidator(_regex)]


class DeviceSection(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    kind: Literal["probe", "rate-meter", "pump", "flow-meter", "blood-gas", "other"]
    description: str = ""


class SerialSpec(_Model):
    """RS-232 through a USB adapter (or a built-in port): ``/dev/ttyUSB0``, ``/dev/serial/by-id/...``."""

    type: Literal["serial"]
    port: str = Field(min_length=1)
    baudrate: Annotated[int, _one_of(STANDARD_BAUDRATES, "baudrate")] = 9600
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["none", "even", "odd", "mark", "space"] = "none"
    stopbits: Annotated[float, _one_of((1, 1.5, 2), "stopbits")] = 1
    rtscts: bool = False
    xonxoff: bool = False

    @property
    def label(self) -> str:
        return f"serial port {self.port}"

    @property
    def settings(self) -> str:
        """The usual short form, e.g. ``9600 8N1, RTS/CTS``."""
        flow = ", RTS/CTS" if self.rtscts else ", XON/XOFF" if self.xonxoff else ""
        return f"{self.baudrate} {self.bytesize}{self.parity[0].upper()}{self.stopbits:g}{flow}"


class TcpSpec(_Model):
    """A serial-to-Ethernet device server in raw TCP mode: ``host`` and ``port``, or ``url = "socket://h:p"``."""

    type: Literal["tcp"]
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)

    @model_validator(mode="before")
    @classmethod
    def _from_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and "url" in data:
            data = dict(data)
            url = data.pop("url")
            m = re.fullmatch(r"socket://([^:/\s]+|\[[0-9a-fA-F:]+\]):(\d{1,5})/?", str(url))
            if not m:
                raise ValueError(f"url {url!r} must look like socket://HOST:PORT")
            if "host" in data or "port" in data:
                raise ValueError("give either url or host and port, not both")
            data["host"], data["port"] = m.group(1).strip("[]"), int(m.group(2))
        return data

    @property
    def label(self) -> str:
        return f"tcp {self.host}:{self.port}"


class FileSpec(_Model):
    """A log file another program appends to, followed like ``tail -F``."""

    type: Literal["file"]
    path: str = Field(min_length=1)
    start: Literal["end", "start"] = "end"
    poll_interval_s: float = Field(default=0.2, gt=0, le=10)

    @property
    def label(self) -> str:
        return f"file {self.path}"


TransportSpec = Annotated[SerialSpec | TcpSpec | FileSpec, Field(discriminator="type")]


class Framing(_Model):
    terminator: Literal["\r\n", "\n", "\r"] = "\r\n"
    max_line_length: int = Field(default=256, ge=8, le=65536)
    encoding: Literal["ascii", "latin-1"] = "ascii"
    skip: tuple[Regex, ...] = ()  # regular expressions (searched): header lines, banners


class _ParseBase(_Model):
    missing: tuple[Regex, ...] = ()  # regular expressions matching a whole (stripped) field: "no value"
    decimal: Literal[".", ","] = "."


class DelimitedParse(_ParseBase):
    format: Literal["delimited"]
    delimiter: str = "whitespace"  # tab, comma, semicolon, space, whitespace (runs of blanks), or one character
    fields: int | None = Field(default=None, ge=1, le=1000)  # exact field count; None: at least enough

    @model_validator(mode="after")
    def _check(self) -> DelimitedParse:
        if self.delimiter not in DELIMITERS and len(self.delimiter) != 1:
            raise ValueError(
                f"delimiter must be one of {', '.join(DELIMITERS)} or one character, not {self.delimiter!r}"
            )
        if self.separator == self.decimal:
            raise ValueError(f"delimiter and decimal are both {self.decimal!r}")
        return self

    @property
    def separator(self) -> str | None:
        """The string to split on; None splits on runs of whitespace."""
        return DELIMITERS.get(self.delimiter, self.delimiter)


class FixedParse(_ParseBase):
    format: Literal["fixed"]


class RegexParse(_ParseBase):
    format: Literal["regex"]
    pattern: Regex  # must match the whole line; named groups are the fields
    require: dict[str, str] = Field(default_factory=dict)  # group -> exact value, else the line is bad

    @model_validator(mode="after")
    def _check(self) -> RegexParse:
        if not re.compile(self.pattern).groupindex:
            raise ValueError("pattern needs named groups, e.g. (?P<counts>\\d+)")
        return self


ParseSpec = Annotated[DelimitedParse | FixedParse | RegexParse, Field(discriminator="format")]


class SignalSpec(_Model):
    """One field of the line: ``value = raw * scale + offset``, in ``unit``."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")  # an isoperf signal or an extension name
    field: FieldRef
    unit: str = ""
    scale: float = 1.0  # implied decimals: 0.01 turns 001234 into 12.34
    offset: float = 0.0
    missing: tuple[Regex, ...] = ()  # extra "no value" markers for this field only
    ignore: bool = False  # documented in the profile, never read (e.g. a meter's board temperature)
    min: float | None = None  # plausible range; isoperf signals default to the contract's
    max: float | None = None

    @model_validator(mode="after")
    def _check(self) -> SignalSpec:
        if not math.isfinite(self.scale) or self.scale == 0 or not math.isfinite(self.offset):
            raise ValueError("scale must be a non-zero finite number and offset finite")
        if self.ignore:
            return self
        want = CONTRACT_UNITS.get(self.name)
        if want is not None and self.unit not in ("", want):
            raise ValueError(
                f"{self.name} must be in {want} after scale and offset (contract v1), not {self.unit!r}: "
                f"set scale/offset to convert and unit = {want!r}"
            )
        if want is None and not self.unit:
            raise ValueError(f'give the unit of {self.name} (e.g. unit = "mmHg"; "1" for a pure number)')
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError("min must be below max")
        return self

    @property
    def display_unit(self) -> str:
        return self.unit or CONTRACT_UNITS.get(self.name, "")

    @property
    def bounds(self) -> tuple[float, float]:
        """Plausible range of the value: outside it the value is rejected, not stored."""
        low, high = SIGNAL_RANGES.get(self.name, (-math.inf, math.inf))
        return (low if self.min is None else self.min, high if self.max is None else self.max)


def _timezone(name: str) -> str:
    if name != "local":
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {name!r} (an IANA name such as Europe/Amsterdam, or local)") from None
    return name


def _format_problem(fmt: str) -> str | None:
    try:
        datetime.strptime(datetime(2024, 11, 22, 14, 5, 7).strftime(fmt), fmt)
    except ValueError as e:
        return f"format {fmt!r} cannot be read back: {e}"
    if not any(f"%{d}" in fmt for d in "HIXc"):
        return f"format {fmt!r} has no time of day (strptime codes such as %H:%M:%S, or epoch / epoch_ms)"
    return None


class ClockSpec(_Model):
    """Where each line's time comes from, and the counting interval of the readings."""

    source: Literal["device", "gateway"] = "gateway"
    field: FieldRef | None = None  # device: the time (or date and time, or epoch seconds)
    date_field: FieldRef | None = None  # device: the date when it is a separate field ("date time" is parsed)
    format: str | None = None  # strptime format, or "epoch" / "epoch_ms"
    timezone: Annotated[str, AfterValidator(_timezone)] = (
        "UTC"  # of the device clock: an IANA name (Europe/Amsterdam) or "local" (the gateway's)
    )
    offset_s: float = 0.0  # added to the device time: +120 for a device clock that runs 2 min slow
    jump_tolerance_s: float = Field(default=5.0, gt=0)  # a larger change of the device-gateway offset is a jump
    dt_s: float = Field(default=1.0, gt=0, le=3600)  # counting interval of each reading
    dt_field: FieldRef | None = None  # or the field giving the count time
    dt_scale: float = Field(default=1.0, gt=0)  # count time field to seconds (60 for minutes)

    @model_validator(mode="after")
    def _check(self) -> ClockSpec:
        if not math.isfinite(self.offset_s) or abs(self.offset_s) > 10 * 366 * 86400:
            raise ValueError("offset_s must be a finite number of seconds (at most ten years)")
        if self.source == "gateway":
            given = [k for k in ("field", "date_field", "format") if getattr(self, k) is not None]
            if self.offset_s:
                given.append("offset_s")
            if given:
                raise ValueError(f'{", ".join(given)} only apply to source = "device" (the gateway clock needs none)')
            return self
        if self.field is None or not self.format:
            raise ValueError('source = "device" needs field (where the time is) and format (how to read it)')
        if self.format in ("epoch", "epoch_ms"):
            if self.date_field is not None:
                raise ValueError("date_field does not go with an epoch format")
        elif problem := _format_problem(self.format):
            raise ValueError(problem)
        return self


class PollSpec(_Model):
    """For devices that answer only when asked: send ``command`` every ``interval_s``."""

    command: str = Field(min_length=1)  # TOML escapes: "RR\r\n"
    interval_s: float = Field(gt=0, le=3600)
    reply_timeout_s: float = Field(default=1.0, gt=0, le=60)  # at most interval_s


class HealthSpec(_Model):
    silent_after_s: float = Field(default=10.0, gt=0, le=86400)  # no valid line for this long: "silent"
    garbage_after: int = Field(default=5, ge=1, le=10000)  # this many bad lines in a row: "garbage"


def _ref_problem(ref: FieldRef, spec: DelimitedParse | FixedParse | RegexParse) -> str | None:
    if isinstance(spec, DelimitedParse):
        if not isinstance(ref, int) or isinstance(ref, bool) or ref < 0:
            return f"must be a column index (0 = first field) for delimited parsing, not {ref!r}"
        if spec.fields is not None and ref >= spec.fields:
            return f"column {ref} is past the {spec.fields} fields of the line (0-based)"
    elif isinstance(spec, FixedParse):
        if not isinstance(ref, tuple) or not 0 <= ref[0] < ref[1]:
            return f"must be [start, end] character columns (0-based, end excluded) for fixed parsing, not {ref!r}"
    elif not isinstance(ref, str) or ref not in re.compile(spec.pattern).groupindex:
        return f"must name a group of the pattern ({', '.join(re.compile(spec.pattern).groupindex)}), not {ref!r}"
    return None


class DeviceProfile(_Model):
    device: DeviceSection
    transport: TransportSpec
    framing: Framing = Framing()
    parse: ParseSpec
    signal: tuple[SignalSpec, ...] = Field(min_length=1)
    clock: ClockSpec = ClockSpec()
    poll: PollSpec | None = None
    health: HealthSpec = HealthSpec()

    @model_validator(mode="after")
    def _consistent(self) -> DeviceProfile:
        names = [s.name for s in self.signal]
        problems = [f"signal {dup!r} is listed twice" for dup in sorted({n for n in names if names.count(n) > 1})]
        if not self.signals:
            problems.append("every signal is ignored: nothing to read")
        refs: list[tuple[str, FieldRef | None]] = [(f"signal {s.name!r}: field", s.field) for s in self.signals]
        refs += [("clock.field", self.clock.field), ("clock.date_field", self.clock.date_field)]
        refs += [("clock.dt_field", self.clock.dt_field)]
        for what, ref in refs:
            if ref is not None and (problem := _ref_problem(ref, self.parse)):
                problems.append(f"{what} {problem}")
        if isinstance(self.parse, RegexParse):
            groups = re.compile(self.parse.pattern).groupindex
            problems += [
                f"parse.require: {g!r} is not a group of the pattern" for g in self.parse.require if g not in groups
            ]
        if self.poll is not None and isinstance(self.transport, FileSpec):
            problems.append("poll needs a device to talk to: a file cannot be polled")
        if self.poll is not None and self.health.silent_after_s <= self.poll.interval_s:
            problems.append("health.silent_after_s must exceed poll.interval_s")
        if self.poll is not None and self.poll.reply_timeout_s > self.poll.interval_s:
            problems.append("poll.reply_timeout_s must not exceed poll.interval_s")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def signals(self) -> tuple[SignalSpec, ...]:
        """The signals read from each line (those not ignored)."""
        return tuple(s for s in self.signal if not s.ignore)

    def with_transport(self, transport: SerialSpec | TcpSpec | FileSpec) -> DeviceProfile:
        """This profile reached another way (``--port``, ``--host``, ``--file`` of ``isoperf devices test``)."""
        data = self.model_dump()
        data["transport"] = transport.model_dump()
        return _validate(data, "overridden transport")


def _loc(loc: tuple[int | str, ...], data: Any) -> str:
    """``signal #2 (flow).unit`` for ``("signal", 1, "unit")``: 1-based, with the signal's name."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int) and parts:
            parts[-1] += f" #{part + 1}"
            with contextlib.suppress(LookupError, TypeError, AttributeError):
                parts[-1] += f" ({data[loc[i - 1]][part]['name']})" if i == 1 else ""
        elif i == 1 and part in ("serial", "tcp", "file", "delimited", "fixed", "regex"):
            continue  # the tag of a discriminated union: the user wrote it as type/format already
        else:
            parts.append(str(part))
    return ".".join(parts) or "profile"


def _validate(data: Any, source: str) -> DeviceProfile:
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as e:
        lines = [f"{_loc(err['loc'], data)}: {err['msg'].removeprefix('Value error, ')}" for err in e.errors()]
        raise ProfileError(f"{source}: " + "\n  ".join(["invalid device profile", *lines])) from None


def parse_profile(text: str, source: str = "<profile>") -> DeviceProfile:
    """Parse a profile from TOML text; ``source`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{source}: not valid TOML: {e}") from None
    return _validate(data, source)


def load_profile(path: str | Path) -> DeviceProfile:
    """Read and check a profile file; every problem found is raised as one :class:`ProfileError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ProfileError(f"{p}: cannot read the profile: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ProfileError(f"{p}: not UTF-8 text") from None
    return parse_profile(text, str(p))
