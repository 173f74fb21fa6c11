"""The page on the device (edge_asd/web): configuration, history, spectrogram PNG, the server's
defences, and the whole thing in a real browser against a real daemon and broker."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_asd.daemon.config import ConfigError
from edge_asd.daemon.loading import load_config
from edge_asd.io.evidence import EvidenceStore
from edge_asd.daemon.web.history import History
from edge_asd.daemon.web.server import MachineScoring, WebLinks, WebServer
from edge_asd.daemon.web.spectrogram import colormap, encode_png, spectrogram_png

sys.path.insert(0, str(Path(__file__).parent))
from browser import binaries, headless_chromium  # noqa: E402
from mqtt_broker import Broker, free_port  # noqa: E402
from daemon_proc import Daemon, bundle_manifest, noise_wavs, write_config  # noqa: E402

SR = 16000
TOKEN = "s3cret-token-for-tests"


# --- configuration -------------------------------------------------------------------------


def _config(tmp_path: Path, web: str, env: dict | None = None):
    (tmp_path / "b.asd").write_bytes(b"not read by load_config")
    sf.write(tmp_path / "a.wav", np.zeros(SR, dtype=np.float32), SR)
    path = tmp_path / "c.toml"
    path.write_text(f'device_id = "box1"\n[storage]\noutbox = "{tmp_path / "o.sqlite"}"\n[web]\n{web}\n'
                    f'[[machines]]\nid = "m1"\nbundle = "b.asd"\nsource = "file:{tmp_path / "a.wav"}"\n')
    return path, (lambda: load_config(path, env=env or {}, check_devices=False))


def test_web_is_off_by_default_and_on_loopback_when_enabled(tmp_path):
    path, load = _config(tmp_path, "")
    cfg = load()
    assert cfg.web.enabled is False
    path.write_text(path.read_text().replace("[web]\n", "[web]\nenabled = true\n"))
    w = load().web
    assert (w.enabled, w.host, w.port, w.token, w.loopback) == (True, "127.0.0.1", 8080, None, True)
    assert w.history == tmp_path / "history.sqlite" and w.history_hours == 24.0
    assert w.page_url == "http://127.0.0.1:8080/", "what an ssh -L tunnel gives the user's browser"


def test_the_page_url_links_to_the_page_from_other_machines(tmp_path):
    # Home Assistant's "Visit device" link (discovery's configuration_url).
    import socket

    _, load = _config(tmp_path, 'enabled = true\nlisten = "0.0.0.0:8443"\ntoken = "long-enough"')
    assert load().web.page_url == f"http://{socket.getfqdn()}:8443/"
    _, load = _config(tmp_path, 'enabled = true\nlisten = "[::1]:8080"')
    assert load().web.page_url == "http://[::1]:8080/"
    _, load = _config(tmp_path, 'enabled = true\nurl = "https://edge.plant.lan/asd/"')
    assert load().web.page_url == "https://edge.plant.lan/asd/"


@pytest.mark.parametrize("web, key, words", [
    ('enabled = true\nlisten = "0.0.0.0:8080"', "web.listen", "token"),
    ('enabled = true\nlisten = "[::]:8080"', "web.listen", "token"),
    ('listen = "8080"', "web.listen", "HOST:PORT"),
    ('listen = "127.0.0.1:99999"', "web.listen", "HOST:PORT"),
    ('token = "short"', "web.token", "8 characters"),
    ('token = "long-enough"\ntoken_file = "t"', "web.token_file", "only one"),
    ('token_credential = "web_token"', "web.token_credential", "CREDENTIALS_DIRECTORY"),
    ('threads = 1', "web.threads", "at least 2"),
    ('history_hours = 0', "web.history_hours", "greater than 0"),
    ('histroy_hours = 3', "web.histroy_hours", "history_hours"),
    ('url = "line1-edge:8080"', "web.url", "http:// or https://"),
])
def test_bad_web_settings_name_the_file_and_key(tmp_path, web, key, words):
    path, load = _config(tmp_path, web)
    with pytest.raises(ConfigError) as err:
        load()
    msg = str(err.value)
    assert msg.startswith(f"{path}: {key}: ") and words in msg and "\n" not in msg, msg


def test_a_public_address_takes_the_token_from_a_systemd_credential(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "web_token").write_text(TOKEN + "\n")
    _, load = _config(tmp_path, 'enabled = true\nlisten = "0.0.0.0:8099"\ntoken_credential = "web_token"',
                      env={"CREDENTIALS_DIRECTORY": str(creds)})
    w = load().web
    assert (w.host, w.port, w.token, w.loopback) == ("0.0.0.0", 8099, TOKEN, False)
    assert TOKEN not in repr(w), "the token never shows in a log line"


def test_run_refuses_to_start_on_a_public_address_without_a_token(tmp_path, edge_asd_exe):
    path, _ = _config(tmp_path, 'enabled = true\nlisten = "0.0.0.0:8080"')
    r = subprocess.run([edge_asd_exe, "run", "--config", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "web.listen" in lines[0], r.stderr


def test_run_refuses_to_start_when_the_port_is_taken(tiny_bundle, edge_asd_exe, tmp_path):
    noise_wavs(tmp_path / "rec", 1, 1.0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = write_config(tmp_path / "edge-asd.toml", free_port(), tiny_bundle, f"file:{tmp_path / 'rec'}")
        cfg.write_text(cfg.read_text() + f'[web]\nenabled = true\nlisten = "127.0.0.1:{taken.getsockname()[1]}"\n')
        r = subprocess.run([edge_asd_exe, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert str(cfg) in last and "web.listen: cannot listen on 127.0.0.1:" in last, r.stderr


# --- history and spectrogram -------------------------------------------------------------


def test_history_keeps_the_retention_window_and_answers_since(tmp_path):
    now = [1_800_000_000.0]
    h = History(tmp_path / "h.sqlite", retention_s=3600.0, clock=lambda: now[0])
    h.start()
    try:
        for i in range(10):  # one score every 10 minutes, the first 90 minutes ago
            h.add_score("m1", now[0] - 5400 + 600 * i, i + 1, float(i), 5.0, i > 5, 0.1, -30.0)
        h.add_alert("m1", now[0] - 5000, "anomalous")
        h.add_alert("m1", now[0] - 600, "normal")
        h.add_score("other", now[0], 1, 0.0, 1.0, False, 0.0, -20.0)
        assert h.flush()
        import sqlite3

        with sqlite3.connect(h.path) as conn:  # the writer prunes once a minute; here, now
            h.prune(conn)
        # Older than the hour is gone (the score at exactly an hour stays).
        rows = h.scores("m1", 0.0)
        assert [r["seq"] for r in rows] == [4, 5, 6, 7, 8, 9, 10]
        assert rows[-1] == {"t": now[0] - 5400 + 5400, "seq": 10, "score": 9.0, "threshold": 5.0, "anomalous": True,
                            "p_target": 0.1, "dbfs": -30.0, "ratio": None, "bands": None}
        assert [r["seq"] for r in h.scores("m1", now[0] - 1100)] == [9, 10]
        # The change that opened the window survives the prune: the window starts anomalous.
        assert [a["state"] for a in h.alerts("m1", now[0] - 3600)] == ["anomalous", "normal"]
        assert h.dropped == 0
    finally:
        h.stop()


def _decode_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + n
    w, h, depth, ctype = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, ctype) == (8, 2) and b"IEND" in chunks
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8).reshape(h, 1 + 3 * w)
    assert not raw[:, 0].any(), "filter type 0 on every row"
    return raw[:, 1:].reshape(h, w, 3)


def test_png_encoder_writes_what_a_decoder_reads():
    img = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_decode_png(encode_png(img)), img)
    c = colormap(np.array([0.0, 0.5, 1.0]))
    assert c.dtype == np.uint8 and c[0].sum() < c[1].sum() < c[2].sum(), "dark to bright"


def test_spectrogram_of_a_tone_is_bright_at_its_band(tmp_path):
    t = np.arange(4 * SR) / SR
    low, high = tmp_path / "low.wav", tmp_path / "high.wav"
    sf.write(low, 0.5 * np.sin(2 * np.pi * 300 * t), SR, subtype="PCM_16")
    sf.write(high, 0.5 * np.sin(2 * np.pi * 5000 * t), SR, subtype="PCM_16")
    rows = []
    for p in (low, high):
        img = _decode_png(spectrogram_png(p))
        assert img.shape[0] == 128 and img.shape[1] == 1 + (4 * SR - 1024) // 512
        rows.append(int(np.argmax(img.astype(int).sum(axis=(1, 2)))))
    assert rows[1] < rows[0], "the higher tone is drawn higher up (row 0 is the top)"


# --- the server, in process ------------------------------------------------------------------


def _clip(seconds: float = 1.0) -> np.ndarray:
    return (0.1 * np.random.default_rng(1).standard_normal(int(seconds * SR))).astype(np.float32)


@pytest.fixture
def web(tmp_path):
    """A WebServer on a free loopback port over a real evidence folder, with a token, and no daemon."""
    from edge_asd.daemon.config import WebConfig

    store = EvidenceStore(tmp_path / "evidence", 10 * 1024 * 1024)
    t0 = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=timezone.utc)
    saved = store.save("m1", _clip(), t0, 7)
    (tmp_path / "secret.wav").write_bytes(b"RIFF-secret-outside-the-evidence-folder")
    (tmp_path / "evidence" / "secret.txt").write_text("not a clip")
    cfg = WebConfig(enabled=True, host="127.0.0.1", port=0, token=TOKEN, history=tmp_path / "h.sqlite",
                    threads=4, client_timeout_s=1.0)
    links = WebLinks(machines=[("m1", "file:x")], config_path=tmp_path / "c.toml", started_mono=time.monotonic(),
                     connected=lambda: True, scoring=lambda mid: None, evidence_root=lambda: store.root)
    w = WebServer(cfg, "box1", links)
    w.store = store  # the evidence the tests save clips into
    w.start()
    w.saved = saved
    yield w
    w.stop()


def _get(w: WebServer, path: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    """One raw request: the path goes out byte for byte, as a hostile client would send it."""
    conn = http.client.HTTPConnection("127.0.0.1", w.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in {"Authorization": f"Bearer {TOKEN}", **(headers or {})}.items():
            if v is not None:
                conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def test_the_api_answers_json(web):
    t = datetime.now(timezone.utc)
    web.score("m1", 1, t - timedelta(seconds=20), 1.5, 2.0, False, 0.25, -31.0)
    web.score("m1", 2, t - timedelta(seconds=10), 2.5, 2.0, True, 0.5, -30.0)
    web.alert("m1", t - timedelta(seconds=10), "anomalous")
    web.source("m1", "ok", None)
    web.stats({"outbox_depth": 3, "rss_mb": 123.4, "machines": {"m1": {"clips": 2, "overruns": 0,
               "latency_ms": {"median": 12.0}, "drift": {"ks": 0.1}}}})
    assert web.history.flush()
    status, headers, body = _get(web, "/api/machines")
    assert status == 200 and headers["Content-Type"] == "application/json"
    m = json.loads(body)["machines"][0]
    assert (m["id"], m["state"], m["score"], m["dbfs"], m["p_target"], m["drift"]) == \
        ("m1", "anomalous", 2.5, -30.0, 0.5, {"ks": 0.1})
    web.source("m1", "silent", None)
    assert json.loads(_get(web, "/api/machines")[2])["machines"][0]["state"] == "silent", "a dead mic comes first"
    since = (t - timedelta(seconds=15)).isoformat()
    s = json.loads(_get(web, f"/api/machines/m1/scores?since={since.replace('+', '%2B')}")[2])
    assert [r["seq"] for r in s["scores"]] == [2] and s["alerts"][-1]["state"] == "anomalous"
    assert [r["seq"] for r in json.loads(_get(web, "/api/machines/m1/scores")[2])["scores"]] == [1, 2]
    h = json.loads(_get(web, "/api/health")[2])
    assert (h["connected"], h["outbox_depth"], h["rss_mb"]) == (True, 3, 123.4)
    assert h["machines"]["m1"]["latency_ms"] == {"median": 12.0} and h["uptime_s"] >= 0
    clips = json.loads(_get(web, "/api/machines/m1/clips")[2])["clips"]
    assert [c["name"] for c in clips] == ["20260304T050607.890Z_seq7"] and clips[0]["seq"] == 7
    assert _get(web, "/api/machines/nope/scores")[0] == 404
    assert _get(web, "/api/machines/m1/scores?since=yesterday")[0] == 400


@pytest.mark.parametrize("since", ["nan", "NaN", "inf", "-inf", "1e309", "-1e309", "yesterday"])
def test_a_since_that_is_no_time_gets_400_with_a_one_line_json_error(web, since):
    # float() takes all but the last; before, "nan" came back 200 with NaN in a body no JSON parser reads.
    web.score("m1", 1, datetime.now(timezone.utc), 1.5, 2.0, False, 0.25, -31.0)
    assert web.history.flush()
    status, headers, body = _get(web, f"/api/machines/m1/scores?since={since}")
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert body.count(b"\n") == 0
    answer = json.loads(body, parse_constant=lambda c: pytest.fail(f"{c} in the body"))
    assert set(answer) == {"error"} and answer["error"].startswith("since: ") and repr(since) in answer["error"]
    status, _, body = _get(web, "/api/machines/m1/scores?since=0")
    assert status == 200 and [r["seq"] for r in json.loads(body)["scores"]] == [1]


def test_a_token_is_required_and_a_wrong_one_gets_401(web):
    basic = lambda pw: "Basic " + base64.b64encode(f"tech:{pw}".encode()).decode()  # noqa: E731
    for headers in ({"Authorization": None}, {"Authorization": "Bearer wrong-token-xx"},
                    {"Authorization": basic("wrong")}, {"Authorization": None, "Cookie": "edge_asd_token=wrong"}):
        status, h, _ = _get(web, "/api/health", headers)
        assert status == 401 and h["WWW-Authenticate"].startswith("Basic"), headers
    assert _get(web, "/?token=wrong", {"Authorization": None})[0] == 401
    for headers in ({"Authorization": basic(TOKEN)}, {"Authorization": None, "Cookie": f"edge_asd_token={TOKEN}"}):
        assert _get(web, "/api/health", headers)[0] == 200, headers
    status, h, body = _get(web, f"/?token={TOKEN}", {"Authorization": None})
    assert status == 200 and b"<html" in body
    assert "HttpOnly" in h["Set-Cookie"] and "SameSite=Strict" in h["Set-Cookie"]
    assert h["Referrer-Policy"] == "no-referrer"


def test_no_endpoint_writes(web):
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/", "/api/machines", f"/clips/m1/{web.saved.name}"):
            status, h, _ = _get(web, path, method=method)
            assert status == 405 and h["Allow"] == "GET, HEAD", (method, path)
    assert web.saved.is_file()


@pytest.mark.parametrize("path", [
    "/clips/m1/../../secret.wav",
    "/clips/m1/..%2F..%2Fsecret.wav",
    "/clips/m1/%2e%2e%2f%2e%2e%2fsecret.wav",
    "/clips/m1/%252e%252e%252fsecret.wav",
    "/clips/..%2F/secret.wav",
    "/clips/%2e%2e/secret.wav",
    "/clips/m1/..%5C..%5Csecret.wav",
    "/clips/m1/%2Fetc%2Fpasswd",
    "/clips/m1/20260304T050607.890Z_seq7.wav%00.txt",
    "/clips/m1/20260304T050607.890Z_seq7.wav/..%2F..%2F..%2Fsecret.wav",
    "/clips/m1/..%2F20260304T050607.890Z_seq7.wav",
    "/static/../../config.py",
    "/static/..%2F..%2Fconfig.py",
    "/static/%2e%2e%2fserver.py",
    "/static/server.py",
    "/../../../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/api/machines/..%2Fm1/scores",
])
def test_paths_from_urls_never_reach_past_the_checks(web, path):
    status, _, body = _get(web, path)
    assert status in (400, 404), (path, status)
    assert b"secret" not in body and b"root:" not in body and b"import" not in body


def test_an_evidence_clip_and_its_spectrogram_are_served(web):
    status, h, body = _get(web, f"/clips/m1/{web.saved.name}")
    assert status == 200 and h["Content-Type"] == "audio/wav" and body == web.saved.read_bytes()
    whole = body
    assert h["Accept-Ranges"] == "bytes"
    n = len(whole)
    for rng, start, end in (("bytes=0-11", 0, 11), ("bytes=100-", 100, n - 1), ("bytes=-44", n - 44, n - 1),
                            ("bytes=10-999999999", 10, n - 1)):
        status, h, body = _get(web, f"/clips/m1/{web.saved.name}", {"Range": rng})
        assert status == 206 and body == whole[start:end + 1], rng
        assert h["Content-Range"] == f"bytes {start}-{end}/{n}", rng
    assert _get(web, f"/clips/m1/{web.saved.name}", {"Range": f"bytes={len(whole)}-"})[0] == 416
    status, h, png = _get(web, f"/clips/m1/{web.saved.stem}.png")
    assert status == 200 and h["Content-Type"] == "image/png" and _decode_png(png).shape[0] == 128
    assert _get(web, "/static/app.js")[0] == 200 and _get(web, "/static/style.css")[0] == 200


def test_slow_and_stalled_clients_never_hold_up_the_hooks(web):
    # Every slot taken by clients that send nothing: one more is refused at once, not queued.
    idle = [socket.create_connection(("127.0.0.1", web.port), timeout=30) for _ in range(web.cfg.threads)]
    try:
        deadline = time.monotonic() + 30
        while web.httpd.refused == 0:
            with socket.create_connection(("127.0.0.1", web.port), timeout=30) as s:
                s.sendall(b"GET /api/health HTTP/1.0\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.0 503"):
                    break
            assert time.monotonic() < deadline, "a client beyond the bound was not refused"
        # The idle ones are dropped after client_timeout_s, and the page answers again.
        for s in idle:
            assert s.recv(1024) == b"", "an idle client is closed after client_timeout_s"
        deadline = time.monotonic() + 30
        while _get(web, "/api/health")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        for s in idle:
            s.close()
    # A live client that never reads: the score hook still returns for every clip.
    stalled = socket.create_connection(("127.0.0.1", web.port), timeout=30)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(f"GET /api/events HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    deadline = time.monotonic() + 30
    while web.hub.count == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    t = datetime.now(timezone.utc)
    done = threading.Event()

    def flood():
        for i in range(20000):
            web.score("m1", i, t, 1.0, 2.0, False, 0.0, -30.0)
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    assert done.wait(120), "the score hook blocked on a client that does not read"
    deadline = time.monotonic() + 60
    while web.hub.count:
        assert time.monotonic() < deadline, "a client that fell a whole queue behind is dropped"
        time.sleep(0.1)
    stalled.close()


def test_the_debouncer_says_how_many_more_clips_turn_the_state():
    from edge_asd.scoring.alerts import Debouncer

    d = Debouncer(raise_after=3, clear_after=2)
    assert d.clips_until_change() is None
    assert [(d.update(True), d.clips_until_change()) for _ in range(3)] == [(None, 2), (None, 1), ("anomalous", None)]
    assert (d.update(False), d.clips_until_change()) == (None, 1)
    assert (d.update(True), d.clips_until_change()) == (None, None), "an odd clip resets the count"


def test_a_history_file_from_before_gets_the_new_columns(tmp_path):
    import sqlite3

    path = tmp_path / "h.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE scores (machine TEXT NOT NULL, t REAL NOT NULL, seq INTEGER NOT NULL, "
                       "score REAL NOT NULL, threshold REAL NOT NULL, anomalous INTEGER NOT NULL, "
                       "p_target REAL NOT NULL, dbfs REAL NOT NULL);"
                       "INSERT INTO scores VALUES ('m1', 100.0, 1, 1.0, 2.0, 0, 0.1, -30.0);")
    conn.commit()
    conn.close()
    h = History(path, retention_s=1e12)
    h.start()
    try:
        h.add_score("m1", 200.0, 2, 3.0, 2.0, True, 0.1, -30.0, 1.8, [{"lo_hz": 1.0, "hi_hz": 2.0, "z": 6.0}])
        assert h.flush()
        rows = h.scores("m1", 0.0)
    finally:
        h.stop()
    assert [(r["seq"], r["ratio"], r["bands"]) for r in rows] == [(1, None, None), (2, 1.8, [{"lo_hz": 1.0, "hi_hz": 2.0, "z": 6.0}])]


def test_the_alert_list_has_each_raise_with_its_clear_peak_bands_and_clips(web):
    t0 = datetime.now(timezone.utc) - timedelta(minutes=10)
    at = lambda s: t0 + timedelta(seconds=s)  # noqa: E731
    band = [{"lo_hz": 2900.0, "hi_hz": 3100.0, "z": 15.0}]
    for i, (ratio, anomalous) in enumerate([(0.1, False), (1.5, True), (3.0, True), (2.0, True), (0.2, False),
                                            (0.1, False), (0.0, False), (1.4, True), (1.6, True)]):
        web.score("m1", i + 1, at(10 * i), 1.0 + ratio, 2.0, anomalous, 0.1, -30.0, ratio=ratio,
                  bands=band if anomalous else [], pending=None)
    web.alert("m1", at(20), "anomalous")  # raised by the clips of 10 and 20 s
    web.alert("m1", at(50), "normal")
    web.alert("m1", at(80), "anomalous")  # still open
    store = web.store
    peak = store.save("m1", _clip(), at(20), 3)
    assert web.history.flush()
    status, headers, body = _get(web, "/api/machines/m1/alerts")
    assert status == 200 and headers["Content-Type"] == "application/json"
    events = json.loads(body)["alerts"]
    assert [e["cleared"] is None for e in events] == [True, False], "newest first"
    old = events[1]
    assert (old["raised"], old["cleared"], old["duration_s"]) == pytest.approx((at(20).timestamp(), at(50).timestamp(), 30.0))
    assert old["first_clip_t"] == pytest.approx(at(10).timestamp()), "from the run of clips that raised it"
    assert (old["peak_ratio"], old["peak_seq"], old["bands"], old["anomalous_clips"]) == (3.0, 3, band, 3)
    assert old["clips"] == [peak.stem]
    assert events[0]["peak_ratio"] == 1.6 and events[0]["anomalous_clips"] == 2
    detail = json.loads(_get(web, f"/api/machines/m1/clips/{peak.stem}")[2])
    assert (detail["ratio"], detail["bands"], detail["seq"], detail["reference"]) == (3.0, band, 3, None)
    assert detail["seconds"] == pytest.approx(1.0)
    for bad in ("nan", "inf", "1e309"):
        status, headers, body = _get(web, f"/api/machines/m1/alerts?since={bad}")
        assert status == 400 and json.loads(body)["error"].startswith("since: ")
    summary = json.loads(_get(web, "/api/machines")[2])
    assert summary["machines"][0]["ratio"] == 1.6 and len(summary["spectrogram"]["mel_hz"]) == 65


def test_a_favicon_is_served(web):
    status, h, body = _get(web, "/favicon.ico")
    assert status == 200 and h["Content-Type"] == "image/x-icon"
    count, = struct.unpack("<H", body[4:6])
    size, offset = struct.unpack("<II", body[14:22])
    assert count == 1 and body[offset:offset + 8] == b"\x89PNG\r\n\x1a\n" and offset + size == len(body)
    assert _decode_png(body[offset:]).shape == (32, 32, 3)


@pytest.fixture
def web_with_bundle(tiny_bundle, tmp_path):
    """The server over a daemon stand-in whose machine m1 scores with the tiny bundle (section 00)."""
    from edge_asd.daemon.config import WebConfig
    from edge_asd.runtime.scorer import load_scorer

    store = EvidenceStore(tmp_path / "evidence", 10 * 1024 * 1024)
    scorer = load_scorer(tiny_bundle, backend="onnx-cpu")
    cfg = WebConfig(enabled=True, host="127.0.0.1", port=0, token=TOKEN, history=tmp_path / "h.sqlite",
                    threads=4, client_timeout_s=1.0)
    scoring = MachineScoring(scorer, "00")
    links = WebLinks(machines=[("m1", "file:x")], config_path=tmp_path / "c.toml", started_mono=time.monotonic(),
                     connected=lambda: True, scoring=lambda mid: scoring if mid == "m1" else None,
                     evidence_root=lambda: store.root)
    w = WebServer(cfg, "box1", links)
    w.store = store  # the evidence the tests save clips into
    w.start()
    yield w
    w.stop()


def test_the_nearest_normal_reference_is_served_beside_an_evidence_clip(web_with_bundle, tiny_data):
    from edge_asd.io.dcase import list_clips
    from edge_asd.runtime.bundle import open_bundle

    w = web_with_bundle
    listing = open_bundle(w._scorer("m1").bundle_path).manifest.to_dict()["reference_clips"]["00"]
    source = next(c for c in list_clips(tiny_data, "fan", "train") if c.name + ".wav" == listing[1]["source"]
                  or c.path.name == listing[1]["source"])
    x, _ = sf.read(source.path, dtype="float32")
    saved = w.store.save("m1", x, datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc), 9)
    d = json.loads(_get(w, f"/api/machines/m1/clips/{saved.stem}")[2])
    ref = d["reference"]
    assert ref["name"] == listing[1]["file"].split("/")[-1], "a normal clip's nearest reference is itself"
    assert ref["section"] == "00" and ref["seconds"] == listing[1]["seconds"]
    status, h, flac = _get(w, ref["audio"])
    assert status == 200 and h["Content-Type"] == "audio/flac" and flac[:4] == b"fLaC"
    status, h, part = _get(w, ref["audio"], {"Range": "bytes=0-3"})
    assert status == 206 and part == b"fLaC"
    status, h, png = _get(w, ref["png"])
    assert status == 200 and _decode_png(png).shape[0] == 128
    assert json.loads(_get(w, "/api/machines")[2])["machines"][0]["band_evidence"] is True
    for bad in ("..%2Fmanifest.json", "..%2F..%2Fsecret.flac", "section_00_00.wav", "section_99_00.flac",
                "%2e%2e", "manifest.json", "section_00_00.flac%00.png"):
        status, _, body = _get(w, f"/api/machines/m1/references/{bad}")
        assert status == 404 and b"fLaC" not in body, bad
    assert _get(w, f"/api/machines/nope/references/{ref['name']}")[0] == 404


# --- the whole thing, in a real browser ---------------------------------------------------------


def _chromium() -> None:
    browser, driver = binaries()
    if browser is None or driver is None:
        why = "headless Chromium is not installed (Debian packages 'chromium' and 'chromium-driver')"
        if os.environ.get("CI"):
            pytest.fail(why)  # deploy/setup.sh installs them: CI must not pass by skipping
        pytest.skip(why)
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")


def _wait(what: str, f, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def _recording_with_a_fault(tiny_bundle, tiny_data, path: Path) -> float:
    """fan1's recording: section-00 normal clips, four with a 3 kHz tone, normals again (~3 minutes of clips);
    returns a threshold between the normals' and the faults' scores, as the bundle scores them."""
    from edge_asd.io.audio import read_audio
    from edge_asd.io.dcase import list_clips
    from edge_asd.runtime.scorer import load_scorer

    scorer = load_scorer(tiny_bundle, backend="onnx-cpu")
    normals = [read_audio(c.path) for c in list_clips(tiny_data, "fan", "test") if c.section == "00" and c.label == "normal"]
    # the lower-scoring half: the tiny model's normals spread widely, and the test needs a clear margin
    normals = sorted(normals, key=lambda x: scorer.score(x, "00").score)[: max(2, len(normals) // 2)]
    t = np.arange(normals[0].size) / SR
    faults = [(x + x.std() * np.sin(2 * np.pi * 3000.0 * t)).astype(np.float32) for x in normals]
    n_scores = [scorer.score(x, "00").score for x in normals]
    f_scores = [scorer.score(x, "00").score for x in faults]
    assert min(f_scores) > max(n_scores), (n_scores, f_scores)
    clips = [normals[i % len(normals)] for i in range(20)] + faults[:4] + [normals[i % len(normals)] for i in range(20)]
    sf.write(path, np.concatenate(clips), SR, subtype="FLOAT")
    return (min(f_scores) + max(n_scores)) / 2


def _controls_smaller_than_44(drv) -> list:
    return drv.execute_script("""
        return [...document.querySelectorAll('button, a, audio, input, select')].filter(e => e.offsetParent !== null)
            .map(e => { const r = e.getBoundingClientRect(); return [e.tagName, e.className, r.width, r.height]; })
            .filter(([, , w, h]) => w < 44 || h < 44);
    """)


def test_the_page_in_a_real_browser(tiny_bundle, tiny_data, edge_asd_exe, tmp_path, daemons):
    _chromium()
    clip_s = float(bundle_manifest(tiny_bundle)["audio"].get("clip_seconds", 10.0))
    noise_wavs(tmp_path / "rec", 3, clip_s)
    (tmp_path / "fault").mkdir()
    threshold = _recording_with_a_fault(tiny_bundle, tiny_data, tmp_path / "fault" / "fan1.wav")
    (tmp_path / "token").write_text(TOKEN + "\n")
    port = free_port()
    shots = os.environ.get("EDGE_ASD_WEB_SCREENSHOTS")  # docs/: EDGE_ASD_WEB_SCREENSHOTS=docs pytest -k real_browser
    with Broker(tmp_path) as broker:
        cfg = write_config(
            tmp_path / "edge-asd.toml", broker.port, tiny_bundle, f"file:{tmp_path / 'fault'}",
            # As fast as it scores: three minutes of clips at once, with an alert raised and cleared.
            machine=f'realtime = false\nloop = false\nsection = "00"\nthreshold = {threshold}\n',
            storage=f'evidence = "{tmp_path / "evidence"}"\n',
            alerts="raise_after = 2\nclear_after = 2\n",
            top="",
        )
        # A second machine in real time, looping: a new clip every clip_s seconds while the page is open.
        cfg.write_text(cfg.read_text() + f'[[machines]]\nid = "fan2"\nbundle = "{tiny_bundle}"\n'
                                          f'source = "file:{tmp_path / "rec"}"\nrealtime = true\nloop = true\n'
                                          f'threshold = -1000.0\n'
                                          f'[web]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
                                          f'token_file = "{tmp_path / "token"}"\n')
        d = Daemon(edge_asd_exe, cfg)
        daemons.append(d)
        d.wait_log(rf"web page on http://127.0.0.1:{port}/")
        d.wait_log(r"machine fan1: source ended", timeout=300)
        base = f"http://127.0.0.1:{port}"

        # The wrong token gets 401, the right one the API.
        for headers in ({}, {"Authorization": "Bearer not-the-token"}):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(urllib.request.Request(f"{base}/api/machines", headers=headers), timeout=30)
            assert err.value.code == 401
        req = urllib.request.Request(f"{base}/api/machines", headers={"Authorization": f"Bearer {TOKEN}"})
        info = json.load(urllib.request.urlopen(req, timeout=30))
        assert [m["id"] for m in info["machines"]] == ["fan1", "fan2"]

        drv = headless_chromium(tmp_path / "chromium-profile", window="1280,1000")
        try:
            drv.set_script_timeout(60)
            drv.get(f"{base}/?token={TOKEN}")
            _wait("a panel per machine", lambda: len(drv.find_elements("css selector", "section.machine")) == 2)
            assert [e.text for e in drv.find_elements("css selector", "section.machine h2")] == ["fan1", "fan2"]
            fan1 = drv.find_element("css selector", "#machine-fan1")
            _wait("fan1's scores drawn", lambda: int(drv.execute_script(
                "return document.querySelector('#machine-fan1 .timeline')?.dataset.points || 0")) >= 40)
            # Fit to the data: three minutes of points spread over the chart, not squeezed at its right edge.
            spread = drv.execute_script("""
                const svg = document.querySelector('#machine-fan1 .timeline');
                const xs = svg.querySelector('polyline.score').getAttribute('points').trim().split(' ').map(p => +p.split(',')[0]);
                return (Math.max(...xs) - Math.min(...xs)) / svg.getBoundingClientRect().width;
            """)
            assert spread > 0.8, spread
            assert drv.execute_script("return document.querySelector('#machine-fan1 .timeline').dataset.scale") == "ratio"
            for cls in ("tick-x", "tick-y"):
                labels = [e.text for e in fan1.find_elements("css selector", f".timeline text.{cls}")]
                assert len(labels) >= 3 and all(labels), (cls, labels)
            assert fan1.find_element("css selector", ".timeline text.th-label").text == "threshold"
            assert fan1.find_elements("css selector", ".timeline line.threshold")
            assert int(drv.execute_script(
                "return document.querySelector('#machine-fan1 .timeline').dataset.spans")) == 1
            # The 1 h button: the same points squeezed into the last hour (and back with "fit").
            fan1.find_element("css selector", ".range button[data-hours='1']").click()
            assert drv.execute_script("return document.querySelector('#machine-fan1 .range button.on').dataset.hours") == "1"
            fan1.find_element("css selector", ".range button[data-hours='0']").click()

            # The alert list: the fault's alert, raised and cleared, with its peak ratio, bands and clips.
            _wait("a cleared alert", lambda: fan1.find_elements("css selector", ".alerts li.cleared"))
            alert = fan1.find_element("css selector", ".alerts li.cleared")
            assert "raised" in alert.text and "cleared" in alert.text and "peak ratio" in alert.text, alert.text
            assert "kHz" in alert.text, "the 3 kHz tone is named in the alert's bands: " + alert.text
            links = alert.find_elements("css selector", "a.cliplink")
            assert len(links) >= 2, alert.text

            # Its clips: the ratio and bands beside each, and the nearest normal reference playing beside it.
            _wait("a clip with its reference", lambda: fan1.find_elements("css selector", ".clips figure.normal audio"))
            entry = fan1.find_element("css selector", ".clips > li")
            assert "ratio" in entry.find_element("css selector", ".title").text
            assert entry.find_elements("css selector", ".spec .band.up"), "the deviating band is marked"
            hz_labels = [e.get_attribute("textContent") for e in entry.find_elements("css selector", ".now .spec .hz")]
            assert "1.0 kHz" in hz_labels, hz_labels
            assert entry.find_elements("css selector", ".now .spec .sec")
            state = drv.execute_async_script("""
                const done = arguments[arguments.length - 1];
                const a = document.querySelector('#machine-fan1 .clips figure.normal audio');
                const report = e => done({event: e, state: a.readyState, duration: a.duration, src: a.currentSrc,
                                          error: a.error && a.error.code});
                if (a.readyState >= 3) report('already'); else {
                    a.addEventListener('canplay', () => report('canplay'));
                    a.addEventListener('error', () => report('error'));
                    a.preload = 'auto'; a.load();
                }
            """)
            assert state["error"] is None and state["state"] >= 3, state
            assert "/references/" in state["src"] and 0 < state["duration"] <= 5.01, state
            now_audio = drv.execute_async_script("""
                const done = arguments[arguments.length - 1];
                const a = document.querySelector('#machine-fan1 .clips figure.now audio');
                const report = () => done({state: a.readyState, duration: a.duration, error: a.error && a.error.code});
                if (a.readyState >= 1) report(); else { a.addEventListener('loadedmetadata', report);
                                                        a.addEventListener('error', report); a.load(); }
            """)
            assert now_audio["error"] is None and now_audio["duration"] == pytest.approx(clip_s, abs=0.05), now_audio

            # fan2: live, over server-sent events, without a reload; a counting debouncer is explained.
            panel = drv.find_element("css selector", "#machine-fan2")
            seq0 = int(_wait("fan2's first score", lambda: panel.get_attribute("data-last-seq")))
            drv.execute_script("window.__not_reloaded = true")
            _wait("a new score on the page", lambda: int(panel.get_attribute("data-last-seq")) > seq0, timeout=180)
            assert drv.execute_script("return window.__not_reloaded === true"), "the page was reloaded"
            assert drv.execute_script("return badge({state: 'normal', anomalous: true, pending: 2})[0]") == \
                "above threshold, alert after 2 more clips"
            assert drv.find_element("css selector", "#h-broker").text == "connected"
            assert not fan1.find_element("css selector", ".nobands").is_displayed(), "the tiny bundle has bands"
            assert drv.execute_async_script("""
                const done = arguments[arguments.length - 1];
                fetch('/favicon.ico').then(r => done(r.status + ' ' + r.headers.get('content-type')));
            """) == "200 image/x-icon"
            # From the browser too: without the page's cookie, a wrong token is refused.
            assert drv.execute_async_script("""
                const done = arguments[arguments.length - 1];
                fetch('/api/health', {credentials: 'omit', headers: {Authorization: 'Bearer not-the-token'}})
                    .then(r => done(r.status));
            """) == 401
            assert _controls_smaller_than_44(drv) == []
            if shots:
                drv.execute_script("document.querySelector('#machine-fan1 .alerts').scrollIntoView()")
                drv.execute_script("window.scrollTo(0, 0)")
                drv.save_screenshot(str(Path(shots) / "web.png"))

            # A phone: one column, nothing wider than the screen, no scroll box inside the page, fingers' controls.
            drv.set_window_size(390, 844)
            drv.get(f"{base}/")
            _wait("fan1's scores drawn on the phone", lambda: int(drv.execute_script(
                "return document.querySelector('#machine-fan1 .timeline')?.dataset.points || 0")) >= 40)
            _wait("a clip with its reference", lambda: drv.find_elements("css selector", "#machine-fan1 .clips figure.normal"))
            width = drv.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], width
            boxes = drv.execute_script("""
                return [...document.querySelectorAll('body *')].filter(e => {
                    const s = getComputedStyle(e);
                    return ['auto', 'scroll'].includes(s.overflowY) && e.scrollHeight > e.clientHeight + 1;
                }).map(e => e.className);
            """)
            assert boxes == [], boxes
            assert _controls_smaller_than_44(drv) == []
            if shots:
                drv.save_screenshot(str(Path(shots) / "web-phone.png"))
        finally:
            drv.quit()
        d.send(15)
        assert d.wait(60) == 0, d.log()
