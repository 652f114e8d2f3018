"""NCA against values computed by hand, segment by segment, to 1e-9 relative."""

from __future__ import annotations

import math

import pytest

from services.pk import nca
from services.pk.session import PkSession

REL = 1e-9
# A circuit profile in the style of the IHHP series (minutes, ug/mL): infusion, peak, decline.
T = [0.0, 5.0, 10.0, 15.0, 20.0, 30.0]
C = [0.0, 40.0, 68.0, 55.0, 44.0, 30.0]


def test_linear_trapezoid_by_hand() -> None:
    hand = (0 + 40) / 2 * 5 + (40 + 68) / 2 * 5 + (68 + 55) / 2 * 5 + (55 + 44) / 2 * 5 + (44 + 30) / 2 * 10
    assert hand == 1295.0
    assert nca.auc(T, C, "linear") == pytest.approx(hand, rel=REL)


def test_linear_up_log_down_by_hand() -> None:
    up = (0 + 40) / 2 * 5 + (40 + 68) / 2 * 5
    down = (68 - 55) * 5 / math.log(68 / 55) + (55 - 44) * 5 / math.log(55 / 44) + (44 - 30) * 10 / math.log(44 / 30)
    assert nca.auc(T, C, "linlog") == pytest.approx(up + down, rel=REL)
    assert nca.auc(T, C, "linlog") < nca.auc(T, C, "linear"), "the log trapezoid is below the chord when falling"


def test_a_concentration_that_rises_again_is_linear_on_the_rise_only() -> None:
    t, c = [0.0, 10.0, 20.0, 30.0], [50.0, 30.0, 45.0, 20.0]
    hand = (50 - 30) * 10 / math.log(50 / 30) + (30 + 45) / 2 * 10 + (45 - 20) * 10 / math.log(45 / 20)
    assert nca.auc(t, c, "linlog") == pytest.approx(hand, rel=REL)
    p = nca.profile(t, c)
    assert (p.cmax, p.tmax) == (50.0, 0.0)


def test_a_fall_to_zero_is_linear_and_a_rise_from_zero_too() -> None:
    t, c = [0.0, 10.0, 20.0, 30.0], [0.0, 10.0, 5.0, 0.0]
    hand = (0 + 10) / 2 * 10 + (10 - 5) * 10 / math.log(10 / 5) + (5 + 0) / 2 * 10
    assert nca.auc(t, c, "linlog") == pytest.approx(hand, rel=REL)
    assert nca.auc(t, c, "linear") == pytest.approx(50 + 75 + 25, rel=REL)


def test_a_single_sample_gives_no_auc_and_says_so() -> None:
    p = nca.profile([12.0], [33.0])
    assert (p.n, p.auc_linear, p.auc_linlog, p.cmax, p.tmax) == (1, None, None, 33.0, 12.0)
    assert p.note == "one sample: no AUC"
    assert nca.profile([], []).note == "no samples"
    with pytest.raises(ValueError, match="at least two samples"):
        nca.auc([1.0], [2.0], "linear")


def test_cmax_and_tmax_are_observed_first_maximum() -> None:
    p = nca.profile([0.0, 5.0, 10.0, 15.0], [1.0, 9.0, 9.0, 3.0])
    assert (p.cmax, p.tmax) == (9.0, 5.0)


def test_auc_over_a_window_interpolates_its_edges_by_the_method() -> None:
    # Linear: the window 2.5..25 min cuts the first and the last interval.
    c25 = 20.0  # halfway from 0 to 40
    c_end = 44 + (30 - 44) * 0.5
    hand = (c25 + 40) / 2 * 2.5 + (40 + 68) / 2 * 5 + (68 + 55) / 2 * 5 + (55 + 44) / 2 * 5 + (44 + c_end) / 2 * 5
    assert nca.auc_window(T, C, 2.5, 25.0, "linear") == pytest.approx(hand, rel=REL)
    # Log-down: the edge inside a falling interval is on the exponential through its ends.
    c_log = 44 * (30 / 44) ** 0.5
    tail = (44 - c_log) * 5 / math.log(44 / c_log)
    full_to_20 = nca.auc(T[:5], C[:5], "linlog")
    assert nca.auc_window(T, C, 0.0, 25.0, "linlog") == pytest.approx(full_to_20 + tail, rel=REL)
    with pytest.raises(ValueError, match="not within the samples"):
        nca.auc_window(T, C, 0.0, 40.0, "linear")


