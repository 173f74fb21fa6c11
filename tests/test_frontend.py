"""The in-model log-mel front end: DFT-by-convolution against torch.stft, frame slicing, export."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from edge_asd.io.audio import SegmentSpec, segment, standardize
from train.frontend import LogMel, hz_to_mel, mel_filterbank, mel_to_hz, n_frames, strict_fp32

torch.set_num_threads(2)


def _machine_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Harmonics, a slow hum and noise: bands from loud to ~60 dB down, like real recordings."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    x = sum(np.sin(2 * np.pi * 310 * h * t + rng.uniform(0, 6.3)) / h for h in range(1, 8))
    x += 0.5 * np.sin(2 * np.pi * 60 * t) + 0.02 * rng.standard_normal(t.size)
    return standardize(x)


def _reference_logmel(wave: torch.Tensor, fe: LogMel) -> torch.Tensor:
    """torch.stft (uncentred, periodic Hann) power + the same mel matrix, in float64."""
    w = wave.double()
    spec = torch.stft(
        w, n_fft=fe.n_fft, hop_length=fe.hop_length, window=torch.hann_window(fe.n_fft, dtype=torch.float64),
        center=False, return_complex=True,
    )
    power = spec.abs() ** 2
    fb = torch.from_numpy(mel_filterbank(fe.sample_rate, fe.n_fft, fe.n_mels, fe.f_min, fe.f_max, fe.mel_scale))
    return torch.log(torch.matmul(fb, power) + fe.log_eps)


@pytest.mark.parametrize("mel_scale", ["slaney", "htk"])
def test_dft_convolution_matches_torch_stft(mel_scale):
    n_mels = 224 if mel_scale == "slaney" else 128  # HTK's lowest 224-band triangles would be empty
    fe = LogMel(mel_scale=mel_scale, n_mels=n_mels)
    wave = torch.from_numpy(np.stack([_machine_like(2.0, s) for s in range(3)]))
    ref = _reference_logmel(wave, fe)
    with torch.no_grad():
        got = fe(wave)
    assert got.shape == (3, n_mels, 118) and got.dtype == torch.float32
    # |d log| is the relative error of the mel power. Bands within 30 dB of the
    # frame's loudest agree to ~1e-5; the quietest (70 dB down) carry the float32
    # rounding of a 2048-term sum and agree to a few 1e-4.
    err = torch.abs(got.double() - ref)
    loud = ref > ref.amax(dim=1, keepdim=True) - np.log(1e3)
    assert err[loud].max().item() < 1e-4
    assert err.max().item() < 5e-4
    # ... and it is not trivially so: a one-bin-off DFT would be far away
    assert torch.max(torch.abs(got.double() - ref.roll(1, dims=1))).item() > 0.1


def test_fft_training_path_equals_dft_path():
    fe = LogMel()
    wave = torch.from_numpy(np.stack([_machine_like(2.0, s) for s in range(2)]))
    with torch.no_grad():
        conv = fe(wave)
        fe.use_fft = True
        fft = fe(wave)
    assert torch.max(torch.abs(conv - fft)).item() < 5e-4
    assert torch.mean(torch.abs(conv - fft)).item() < 1e-5


def test_frame_rule_and_report_geometry():
    fe = LogMel()
    assert fe.n_fft == 2048 and fe.hop_length == 256 and fe.n_mels == 224
    assert fe.n_frames(32000) == n_frames(32000, 2048, 256) == 1 + (32000 - 2048) // 256 == 118
    assert fe.n_frames(160000) == 618 and fe.n_frames(2047) == 0
    assert fe.frame_of_sample(14080) == 55
    with pytest.raises(ValueError):
        fe.frame_of_sample(100)
    # nothing but buffers: the front end has no trainable parameters, and its
    # constants are rebuilt rather than stored in checkpoints
    assert list(fe.parameters()) == [] and fe.state_dict() == {}


def test_whole_clip_frames_sliced_equal_segment_frames_exactly():
    fe = LogMel()
    spec = SegmentSpec()
    clip = _machine_like(10.0, seed=3)
    segs = torch.from_numpy(segment(clip, spec))
    starts = spec.starts(clip.size)
    for use_fft in (False, True):
        fe.use_fft = use_fft
        with torch.no_grad():
            per_segment = fe(segs)
            whole = fe.clip_frames(torch.from_numpy(clip)[None])
        assert whole.shape == (1, 224, fe.n_frames(clip.size))
        sliced = fe.slice_segments(whole, starts, spec.segment_samples)[0]
        assert sliced.shape == per_segment.shape == (10, 224, 118)
        # The same frames, to the last bit of the framing: what remains is the matrix product's
        # rounding, whose kernel (and so its last bit) the BLAS picks by the batch's shape.
        scale = per_segment.abs().max().item()
        assert torch.max(torch.abs(sliced - per_segment)).item() <= 4 * torch.finfo(torch.float32).eps * scale
        one_off = fe.slice_segments(whole, [s + fe.hop_length for s in starts[:-1]], spec.segment_samples)[0]
        assert torch.max(torch.abs(one_off - per_segment[:-1])).item() > 0.1, "a slice one frame off must show"


def test_mel_filterbank_shape_and_placement():
    fb = mel_filterbank(16000, 2048, 224, 50.0, 7800.0, "slaney")
    freqs = np.linspace(0, 8000, 1025)
    assert fb.shape == (224, 1025) and np.all(fb >= 0)
    assert np.all(fb.sum(axis=1) > 0)  # no empty band
    assert np.all(fb[:, freqs < 50.0 - 1e-9] == 0) and np.all(fb[:, freqs > 7800.0 + 1e-9] == 0)
    peaks = freqs[np.argmax(fb, axis=1)]
    assert np.all(np.diff(peaks) >= 0)  # bands rise with frequency
    centres = mel_to_hz(np.linspace(hz_to_mel(50.0), hz_to_mel(7800.0), 226))[1:-1]
    assert np.max(np.abs(peaks - centres)) <= 2 * 8000 / 1024  # peak within a bin or two of its centre
    # Slaney normalization: each triangle has unit area in Hz (up to sampling it on the bin grid)
    wide = (centres > 2000)
    area = fb.sum(axis=1) * (8000 / 1024)
    assert np.allclose(area[wide], 1.0, rtol=0.05)
    # Slaney's scale is linear (200/3 Hz per mel) below 1 kHz, logarithmic above
    assert np.isclose(hz_to_mel(500.0), 7.5) and np.isclose(mel_to_hz(hz_to_mel(3000.0)), 3000.0)


def test_front_end_stays_fp32_under_autocast():
    fe = LogMel()
    wave = torch.from_numpy(np.stack([_machine_like(2.0)]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with strict_fp32("cpu"):
            inside = fe(wave)
    with torch.no_grad():
        plain = fe(wave)
    assert inside.dtype == torch.float32 and torch.equal(inside, plain)


def test_front_end_exports_to_onnx_with_plain_operators():
    import onnx
    import onnxruntime as ort

    fe = LogMel().eval()
    buf = io.BytesIO()
    torch.onnx.export(
        fe, (torch.zeros(2, 32000),), buf, input_names=["wave"], output_names=["logmel"],
        dynamic_axes={"wave": {0: "batch", 1: "samples"}}, opset_version=17, dynamo=False,
    )
    model = onnx.load_from_string(buf.getvalue())
    ops = {n.op_type for n in model.graph.node}
    assert "MatMul" in ops and "STFT" not in ops and "DFT" not in ops
    # operators TensorRT parses; framing is reshapes, slices and a concat, the DFT two GEMMs with a twiddle between
    assert ops <= {"Slice", "Mul", "Add", "Sub", "MatMul", "Log", "Constant", "Unsqueeze", "Shape", "Gather", "Pow", "Cast",
                   "Reshape", "Concat", "Transpose", "Div", "Floor"}, ops
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    clip = _machine_like(10.0, seed=5)[None]
    (got,) = sess.run(None, {"wave": clip})
    with torch.no_grad():
        ref = fe(torch.from_numpy(clip)).numpy()
    assert got.shape == (1, 224, 618)
    assert np.max(np.abs(got - ref)) < 1e-3
