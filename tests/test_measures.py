"""Measures against independent computations, the feature store's prefix property, the objective study's tau."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

from flexnas.errors import FlexnasError
from flexnas.metrics.measures import (
    MEASURES,
    Reference,
    available,
    check_measure,
    fid,
    kid,
    paired_distance,
    score,
    statistics,
)


def scipy_fid(a: np.ndarray, b_mu: np.ndarray, b_sigma: np.ndarray) -> float:
    mu, sigma = a.mean(0), np.cov(a, rowvar=False)
    covmean = np.real(scipy.linalg.sqrtm(sigma @ b_sigma))
    return float(((mu - b_mu) ** 2).sum() + np.trace(sigma) + np.trace(b_sigma) - 2 * np.trace(covmean))


def unbiased_poly_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3 (KID's kernel)."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m = len(x)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 5)), rng.normal(0.3, 1.2, size=(40, 5))


def test_fid_matches_scipy(feats):
    a, b = feats
    sb = statistics(b)
    assert fid(statistics(a), sb) == pytest.approx(scipy_fid(a, sb["mu"], sb["sigma"]), rel=1e-6)
    assert fid(statistics(a), statistics(a)) == pytest.approx(0.0, abs=1e-6)


def test_kid_is_the_unbiased_polynomial_mmd(feats):
    a, b = feats  # 40 features each: every subset of 40 is the whole set, so KID is one exact MMD
    assert kid(a, b) == pytest.approx(1000 * unbiased_poly_mmd(a, b), rel=1e-6)


def test_paired_distance_is_the_mean_row_distance(feats):
    a, b = feats
    assert paired_distance(a, b) == pytest.approx(np.mean([math.dist(x, y) for x, y in zip(a, b)]))
    assert paired_distance(a, a) == 0.0
    # unlike FID, it sees the pairing: shuffling the candidate's rows changes it, not FID
    perm = np.random.default_rng(1).permutation(len(a))
    assert paired_distance(a[perm], b) != pytest.approx(paired_distance(a, b))
    assert fid(statistics(a[perm]), statistics(b)) == pytest.approx(fid(statistics(a), statistics(b)))


def test_score_uses_each_reference_and_marks_divergence(feats):
    a, b = feats
    real = Reference(mu=b.mean(0), sigma=np.cov(b, rowvar=False), features=b)
    out = score(list(MEASURES), a, b, real)
    assert out["rfid"] == pytest.approx(out["fid_to_real"])  # here the teacher's features are the real ones
    assert out["kid_teacher"] == pytest.approx(out["kid_to_real"])
    bad = a.copy()
    bad[3, 1] = np.nan
    assert all(math.isinf(v) for v in score(list(MEASURES), bad, b, real).values())
    with pytest.raises(FlexnasError, match="teacher"):
        score(["paired"], a, None, real)


def test_measure_checks(feats):
    a, b = feats
    stats_only = Reference(mu=b.mean(0), sigma=np.cov(b, rowvar=False))
    assert "kid_to_real" not in available(stats_only) and "fid_to_real" in available(stats_only)
    assert available(None) == ["rfid", "paired", "kid_teacher"]
    with pytest.raises(FlexnasError, match="no real-image statistics"):
        check_measure("fid_to_real", None)
    with pytest.raises(FlexnasError, match="features"):
        check_measure("kid_to_real", stats_only)
    with pytest.raises(FlexnasError, match="unknown measure"):
        check_measure("lpips", stats_only)


def test_rank_agreement_against_hand_computed_values():
    from benchmarks.study import rank_agreement

    # 6 pairs: 5 concordant, 1 discordant -> tau = 4/6; rank differences 0,1,1,0 -> rho = 1 - 6*2/(4*15)
    tau, rho = rank_agreement([1, 2, 3, 4], [10, 30, 20, 40])
    assert tau == pytest.approx(4 / 6) and rho == pytest.approx(0.8)
    # non-finite pairs are left out, not ranked
    tau2, _ = rank_agreement([1, 2, 3, 4, 5], [10, 30, 20, 40, math.inf])
    assert tau2 == pytest.approx(4 / 6)
    assert all(math.isnan(v) for v in rank_agreement([1, 2], [2, 1]))


def test_shipped_real_features_give_the_shipped_statistics():
    from problems.fashion_mnist import FEATURE_EXTRACTOR, REAL_STATISTICS

    ref = Reference.load(REAL_STATISTICS, FEATURE_EXTRACTOR)
    assert ref.features.shape == (10000, 64)
    s = statistics(ref.features)  # float16 features: statistics agree to float16 precision
    assert np.abs(s["mu"] - ref.mu).max() < 1e-2 and np.abs(s["sigma"] - ref.sigma).max() < 1e-2
    assert Reference.load(REAL_STATISTICS, "another-extractor") is None
