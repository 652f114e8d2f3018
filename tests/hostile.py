"""Hostile input, generated with hypothesis, for every topic the services subscribe to.

Each :class:`Probe` is a payload for one kind of topic, and knows by construction whether it is
valid (readings, a unique event time each, that must all be stored) or bad (that every service
taking the kind must keep aside with its reason): wrong types in every field, non-finite numbers,
times out of range, deep nesting, enormous batches, garbage bytes, odd unicode and oversized ids
in the topic. Nothing here asks the parser what it thinks: the oracle is the construction.

Used by ``tests/integration/test_fuzz.py`` (a few hundred payloads a topic) and by
``scripts/fuzz_services.py`` (the full run, figures in the README).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import msgpack
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from isoperf.deadletter import KEEP_BYTES

T0 = 1_767_225_600.0  # 2026-01-01: valid readings get T0 + n seconds, one n each
SIGNALS = ("counts", "flow", "pressure", "temperature", "reservoir")
SUBSCRIBERS: dict[str, tuple[str, ...]] = {
    **{f"raw/{s}": ("recorder", "alerts") for s in SIGNALS},
    "raw/counts": ("recorder", "leakage", "alerts", "pk"),
    "meta": ("recorder", "leakage", "alerts", "pk"),
    "event": ("recorder", "leakage", "alerts", "pk"),
    "sample": ("recorder", "pk"),
    "leakage": ("alerts", "pk"),
    "leakage/series": ("alerts", "pk"),
    "device": ("recorder", "alerts"),
    "alert/ack": ("alerts",),
    "alert/silence": ("alerts",),
    "status": ("recorder", "alerts"),
}
KINDS = tuple(SUBSCRIBERS)

# Valid payloads of each kind of session message; a bad one breaks one field of them.
TEMPLATES: dict[str, dict[str, Any]] = {
    "raw": {"t": T0, "v": 1.0, "dt": 1.0},
    "batch": {"samples": [[T0, 1.0]], "dt": 1.0},
    "meta": {
        "t": T0,
        "procedure": "ILP",
        "isotope": "Tc-99m",
        "weight_kg": 70.0,
        "circuit_volume_ml": 1000.0,
        "melphalan_mg_per_kg": 1.0,
    },
    "event": {"t": T0, "type": "note", "text": "fuzz"},
    "sample": {"t": T0, "site": "circuit", "melphalan_ug_ml": 10.0},
    "leakage": {"t": T0, "state": "monitoring", "percent": 1.0, "ci_low": 0.5, "ci_high": 1.5},
    "leakage/series": {"points": [{"t": T0, "state": "monitoring", "percent": 1.0, "ci_low": 0.5, "ci_high": 1.5}]},
    "device": {"t": T0, "source": "probe", "state": "connected"},
    "alert/ack": {"t": T0, "id": "a-1", "by": "fuzz"},
    "alert/silence": {"t": T0, "duration_s": 60.0, "reason": "fuzz", "by": "fuzz"},
}


@dataclass(frozen=True)
class Probe:
    kind: str  # a key of SUBSCRIBERS
    how: str  # what makes it hostile ("valid" for a valid one)
    payload: bytes  # for a valid one: a template, its times filled in at publication
    n_readings: int = 0  # valid: how many readings it carries
    theatre: str | None = None  # a hostile id in the topic instead of the run's own
    session: str | None = None

    @property
    def bad(self) -> bool:
        return self.how != "valid"


def _encode(data: Any, as_json: bool) -> bytes:
    if not as_json:
        try:
            packed: bytes = msgpack.packb(data, use_bin_type=True)
            return packed
        except OverflowError:  # an integer MessagePack cannot carry: JSON can
            pass
    return json.dumps(data).encode()


# -- bad values ------------------------------------------------------------------------------------

_containers = st.one_of(
    st.lists(st.floats(allow_nan=False), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2)
)
_wrong_for_number = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.text(max_size=10).filter(lambda s: s.strip() != ""),  # "12" is a wrong type too: numbers are strict
    st.booleans(),
    _containers,
)
_wrong_for_text = st.one_of(st.integers(), st.floats(), st.booleans(), _containers)
_wrong_for_time = st.one_of(
    _wrong_for_number, st.sampled_from([0.0, -1.0, T0 * 1000.0, 1e300]), st.floats(max_value=946_684_799.0)
)
_wrong_for_samples = st.one_of(
    st.just([]),
    st.just([[T0]]),
    st.just([[T0, 1.0, 2.0]]),
    st.just([["yesterday", 1.0]]),
    st.just([[T0, math.nan]]),
    st.just([[T0, 1.0], [T0 + 1, "1"]]),
    _wrong_for_number,
)


def _wrong_value(key: str, valid: Any) -> st.SearchStrategy[Any]:
    if key == "t":
        return _wrong_for_time
    if key == "samples":
        return _wrong_for_samples
    if isinstance(valid, float):
        return _wrong_for_number
    return _wrong_for_text


@st.composite
def wrong_type(draw: st.DrawFn, kind: str) -> Probe:
    """One field of a valid message replaced by a value of the wrong type (or not finite, or out of range)."""
    name = ("batch" if draw(st.booleans()) else "raw") if kind.startswith("raw/") else kind
    template = TEMPLATES[name]
    key = draw(st.sampled_from(sorted(template)))
    data = {**template, key: draw(_wrong_value(key, template[key]))}
    as_json = draw(st.booleans()) and not _has_non_finite(data[key])
    return Probe(kind, f"wrong {key}", _encode(data, as_json))


def _has_non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


@st.composite
def deep(draw: st.DrawFn, kind: str) -> Probe:
    """A field nested thousands of levels deep (MessagePack arrays or JSON)."""
    depth = draw(st.integers(50, 200_000))
    key = draw(st.sampled_from(["t", "v", "samples", "text", "x"]))
    if draw(st.booleans()):
        body = b"[" * depth + b"]" * depth
        payload = b'{"' + key.encode() + b'": ' + body + b"}"
    else:  # a map of one key whose value is a fixarray of one, repeated, ending in an empty one
        payload = b"\x81" + _encode(key, False) + b"\x91" * depth + b"\x90"
    return Probe(kind, "deep nesting", payload)


@st.composite
def enormous(draw: st.DrawFn, kind: str) -> Probe:
    """A batch too long (over 100,000 samples or over the 1 MB payload limit), or long with one bad sample."""
    n = draw(st.integers(100_001, 250_000))
    if draw(st.booleans()):
        samples: list[list[Any]] = [[T0, 1.0]] * n
        how = "enormous batch"
    else:
        samples = [[T0 + i, 1.0] for i in range(draw(st.integers(1000, 20_000)))] + [[T0, "one bad"]]
        how = "long batch, one bad sample"
    return Probe(kind, how, _encode({"samples": samples, "dt": 1.0}, draw(st.booleans())))


@st.composite
def garbage(draw: st.DrawFn, kind: str) -> Probe:
    """Bytes that are neither MessagePack (0xc1 is never used) nor JSON, or JSON that is not a map."""
    if draw(st.booleans()):
        return Probe(kind, "garbage", b"\xc1" + draw(st.binary(max_size=200)))
    top = draw(st.one_of(st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=5)))
    return Probe(kind, "not a map", b"{" + _encode(top, True))  # begins like JSON, is not


_odd_char = st.characters(blacklist_categories=("Cc", "Cs", "Cn"), blacklist_characters="/+#")


def _is_bad_id(s: str) -> bool:
    return not (1 <= len(s) <= 64 and all(c in "abcdefghijklmnopqrstuvwxyz0123456789-" for c in s))


_bad_id = st.one_of(
    st.text(_odd_char, min_size=1, max_size=80).filter(_is_bad_id),  # odd unicode, capitals, blanks
    st.integers(65, 5000).map(lambda n: "a" * n),  # oversized
    st.just(""),  # an empty level
)


@st.composite
def odd_topic(draw: st.DrawFn, kind: str) -> Probe:
    """A valid payload under a theatre or session id that is not one: odd unicode, oversized, empty."""
    template = TEMPLATES["raw" if kind.startswith("raw/") else kind]
    payload = _encode(template, draw(st.booleans()))
    if draw(st.booleans()):
        return Probe(kind, "odd theatre id", payload, theatre=draw(_bad_id))
    return Probe(kind, "odd session id", payload, session=draw(_bad_id))


@st.composite
def bad_status(draw: st.DrawFn) -> Probe:
    text = draw(st.text(max_size=40).filter(lambda s: s.strip() not in ("online", "offline")))
    return Probe("status", "bad status", text.encode())


@st.composite
def valid_readings(draw: st.DrawFn, kind: str) -> Probe:
    """One reading or a batch (at times filled in at publication); values plausible for every signal."""
    as_json = draw(st.booleans())
    n = draw(st.one_of(st.just(1), st.integers(2, 200)))
    if draw(st.integers(0, 49)) == 0:  # now and then a large batch that is valid
        n = draw(st.integers(1000, 5000))
    value = draw(st.floats(0.0, 50.0))
    body = {"t": T0, "v": value} if n == 1 else {"samples": [[T0, value]] * n, "dt": 1.0}
    return Probe(kind, "valid", _encode(body, as_json), n_readings=n)


@st.composite
def probes_for(draw: st.DrawFn, kind: str) -> Probe:
    """For readings: valid ones mixed in (one in three), and now and then an enormous batch (megabytes)."""
    if kind == "status":
        return draw(bad_status())
    if kind.startswith("raw/"):
        if draw(st.integers(0, 2)) == 0:
            return draw(valid_readings(kind))
        if draw(st.integers(0, 14)) == 0:
            return draw(enormous(kind))
    return draw(st.one_of(wrong_type(kind), garbage(kind), deep(kind), odd_topic(kind)))


def draw_probes(per_kind: int, seed_: int = 0) -> list[Probe]:
    """``per_kind`` probes for every kind of topic, drawn by hypothesis (the same seed, the same probes)."""
    out: list[Probe] = []
    for i, kind in enumerate(KINDS):

        @seed(seed_ * 1000 + i)
        @settings(
            max_examples=per_kind,
            database=None,
            phases=[Phase.generate],
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(probes_for(kind))
        def collect(p: Probe) -> None:
            out.append(p)

        collect()
    return out


# -- publication and the figures ------------------------------------------------------------------


@dataclass
class Planned:
    topic: str
    payload: bytes
    probe: Probe


def plan(probes: Iterable[Probe], theatre: str, session: str, root: str = "perfusion") -> list[Planned]:
    """Topics and final payloads: valid readings get event times of their own, T0 + 1, T0 + 2, ..."""
    out, clock = [], 0
    for p in probes:
        if p.kind == "status":
            out.append(Planned(f"{root}/status/fuzz/{session}", p.payload, p))
            continue
        payload = p.payload
        if not p.bad:
            body = json.loads(payload) if payload[:1] == b"{" else msgpack.unpackb(payload)
            if "samples" in body:
                body["samples"] = [[T0 + clock + 1 + i, v] for i, (_, v) in enumerate(body["samples"])]
            else:
                body["t"] = T0 + clock + 1
            clock += p.n_readings
            payload = _encode(body, payload[:1] == b"{")
        th = p.theatre if p.theatre is not None else theatre
        se = p.session if p.session is not None else session
        topic = f"{root}/{th}/{se}/{p.kind}"
        out.append(Planned(topic, payload, p))
    return out


def fingerprint(topic: str, payload: bytes) -> tuple[str, int, str]:
    """What identifies a message in a dead-letter file: its topic, size and the bytes kept of it."""
    return topic, len(payload), hashlib.sha256(payload[:KEEP_BYTES]).hexdigest()


def kept(deadletter_dir: Path, service: str) -> dict[tuple[str, int, str], str]:
    """The messages a service kept aside, with their reasons."""
    path = deadletter_dir / f"{service}.jsonl"
    out: dict[tuple[str, int, str], str] = {}
    if path.exists():
        text = path.read_text()
        # Only whole lines: the service may be writing the last one while it is read.
        for line in text[: text.rfind("\n") + 1].splitlines():
            r = json.loads(line)
            out[r["topic"], r["size"], hashlib.sha256(base64.b64decode(r["payload_b64"])).hexdigest()] = r["reason"]
    return out


def expected_aside(planned: Iterable[Planned]) -> dict[str, set[tuple[str, int, str]]]:
    """For each service, the bad messages it must keep aside: those of every kind it takes."""
    out: dict[str, set[tuple[str, int, str]]] = {}
    for m in planned:
        if m.probe.bad:
            for service in SUBSCRIBERS[m.probe.kind]:
                out.setdefault(service, set()).add(fingerprint(m.topic, m.payload))
    return out


async def publish(host: str, port: int, planned: Iterable[Planned], client_id: str) -> int:
    """Publish every message (QoS 1, each acknowledged by the broker); the number published."""
    n = 0
    async with aiomqtt.Client(host, port, identifier=client_id, max_inflight_messages=100) as client:
        for m in planned:
            await client.publish(m.topic, m.payload, qos=1)
            n += 1
    return n


@dataclass(frozen=True)
class Figures:
    """The outcome of a run, counted from what the services stored and kept aside."""

    payloads: int
    valid_messages: int
    valid_readings: int
    stored_readings: int
    bad_messages: int  # distinct bad messages
    aside: dict[str, tuple[int, int]]  # service -> (bad messages it had to keep aside, found kept with a reason)

    @property
    def all_kept(self) -> bool:
        return all(want == found for want, found in self.aside.values())


def figures(planned: list[Planned], stored_readings: int, deadletter_dir: Path) -> Figures:
    expected = expected_aside(planned)
    aside = {}
    for service, want in sorted(expected.items()):
        found = kept(deadletter_dir, service)
        aside[service] = (len(want), sum(1 for f in want if found.get(f)))
    valid = [m for m in planned if not m.probe.bad]
    return Figures(
        payloads=len(planned),
        valid_messages=len(valid),
        valid_readings=sum(m.probe.n_readings for m in valid),
        stored_readings=stored_readings,
        bad_messages=len({fingerprint(m.topic, m.payload) for m in planned if m.probe.bad}),
        aside=aside,
    )
