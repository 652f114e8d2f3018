"""Settings of the pk service: the shared ones plus ``ISOPERF_PK_*``."""

from __future__ import annotations

from pydantic import Field

from isoperf.settings import ServiceSettings


class PkSettings(ServiceSettings):
    pk_interval_s: float = Field(default=15.0, gt=0.0)  # event time between estimates while leakage comes
