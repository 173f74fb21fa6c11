"""The sort- and partition-based row statistics give numpy's numbers to the bit, and the plain member's statistics
built on them give their definitions' (edge_asd.io.rowstats; issue 28)."""

import numpy as np
import pytest

from edge_asd.io.features import (
    CHANGE_QUANTILE,
    CLIP_SIGMAS,
    comodulation,
    frame_change,
    robust_spread,
)
from edge_asd.io.rowstats import IQR_SIGMA, MAD_SIGMA, row_median, row_quantiles


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 7, 310, 2493, 5000])
def test_row_median_and_quantiles_are_numpys_to_the_bit(dtype, m):
    rng = np.random.default_rng(m)
    for scale in (0.01, 1.0, 300.0):
        a = (rng.normal(size=(8, m)) * scale).astype(dtype)
        a[::3] = np.round(a[::3])  # ties
        for rows in (a, a.T.copy().T):  # contiguous rows and a transposed view
            assert np.array_equal(row_median(rows), np.median(rows, axis=1))
            for levels in ((0.75, 0.25), (CHANGE_QUANTILE,), (0.0, 1.0, 0.5, 0.1)):
                got = row_quantiles(rows, levels)
                assert got.dtype == np.float64
                assert np.array_equal(got, np.quantile(rows, list(levels), axis=1))


def test_row_statistics_refuse_what_they_cannot_compute():
    with pytest.raises(ValueError, match="rows"):
        row_median(np.zeros(5))
    with pytest.raises(ValueError, match="rows"):
        row_quantiles(np.zeros((3, 0)), (0.5,))
    with pytest.raises(ValueError, match="level"):
        row_quantiles(np.zeros((3, 4)), (1.5,))


def _comodulation_by_definition(env: np.ndarray, smooth: int) -> np.ndarray:
    e = env.astype(np.float64)
    t, bands = e.shape
    half = min(smooth, t) // 2
    moving = np.array([e[max(i - half, 0) : min(i + half + 1, t)].mean(axis=0) for i in range(t)])
    hp = e - moving
    med = np.median(hp, axis=0)
    reach = CLIP_SIGMAS * MAD_SIGMA * np.median(np.abs(hp - med), axis=0)
    hp = np.clip(hp, med - reach, med + reach)
    return np.corrcoef(hp.T)[np.triu_indices(bands, 1)]


def test_the_plain_members_statistics_are_their_definitions():
    rng = np.random.default_rng(3)
    for t in (5, 64, 401, 2000):
        env = rng.normal(size=(t, 6)).cumsum(axis=0).astype(np.float32)
        env[:, 2] += 0.5 * env[:, 1]  # two bands that move together
        # float32 after the moving mean (edge_asd/io/features.py): correlations to float32's resolution, not float64's
        np.testing.assert_allclose(comodulation(env, 63), _comodulation_by_definition(env, 63), rtol=0, atol=2e-6)
        q75, q25 = np.percentile(env, [75, 25], axis=0)
        np.testing.assert_allclose(robust_spread(env), IQR_SIGMA * (q75 - q25), rtol=1e-12)
        d = np.abs(np.diff(env.astype(np.float64), axis=0))
        kept = [col[col <= np.quantile(col, CHANGE_QUANTILE)] for col in d.T]
        np.testing.assert_allclose(frame_change(env), [k.mean() for k in kept], rtol=1e-12)
