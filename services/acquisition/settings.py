"""Settings of the acquisition service (``ISOPERF_THEATRE``, ``ISOPERF_SIM_*``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from isoperf.schemas import SessionMeta
from isoperf.settings import ServiceSettings
from isoperf.topics import check_id
from services.acquisition.simulator import LeakScenario, SimConfig


def _session_id() -> str:
    return time.strftime("s-%Y%m%d-%H%M%S", time.gmtime())


class AcquisitionSettings(ServiceSettings):
    theatre: str = "theatre-1"
    session: str = Field(default_factory=_session_id)
    # The simulator, or the devices described by TOML profiles (docs/devices.md), e.g.
    # ISOPERF_DEVICE=profiles ISOPERF_DEVICE_PROFILES='["/etc/isoperf/probe.toml", "/etc/isoperf/cdi.toml"]'
    device: Literal["simulator", "profiles"] = "simulator"
    device_profiles: list[Path] = Field(default_factory=list)
    # With real devices: the session's metadata, published retained (JSON of the ``meta`` payload).
    session_meta: SessionMeta | None = None
    sim_speed: float = Field(default=1.0, ge=0.0)  # 0: as fast as the broker takes it
    sim_seed: int = 0
    sim_isotope: Literal["Tc-99m", "I-131", "In-111"] = "Tc-99m"
    sim_leak: Literal["none", "steady", "step"] = "none"
    sim_leak_rate_pct_min: float = Field(default=0.3, ge=0)
    sim_step_pct: float = Field(default=2.0, ge=0)
    sim_step_at_s: float = Field(default=900.0, ge=0)
    sim_release_pct: float = Field(default=7.0, ge=0)
    sim_shine_through: float = Field(default=0.0, ge=0)
    sim_activity_ratio: float = Field(default=10.0, gt=0)
    sim_calibration_rise_cps: float = Field(default=300.0, gt=0)
    sim_counts_dt_s: float = Field(default=1.0, gt=0)
    # Default: now in real time; faster, the session ends by now (never ahead of the clocks of the
    # services, which keep aside times ahead of theirs: ISOPERF_WINDOW_AHEAD_S).
    sim_start_t: float | None = None
    sim_truth_file: Path | None = None  # where to write the true leakage (tests, benchmarks)
    publish_tick_s: float = Field(default=0.25, gt=0)
    # Store and forward: the journal file, its bound, and how long an unconfirmed message waits before
    # it is sent again; how long the gateway waits at the end of a played session for confirmations.
    journal_dir: Path = Path(".isoperf/journal")  # one file per theatre: {journal_dir}/{theatre}.sqlite
    journal_max_bytes: int = Field(default=1 << 30, ge=1 << 20)
    journal_warn_fraction: float = Field(default=0.8, gt=0, lt=1)
    journal_sync_full: bool = False
    journal_resend_after_s: float = Field(default=30.0, gt=0)
    journal_drain_s: float = Field(default=300.0, ge=0)

    @field_validator("theatre", "session")
    @classmethod
    def _ids(cls, v: str) -> str:
        return check_id(v)

    def sim_config(self) -> SimConfig:
        start = self.sim_start_t
        if start is None:
            ahead = 0.0 if self.sim_speed == 1.0 else SimConfig().duration_s  # played faster than it happens
            start = round(time.time() - ahead, 3)
        return SimConfig(
            start_t=start,
            isotope=self.sim_isotope,
            background_cps=40.0,
            calibration_rise_cps=self.sim_calibration_rise_cps,
            activity_ratio=self.sim_activity_ratio,
            shine_through_fraction=self.sim_shine_through,
            counts_dt_s=self.sim_counts_dt_s,
            leak=LeakScenario(
                kind=self.sim_leak,
                rate_pct_min=self.sim_leak_rate_pct_min,
                step_pct=self.sim_step_pct,
                step_at_s=self.sim_step_at_s,
                release_pct=self.sim_release_pct,
            ),
        )