def test_ratios_and_the_systemic_peak_after_isolation() -> None:
    assert nca.ratio(2382.0, 63.0) == pytest.approx(37.8095238095, rel=REL)
    assert nca.ratio(1.0, 0.0) is None and nca.ratio(None, 1.0) is None
    assert nca.peak_after([10.0, 40.0, 45.0, 50.0], [0.1, 3.0, 4.2, 2.0], 40.0) == (4.2, 45.0)
    assert nca.peak_after([10.0], [0.1], 40.0) is None


def test_bad_profiles_are_refused() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        nca.profile([0.0, 0.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="not negative"):
        nca.profile([0.0, 1.0], [1.0, -2.0])


def test_post_release_nca_of_a_hand_checked_sample_set() -> None:
    """Systemic samples of an IHHP, the clamps off at 31 min (minutes from the drug start, ug/mL):
    during the isolation (20, 0.02) and (30, 0.03); after the release (33, 4.0), (36, 2.0),
    (41, 1.0), (61, 0.5).

    By hand. After the release: n = 4, Cmax 4.0 at Tmax 33 min (observed). The AUC after the
    release starts at 31 min at the last concentration before it, 0.03 ug/mL:

    * linear trapezoid: 31-33 (0.03 + 4.0) / 2 * 2 = 4.03; 33-36 (4 + 2) / 2 * 3 = 9.0;
      36-41 (2 + 1) / 2 * 5 = 7.5; 41-61 (1 + 0.5) / 2 * 20 = 15.0; total 35.53 ug*min/mL;
    * linear-up/log-down: 31-33 rises, linear 4.03; then each fall halves the concentration, so
      each log trapezoid is (c1 - c2) dt / ln 2: (2 * 3 + 1 * 5 + 0.5 * 20) / ln 2 = 21 / ln 2
      = 30.29659; total 34.32659 ug*min/mL.

    During the isolation apart: n = 2, Cmax 0.03 at 30 min, AUC (linear, rising)
    (0.02 + 0.03) / 2 * 10 = 0.25.
    """
    t = [20.0, 30.0, 33.0, 36.0, 41.0, 61.0]
    c = [0.02, 0.03, 4.0, 2.0, 1.0, 0.5]
    after = nca.after_release(t, c, 31.0)
    assert after is not None
    assert (after.n, after.cmax, after.tmax) == (4, 4.0, 33.0)
    assert after.auc_linear == pytest.approx(35.53, rel=REL)
    assert after.auc_linlog == pytest.approx(4.03 + 21 / math.log(2), rel=REL)
    assert after.auc_linlog == pytest.approx(34.32659, abs=1e-5)
    during = nca.profile(t[:2], c[:2])
    assert (during.n, during.cmax, during.tmax) == (2, 0.03, 30.0)
    assert during.auc_linlog == pytest.approx(0.25, rel=REL)
    # The same, through the pk session's NCA of a session's samples: kept apart, and the ratios
    # over their stated windows (regional: 0, 60, 45, 30 ug/mL at 0, 10, 20, 30 min).
    ct, cc = [0.0, 10.0, 20.0, 30.0], [0.0, 60.0, 45.0, 30.0]
    out = PkSession._nca_apart(ct, cc, t, c, 31.0)
    assert out["n_systemic_isolation"] == 2 and out["n_systemic_release"] == 4
    assert out["cmax_systemic_release"] == 4.0 and out["tmax_systemic_release_min"] == 33.0
    assert out["auc_systemic_release"] == pytest.approx(34.32659, abs=1e-5)
    assert out["auc_systemic_release_linear"] == pytest.approx(35.53, rel=REL)
    regional = 300 + 15 * 10 / math.log(60 / 45) + 15 * 10 / math.log(45 / 30)
    # Isolation window: 0 to 30 min (the last samples of both sites before 31); the systemic
    # profile starts from 0 at the drug start: 0-20 (0 + 0.02) / 2 * 20 = 0.2, 20-30 0.25.
    assert out["ratio_isolation_end_min"] == 30.0
    assert out["auc_ratio_isolation"] == pytest.approx(regional / 0.45, rel=REL)
    # Exposure: the regional AUC over the isolation against the systemic AUC from 0 to 61 min:
    # 0.2 + 0.25 + (0.03 + 4.0) / 2 * 3 + 21 / ln 2.
    assert out["ratio_exposure_end_min"] == 61.0
    assert out["auc_ratio_exposure"] == pytest.approx(regional / (0.45 + 6.045 + 21 / math.log(2)), rel=REL)
    assert nca.after_release([10.0], [0.1], 31.0) is None
