"""Settings of the leakage service: the shared ones plus the estimator's (``ISOPERF_LEAKAGE_*``)."""

from __future__ import annotations

from pydantic import Field

from isoperf.settings import ServiceSettings
from services.leakage.estimator import EstimatorParams

_D = EstimatorParams()


class LeakageSettings(ServiceSettings):
    leakage_plateau_min_wait_s: float = Field(default=_D.plateau_min_wait_s, ge=0)
    leakage_plateau_window_s: float = Field(default=_D.plateau_window_s, gt=10)
    leakage_plateau_max_change: float = Field(default=_D.plateau_max_change, gt=0)
    leakage_zero_start_s: float = Field(default=_D.zero_start_s, ge=0)
    leakage_zero_end_s: float = Field(default=_D.zero_end_s, gt=0)
    leakage_output_interval_s: float = Field(default=_D.output_interval_s, ge=0)
    leakage_switch_z: float = Field(default=_D.switch_z, gt=0)
    leakage_q_rate: float = Field(default=_D.q_rate, gt=0)
    leakage_shine_through_correction: bool = _D.shine_through_correction
    leakage_calibration_drift_correction: bool = _D.calibration_drift_correction

    def estimator_params(self) -> EstimatorParams:
        return EstimatorParams(
            plateau_min_wait_s=self.leakage_plateau_min_wait_s,
            plateau_window_s=self.leakage_plateau_window_s,
            plateau_max_change=self.leakage_plateau_max_change,
            zero_start_s=self.leakage_zero_start_s,
            zero_end_s=self.leakage_zero_end_s,
            output_interval_s=self.leakage_output_interval_s,
            switch_z=self.leakage_switch_z,
            q_rate=self.leakage_q_rate,
            shine_through_correction=self.leakage_shine_through_correction,
            calibration_drift_correction=self.leakage_calibration_drift_correction,
        )
