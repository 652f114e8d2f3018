"""isoperf writes line protocol itself (InfluxDB's client serializer costs ~30 us a point); the
client library stays the oracle: the same text for any measurement, tags and fields."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from influxdb_client.client.write.point import Point as _Point
from influxdb_client.domain.write_precision import WritePrecision

from isoperf.influx import FieldValue, line
from isoperf.points import reading_lines
from isoperf.schemas import Sample

T = 1_767_225_600.0
Point: Any = _Point  # the library ships no types
names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
values: st.SearchStrategy[FieldValue] = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**12), 10**12), st.booleans(), names, st.none()
)


def oracle(measurement: str, tags: dict[str, str], fields: dict[str, FieldValue], t: float) -> str:
    p = Point(measurement)
    for k, v in tags.items():
        p.tag(k, v)
    for k, fv in fields.items():
        if fv is not None:
            p.field(k, fv if isinstance(fv, bool | str) else float(fv))
    p.time(round(t * 1000), WritePrecision.MS)
    return str(p.to_line_protocol(precision=WritePrecision.MS))


@settings(max_examples=400, deadline=None)
@given(
    measurement=names.filter(lambda m: not m.startswith("#")),
    tags=st.dictionaries(names, names, max_size=4),
    fields=st.dictionaries(names, values, min_size=1, max_size=5),
    t=st.floats(1e9, 2e9),
)
def test_the_same_text_as_the_client_library(
    measurement: str, tags: dict[str, str], fields: dict[str, FieldValue], t: float
) -> None:
    def kept(v: FieldValue) -> bool:
        return v is not None and (isinstance(v, bool | str) or math.isfinite(float(v)))

    expected = oracle(measurement, tags, fields, t)
    if not any(kept(v) for v in fields.values()):
        assert expected == ""
        with pytest.raises(ValueError, match="no field"):
            line(measurement, tags, fields, t)
    else:
        assert line(measurement, tags, fields, t) == expected


@settings(max_examples=200, deadline=None)
@given(
    samples=st.lists(
        st.tuples(st.floats(1e9, 2e9), st.floats(-1e6, 1e6), st.floats(0.01, 3600), st.none() | st.integers(0, 10**9)),
        min_size=1,
        max_size=20,
    ),
    signal=st.sampled_from(["counts", "flow", "temperature"]),
)
def test_reading_lines_as_the_general_line(samples: list[tuple[float, float, float, int | None]], signal: str) -> None:
    readings = [Sample(t, v, dt, seq) for t, v, dt, seq in samples]
    tags = {"theatre": "or-1", "session": "s 1,x=y", "signal": signal}
    expected = [
        oracle("reading", tags, {"value": r.v, "dt": r.dt if signal == "counts" else None, "seq": r.seq}, r.t)
        for r in readings
    ]
    assert reading_lines("or-1", "s 1,x=y", signal, readings) == expected


def test_escapes_by_the_line_protocol_rules() -> None:
    text = line("lab sample", {"site": "a b,c=d", "empty": ""}, {"note": 'say "hi" \\ bye', "ok": True, "x": 2.0}, T)
    assert text == 'lab\\ sample,site=a\\ b\\,c\\=d note="say \\"hi\\" \\\\ bye",ok=true,x=2 1767225600000'
