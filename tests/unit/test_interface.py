"""Codec, schemas, topics and InfluxDB points of the public interface."""

from __future__ import annotations

import json
import math

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from isoperf.codec import DecodeError, decode, encode
from isoperf.points import event_line, leakage_line, reading_lines, session_line
from isoperf.schemas import (
    Event,
    Leakage,
    Reading,
    ReadingBatch,
    SessionMeta,
    check_signal_range,
    parse_reading_payload,
    readings_of,
)
from isoperf.topics import SessionTopic, TopicError, Topics

T = 1_767_225_600.0


# -- codec ------------------------------------------------------------------------------------------


def test_msgpack_round_trip_leaves_out_none() -> None:
    payload = encode(Reading(t=T, v=12.0))
    assert payload[:1] != b"{"
    assert msgpack.unpackb(payload) == {"t": T, "v": 12.0, "dt": 1.0}
    assert decode(payload) == {"t": T, "v": 12.0, "dt": 1.0}


def test_json_is_accepted_when_it_starts_with_a_brace() -> None:
    assert decode(b'{"t": 1767225600, "v": 3}') == {"t": 1767225600, "v": 3}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty"),
        (b"{not json", "not MessagePack or JSON"),
        (msgpack.packb([1, 2, 3]), "expected a map"),
        (b"\xc1\xc1\xc1", "not MessagePack or JSON"),
        (msgpack.packb({"t": 1}) + b"\x00", "not MessagePack or JSON"),
    ],
)
def test_garbage_is_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode(payload)


def test_oversize_is_refused_before_parsing() -> None:
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode(b"{" + b" " * 2_000_000 + b"}", max_bytes=1_048_576)


@given(st.binary(max_size=200))
def test_decode_never_raises_anything_but_decode_error(data: bytes) -> None:
    try:
        result = decode(data)
    except DecodeError:
        return
    assert isinstance(result, dict)


# -- schemas ----------------------------------------------------------------------------------------


def test_reading_and_batch() -> None:
    one = parse_reading_payload({"t": T, "v": 5, "dt": 0.1, "seq": 3})
    assert isinstance(one, Reading) and one.dt == 0.1
    batch = parse_reading_payload({"samples": [[T, 1], [T + 1, 2]], "dt": 0.5})
    assert isinstance(batch, ReadingBatch)
    assert [(r.t, r.v, r.dt) for r in readings_of(batch)] == [(T, 1.0, 0.5), (T + 1, 2.0, 0.5)]


@pytest.mark.parametrize(
    "data",
    [
        {"t": T, "v": math.nan},
        {"t": T, "v": math.inf},
        {"t": T, "v": "12"},  # a string is not a number here
        {"t": T * 1000, "v": 1},  # milliseconds, not seconds
        {"t": T, "v": 1, "dt": 0},
        {"t": T, "v": 1, "colour": "red"},
        {"samples": [], "dt": 1},
        {"samples": [[T, math.nan]]},
        {"v": 1},
    ],
)
def test_bad_readings_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        parse_reading_payload(data)


def test_nan_in_json_is_refused() -> None:
    with pytest.raises(ValidationError):
        parse_reading_payload(decode(b'{"t": 1767225600, "v": NaN}'))


def test_signal_range() -> None:
    check_signal_range("counts", [Reading(t=T, v=10)])
    with pytest.raises(ValueError, match="outside"):
        check_signal_range("counts", [Reading(t=T, v=-1)])
    with pytest.raises(ValueError, match="outside"):
        check_signal_range("temperature", [Reading(t=T, v=370.0)])  # tenths of a degree by mistake


def test_event_fields_depend_on_type() -> None:
    assert Event.model_validate({"t": T, "type": "calibration_dose", "activity_mbq": 20}).activity_mbq == 20
    for bad in (
        {"t": T, "type": "calibration_dose"},
        {"t": T, "type": "drug_start", "dose_mg": 75},
        {"t": T, "type": "drug_start", "dose_mg": 75, "mode": "infusion"},
        {"t": T, "type": "note"},
        {"t": T, "type": "explosion"},
    ):
        with pytest.raises(ValidationError):
            Event.model_validate(bad)


