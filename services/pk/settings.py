"""Settings of the pk service: the shared ones plus ``ISOPERF_PK_*``."""

from __future__ import annotations

from pydantic import Field

from isoperf.settings import ServiceSettings


class PkSettings(ServiceSettings):
    pk_interval_s: float = Field(default=15.0, gt=0.0)  # event time between estimates while leakage comes
    # How long an event or lab sample waits (service clock) for the leakage to pass its time.
    pk_hold_s: float = Field(default=30.0, gt=0.0)
