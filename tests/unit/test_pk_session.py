"""A session's PK from a simulated IHHP: live prediction, refit, NCA, systemic exposure; lab input."""

from __future__ import annotations

import io
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from isoperf.domain.melphalan import LeakExposure, systemic_from_leak
from isoperf.schemas import LabSample
from services.acquisition.simulator import LeakScenario, SimConfig, SimulatedSession, simulate
from services.pk.commands import SampleFileError, read_csv
from services.pk.session import PkSession


def feed(s: SimulatedSession, samples: list[LabSample] | None = None) -> PkSession:
    pk = PkSession(meta=s.meta)
    for e in s.events:
        pk.add_event(e)
    for t, leak in s.truth[::5]:
        pk.add_leakage(t, leak)
    for sample in samples if samples is not None else [x for _, x in s.samples]:
        pk.add_sample(sample)
    return pk


def test_an_ihhp_session_gives_peak_and_auc_of_the_published_order_and_recovers_the_patient() -> None:
    cfg = SimConfig()  # 1 mg/kg as a 10-minute infusion, circuit samples every 5 minutes
    s = simulate(cfg, 3)
    assert [x.t - cfg.start_t - cfg.drug_start_at_s for _, x in s.samples if x.site == "circuit"][:3] == [0, 300, 600]
    pk = feed(s)
    end = pk.estimate(cfg.start_t + cfg.duration_s)
    assert end is not None
    # shared/domain.md: median regional peak 68.04 ug/mL (42.3 to 256.99), regional AUC 2382 ug*min/mL.
    assert end.cmax_circuit is not None and 42.3 <= end.cmax_circuit <= 256.99
    assert end.auc_circuit is not None and 2382 / 3 <= end.auc_circuit <= 2382 * 3
    assert end.auc_circuit_linear is not None and end.auc_circuit_linear > end.auc_circuit
    assert end.n_circuit == 7 and end.n_systemic == 7
    # The refit finds this patient's constants (unlike the defaults) within their uncertainty.
    assert s.pk_truth is not None and end.v_ml is not None and end.v_se_ml is not None
    assert abs(end.v_ml - s.pk_truth.v_ml) < 2.5 * end.v_se_ml
    assert end.k_uptake_min is not None and end.k_uptake_se_min is not None
    assert abs(end.k_uptake_min - s.pk_truth.k_uptake_min) < 2.5 * end.k_uptake_se_min
    assert end.auc_ratio is not None and end.auc_ratio > 100, "systemic exposure is a small fraction"
    assert end.systemic_peak_after_isolation is not None


def test_the_live_prediction_narrows_as_samples_arrive_and_holds_the_samples() -> None:
    cfg = SimConfig()
    s = simulate(cfg, 4)
    circuit = sorted((x for _, x in s.samples if x.site == "circuit"), key=lambda x: x.t)
    t_check = cfg.start_t + cfg.drug_start_at_s + 1500  # 25 min after the drug start
    widths = []
    for n in (0, 3, 6):
        pk = feed(s, circuit[:n])
        est = pk.estimate(t_check)
        assert est is not None and est.circuit_low_ug_ml is not None and est.circuit_high_ug_ml is not None
        widths.append(est.circuit_high_ug_ml - est.circuit_low_ug_ml)
    assert widths[0] > widths[1] > widths[2]
    sample = circuit[5]
    est = feed(s, circuit).estimate(sample.t)
    assert est is not None and est.circuit_low_ug_ml is not None and est.circuit_high_ug_ml is not None
    assert est.circuit_low_ug_ml <= sample.melphalan_ug_ml <= est.circuit_high_ug_ml


def test_late_out_of_order_samples_and_corrections() -> None:
    s = simulate(SimConfig(), 5)
    samples = [x for _, x in s.samples]
    t_end = s.config.start_t + s.config.duration_s
    in_order = feed(s, samples).estimate(t_end)
    reversed_ = feed(s, samples[::-1]).estimate(t_end)
    assert in_order == reversed_
    wrong = samples[2].model_copy(update={"melphalan_ug_ml": 500.0})
    pk = feed(s, [*samples[:2], wrong, *samples[3:]])
    assert (e := pk.estimate(t_end)) is not None and e.cmax_circuit == 500.0
    pk.add_sample(samples[2])  # the lab's correction: same sample id
    assert pk.estimate(t_end) == in_order


def test_systemic_exposure_from_the_leak_grows_with_the_leak() -> None:
    t_end = SimConfig().start_t + SimConfig().duration_s
    none = simulate(SimConfig(leak=LeakScenario(release_pct=0.0)), 6)
    leak = simulate(SimConfig(leak=LeakScenario(kind="step", step_pct=5.0, release_pct=0.0)), 6)
    a, b = feed(none).estimate(t_end), feed(leak).estimate(t_end)
    assert a is not None and b is not None and a.leaked_mg is not None and b.leaked_mg is not None
    assert a.leaked_mg < 0.05 < b.leaked_mg
    # 5 % of a circuit volume of ~1.2 L carrying tens of ug/mL: of the order of 2 mg.
    assert 0.5 < b.leaked_mg < 5.0
    assert b.leak_auc_systemic is not None and b.leak_auc_systemic > 0


