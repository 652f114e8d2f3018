"""Alert rules: defaults after shared/domain.md, overridable per session by the meta ``thresholds``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from isoperf.schemas import Severity

SEVERITIES: tuple[Severity, ...] = ("advisory", "warning", "critical", "stop")


@dataclass(frozen=True)
class AlertRules:
    """Leakage levels (%) fire when the 95 % interval's lower bound is above them and resolve when
    its upper bound is back below (hysteresis); the leak rate fires when above its level for a while."""

    advisory: float = 1.0
    warning: float = 2.0
    critical: float = 5.0
    stop: float = 10.0
    leak_rate_pct_min: float = 0.1
    leak_rate_for_s: float = 180.0
    repeat_s: float = 300.0  # reminder while firing and not acknowledged

    def levels(self) -> list[tuple[Severity, float]]:
        """Leakage levels, lowest first."""
        return sorted(((s, float(getattr(self, s))) for s in SEVERITIES), key=lambda x: x[1])

    def with_thresholds(self, thresholds: dict[str, float] | None) -> AlertRules:
        """Apply a session's ``thresholds``; an unknown name is a ``ValueError``."""
        if not thresholds:
            return self
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(thresholds) - names
        if unknown:
            raise ValueError(f"unknown thresholds {sorted(unknown)}; known: {sorted(names)}")
        return dataclasses.replace(self, **thresholds)
