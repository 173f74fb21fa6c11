import numpy as np

from edge_asd.scoring.drift import DriftMonitor, reference_cdf, reference_quantiles


def test_reference_cdf_matches_empirical():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    q = reference_quantiles(ref)
    x = np.array([-1.0, 0.0, 1.0])
    assert np.allclose(reference_cdf(q, x), [0.1587, 0.5, 0.8413], atol=0.02)


def test_drift_statistics_see_a_shift_and_not_noise():
    rng = np.random.default_rng(1)
    q = reference_quantiles(rng.normal(size=2000))
    same, shifted = DriftMonitor(q, window=200), DriftMonitor(q, window=200)
    for a, b in zip(rng.normal(size=200), rng.normal(loc=1.5, size=200)):
        same.add(a, 0.1)
        shifted.add(b, 0.9)
    s, d = same.summary(), shifted.summary()
    assert s["ks"] < 0.12 and d["ks"] > 0.45
    assert abs(s["above_ref_p95"] - 0.05) < 0.04 and d["above_ref_p95"] > 0.3
    assert abs(s["p_target_mean"] - 0.1) < 1e-9 and abs(d["p_target_mean"] - 0.9) < 1e-9
    assert DriftMonitor(None).summary() == {"window": 0, "p_target_mean": None, "ks": None, "above_ref_p95": None}
