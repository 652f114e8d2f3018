"""Pydantic models of every payload of the public interface (contract v1).

Validation happens once, at the edge: every model is frozen, rejects NaN and
infinities, and forbids unknown keys, so a typo in a hand-published message
is reported rather than silently ignored. ``docs/interface.md`` describes the
same interface in prose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

# Event time: Unix seconds, UTC. Bounded to 2000-01-01 .. 2100-01-01 so that a
# value in milliseconds or a zero is rejected instead of stored decades away.
T_MIN = 946_684_800.0
T_MAX = 4_102_444_800.0
EventTime = Annotated[float, Field(strict=True, ge=T_MIN, le=T_MAX)]
# Numbers must arrive as numbers: "12" or true is a wrong type, not a reading.
Number = Annotated[float, Field(strict=True)]
# Extension: the sending gateway's journal sequence number, echoed by the recorder (topic ``stored``)
# once the message is stored, so that the gateway may forget it (end-to-end confirmation).
JournalSeq = Annotated[int | None, Field(default=None, ge=1)]

CORE_SIGNALS = ("counts", "flow", "pressure", "temperature", "reservoir")
# Extension: the blood-parameter monitor on the circuit (Terumo CDI 500/550), arterial and venous
# side, in the monitor's own units (docs/devices.md). Stored and shown; no alert rule reads them yet.
BLOOD_GAS_RANGES: dict[str, tuple[float, float]] = {
    "arterial_ph": (6.0, 8.0),
    "arterial_pco2": (0.0, 200.0),  # mmHg
    "arterial_po2": (0.0, 800.0),  # mmHg
    "arterial_temperature": (0.0, 50.0),  # degC
    "arterial_hco3": (0.0, 80.0),  # mmol/L
    "arterial_be": (-40.0, 40.0),  # mmol/L
    "arterial_so2_calc": (0.0, 100.0),  # %
    "k": (0.0, 15.0),  # mmol/L
    "vo2": (0.0, 2000.0),  # mL/min
    "q": (0.0, 15.0),  # L/min
    "bsa": (0.0, 4.0),  # m2
    "venous_ph": (6.0, 8.0),
    "venous_pco2": (0.0, 200.0),
    "venous_po2": (0.0, 800.0),
    "venous_temperature": (0.0, 50.0),
    "venous_so2": (0.0, 100.0),
    "hct": (0.0, 100.0),  # %
    "hgb": (0.0, 30.0),  # g/dL
}
SIGNALS: tuple[str, ...] = (*CORE_SIGNALS, *BLOOD_GAS_RANGES)

# Physical plausibility per signal: a value outside is a device fault or a unit
# error, never a reading to store. Wide on purpose: alert limits are separate.
SIGNAL_RANGES: dict[str, tuple[float, float]] = {
    "counts": (0.0, 1e9),
    "flow": (-50.0, 10_000.0),  # mL/min; a small negative is zero-offset drift
    "pressure": (-100.0, 1_000.0),  # mmHg
    "temperature": (0.0, 50.0),  # degC
    "reservoir": (-50.0, 10_000.0),  # mL
    **BLOOD_GAS_RANGES,
}

Procedure = Literal["IHHP", "IHP", "ILP"]
Isotope = Literal["Tc-99m", "I-131", "In-111"]
EventType = Literal[
    "session_start",
    "calibration_dose",
    "perfusion_dose",
    "drug_start",
    "drug_stop",
    "washout_start",
    "washout_end",
    "isolation_start",  # extension: clamps on / tourniquet on (ischaemia time starts)
    "isolation_end",
    "session_end",
    "note",
]
# ``released`` (extension of contract v1): after ``isolation_end``. The clamps are off and the
# tracer left in the organ reaches the body: the curve rises, expectedly, and is not a leak.
LeakageState = Literal["background", "calibrating", "calibrated", "monitoring", "washout", "released", "ended"]
# The states in which the figure is the leakage of the isolated circuit (headlines, alarms).
ISOLATION_STATES: tuple[LeakageState, ...] = ("monitoring", "washout")
ProbeFault = Literal["no counts", "constant counts"]
AlertKind = Literal["new", "escalated", "eased", "repeat", "unacknowledged", "resolved"]
Severity = Literal["advisory", "warning", "critical", "stop"]

_STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class _Model(BaseModel):
    model_config = _STRICT


class Reading(_Model):
    """One sample of one signal. ``dt`` is the counting interval ending at ``t``."""

    t: EventTime
    v: Number
    dt: float = Field(strict=True, default=1.0, gt=0.0, le=3600.0)
    seq: int | None = Field(default=None, ge=0)
    journal_seq: JournalSeq = None


class ReadingBatch(_Model):
    """A batch of ``[t, v]`` pairs sharing one counting interval ``dt``."""

    samples: list[tuple[EventTime, Number]] = Field(min_length=1, max_length=100_000)
    dt: float = Field(strict=True, default=1.0, gt=0.0, le=3600.0)
    journal_seq: JournalSeq = None


@dataclass(frozen=True, slots=True)
class Sample:
    """One validated reading as the services handle it: a plain record, not a model (a batch of
    100 samples is validated once, as a :class:`ReadingBatch`; building a model per sample would
    cost more than everything else on the recorder's path)."""

    t: float
    v: float
    dt: float = 1.0
    seq: int | None = None


def readings_of(payload: Reading | ReadingBatch) -> list[Sample]:
    """Flatten a single reading or a batch into samples."""
    if isinstance(payload, Reading):
        return [Sample(payload.t, payload.v, payload.dt, payload.seq)]
    dt = payload.dt
    return [Sample(t, v, dt) for t, v in payload.samples]


def check_signal_range(signal: str, readings: Sequence[Sample | Reading]) -> None:
    """Raise ``ValueError`` if any reading lies outside the signal's physical range."""
    low, high = SIGNAL_RANGES[signal]
    for r in readings:
        if not low <= r.v <= high:
            raise ValueError(f"{signal} value {r.v!r} at t={r.t} outside [{low}, {high}]")


class SessionMeta(_Model):
    """Retained session metadata. Never carries a patient's name or number."""

    t: EventTime
    procedure: Procedure
    isotope: Isotope
    weight_kg: float = Field(strict=True, gt=0.0, le=400.0)
    circuit_volume_ml: float = Field(strict=True, gt=0.0, le=20_000.0)
    melphalan_mg_per_kg: float = Field(strict=True, gt=0.0, le=10.0)
    thresholds: dict[str, float] | None = None
    journal_seq: JournalSeq = None

    @field_validator("thresholds")
    @classmethod
    def _finite_thresholds(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and not all(math.isfinite(x) for x in v.values()):
            raise ValueError("thresholds must be finite numbers")
        return v


class Event(_Model):
    """A procedure event. Extra fields depend on ``type`` (see docs/interface.md)."""

    t: EventTime
    type: EventType
    activity_mbq: float | None = Field(strict=True, default=None, gt=0.0, le=100_000.0)
    dose_mg: float | None = Field(strict=True, default=None, gt=0.0, le=2_000.0)
    mode: Literal["bolus", "infusion"] | None = None
    duration_s: float | None = Field(strict=True, default=None, gt=0.0, le=86_400.0)
    volume_ml: float | None = Field(strict=True, default=None, gt=0.0, le=100_000.0)
    text: str | None = Field(default=None, max_length=2_000)
    journal_seq: JournalSeq = None

    @model_validator(mode="after")
    def _fields_for_type(self) -> Event:
        if self.type in ("calibration_dose", "perfusion_dose") and self.activity_mbq is None:
            raise ValueError(f"{self.type} needs activity_mbq")
        if self.type == "drug_start":
            if self.dose_mg is None or self.mode is None:
                raise ValueError("drug_start needs dose_mg and mode")
            if self.mode == "infusion" and self.duration_s is None:
                raise ValueError("an infusion needs duration_s")
        if self.type == "note" and not self.text:
            raise ValueError("a note needs text")
        return self

    def label(self) -> str:
        """A short human-readable description, for logs and dashboard annotations."""
        parts = [self.type.replace("_", " ")]
        if self.activity_mbq is not None:
            parts.append(f"{self.activity_mbq:g} MBq")
        if self.dose_mg is not None:
            parts.append(f"{self.dose_mg:g} mg")
        if self.mode is not None:
            parts.append(self.mode)
        if self.duration_s is not None:
            parts.append(f"over {self.duration_s:g} s")
        if self.volume_ml is not None:
            parts.append(f"{self.volume_ml:g} mL")
        if self.text:
            parts.append(self.text)
        return " ".join(parts)


class LabSample(_Model):
    """A laboratory result for a blood sample, stamped with its draw time."""

    t: EventTime
    site: Literal["circuit", "systemic"]
    melphalan_ug_ml: float = Field(strict=True, ge=0.0, le=10_000.0)
    sample_id: str | None = Field(default=None, max_length=128)
    # Extension: when the laboratory reported the result (after the draw): for the record, and where
    # it enters the session's event time (the pk service orders it there).
    reported_t: EventTime | None = None
    journal_seq: JournalSeq = None

    @model_validator(mode="after")
    def _reported_after_drawn(self) -> LabSample:
        if self.reported_t is not None and self.reported_t < self.t:
            raise ValueError(f"reported_t {self.reported_t} is before the draw time {self.t}")
        return self


class Leakage(_Model):
    """A leakage estimate. The numbers are absent until the session is calibrated."""

    t: EventTime
    state: LeakageState
    # Strict like every number of the interface: true or "1" is a wrong type, not 1 %.
    percent: Number | None = None
    ci_low: Number | None = None
    ci_high: Number | None = None
    rate_pct_min: Number | None = None
    # Extensions of contract v1 (optional fields):
    rate_se_pct_min: Number | None = None
    step: bool | None = None
    probe_fault: ProbeFault | None = None


# At most this many points a ``leakage/series`` message (about 150 kB): a larger batch of counts
# yields several messages.
SERIES_MAX_POINTS = 1_000


class LeakageSeries(_Model):
    """Extension of contract v1 (topic ``leakage/series``): the leakage points that one message of
    counts yielded when it yielded more than one (a batch of counts: an accelerated or replayed
    session, a device read in batches), in event-time order. Every point is published once: alone
    on ``leakage``, or in a series; a program that wants every point subscribes to ``leakage/#``."""

    points: list[Leakage] = Field(min_length=1, max_length=SERIES_MAX_POINTS)


class Alert(_Model):
    t: EventTime
    id: str = Field(min_length=1, max_length=128)
    rule: str = Field(min_length=1, max_length=128)
    severity: Severity
    status: Literal["firing", "resolved"]
    value: Number
    threshold: Number
    message: str = Field(max_length=2_000)
    # Extensions: why this message was sent; whether a silence mutes its notifications; whether
    # it was raised late (its input came after the hold bound of event-time order: ``t`` is the
    # true event time, earlier than alerts already sent).
    kind: AlertKind | None = None
    silenced: bool | None = None
    late: bool | None = None


class AlertAck(_Model):
    t: EventTime
    id: str = Field(min_length=1, max_length=128)
    by: str = Field(min_length=1, max_length=128)


class Pk(_Model):
    """A pharmacokinetic estimate (topic ``pk``, measurement ``pk``); every figure may be absent.

    Live: the circuit model refitted to the circuit samples (``circuit_ug_ml`` with its 95 %
    prediction interval), and the systemic concentration implied by the leak. From the lab
    samples (non-compartmental): ``auc_circuit`` and ``auc_systemic`` by linear-up/log-down
    (``auc_*_linear`` by the linear trapezoid), peaks, ratios. Times in minutes from the
    drug start, AUCs in ug*min/mL.

    Extensions: after the release (``release_*``), the release model's prediction of the systemic
    concentration once the clamps come off, with 95 % prediction intervals, projected until
    ``isolation_end`` (``release_projected``) and refitted to the systemic samples drawn after it
    (``n_release``); the systemic samples during the isolation and after the release apart
    (``*_systemic_isolation``, ``*_systemic_release``); regional/systemic ratios over stated
    windows (``auc_ratio_isolation``, ``auc_ratio_exposure``, their ``ratio_*_end_min``).
    """

    t: EventTime
    circuit_ug_ml: Number | None = None
    circuit_low_ug_ml: Number | None = None
    circuit_high_ug_ml: Number | None = None
    model_auc_circuit: Number | None = None
    systemic_ug_ml: Number | None = None  # from the leak
    leaked_mg: Number | None = None
    leak_auc_systemic: Number | None = None
    auc_circuit: Number | None = None
    auc_circuit_linear: Number | None = None
    auc_circuit_perfusion: Number | None = None  # drug start to drug stop, linear-up/log-down
    auc_systemic: Number | None = None
    auc_systemic_linear: Number | None = None
    cmax_circuit: Number | None = None
    tmax_circuit_min: Number | None = None
    cmax_systemic: Number | None = None
    tmax_systemic_min: Number | None = None
    systemic_peak_after_isolation: Number | None = None
    auc_ratio: Number | None = None
    peak_ratio: Number | None = None
    v_ml: Number | None = None
    v_se_ml: Number | None = None
    k_uptake_min: Number | None = None
    k_uptake_se_min: Number | None = None
    n_circuit: int | None = None
    n_systemic: int | None = None
    # Extensions: after the release (the release model).
    release_min: Number | None = None  # the clamps come off (isolation end), or its projection
    release_projected: bool | None = None
    release_ug_ml: Number | None = None  # at ``t``, from the release on
    release_low_ug_ml: Number | None = None
    release_high_ug_ml: Number | None = None
    release_peak_ug_ml: Number | None = None
    release_peak_low_ug_ml: Number | None = None
    release_peak_high_ug_ml: Number | None = None
    release_tmax_min: Number | None = None
    release_auc_inf: Number | None = None  # from the release to infinity
    release_auc_inf_low: Number | None = None
    release_auc_inf_high: Number | None = None
    release_v1_ml: Number | None = None  # refitted (with systemic samples after the release only)
    release_tissue_fraction: Number | None = None
    n_release: int | None = None
    # Extensions: the lab's systemic samples during the isolation and after the release, apart.
    n_systemic_isolation: int | None = None
    cmax_systemic_isolation: Number | None = None
    auc_systemic_isolation: Number | None = None
    n_systemic_release: int | None = None
    cmax_systemic_release: Number | None = None
    tmax_systemic_release_min: Number | None = None
    auc_systemic_release: Number | None = None  # isolation end to the last sample, linear-up/log-down
    auc_systemic_release_linear: Number | None = None
    # Extensions: regional/systemic AUC ratios over stated windows (docs/melphalan.md).
    auc_ratio_isolation: Number | None = None
    ratio_isolation_end_min: Number | None = None
    auc_ratio_exposure: Number | None = None
    ratio_exposure_end_min: Number | None = None
    note: str | None = Field(default=None, max_length=500)


class PkRelease(_Model):
    """Extension (topic ``pk/release``, measurement ``pk_release``): the predicted systemic curve
    after the release, as predicted at ``t``: ``points`` are ``[t, ug/mL, 95 % low, 95 % high]``
    every 30 s from the drug start (zero before the release). Published whenever the prediction
    changes (an event, a lab sample, the leak's share once the isolation has ended)."""

    t: EventTime
    release_t: EventTime  # the clamps come off, or its projection
    projected: bool
    n_release: int = Field(ge=0)  # systemic samples after the release refitted to
    peak_ug_ml: Number
    peak_low_ug_ml: Number
    peak_high_ug_ml: Number
    points: list[tuple[EventTime, Number, Number, Number]] = Field(min_length=1, max_length=5_000)


class AlertSilence(_Model):
    """Extension (topic ``alert/silence``): mute notifications of a session, or of one rule in it,
    for ``duration_s`` from ``t``; a duration of 0 lifts the matching silences."""

    t: EventTime
    rule: str | None = Field(default=None, min_length=1, max_length=128)
    duration_s: Number = Field(ge=0.0, le=86_400.0)
    reason: str = Field(min_length=1, max_length=500)
    by: str = Field(min_length=1, max_length=128)


def parse_reading_payload(data: Any) -> Reading | ReadingBatch:
    """Validate a ``raw/{signal}`` payload (one sample or a batch)."""
    if isinstance(data, dict) and "samples" in data:
        return ReadingBatch.model_validate(data)
    return Reading.model_validate(data)


class Stored(_Model):
    """Extension (topic ``stored``): the recorder has stored these journal sequence numbers of the
    session (inclusive ranges); ``t`` is when (the recorder's clock)."""

    t: EventTime
    seqs: list[tuple[int, int]] = Field(min_length=1, max_length=100_000)


DeviceState = Literal["connected", "disconnected", "silent", "garbage", "clock_jump", "journal_filling", "journal_ok"]


class GatewayStatus(_Model):
    """Extension (topic ``device``): the gateway says how a device (or its own journal) is doing.

    ``source`` is the device's name from its profile, or ``journal``; ``offset_s`` the device
    clock's offset from the gateway's (``clock_jump``); ``fill`` the journal's (``journal_*``)."""

    t: EventTime
    source: str = Field(min_length=1, max_length=64)
    state: DeviceState
    reason: str = Field(default="", max_length=500)
    offset_s: Number | None = None
    fill: float | None = Field(strict=True, default=None, ge=0.0, le=1.0)
    journal_seq: JournalSeq = None


# The one table of session messages: a topic ``{root}/{theatre}/{session}/{kind}`` carries the model
# named here, and every service validates and dead-letters it through ``isoperf.messages.parse``.
# Readings (``raw/{signal}``) and service status (``{root}/status/...``) are the two kinds outside it:
# the first is named by its signal, the second is plain text.
SESSION_MESSAGES: dict[str, type[BaseModel]] = {
    "meta": SessionMeta,
    "event": Event,
    "sample": LabSample,
    "leakage": Leakage,
    "leakage/series": LeakageSeries,
    "pk": Pk,
    "pk/release": PkRelease,
    "alert": Alert,
    "alert/ack": AlertAck,
    "alert/silence": AlertSilence,
    "stored": Stored,
    "device": GatewayStatus,
}
