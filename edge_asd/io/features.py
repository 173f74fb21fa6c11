"""Hand-made audio features in numpy: the mel filterbank and the plain log-mel statistics.

The mel filterbank is defined once here; the learned extractor's front end
(``train/frontend.py``, baked into the ONNX graph) and the plain baseline below
both build theirs from it.

The plain system (issues "Detection quality I" and "III"): per clip, the mean
and the standard deviation over time of each log-mel band. It is the simplest
thing that could work and, with few training clips, it is a strong one: a
learned extractor must beat it to earn its place, and it joins a standardized
ensemble with the learned systems (report 2.5). It runs on the device with
numpy alone, so it needs no model file and no GPU, which also makes it the
fallback for a user who has nothing to train on.

Its defaults are the strong plain reference (``shared/reference/plain_baseline.py``)
number for number: each clip's waveform standardized to zero mean and unit
variance, a symmetric 1024-point Hann window, hop 512, 64 HTK-scale unit-peak
mel bands over 50-7800 Hz, the natural log of the band power. Standardizing the
waveform throws the recording level away on purpose: an automatic gain control,
a moved or replaced microphone or another recorder change the level from clip
to clip, and on such data keeping it cost 0.12 of AUC (issue "Detection quality
III"). ``amplitude="recorded"`` keeps the level, for machines where the level is
known to be stable and informative; bundles written before these fields existed
read back with the settings they were fitted with (:data:`LEGACY_PLAIN`).

``modulation_bands > 0`` appends the envelope modulation spectrum, the envelope
analysis of vibration diagnostics: the power envelopes of a few wide mel bands
at 250 Hz, and their spectra over 2-125 Hz in log-spaced bins. It carries what
a time average cannot: the rate of bearing impacts, the surge of an imbalance,
the beat of a slipping belt. Appended to the reference's vector and z-scored
with it, it scored above the reference alone on every seed of both generators
and equal on the real MIMII fans (``benchmarks/bench_features.py``,
BENCHMARKS.md), so the product's plain system uses it; 0 is the reference.

``modulation_lines`` appends, per modulation bin, how far the most prominent line of
any band's envelope spectrum stands above the bin's mean: a fault's rate is a line,
and the bin's average dilutes it. ``fast_lines_n_fft`` adds the same of a faster
envelope (8 ms windows at 500 Hz), which reaches the rates of rolling-bearing defects
on fast shafts. Both scored above the modulation spectrum alone on every validation
seed of both generators (``--plain-features lines``, the default).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from edge_asd.io.audio import centre
from edge_asd.io.fft import PowerSpectrum
from edge_asd.io.rowstats import IQR_SIGMA, MAD_SIGMA, row_median, row_quantiles
from edge_asd.io.stft import LOGS, WINDOWS, LogMelSTFT, hann
from edge_asd.io.transients import envelope_mask, fill, transient_frames

# --- mel filterbank ---------------------------------------------------------------
# Slaney's mel scale (linear below 1 kHz, logarithmic above) with area-normalized
# triangles: librosa's default, which the report's authors used. The HTK scale is
# available, but with 224 bands from 50 Hz and a 7.8 Hz bin spacing its lowest
# triangles are narrower than one DFT bin and some come out empty.

_F_SP = 200.0 / 3.0  # Hz per mel below the break
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(f: np.ndarray, htk: bool = False) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + f / 700.0)
    mel = f / _F_SP
    log_part = _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(f >= _MIN_LOG_HZ, log_part, mel)


def mel_to_hz(m: np.ndarray, htk: bool = False) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    hz = m * _F_SP
    log_part = _MIN_LOG_HZ * np.exp(_LOGSTEP * (np.maximum(m, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(m >= _MIN_LOG_MEL, log_part, hz)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float, mel_scale: str = "slaney"
) -> np.ndarray:
    """Triangular mel filters ``[n_mels, n_fft // 2 + 1]`` (float64), as ``librosa.filters.mel``.

    ``mel_scale="slaney"``: Slaney scale and area normalization (librosa's default,
    ``htk=False, norm="slaney"``); ``"htk"``: HTK scale, unit-peak triangles.
    """
    if mel_scale not in ("slaney", "htk"):
        raise ValueError(f"mel_scale must be 'slaney' or 'htk', not {mel_scale!r}")
    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= {sample_rate / 2}, got {f_min}, {f_max}")
    htk = mel_scale == "htk"
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_pts = np.linspace(hz_to_mel(f_min, htk), hz_to_mel(f_max, htk), n_mels + 2)
    hz_pts = mel_to_hz(mel_pts, htk)
    fdiff = np.diff(hz_pts)
    ramps = hz_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if not htk:
        weights *= (2.0 / (hz_pts[2 : n_mels + 2] - hz_pts[:n_mels]))[:, None]
    return weights


# --- plain log-mel statistics ---------------------------------------------------------

PLAIN_KIND = "logmel_stats"
AMPLITUDES = ("clip", "recorded")
# What a manifest without the newer keys meant: the plain system of "Detection quality I".
LEGACY_PLAIN = {"mel_scale": "slaney", "amplitude": "recorded", "window": "hann_periodic", "log": "db", "log_eps": 1e-10}


@dataclass(frozen=True)
class LogMelStatsConfig:
    """The plain system's features; the defaults are the strong plain reference's."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 7800.0
    mel_scale: str = "htk"  # unit-peak HTK triangles, as the reference
    amplitude: str = "clip"  # "clip": waveform to zero mean, unit variance; "recorded": the level kept
    window: str = "hann"  # "hann": symmetric (numpy.hanning, the reference's); "hann_periodic"
    log: str = "ln"  # "ln": natural log of power + log_eps; "db": 10 log10(power + log_eps)
    log_eps: float = 1e-8
    # the envelope modulation spectrum (0 bands: off, the reference); each envelope is one band's power
    # at hop / sample_rate (250 Hz), its spectrum taken over modulation_frames (2 s), half-overlapped
    modulation_bands: int = 0
    modulation_n_fft: int = 512
    modulation_hop: int = 64
    modulation_frames: int = 512
    modulation_bins: int = 16
    modulation_min_hz: float = 2.0
    # the envelope spectrum is the mean of its 2 s windows' spectra (Welch); modulation_trim > 0 leaves out each
    # frequency's largest modulation_trim of them first (where that leaves two windows or more). A door,
    # a dropped tool or a beep touches one or two windows and swamps their envelope spectra with its own (the power
    # envelope's one spike is broadband); a fault goes on and is in every window. Applies to the lines too.
    modulation_trim: int = 0
    # with the modulation spectrum, per modulation bin: how far the strongest line of any band's envelope spectrum
    # stands above that band's mean inside the bin (ln units). A bearing's impact rate, a rotor bar's slip beat or
    # a belt's pass rate is a line one or two DFT bins wide (0.5 Hz over 2 s); the bin's average dilutes it among
    # tens of neighbours, its peak does not. Taken over the bands, it does not care which band carries the line.
    modulation_lines: bool = False
    # with modulation_lines, fast_lines_n_fft > 0 adds the same line prominences of a second, faster envelope: each
    # band's power over fast_lines_n_fft-sample windows every fast_lines_hop samples (8 ms at 500 Hz), its spectrum
    # over fast_lines_frames (2 s). Envelope analysis needs the envelope's bandwidth: the modulation spectrum's 32 ms
    # window smooths rates above a few tens of hertz away and its 250 Hz envelope folds those above 125 Hz, where
    # a rolling bearing's defect rate lies on a shaft above about 1500 rpm.
    fast_lines_n_fft: int = 0
    fast_lines_hop: int = 32
    fast_lines_frames: int = 1024
    # with the fast envelope, the sound's dynamics (ln units): per log-mel band the mean absolute change from one frame
    # to the next (a rough, crackling or rubbing band changes fast); the spread over time of each envelope's band
    # power (the modulation spectrum's and the fast one's); and how the fast envelope's bands move together, their
    # correlations once each band's mean over dynamics_smooth_s is taken away (a rub or a crackle sounds in many
    # bands at once, a machine's steady parts do not). Each statistic ignores what lasts a tenth of the clip or less
    # (the mean of the changes below their 90th percentile, the interquartile range, the envelope clipped at 3
    # robust deviations): a fault goes on, a door or a dropped tool does not (a lone impact moved the comodulation
    # 0.73 as much as a crackle of the same energy, 0.23 with the clipping).
    dynamics: bool = False
    dynamics_smooth_s: float = 0.5
    # transient_sigmas > 0 leaves a passing transient (a door, a dropped tool, a horn) out of the statistics: the
    # frames that stand that many robust deviations above the clip's median loudness and, with transient_novelty >
    # 0, as far above its typical distance to other frames of the clip (edge_asd.io.transients), at most
    # transient_cap of the clip, transient_dilate frames either side. The band levels and their spread are taken
    # over the other frames; the envelopes' samples inside them are each band's median (modulation, lines, spread,
    # comodulation). The frame-to-frame change already leaves out its largest tenth. 0: every frame (the reference).
    transient_sigmas: float = 0.0
    transient_novelty: float = 3.0
    transient_cap: float = 0.1
    transient_dilate: int = 1

    def __post_init__(self) -> None:
        if self.n_fft < 16 or self.hop_length < 1 or self.n_mels < 1:
            raise ValueError("logmel_stats: n_fft >= 16, hop_length >= 1 and n_mels >= 1 are needed")
        for name, allowed in (("amplitude", AMPLITUDES), ("window", WINDOWS), ("log", LOGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"logmel_stats: {name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if not self.log_eps > 0:
            raise ValueError("logmel_stats: log_eps must be positive")
        mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max, self.mel_scale)  # raises on a bad band
        if self.modulation_bands < 0:
            raise ValueError("logmel_stats: modulation_bands must be 0 (off) or more")
        if isinstance(self.modulation_trim, bool) or not isinstance(self.modulation_trim, int) or self.modulation_trim < 0:
            raise ValueError(f"logmel_stats: modulation_trim must be a whole number of windows, 0 or more, "
                             f"not {self.modulation_trim!r}")
        if self.modulation_trim and not self.modulation_bands:
            raise ValueError("logmel_stats: modulation_trim needs the modulation spectrum (modulation_bands > 0)")
        if self.modulation_bands:
            modulation_pooling(self)  # raises on bins no modulation frequency falls in
        elif self.modulation_lines:
            raise ValueError("logmel_stats: modulation_lines needs the modulation spectrum (modulation_bands > 0)")
        if self.fast_lines_n_fft:
            if not self.modulation_lines:
                raise ValueError("logmel_stats: fast_lines_n_fft needs modulation_lines")
            fast = self.fast_lines()
            mel_filterbank(fast.sample_rate, fast.modulation_n_fft, fast.modulation_bands, fast.f_min, fast.f_max,
                           fast.mel_scale)
            modulation_pooling(fast)
        if self.transient_sigmas < 0 or self.transient_novelty < 0 or not 0 < self.transient_cap < 1 \
                or self.transient_dilate < 0:
            raise ValueError("logmel_stats: transient_sigmas and transient_novelty must be 0 (off) or more, "
                             "transient_cap between 0 and 1, transient_dilate 0 or more")
        if self.dynamics:
            if not self.fast_lines_n_fft:
                raise ValueError("logmel_stats: dynamics needs the fast envelope (fast_lines_n_fft > 0)")
            if not self.dynamics_smooth_s > 0:
                raise ValueError("logmel_stats: dynamics_smooth_s must be positive")

    def fast_lines(self) -> "LogMelStatsConfig":
        """The fast envelope's settings, as a modulation spectrum of its own (whose lines alone are used)."""
        return replace(self, modulation_n_fft=self.fast_lines_n_fft, modulation_hop=self.fast_lines_hop,
                       modulation_frames=self.fast_lines_frames, fast_lines_n_fft=0, dynamics=False)

    @property
    def dim(self) -> int:
        return sum(n for _, n in self.blocks())

    def blocks(self) -> tuple[tuple[str, int], ...]:
        """The feature vector's groups in order, each ``(name, size)``: one aspect of the sound per group (the
        plain system's scorer fits a Gaussian to each, :mod:`edge_asd.scoring.groups`)."""
        out = [("level", self.n_mels), ("level spread", self.n_mels)]
        b = self.modulation_bands
        if b:
            out.append(("modulation", b * self.modulation_bins))
        if self.modulation_lines:
            lines = int(modulation_line_bins(self).sum())
            if self.fast_lines_n_fft:
                lines += int(modulation_line_bins(self.fast_lines()).sum())
            out.append(("lines", lines))
        if self.dynamics:
            out += [("change", self.n_mels), ("envelope spread", 2 * b), ("comodulation", b * (b - 1) // 2)]
        return tuple(out)

    def block_edges(self) -> str:
        """:meth:`blocks` as the boundaries ``"0,64,128,..."`` a :class:`edge_asd.scoring.groups.FeatureGroupGaussian`
        takes."""
        return ",".join(str(e) for e in np.cumsum([0] + [n for _, n in self.blocks()]))

    def to_dict(self) -> dict:
        return {"kind": PLAIN_KIND, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "LogMelStatsConfig":
        if d.get("kind", PLAIN_KIND) != PLAIN_KIND:
            raise ValueError(f"feature kind {d.get('kind')!r} is not {PLAIN_KIND!r}")
        return cls(**{**LEGACY_PLAIN, **{k: v for k, v in d.items() if k != "kind"}})


def modulation_pooling(cfg: LogMelStatsConfig) -> np.ndarray:
    """``[modulation_frames // 2 + 1, modulation_bins]``: averages the envelope spectrum into log-spaced bins."""
    hz = np.fft.rfftfreq(cfg.modulation_frames, cfg.modulation_hop / cfg.sample_rate)
    edges = np.geomspace(cfg.modulation_min_hz, hz[-1], cfg.modulation_bins + 1)
    member = (hz[:, None] >= edges[None, :-1]) & (hz[:, None] < edges[None, 1:])
    counts = member.sum(axis=0)
    if not (0 < cfg.modulation_min_hz < hz[-1]) or np.any(counts == 0):
        raise ValueError(f"logmel_stats: {cfg.modulation_bins} modulation bins from {cfg.modulation_min_hz} Hz leave some "
                         f"empty at a {hz[1]:.2f} Hz resolution: fewer bins, a higher modulation_min_hz or more frames")
    return (member / counts).astype(np.float32)


def modulation_line_bins(cfg: LogMelStatsConfig) -> np.ndarray:
    """``[modulation_bins]`` bool: the bins that hold a line prominence, those of two DFT bins or more (in a bin of
    one, the peak is the mean, and the feature would be zero on every clip)."""
    return (modulation_pooling(cfg) > 0).sum(axis=0) >= 2


class ModulationSpectrum:
    """Prepared clip -> ``[modulation_bands * modulation_bins]`` log envelope spectrum (band-major), then with
    ``modulation_lines`` the line prominence of each bin of :func:`modulation_line_bins`; ``pooled=False``: the
    line prominences alone."""

    def __init__(self, cfg: LogMelStatsConfig, fft: str = "auto", pooled: bool = True):
        if not (pooled or cfg.modulation_lines):
            raise ValueError("a modulation spectrum with neither its bins nor its lines computes nothing")
        self.cfg = cfg
        self.pooled = pooled
        fb = mel_filterbank(cfg.sample_rate, cfg.modulation_n_fft, cfg.modulation_bands, cfg.f_min, cfg.f_max, cfg.mel_scale)
        # the blocked rFFT front end of the log-mel; its ln is undone below (exp), which costs less than a
        # second STFT code path and loses nothing at float32 with an eps far below any band's power
        self._stft = LogMelSTFT(cfg.modulation_n_fft, cfg.modulation_hop, hann(cfg.modulation_n_fft, "hann"), fb,
                                log="ln", eps=1e-20, fft=fft)
        self._seg_window = hann(cfg.modulation_frames, "hann")
        self._seg_power = PowerSpectrum(cfg.modulation_frames, self._stft.fft)
        self._pool = modulation_pooling(cfg)
        # each bin's first DFT bin and its extent: the bins are contiguous runs of the envelope spectrum
        members = self._pool > 0
        self._bin_starts = members.argmax(axis=0)
        self._bin_span = slice(int(self._bin_starts[0]), int(self._bin_starts[-1] + members[:, -1].sum()))
        self._line_bins = modulation_line_bins(cfg)

    def envelope(self, x: np.ndarray) -> np.ndarray:
        """``[T, bands]``: the log power of each band over time, the envelopes the spectrum is taken of."""
        return self._stft(x)

    def __call__(self, x: np.ndarray, log_envelope: np.ndarray | None = None) -> np.ndarray:
        """``log_envelope``: :meth:`envelope` of ``x``, where the caller has it already."""
        c = self.cfg
        env = np.exp(self.envelope(x) if log_envelope is None else log_envelope)  # [T, bands] band power
        # each band relative to its own mean: the envelope's shape, not the band's level (the mean already has it)
        env = env / (env.mean(axis=0, keepdims=True) + np.float32(1e-12))
        n = c.modulation_frames
        if env.shape[0] < n:  # a clip shorter than one modulation frame: one frame, zero-padded to the same bins
            segs = env.T[None]
        else:
            segs = np.lib.stride_tricks.sliding_window_view(env, n, axis=0)[:: n // 2]  # [K, bands, n]
        segs = segs - segs.mean(axis=-1, keepdims=True)
        rows = (segs * self._seg_window[: segs.shape[-1]]).reshape(-1, segs.shape[-1])
        if rows.shape[1] < n:  # the short clip's one frame
            rows = np.pad(rows, ((0, 0), (0, n - rows.shape[1])))
        spec = window_average(self._seg_power(rows).reshape(segs.shape[0], segs.shape[1], -1), c.modulation_trim)
        parts = [np.log(spec @ self._pool + np.float32(1e-8)).reshape(-1)] if self.pooled else []
        if c.modulation_lines:
            log_spec = np.log(spec + np.float32(1e-8))
            peak = np.maximum.reduceat(log_spec[:, self._bin_span], self._bin_starts - self._bin_span.start, axis=1)
            lines = (peak - log_spec @ self._pool).max(axis=0)  # [bins]: the most prominent line of any band
            parts.append(lines[self._line_bins])
        return np.concatenate(parts)


def window_average(power: np.ndarray, trim: int = 0) -> np.ndarray:
    """``[bands, bins]``: the mean over the windows of ``power`` ``[windows, bands, bins]``, each value's ``trim``
    largest windows left out where that leaves two windows or more (else the mean of all)."""
    k = power.shape[0]
    if trim == 0 or k < trim + 2:
        return power.mean(axis=0)
    # not the sum less the largest: in float32 a transient's window 1e6 times the others' would leave them rounded
    return np.partition(power, k - trim - 1, axis=0)[: k - trim].mean(axis=0)


CLIP_SIGMAS = 3.0  # comodulation: each band's movement clipped at this many robust deviations from its median
CHANGE_QUANTILE = 0.9  # frame-to-frame change: the mean of the changes up to this quantile of each band's


def comodulation(log_envelope: np.ndarray, smooth: int) -> np.ndarray:
    """``[bands * (bands - 1) / 2]``: the correlations (upper triangle, row-major) between the bands of a log envelope
    ``[T, bands]`` once each band's moving mean over ``smooth`` frames is taken away and its movement clipped at
    :data:`CLIP_SIGMAS` robust deviations (a lone impact moves every band once, hugely); a band that does not move
    correlates 0 with every other."""
    e = np.ascontiguousarray(np.asarray(log_envelope).T, dtype=np.float64)  # band-major: each band's run contiguous
    bands, t = e.shape
    half = min(smooth, t) // 2
    # the moving mean over the frames inside the clip: at the edges, over the part of the window that lies inside
    c = np.zeros((bands, t + 1))
    np.cumsum(e, axis=1, out=c[:, 1:])
    lo, hi = np.clip(np.arange(t) - half, 0, t), np.clip(np.arange(t) + half + 1, 0, t)
    # e - (c[:, hi] - c[:, lo]) / (hi - lo), in one buffer: np.take and in-place steps, 0.66 -> 0.45 ms a clip
    hp = np.take(c, hi, axis=1)
    hp -= np.take(c, lo, axis=1)
    hp /= hi - lo
    np.subtract(e, hp, out=hp)
    # float64 for the running sums above (over 5,000 frames, float32's would lose the moving mean to rounding), float32
    # from here: the two medians and the correlations 1.21 -> 0.90 ms a clip, the correlations within 5e-7 (2026-12-08)
    hp = hp.astype(np.float32)
    med = row_median(hp)[:, None]
    reach = np.float32(CLIP_SIGMAS * MAD_SIGMA) * row_median(np.abs(hp - med))[:, None]
    np.clip(hp, med - reach, med + reach, out=hp)
    hp -= hp.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.einsum("ij,ij->i", hp, hp))
    corr = (hp @ hp.T) / np.maximum(np.outer(norm, norm), 1e-30)
    return corr[np.triu_indices(bands, 1)]


def robust_spread(log_envelope: np.ndarray) -> np.ndarray:
    """``[bands]``: each band's interquartile range over time of ``[T, bands]``, as a Gaussian's standard deviation."""
    q = row_quantiles(np.asarray(log_envelope).T, (0.75, 0.25))
    return IQR_SIGMA * (q[0] - q[1])


def frame_change(log_mel: np.ndarray) -> np.ndarray:
    """``[n_mels]``: per band, the mean absolute change of ``log_mel [T, n_mels]`` from one frame to the next, over the
    changes up to the band's :data:`CHANGE_QUANTILE` (the largest tenth, a transient's, left out); 0 for one frame."""
    if log_mel.shape[0] < 2:
        return np.zeros(log_mel.shape[1])
    d = np.abs(np.diff(np.asarray(log_mel, dtype=np.float64).T, axis=1))  # band-major
    kept = d <= row_quantiles(d, (CHANGE_QUANTILE,))[0][:, None]
    return (d * kept).sum(axis=1) / kept.sum(axis=1)


class LogMelStats:
    """Clip -> ``[2 * n_mels]``: the mean, then the standard deviation, of each band's log power over time;
    then, with ``modulation_bands``, the envelope modulation spectrum (and its lines, and the fast envelope's);
    then, with ``dynamics``, the frame-to-frame change of each log-mel band (:func:`frame_change`), the spread (a
    robust standard deviation) of each envelope band (modulation, then fast), and the fast envelope's
    :func:`comodulation`."""

    def __init__(self, cfg: LogMelStatsConfig | None = None, fft: str = "auto"):
        self.cfg = cfg or LogMelStatsConfig()
        c = self.cfg
        fb = mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max, c.mel_scale)
        self._stft = LogMelSTFT(c.n_fft, c.hop_length, hann(c.n_fft, c.window), fb, log=c.log, eps=c.log_eps, fft=fft)
        self._modulation = ModulationSpectrum(c, fft) if c.modulation_bands else None
        self._fast_lines = ModulationSpectrum(c.fast_lines(), fft, pooled=False) if c.fast_lines_n_fft else None

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def prepare(self, clip: np.ndarray) -> np.ndarray:
        """The waveform the features are computed on: float32, standardized when ``amplitude`` is "clip"."""
        x = np.ascontiguousarray(clip, dtype=np.float32).reshape(-1)
        if self.cfg.amplitude == "clip":
            # The reference's (x - mean) / (std + 1e-9), not io.audio.standardize's zero floor for
            # near-silent clips: the plain system is the reference number for number.
            centred, std = centre(x)
            x = centred * np.float32(1.0 / (std + 1e-9))
        return x

    def logmel(self, clip: np.ndarray) -> np.ndarray:
        """``[frames, n_mels]`` log-mel power of an uncentred STFT of the prepared waveform."""
        x = self.prepare(clip)
        if x.size < self.cfg.n_fft:
            raise ValueError(f"clip of {x.size} samples is shorter than the {self.cfg.n_fft}-sample window")
        return self._stft(x)

    def transients(self, log_mel: np.ndarray) -> np.ndarray | None:
        """``[T]`` bool: the frames of ``log_mel`` (this front end's) a passing transient covers; None when the
        features keep every frame (``transient_sigmas`` 0)."""
        c = self.cfg
        if not c.transient_sigmas:
            return None
        ln_mel = log_mel if c.log == "ln" else log_mel * np.float32(math.log(10.0) / 10.0)
        peak = ln_mel.max(axis=1, keepdims=True)  # a log of summed powers that neither overflows nor underflows
        loudness = peak[:, 0] + np.log(np.exp(ln_mel - peak).sum(axis=1, dtype=np.float64))
        return transient_frames(loudness, ln_mel, c.transient_sigmas, c.transient_novelty, c.transient_cap,
                                c.transient_dilate)

    def _level_without(self, x: np.ndarray, taken: np.ndarray) -> float:
        """What standardizing the clip without its transient's samples adds to every band's log power: a slam raised
        the clip's power, and so lowered every band of the standardized clip (0 for a recorded level)."""
        c = self.cfg
        if c.amplitude != "clip":
            return 0.0
        covered = np.zeros(x.size, dtype=bool)
        for start in np.flatnonzero(taken) * c.hop_length:  # a few frames: slices, not a sample-wide index
            covered[start : start + c.n_fft] = True
        steady = x[~covered]
        if steady.size < c.n_fft:
            return 0.0
        ratio = float(np.dot(x, x)) / x.size / max(float(np.dot(steady, steady)) / steady.size, 1e-30)
        return math.log(ratio) if c.log == "ln" else 10.0 * math.log10(ratio)

    def __call__(self, clip: np.ndarray) -> np.ndarray:
        x = self.prepare(clip)
        if x.size < self.cfg.n_fft:
            raise ValueError(f"clip of {x.size} samples is shorter than the {self.cfg.n_fft}-sample window")
        c = self.cfg
        lm = self._stft(x)
        taken = self.transients(lm)
        if taken is None or not taken.any() or taken.all():
            parts = [lm.mean(axis=0, dtype=np.float64), lm.std(axis=0, dtype=np.float64)]
        else:
            steady = lm[~taken]
            parts = [steady.mean(axis=0, dtype=np.float64) + self._level_without(x, taken),
                     steady.std(axis=0, dtype=np.float64)]
        envelopes = []
        for spectrum in (self._modulation, self._fast_lines):
            if spectrum is not None:
                env = spectrum.envelope(x)
                if taken is not None:
                    s = spectrum.cfg
                    env = fill(env, envelope_mask(taken, env.shape[0], s.modulation_hop, s.modulation_n_fft,
                                                  c.hop_length, c.n_fft))
                envelopes.append(env)
                parts.append(spectrum(x, env))
        if c.dynamics:
            parts.append(frame_change(lm))
            parts += [robust_spread(e) for e in envelopes]
            parts.append(comodulation(envelopes[1], max(1, round(c.dynamics_smooth_s * c.sample_rate / c.fast_lines_hop))))
        return np.concatenate(parts).astype(np.float32)
