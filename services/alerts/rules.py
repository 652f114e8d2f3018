"""Alert rules: defaults after docs/clinical-background.md, set in a TOML file and overridable per session
by the meta ``thresholds`` (the same flat names, see docs/configuration.md)."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from isoperf.schemas import Severity

SEVERITIES: tuple[Severity, ...] = ("advisory", "warning", "critical", "stop")
# Circuit signals with limits; a rule's name is ``{signal}_low`` or ``{signal}_high``.
LIMITED_SIGNALS = ("flow", "pressure", "temperature", "reservoir")
UNITS = {"counts": "counts", "flow": "mL/min", "pressure": "mmHg", "temperature": "degC", "reservoir": "mL"}
# Rule names a silence may name (``offline`` covers every ``offline:{service}/{instance}``, ``device``
# every ``device:{name}`` and ``clock`` every ``clock:{name}``; or one of them by its whole name).
PREFIXED = ("offline:", "device:", "clock:")
RULE_NAMES = frozenset(
    {"leakage", "leak_rate", "probe_fault", "ischaemia", "reservoir_drop", "offline", "device", "clock", "release_peak"}
    | {f"{s}_{side}" for s in LIMITED_SIGNALS for side in ("low", "high")}
    | {f"stale_{s}" for s in UNITS}
)


@dataclass(frozen=True)
class AlertRules:
    """Every threshold, in the units of the contract; times in seconds unless named ``_min``."""

    # Leakage levels (%): fire when the 95 % interval's lower bound is above the level,
    # resolve when its upper bound is back below it (hysteresis).
    advisory: float = 1.0
    warning: float = 2.0
    critical: float = 5.0
    stop: float = 10.0
    # Leak rate above a level for a while.
    leak_rate_pct_min: float = 0.1
    leak_rate_for_s: float = 180.0
    # Circuit limits, armed while the pump runs (flow above ``circuit_flow_on_ml_min``, until the
    # washout ends or the isolation does). A limit fires after being crossed for ``{signal}_for_s``
    # and resolves after being respected as long. Set a limit out of reach to turn it off.
    flow_min: float = 30.0
    flow_max: float = 800.0
    flow_for_s: float = 15.0
    pressure_min: float = 10.0
    pressure_max: float = 150.0
    pressure_for_s: float = 15.0
    temperature_min: float = 35.0
    temperature_max: float = 42.5
    temperature_for_s: float = 60.0
    reservoir_min: float = 50.0
    reservoir_max: float = 5000.0
    reservoir_for_s: float = 30.0
    # A falling reservoir is another sign of leakage: a drop from the level the circuit
    # settled at (median of its first minute after 30 s of pumping).
    reservoir_drop_ml: float = 20.0
    circuit_flow_on_ml_min: float = 20.0
    # Stale data: no probe counts, or no readings of a device's signal, for this long.
    stale_counts_s: float = 30.0
    stale_device_s: float = 30.0
    # Total ischaemia time from isolation: a warning ahead of the limit, critical at it.
    ischaemia_limit_min: float = 60.0
    ischaemia_warn_min: float = 50.0
    # Advisory: the pk service's predicted systemic melphalan peak after the release (ug/mL) above this
    # (docs/melphalan.md: about twice the IHHP series' median of 4.2; its highest was 18.33).
    release_peak_ug_ml: float = 8.0
    # Reminders while firing and unacknowledged; a critical or stop alert unacknowledged this
    # long is sent to the escalation channels as well.
    repeat_s: float = 300.0
    escalate_after_s: float = 120.0

    def levels(self) -> list[tuple[Severity, float]]:
        """Leakage levels, lowest first."""
        return sorted(((s, float(getattr(self, s))) for s in SEVERITIES), key=lambda x: x[1])

    def limits(self, signal: str) -> tuple[float, float, float]:
        """``(min, max, for_s)`` of a circuit signal."""
        return getattr(self, f"{signal}_min"), getattr(self, f"{signal}_max"), getattr(self, f"{signal}_for_s")

    def with_thresholds(self, thresholds: dict[str, float] | None) -> AlertRules:
        """Apply overrides by name; an unknown name or a value that is not a finite number is a ``ValueError``."""
        if not thresholds:
            return self
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(thresholds) - names
        if unknown:
            raise ValueError(f"unknown thresholds {sorted(unknown)}; known: {sorted(names)}")
        for name, value in thresholds.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"threshold {name} must be a finite number, not {value!r}")
        return dataclasses.replace(self, **{k: float(v) for k, v in thresholds.items()})

    @classmethod
    def from_file(cls, path: Path | None) -> AlertRules:
        """The defaults, overridden by a TOML file of ``name = value`` lines (none: the defaults)."""
        if path is None:
            return cls()
        with path.open("rb") as f:
            return cls().with_thresholds(tomllib.load(f))