def test_meta_thresholds_must_be_finite() -> None:
    base = {
        "t": T,
        "procedure": "IHHP",
        "isotope": "Tc-99m",
        "weight_kg": 70,
        "circuit_volume_ml": 220,
        "melphalan_mg_per_kg": 1.0,
    }
    assert SessionMeta.model_validate({**base, "thresholds": {"warning": 2}}).thresholds == {"warning": 2.0}
    with pytest.raises(ValidationError):
        SessionMeta.model_validate({**base, "thresholds": {"warning": math.inf}})
    with pytest.raises(ValidationError):
        SessionMeta.model_validate({**base, "patient_name": "Jan Jansen"})


# -- topics -----------------------------------------------------------------------------------------


def test_topics_build_and_parse() -> None:
    topics = Topics("perfusion")
    assert topics.raw("or-3", "s-1", "counts") == "perfusion/or-3/s-1/raw/counts"
    assert topics.parse("perfusion/or-3/s-1/raw/counts") == SessionTopic("or-3", "s-1", "raw", "counts")
    assert topics.parse("perfusion/or-3/s-1/alert/ack") == SessionTopic("or-3", "s-1", "alert/ack")
    assert topics.status("leakage", "host-1") == "perfusion/status/leakage/host-1"
    assert topics.subscription("raw/+") == "perfusion/+/+/raw/+"


@pytest.mark.parametrize(
    "topic",
    [
        "other/or-3/s-1/event",
        "perfusion/OR-3/s-1/event",
        "perfusion/or-3/" + "x" * 65 + "/event",
        "perfusion/or-3/s-1/raw/heartbeat",
        "perfusion/or-3/s-1/gossip",
        "perfusion/or-3",
    ],
)
def test_bad_topics_are_refused(topic: str) -> None:
    with pytest.raises(TopicError):
        Topics().parse(topic)


def test_ids_are_validated_when_building() -> None:
    with pytest.raises(ValueError, match="must match"):
        Topics().session("Theatre 1", "s", "event")
    with pytest.raises(ValueError, match="unknown signal"):
        Topics().raw("or-1", "s", "heartbeat")


# -- InfluxDB points --------------------------------------------------------------------------------


def test_reading_lines_by_the_contract() -> None:
    lines = reading_lines("or-3", "s-1", "counts", [Reading(t=T + 0.25, v=1234, dt=1.0)])
    # Line protocol: a number without the "i" suffix is a float, so the field type never flips.
    assert lines == [f"reading,session=s-1,signal=counts,theatre=or-3 dt=1,value=1234 {int(T * 1000) + 250}"]
    flow = reading_lines("or-3", "s-1", "flow", [Reading(t=T, v=200, dt=1.0)])[0]
    assert "dt=" not in flow and "value=200 " in flow and "200i" not in flow


def test_event_line_always_has_a_field_and_escapes_text() -> None:
    start = event_line("or-3", "s-1", Event(t=T, type="session_start"))
    assert start.startswith('event,session=s-1,theatre=or-3,type=session_start label="session start"')
    note = event_line("or-3", "s-1", Event(t=T, type="note", text='clamp "re-set", ok'))
    assert r'text="clamp \"re-set\", ok"' in note


def test_leakage_line_leaves_out_missing_numbers() -> None:
    line = leakage_line("or-3", "s-1", Leakage(t=T, state="calibrating"))
    assert line == f'leakage,session=s-1,theatre=or-3 state="calibrating" {int(T * 1000)}'


def test_session_line_keeps_thresholds_as_json() -> None:
    meta = SessionMeta(
        t=T,
        procedure="ILP",
        isotope="I-131",
        weight_kg=80,
        circuit_volume_ml=500,
        melphalan_mg_per_kg=1.0,
        thresholds={"warning": 3.0},
    )
    line = session_line("or-3", "s-1", meta)
    assert 'isotope="I-131"' in line and json.dumps({"warning": 3.0}).replace('"', '\\"') in line
