#!/usr/bin/env bash
# Set up a fresh machine for edge-asd development: system packages (a real MQTT
# broker, PortAudio and a PulseAudio virtual microphone for the tests) and a
# virtual environment in .venv with the runtime, the desktop side and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  if ! command -v mosquitto >/dev/null || ! command -v pulseaudio >/dev/null || ! ldconfig -p | grep -q libportaudio \
      || ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt-get update -qq
    # chromium and chromium-driver: tests/test_web.py opens the device's page in a real headless browser.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto pulseaudio libportaudio2 libasound2-plugins sox openssl \
      chromium chromium-driver >/dev/null
  fi
else
  echo "setup: not root or no apt-get; install mosquitto, pulseaudio, libportaudio2, libasound2-plugins, sox, chromium, chromium-driver yourself" >&2
fi

PY=${PYTHON:-python3}
# Debian's own python3 ships venv and ensurepip as a separate package.
if ! "$PY" -c "import ensurepip, venv" >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# timm needs torchvision; these two versions are known to install together
# (see ../shared/ENVIRONMENT.md). The runtime itself needs neither.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e '.[train,dev,pretrained]'
.venv/bin/python -c "import edge_asd, train, export; print('edge-asd', edge_asd.__version__, 'ready in .venv')"
