"""The one edge every message passes: the table from kind to model, size, decoding, validation."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ConfigDict

from isoperf.codec import encode
from isoperf.messages import MessageParser, Readings, ServiceStatus, subscriptions
from isoperf.schemas import SESSION_MESSAGES, AlertAck, Event, EventTime, Reading, ReadingBatch
from tests.fakes import TOPICS

T = 1_767_225_600.0
EVERYTHING = (*SESSION_MESSAGES, "raw/+", "status")


def parser(*kinds: str, max_bytes: int = 1_048_576) -> MessageParser:
    return MessageParser(TOPICS, "test", kinds or EVERYTHING, max_bytes)


def test_every_kind_of_the_table_is_validated_by_its_model() -> None:
    ack = parser().parse(TOPICS.session("or-1", "s-1", "alert/ack"), encode(AlertAck(t=T, id="a-1", by="perfusionist")))
    assert isinstance(ack.body, AlertAck) and ack.key == ("or-1", "s-1") and ack.kind == "alert/ack"
    for kind in SESSION_MESSAGES:
        with pytest.raises(ValueError, match="validation error"):
            parser().parse(TOPICS.session("or-1", "s-1", kind), json.dumps({"t": "not a time"}).encode())


def test_readings_are_flattened_and_range_checked() -> None:
    batch = ReadingBatch(samples=[(T, 10.0), (T + 1, 11.0)], dt=1.0)
    got = parser("raw/counts").parse(TOPICS.raw("or-1", "s-1", "counts"), encode(batch))
    assert isinstance(got.body, Readings) and got.body.signal == "counts"
    assert [r.v for r in got.body.readings] == [10.0, 11.0]
    with pytest.raises(ValueError, match="outside"):
        parser().parse(TOPICS.raw("or-1", "s-1", "temperature"), encode(Reading(t=T, v=99.0)))


def test_what_a_service_does_not_take_is_refused_with_the_reason() -> None:
    p = parser("raw/counts", "event")
    with pytest.raises(ValueError, match="does not take 'raw/flow'"):
        p.parse(TOPICS.raw("or-1", "s-1", "flow"), encode(Reading(t=T, v=100.0)))
    with pytest.raises(ValueError, match="does not take 'sample'"):
        p.parse(TOPICS.session("or-1", "s-1", "sample"), b"{}")
    with pytest.raises(ValueError, match="does not take status"):
        p.parse(TOPICS.status("leakage", "a"), b"online")


def test_size_is_checked_before_decoding() -> None:
    event = encode(Event(t=T, type="note", text="x" * 2000))
    with pytest.raises(ValueError, match="exceeds the limit of 1024"):
        parser(max_bytes=1024).parse(TOPICS.session("or-1", "s-1", "event"), event)


def test_status_topics_are_parsed_as_plain_text() -> None:
    got = parser().parse(TOPICS.status("leakage", "host-1"), b"offline")
    assert got.body == ServiceStatus("leakage/host-1", online=False)
    with pytest.raises(ValueError, match="must be 'online' or 'offline'"):
        parser().parse(TOPICS.status("leakage", "host-1"), b"maybe")


def test_subscriptions_follow_the_kinds() -> None:
    assert subscriptions(TOPICS, ("raw/counts", "event", "status")) == [
        "perfusion/+/+/raw/counts",
        "perfusion/+/+/event",
        "perfusion/status/+/+",
    ]


class Handover(BaseModel):
    """A kind this test invents: a handover between perfusionists."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    t: EventTime
    to: str


def test_a_new_kind_needs_one_model_and_one_table_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SESSION_MESSAGES, "handover", Handover)
    topic = TOPICS.session("or-1", "s-1", "handover")
    got = parser("handover").parse(topic, json.dumps({"t": T, "to": "night team"}).encode())
    assert got.body == Handover(t=T, to="night team")
    with pytest.raises(ValueError, match="Extra inputs"):
        parser("handover").parse(topic, json.dumps({"t": T, "to": "x", "extra": 1}).encode())
    with pytest.raises(ValueError, match="not MessagePack or JSON"):
        parser("handover").parse(topic, b"\xc1garbage")
