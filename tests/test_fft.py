"""The FFT engines (edge_asd/io/fft.py) compute the same power spectra, and the front ends built on them the same numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_asd.io.audio import read_audio, standardize
from edge_asd.io.features import LogMelStats, LogMelStatsConfig
from edge_asd.io.fft import (
    ENGINES,
    LONG_FRAME,
    LONG_FRAME_ROWS,
    PowerSpectrum,
    available_engines,
    resolve_engine,
)
from edge_asd.runtime.frontend import FFTFrontEnd
from edge_asd.runtime.manifest import LogMelFrontEnd

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real-samples"


def _clips() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    t = np.arange(4 * 16000) / 16000
    # noise, and a tonal machine 20 dB over its noise (extreme ranges: tests/test_fft_frontend.py's extreme clips)
    made = [rng.standard_normal(t.size), np.sin(2 * np.pi * 440.0 * t) + 0.1 * rng.standard_normal(t.size)]
    real = [read_audio(p) for p in sorted(REAL.glob("*/*/*.wav"))[::40]]
    return [standardize(np.asarray(x, dtype=np.float32)) for x in made + real]


def test_the_runtime_has_the_fast_engine_and_auto_picks_it():
    assert available_engines() == ENGINES  # ducc0 is a runtime dependency, numpy always there
    assert resolve_engine("auto") == "ducc0"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("n_fft", [512, 1024, 2048])
def test_power_spectrum_is_float64_numpys_within_float32(engine, n_fft):
    rows = np.random.default_rng(n_fft).standard_normal((37, n_fft)).astype(np.float32)
    want = np.abs(np.fft.rfft(rows.astype(np.float64), axis=1)) ** 2
    got = PowerSpectrum(n_fft, engine)(rows)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(want)
    np.testing.assert_array_equal(PowerSpectrum(n_fft, engine)(rows, slice(3, 40)), got[:, 3:40])


@pytest.mark.parametrize("engine", ENGINES)
def test_squares_sum_pairwise_to_the_power_and_a_reused_buffer_changes_nothing(engine):
    rows = np.random.default_rng(7).standard_normal((37, 512)).astype(np.float32)
    ps = PowerSpectrum(512, engine)
    power = ps(rows)
    for bins in (slice(None), slice(0, 257), slice(3, 40)):
        sq = ps.squares(rows, bins)
        want = power[:, bins]
        assert sq.shape == (37, 2 * want.shape[1])
        np.testing.assert_allclose(sq[:, 0::2] + sq[:, 1::2], want, rtol=1e-6, atol=1e-6 * want.max())
    buffer = np.full((64, 257), np.nan, dtype=np.complex64)  # a block-sized buffer, longer than these rows
    for _ in range(2):
        np.testing.assert_array_equal(ps.squares(rows, slice(3, 40), out=buffer), ps.squares(rows, slice(3, 40)))
    with pytest.raises(ValueError, match="expected rows of 512 samples"):
        ps.squares(rows[:, :256])


@pytest.mark.parametrize("n_fft", [1024, 2048])
@pytest.mark.parametrize("n_rows", [5, 12, 37, 64])
def test_long_frames_in_groups_are_one_calls_numbers_to_the_bit(n_fft, n_rows):
    """Long frames go to ducc0 LONG_FRAME_ROWS rows at a time (faster, edge_asd/io/fft.py): every row, the last
    short group's included, is what one call on all the rows gives, with and without a reused buffer."""
    import ducc0.fft

    assert n_fft >= LONG_FRAME and 4 <= LONG_FRAME_ROWS < 16
    rows = np.random.default_rng(n_rows).standard_normal((n_rows, n_fft)).astype(np.float32)
    spec = ducc0.fft.r2c(rows, axes=(1,))
    re_im = spec.view(np.float32)
    want = (re_im * re_im)[:, 6:90]  # bins 3..44, re^2 and im^2 interleaved
    ps = PowerSpectrum(n_fft, "ducc0")
    np.testing.assert_array_equal(ps.squares(rows, slice(3, 45)), want)
    buffer = np.full((80, n_fft // 2 + 1), np.nan, dtype=np.complex64)
    np.testing.assert_array_equal(ps.squares(rows, slice(3, 45), out=buffer), want)


def test_front_ends_agree_across_engines():
    """The learned member's log-mel and the plain member's features (log-mel statistics and modulation spectrum)."""
    cfg = LogMelFrontEnd(sample_rate=16000, n_fft=2048, hop_length=256, n_mels=128, f_min=0.0, f_max=8000.0,
                         mel_scale="slaney", log_eps=1e-6, window="hann_periodic")
    ones, zeros = np.ones(cfg.n_mels), np.zeros(cfg.n_mels)
    learned = {e: FFTFrontEnd(cfg, ones, zeros, fft=e) for e in ENGINES}
    plain = {e: LogMelStats(LogMelStatsConfig(modulation_bands=8), fft=e) for e in ENGINES}
    assert learned["numpy"].name == "rfft (numpy)" and learned["ducc0"].name == "rfft (ducc0)"
    for x in _clips():
        a, b = learned["ducc0"].logmel(x), learned["numpy"].logmel(x)
        assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b))
        fa, fb = plain["ducc0"](x), plain["numpy"](x)
        assert np.max(np.abs(fa[:128] - fb[:128])) <= 1e-5 * np.max(np.abs(fb[:128]))
        # the modulation spectrum of a steady tone is the log of an envelope's float32 rounding (ln ~ -9): 1e-4
        assert np.max(np.abs(fa[128:] - fb[128:])) <= 1e-4 * np.max(np.abs(fb[128:]))


def test_a_missing_or_unknown_engine_is_named():
    with pytest.raises(ValueError, match="FFT engine must be auto or one of ducc0, numpy, not 'fftw'"):
        resolve_engine("fftw")
    with pytest.raises(ValueError, match="expected rows of 512 samples"):
        PowerSpectrum(512, "numpy")(np.zeros((2, 256), np.float32))
