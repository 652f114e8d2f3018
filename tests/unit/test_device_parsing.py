"""Device profiles and line parsing: every shipped profile, each parse format, times, garbage."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.acquisition.devices import Framer, LineError, ParsedLine, ProfileError, load_profile, parse_profile
from services.acquisition.devices.parsing import LineParser, decode_line
from services.acquisition.devices.profile import DeviceProfile

ROOT = Path(__file__).resolve().parents[2]
PROFILES = sorted((ROOT / "deploy" / "devices").glob("*.toml"))
NOW = datetime(2024, 11, 22, 14, 5, 9, tzinfo=UTC).timestamp()  # receipt time used throughout


def local(year: int, month: int, day: int, hour: int, minute: int, second: int) -> float:
    """Unix time of a naive local (gateway) date-time, as a "local" timezone profile reads it."""
    return datetime(year, month, day, hour, minute, second).timestamp()


def make(parse: str, signals: str, clock: str = "", extra: str = "") -> DeviceProfile:
    text = f"""
[device]
name = "test-device"
kind = "other"
[transport]
type = "tcp"
host = "127.0.0.1"
port = 4001
{extra}
[parse]
{parse}
{signals}
[clock]
{clock}
"""
    return parse_profile(text, "test.toml")


def parse(profile: DeviceProfile, line: bytes, received_t: float = NOW) -> ParsedLine:
    parsed = LineParser(profile).parse(line, received_t)
    assert parsed is not None, f"{line!r} was skipped"
    return parsed


def reason(profile: DeviceProfile, line: bytes, received_t: float = NOW) -> str:
    with pytest.raises(LineError) as e:
        LineParser(profile).parse(line, received_t)
    return e.value.reason


CSV = 'format = "delimited"\ndelimiter = "comma"\nfields = 3'
SIG3 = """
[[signal]]
name = "flow"
field = 1
[[signal]]
name = "pressure"
field = 2
"""

# ----------------------------------------------------------------------------- shipped profiles

SAMPLES: dict[str, tuple[bytes, dict[str, float], float | None, float]] = {
    # file: (sample line, values, device time (None: gateway clock), dt)
    "probe-scaler.toml": (
        b"  12 11/22/24 14:05:07 000015 023456 006 S PT-BED-3",
        {"counts": 23456.0},
        local(2024, 11, 22, 14, 5, 7),
        6.0,
    ),
    "ludlum-2363.toml": (b"000012 001234 000056", {"neutron_rate": 12.0, "gamma_rate": 12.34, "dose": 5.6}, None, 1.0),
    "pump-console.toml": (
        b"2024-11-22 14:05:07,1200,185,38.5,850",
        {"flow": 1200.0, "pressure": 185.0, "temperature": 38.5, "reservoir": 850.0},
        local(2024, 11, 22, 14, 5, 7),
        1.0,
    ),
    "terumo-cdi500.toml": (
        (
            b"14:05:07\t7.40\t40.1\t250\t37.0\t24.0\t0.5\t99.0\t4.1\t150\t4.50\t1.90\t7.35\t45.0\t----\t36.9"
            b"\t75.0\t30.0\t10.0"
        ),
        {"arterial_ph": 7.40, "venous_so2": 75.0, "hct": 30.0, "hgb": 10.0, "q": 4.5, "venous_pco2": 45.0},
        None,  # time of day only: checked below
        6.0,
    ),
}


def test_every_shipped_profile_has_a_sample() -> None:
    assert {p.name for p in PROFILES} == set(SAMPLES), "a new profile needs a sample line here"


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_shipped_profile_loads_and_parses_its_sample(path: Path) -> None:
    profile = load_profile(path)
    line, values, device_t, dt = SAMPLES[path.name]
    received = local(2024, 11, 22, 14, 5, 9)
    parsed = parse(profile, line, received)
    for name, v in values.items():
        assert parsed.values[name] == pytest.approx(v, abs=1e-9), name
    assert parsed.dt == dt
    if profile.clock.source == "gateway":
        assert parsed.device_t is None and parsed.t == received
    elif device_t is not None:
        assert parsed.device_t == parsed.t == device_t


def test_terumo_cdi500_dashes_header_and_time_of_day() -> None:
    profile = load_profile(ROOT / "deploy/devices/terumo-cdi500.toml")
    line, *_ = SAMPLES["terumo-cdi500.toml"]
    parsed = parse(profile, line, local(2024, 11, 22, 14, 5, 9))
    assert "venous_po2" not in parsed.values and parsed.missing == ("venous_po2",)
    assert "bsa" not in parsed.values, "BSA is typed in: ignored"
    assert parsed.t == local(2024, 11, 22, 14, 5, 7)
    assert len(parsed.values) == 16  # 18 fields, BSA ignored, one out of bounds
    header = "Time\tpH\tpCO2\tpO2\tTemp\tHCO3\tBE\tSO2\tK+\tVO2\tQ\tBSA\tpH\tpCO2\tpO2\tTemp\tSO2\tHct\tHgb"
    assert LineParser(profile).parse(header.encode(), NOW) is None
    assert reason(profile, line.replace(b"\t7.40\t", b"\t7.4x\t")).startswith("arterial_ph: not a number")
    assert "wrong field count: 18" in reason(profile, line.rsplit(b"\t", 1)[0])


def test_probe_scaler_refuses_rate_records_and_reads_the_count_time() -> None:
    profile = load_profile(ROOT / "deploy/devices/probe-scaler.toml")
    assert reason(profile, b"  12 11/22/24 14:05:07 000015 023456 006 C PT-BED-3") == (
        "mode is 'C', the profile requires 'S'"
    )
    assert parse(profile, b"13 11/22/24 14:05:13 0 99 60 S", local(2024, 11, 22, 14, 5, 14)).dt == 60.0


def test_ludlum_2363_polls_without_a_clock() -> None:
    profile = load_profile(ROOT / "deploy/devices/ludlum-2363.toml")
    assert profile.poll is not None and profile.poll.command == "RR\r\n"
    assert profile.clock.source == "gateway"
    assert parse(profile, b"000000,000001,999999").values == {"neutron_rate": 0.0, "gamma_rate": 0.01, "dose": 99999.9}


# ----------------------------------------------------------------------------- bad profiles

BAD_PROFILES = [
    ("[device\nname=1", "not valid TOML"),
    ('[device]\nname = "x"\nkind = "probe"\ncolour = "red"', "colour: Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("text", "message"), BAD_PROFILES)
def test_broken_files_are_reported_with_their_name(text: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message) as e:
        parse_profile(text, "theatre-3.toml")
    assert str(e.value).startswith("theatre-3.toml: ")


@pytest.mark.parametrize(
    ("parse_", "signals", "clock", "extra", "message"),
    [
        (CSV, SIG3.replace('name = "flow"', 'name = "flow"\nunit = "L/min"'), "", "", r"flow must be in mL/min"),
        (CSV, SIG3.replace("field = 1", "field = [1, 3]"), "", "", r"must be a column index"),
        (CSV, SIG3.replace("field = 2", "field = 5"), "", "", r"column 5 is past the 3 fields"),
        ('format = "fixed"', SIG3, "", "", r"must be \[start, end\] character columns"),
        ('format = "regex"\npattern = "(?P<a>\\\\d+)"', SIG3, "", "", r"must name a group of the pattern \(a\)"),
        ('format = "regex"\npattern = "(?P<a>\\\\d+"', SIG3, "", "", r"not a valid regular expression"),
        ('format = "regex"\npattern = "\\\\d+"', SIG3, "", "", r"needs named groups"),
        (CSV, SIG3 + '[[signal]]\nname = "flow"\nfield = 0\n', "", "", r"'flow' is listed twice"),
        (CSV, SIG3 + '[[signal]]\nname = "hct"\nfield = 0\n', "", "", r"give the unit of hct"),
        (CSV, SIG3, 'source = "device"\nfield = 0', "", r"needs field .* and format"),
        (CSV, SIG3, 'source = "device"\nfield = 0\nformat = "%Y"', "", r"has no time of day"),
        (CSV, SIG3, 'source = "device"\nfield = 0\nformat = "%H:%M"\ntimezone = "Mars/Base"', "", "unknown timezone"),
        (CSV, SIG3, "offset_s = 60", "", r"offset_s only apply to source = \"device\""),
        (CSV, SIG3, "", '[health]\nsilent_after_s = 1\n[poll]\ncommand = "RR"\ninterval_s = 2', "must exceed poll"),
        ('format = "delimited"\ndelimiter = "pipes"', SIG3, "", "", "delimiter must be one of"),
        (CSV, SIG3.replace("field = 2", "field = 2\nscale = 0"), "", "", "scale must be a non-zero"),
    ],
)
def test_inconsistent_profiles_say_what_is_wrong(
    parse_: str, signals: str, clock: str, extra: str, message: str
) -> None:
    with pytest.raises(ProfileError, match=message):
        make(parse_, signals, clock, extra)


def test_error_names_the_signal_and_every_problem_at_once() -> None:
    text = (ROOT / "deploy/devices/pump-console.toml").read_text()
    text = text.replace('unit = "mmHg"', 'unit = "kPa"').replace("baudrate = 9600", "baudrate = 9601")
    with pytest.raises(ProfileError) as e:
        parse_profile(text, "pump.toml")
    message = str(e.value)
    assert "transport.baudrate: baudrate 9601 is not one of 300, 600," in message
    assert "signal #2 (pressure): pressure must be in mmHg" in message


def test_file_transport_cannot_be_polled_and_tcp_url_is_read() -> None:
    with pytest.raises(ProfileError, match="a file cannot be polled"):
        parse_profile(
            'device = {name = "x", kind = "pump"}\ntransport = {type = "file", path = "/tmp/x"}\n'
            'parse = {format = "delimited"}\n[[signal]]\nname = "flow"\nfield = 0\n'
            '[poll]\ncommand = "x"\ninterval_s = 1\n[health]\nsilent_after_s = 5\n'
        )
    p = parse_profile(
        'device = {name = "x", kind = "pump"}\ntransport = {type = "tcp", url = "socket://10.0.0.5:4001"}\n'
        'parse = {format = "delimited"}\n[[signal]]\nname = "flow"\nfield = 0\n'
    )
    assert p.transport.type == "tcp" and (p.transport.host, p.transport.port) == ("10.0.0.5", 4001)
    with pytest.raises(ProfileError, match="cannot read the profile"):
        load_profile("/nonexistent/profile.toml")


# ----------------------------------------------------------------------------- formats


def test_delimited_implied_decimals_scale_offset_and_decimal_comma() -> None:
    p = make(CSV, SIG3.replace("field = 1", "field = 1\nscale = 0.01").replace("field = 2", "field = 2\noffset = -5"))
    assert parse(p, b"x,001234,105").values == {"flow": 12.34, "pressure": 100.0}
    semi = 'format = "delimited"\ndelimiter = "semicolon"\ndecimal = ","'
    assert parse(make(semi, SIG3), b"x;1200,5;99,9").values == {"flow": 1200.5, "pressure": 99.9}
    ws = make('format = "delimited"', SIG3)
    assert parse(ws, b"  x   7   8  ").values == {"flow": 7.0, "pressure": 8.0}
    assert reason(ws, b"x 7") == "wrong field count: 2 fields, expected at least 3"
    assert reason(make(CSV, SIG3), b"x,1,2,3") == "wrong field count: 4 fields, expected 3"


@pytest.mark.parametrize("bad", ["nan", "inf", "1_000", "0x10", "1.2.3", "", "12a4", "--1"])
def test_only_plain_numbers_are_numbers(bad: str) -> None:
    assert "not a number" in reason(make(CSV, SIG3), f"x,{bad},1".encode())


def test_out_of_bounds_markers_leave_the_value_out() -> None:
    p = make(CSV + "\nmissing = ['-+']", SIG3.replace("field = 2", "field = 2\nmissing = ['OVR', 'ERR\\d']"))
    assert parse(p, b"x,---,OVR").values == {}
    assert parse(p, b"x,-,ERR7").missing == ("flow", "pressure")
    assert parse(p, b"x, 12 ,-").values == {"flow": 12.0}
    assert "not a number" in reason(p, b"x,OVR,1"), "OVR is a marker of pressure only"


def test_implausible_values_are_dropped_alone() -> None:
    p = make(CSV, SIG3)
    parsed = parse(p, b"x,99999,120")
    assert parsed.values == {"pressure": 120.0}
    assert parsed.rejected == ("flow 99999 mL/min outside plausible range [-50, 10000]",)
    assert "flow 99999" in reason(p, b"x,99999,5000")  # nothing left: the line is bad
    limited = make(CSV, SIG3 + '[[signal]]\nname = "arterial_ph"\nfield = 0\nunit = "pH"\nmin = 6\nmax = 8\n')
    assert parse(limited, b"9.1,1,2").rejected == ("arterial_ph 9.1 pH outside plausible range [6, 8]",)


def test_fixed_width_columns() -> None:
    p = make('format = "fixed"', SIG3.replace("field = 1", "field = [0, 4]").replace("field = 2", "field = [5, 9]"))
    assert parse(p, b"0012 0345").values == {"flow": 12.0, "pressure": 345.0}
    assert parse(p, b"0012  34").values == {"flow": 12.0, "pressure": 34.0}, "a short last field is read"
    assert reason(p, b"0012") == "line too short: 4 characters, pressure is at columns 5-9"


def test_regex_fields_and_skip_lines() -> None:
    rx = "format = \"regex\"\npattern = 'F=(?P<f>\\d+) P=(?P<p>-?\\d+)(?: T=(?P<t>\\d+))?'"
    sig = SIG3.replace("field = 1", 'field = "f"').replace("field = 2", 'field = "p"')
    p = make(rx, sig, extra='[framing]\nskip = ["^#", "(?i)banner"]')
    assert parse(p, b"F=1200 P=-20").values == {"flow": 1200.0, "pressure": -20.0}
    assert reason(p, b"F=1200 P=x").startswith("line does not match the pattern")
    for skipped in (b"# header", b"BANNER v1.2", b"", b"   "):
        assert LineParser(p).parse(skipped, NOW) is None


# ----------------------------------------------------------------------------- times


def clocked(clock: str, parse_: str = CSV) -> DeviceProfile:
    return make(parse_, SIG3, clock=clock)


def test_device_time_with_timezone_and_offset() -> None:
    p = clocked('source = "device"\nfield = 0\nformat = "%Y-%m-%dT%H:%M:%S"\ntimezone = "Europe/Amsterdam"')
    want = datetime(2024, 11, 22, 14, 5, 7, tzinfo=ZoneInfo("Europe/Amsterdam")).timestamp()
    parsed = parse(p, b"2024-11-22T14:05:07,1,2")
    assert parsed.t == parsed.device_t == want
    slow = clocked('source = "device"\nfield = 0\nformat = "%Y-%m-%dT%H:%M:%S"\noffset_s = 120')
    assert parse(slow, b"2024-11-22T14:05:07,1,2").t == datetime(2024, 11, 22, 14, 7, 7, tzinfo=UTC).timestamp()


def test_time_of_day_takes_the_date_nearest_receipt() -> None:
    p = clocked('source = "device"\nfield = 0\nformat = "%H:%M:%S"')
    just_after_midnight = datetime(2024, 11, 23, 0, 0, 2, tzinfo=UTC).timestamp()
    assert parse(p, b"23:59:58,1,2", just_after_midnight).t == just_after_midnight - 4
    assert parse(p, b"00:00:01,1,2", just_after_midnight - 5).t == just_after_midnight - 1


def test_epoch_and_separate_date_fields_and_count_time() -> None:
    assert parse(clocked('source = "device"\nfield = 0\nformat = "epoch"'), b"1732284307.5,1,2").t == 1732284307.5
    assert parse(clocked('source = "device"\nfield = 0\nformat = "epoch_ms"'), b"1732284307500,1,2").t == 1732284307.5
    p = make(
        'format = "delimited"',
        '[[signal]]\nname = "counts"\nfield = 3\n',
        clock='source = "device"\ndate_field = 0\nfield = 1\nformat = "%d.%m.%Y %H:%M"\ndt_field = 2\ndt_scale = 60',
    )
    parsed = parse(p, b"22.11.2024 14:05 2 1234", NOW)
    assert parsed.t == datetime(2024, 11, 22, 14, 5, tzinfo=UTC).timestamp()
    assert (parsed.dt, parsed.values) == (120.0, {"counts": 1234.0})
    assert reason(p, b"22.11.2024 14:05 0 1234") == "count time 0 s is outside (0, 3600] s"


@pytest.mark.parametrize(
    ("line", "message"),
    [(b"14h05,1,2", "time not parseable: '14h05'"), (b"1999-01-01T00:00:00,1,2", "outside 2000-2100")],
)
def test_bad_times(line: bytes, message: str) -> None:
    fmt = "%Y-%m-%dT%H:%M:%S" if b"T" in line else "%H:%M:%S"
    assert message in reason(clocked(f'source = "device"\nfield = 0\nformat = "{fmt}"'), line)


# ----------------------------------------------------------------------------- garbage


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"x,1,\x072", "non-printable byte 0x07 at column 4"),
        (b"x,1,\xff2", "non-ASCII byte 0xff at column 4"),
        (b"x" * 300, "line too long: 300 bytes"),
    ],
)
def test_undecodable_lines(raw: bytes, message: str) -> None:
    assert message in reason(make(CSV, SIG3), raw)


def test_latin1_and_tabs_are_accepted() -> None:
    assert decode_line(b"T=37\xb0C\tok", "latin-1", 80) == "T=37\u00b0C\tok"


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300), which=st.sampled_from(PROFILES))
def test_random_bytes_never_raise_anything_but_line_error(raw: bytes, which: Path) -> None:
    parser = LineParser(load_profile(which))
    try:
        parsed = parser.parse(raw, NOW)
    except LineError as e:
        reason = e.reason
        assert reason
        return
    if parsed is not None:
        assert all(math.isfinite(v) for v in parsed.values.values())


TOKENS = st.sampled_from(
    ["14:05:07", "7.40", "----", "-", "1e999", "S", "11/22/24", "\t", " ", ",", "0", "abc", "99:99"]
)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(TOKENS, max_size=25), which=st.sampled_from(PROFILES))
def test_plausible_looking_garbage_never_raises_anything_but_line_error(parts: list[str], which: Path) -> None:
    try:
        parsed = LineParser(load_profile(which)).parse("".join(parts).encode(), NOW)
    except LineError as e:
        reason = e.reason
        assert reason
        return
    assert parsed is None or all(math.isfinite(v) for v in parsed.values.values())


# ----------------------------------------------------------------------------- framing


def test_framer_splits_across_chunks_and_discards_overlong_runs() -> None:
    f = Framer(b"\r\n", 8)
    assert [fr.raw for fr in f.feed(b"ab\r")] == []
    assert [fr.raw for fr in f.feed(b"\ncd\r\n\r\nx")] == [b"ab", b"cd", b""]
    frames = f.feed(b"0123456789ABC")
    assert len(frames) == 1 and frames[0].overlong > 8 and frames[0].raw == b"x0123456"
    assert f.feed(b"DEF\r\nok\r\n") == [type(frames[0])(b"ok")], "the rest of the long run is dropped"
    assert f.reset() == 0


@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=10))
def test_framer_gives_the_same_lines_however_the_bytes_are_chunked(data: bytes, cuts: list[int]) -> None:
    whole = Framer(b"\r", 16).feed(data)
    chunked = Framer(b"\r", 16)
    frames = []
    last = 0
    for cut in [*sorted(cuts), len(data)]:
        frames += chunked.feed(data[last:cut])
        last = max(last, cut)
    assert [f.raw for f in frames if not f.overlong] == [f.raw for f in whole if not f.overlong]
    assert all(len(f.raw) <= 16 for f in frames)