CSV = """draw_time,site,melphalan_ug_ml,sample_id
2026-11-22T10:20:00,circuit,0,c-01
2026-11-22T10:25:00+01:00,circuit,41.5,c-02
1795347900,systemic,0.02,s-01
"""


def test_csv_import_reads_times_in_the_given_zone() -> None:
    got = read_csv(io.StringIO(CSV), ZoneInfo("Europe/Amsterdam"))
    assert [x.sample_id for x in got] == ["c-01", "c-02", "s-01"]
    assert got[1].t - got[0].t == 300, "10:20 in Amsterdam is 10:20+01:00 in November"
    assert got[2].t == 1795347900.0 and got[2].site == "systemic"


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ("2026-11-22T10:30:00,circuit,4x1,c-03", "row 5: melphalan_ug_ml '4x1' is not a number"),
        ("yesterday,circuit,41,c-03", "row 5: draw_time 'yesterday'"),
        ("2026-11-22T10:30:00,portal,41,c-03", "row 5: site"),
        ("2026-11-22T10:30:00,circuit,-3,c-03", "row 5: melphalan_ug_ml"),
        ("2026-11-22T10:30:00,circuit,41,c-01", "row 5: sample_id 'c-01' already on row 2"),
        ("2026-11-22T10:30:00,circuit", "row 5: expected 4 columns"),
    ],
)
def test_a_malformed_row_imports_nothing_and_is_named(bad_row: str, message: str) -> None:
    with pytest.raises(SampleFileError) as err:
        read_csv(io.StringIO(CSV + bad_row + "\n"), ZoneInfo("UTC"))
    assert any(e.startswith(message) for e in err.value.errors), err.value.errors
    assert len(err.value.errors) == 1


def test_a_header_without_the_columns_is_refused() -> None:
    with pytest.raises(SampleFileError, match="missing column"):
        read_csv(io.StringIO("time,where,value\n1,circuit,2\n"), ZoneInfo("UTC"))


def test_the_session_as_it_stood_at_a_time_leaves_out_what_entered_after_it() -> None:
    s = simulate(SimConfig(), 5)
    arrivals = sorted(s.samples, key=lambda x: x[0])  # (report time, sample)
    half = arrivals[len(arrivals) // 2][0] - 1.0
    whole = PkSession(meta=s.meta)
    then = PkSession(meta=s.meta)
    for e in s.events:
        whole.add_event(e)
        if e.t <= half:
            then.add_event(e)
    for at, x in arrivals:
        whole.add_sample(x, at)
        if at <= half:
            then.add_sample(x, at)
    assert whole.latest_input() > half
    assert whole.as_of(half).estimate(half) == then.estimate(half)
    assert whole.estimate(half) != then.estimate(half)  # the check can fail: later results change it


def test_the_exposure_carried_on_equals_the_exposure_computed_afresh_to_the_last_bit() -> None:
    """Each estimate carries the systemic exposure on from the last (``LeakExposure``): the same
    numbers as ``systemic_from_leak`` over the whole series, at every length, with a leak that
    rises and falls and points before the drug start."""
    rng = np.random.default_rng(7)
    grid = np.linspace(0.0, 120.0, 241)
    curve = 60.0 * np.exp(-grid / 40.0) * (1 - np.exp(-grid / 3.0))
    t0 = 1_767_225_600.0
    leak_t = [t0 + 60.0 * m for m in np.sort(rng.uniform(-5.0, 110.0, 400))]
    leak_pct = list(np.cumsum(rng.normal(0.01, 0.05, 400)))
    carried = LeakExposure(grid, curve, 1200.0, t0)
    for n in (2, 3, 50, 51, 200, 400):
        minutes = [(t - t0) / 60.0 for t in leak_t[:n]]
        c_sys, amount, auc = systemic_from_leak(minutes, leak_pct[:n], grid, curve, 1200.0)
        assert carried.upto(leak_t, leak_pct, n) == (c_sys[-1], amount, auc)
    with pytest.raises(ValueError, match="carried on, not back"):
        carried.upto(leak_t, leak_pct, 10)


def test_estimates_with_the_exposure_carried_on_equal_those_of_a_session_rebuilt_for_each() -> None:
    """A session's estimates one after another (its exposure carried on) equal those of a fresh
    session holding the same inputs (its exposure computed afresh), field for field."""
    cfg = SimConfig()
    s = simulate(cfg, 3)
    live = feed(s)
    start = cfg.start_t + cfg.drug_start_at_s
    for minute in (5, 11, 12, 30, 44):
        t = start + 60.0 * minute
        assert live.estimate(t) == feed(s).estimate(t), minute
