"""Property-based tests (hypothesis, bounded for CI) of the parsers that meet user input."""

import io
import string

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_asd.io.audio import read_audio
from edge_asd.daemon.loading import load_config
from edge_asd.io.dcase import parse_name
from edge_asd.errors import AudioError, ConfigError, DataError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
token = st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=6)


@FAST
@given(
    section=st.integers(0, 99),
    domain=st.sampled_from(["source", "target"]),
    split=st.sampled_from(["train", "test"]),
    label=st.sampled_from(["normal", "anomaly"]),
    index=st.integers(0, 9999),
    attrs=st.lists(st.tuples(token, token), max_size=4, unique_by=lambda kv: kv[0]),
)
def test_parse_name_round_trips(section, domain, split, label, index, attrs):
    suffix = "".join(f"_{k}_{v}" for k, v in attrs)
    name = f"section_{section:02d}_{domain}_{split}_{label}_{index:04d}{suffix}.wav"
    info = parse_name(f"/d/pump/{split}/{name}")
    assert (info.section, info.domain, info.split, info.label, int(info.index)) == (f"{section:02d}", domain, split, label, index)
    assert info.attributes == dict(attrs)
    assert info.machine == "pump"


@FAST
@given(st.text(max_size=60))
def test_parse_name_never_crashes(name):
    try:
        info = parse_name(f"{name}.wav")
    except DataError as exc:
        assert "not a DCASE clip name" in str(exc)
    else:
        assert info.section.isdigit()


@FAST
@given(data=st.binary(max_size=400))
def test_read_audio_refuses_garbage_with_a_clear_error(tmp_path, data):
    p = tmp_path / "garbage.wav"
    p.write_bytes(data)
    with pytest.raises(AudioError, match="garbage.wav"):
        read_audio(p, min_seconds=2.0)


@FAST
@given(
    n=st.integers(1, 40000),
    subtype=st.sampled_from(["PCM_16", "PCM_24", "FLOAT", "PCM_U8"]),
    rate=st.sampled_from([8000, 16000, 44100]),
    channels=st.integers(1, 2),
    cut=st.integers(0, 64),
)
def test_read_audio_accepts_exactly_the_usable_files(tmp_path, n, subtype, rate, channels, cut):
    x = np.random.default_rng(n).uniform(-0.5, 0.5, size=(n, channels))
    buf = io.BytesIO()
    sf.write(buf, x, rate, subtype=subtype, format="WAV")
    data = buf.getvalue()
    p = tmp_path / "clip.wav"
    p.write_bytes(data[: len(data) - cut] if cut else data)
    try:
        y = read_audio(p, min_seconds=2.0)
    except AudioError as exc:
        assert "clip.wav" in str(exc)
        return
    # accepted: mono, 16 kHz, at least a segment long, finite
    assert rate == 16000 and channels == 1 and y.size >= 32000 and np.all(np.isfinite(y))


@FAST
@given(
    device_id=st.text(max_size=12),
    port=st.one_of(st.integers(-5, 70000), st.text(max_size=4)),
    extra=st.sampled_from(["", "bogus = 1\n", "[mqtt2]\nhost='x'\n"]),
)
def test_config_loader_accepts_only_valid_files(tmp_path, device_id, port, extra):
    bundle = tmp_path / "b.asd"
    bundle.write_bytes(b"x")
    clips = tmp_path / "clips"
    clips.mkdir(exist_ok=True)
    sf.write(clips / "a.wav", np.zeros(32000), 16000)
    text = (
        f"device_id = {device_id!r}\n{extra}"
        f"[mqtt]\nhost = '127.0.0.1'\nport = {port if isinstance(port, int) else repr(port)}\n"
        f"[storage]\noutbox = '{tmp_path / 'o.sqlite'}'\n"
        f"[[machines]]\nid = 'm1'\nbundle = '{bundle}'\nsource = 'file:{clips}'\n"
    )
    p = tmp_path / "c.toml"
    p.write_text(text)
    valid_id = bool(device_id) and all(c.isascii() and (c.isalnum() or c in "-_") for c in device_id)
    valid = valid_id and isinstance(port, int) and 1 <= port <= 65535 and not extra
    try:
        cfg = load_config(p, check_devices=False)
    except ConfigError as exc:
        assert str(exc).startswith(str(p)) and "\n" not in str(exc)
        assert not valid
    else:
        assert valid and cfg.device_id == device_id and cfg.mqtt.port == port
