#!/bin/sh
# Install edge-asd as a systemd service.
#
#   sudo deploy/install.sh dist/edge_asd-0.1.0-py3-none-any.whl [options]
#
# Options:
#   --jetson             create the venv with --system-site-packages so that JetPack's
#                        tensorrt (python3-libnvinfer) is importable, and install the
#                        onnxruntime-gpu wheel given with --ort-wheel
#   --ort-wheel FILE     an onnxruntime-gpu wheel built for this JetPack (see README-jetson.md)
#   --prefix DIR         install under DIR (default /opt/edge-asd); the unit is rewritten to match
#   --start              start the service now (default: enable only, so that the config can be
#                        edited first)
#
# Safe to run again to upgrade: the venv is updated in place, an existing config and password
# file are never overwritten.
set -eu

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

[ "$#" -ge 1 ] || usage
WHEEL=$1; shift
PREFIX=/opt/edge-asd
JETSON=0
ORT_WHEEL=
START=0
while [ "$#" -gt 0 ]; do
    case "$1" in
        --jetson) JETSON=1 ;;
        --ort-wheel) ORT_WHEEL=${2:?--ort-wheel needs a file}; shift ;;
        --prefix) PREFIX=${2:?--prefix needs a folder}; shift ;;
        --start) START=1 ;;
        -h|--help) usage ;;
        *) echo "install.sh: unknown option $1" >&2; usage ;;
    esac
    shift
done

HERE=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root (sudo)" >&2; exit 1; }
[ -f "$WHEEL" ] || { echo "install.sh: $WHEEL: no such wheel" >&2; exit 2; }
[ -z "$ORT_WHEEL" ] || [ -f "$ORT_WHEEL" ] || { echo "install.sh: $ORT_WHEEL: no such wheel" >&2; exit 2; }
command -v python3 >/dev/null || { echo "install.sh: python3 is required" >&2; exit 1; }

echo "== system packages"
if command -v apt-get >/dev/null; then
    # libportaudio2: sounddevice's PortAudio; python3-venv: the service's own environment.
    apt-get install -y --no-install-recommends libportaudio2 python3-venv
else
    echo "   not a Debian/Ubuntu system: install PortAudio (libportaudio2) and python3-venv yourself"
fi

echo "== service user edge-asd"
if ! id edge-asd >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/edge-asd --no-create-home \
        --shell /usr/sbin/nologin --comment "edge-asd monitoring daemon" edge-asd
fi
# The unit adds these groups with SupplementaryGroups=; membership here only helps when the
# daemon is run by hand with `sudo -u edge-asd` to test a microphone.
for g in audio video; do
    getent group "$g" >/dev/null && usermod -a -G "$g" edge-asd
done

echo "== virtual environment $PREFIX/venv"
install -d -m 0755 "$PREFIX" "$PREFIX/bundles"
if [ ! -x "$PREFIX/venv/bin/python" ]; then
    if [ "$JETSON" -eq 1 ]; then
        # JetPack installs TensorRT's Python bindings system-wide (python3-libnvinfer);
        # they are not on PyPI for Jetson, so the venv must see the system site-packages.
        python3 -m venv --system-site-packages "$PREFIX/venv"
    else
        python3 -m venv "$PREFIX/venv"
    fi
fi
"$PREFIX/venv/bin/pip" install --upgrade pip >/dev/null
if [ -n "$ORT_WHEEL" ]; then
    # Installed first so that the edge-asd wheel's onnxruntime requirement is already met by
    # the GPU build (a CPU onnxruntime beside it would shadow the CUDA/TensorRT providers).
    "$PREFIX/venv/bin/pip" install "$ORT_WHEEL"
fi
"$PREFIX/venv/bin/pip" install --upgrade "$WHEEL"
"$PREFIX/venv/bin/edge-asd" --help >/dev/null

echo "== configuration /etc/edge-asd"
install -d -m 0750 -o root -g edge-asd /etc/edge-asd
if [ ! -e /etc/edge-asd/config.toml ]; then
    install -m 0640 -o root -g edge-asd "$HERE/config.example.toml" /etc/edge-asd/config.toml
    echo "   wrote /etc/edge-asd/config.toml: edit device_id, [mqtt] and [[machines]]"
else
    echo "   keeping the existing /etc/edge-asd/config.toml"
fi
if [ ! -e /etc/edge-asd/mqtt_password ]; then
    # LoadCredential= refuses to start the unit when its file is missing; an empty file is
    # harmless until the config names the credential (then the daemon says it is empty).
    install -m 0600 -o root -g root /dev/null /etc/edge-asd/mqtt_password
    echo "   created an empty /etc/edge-asd/mqtt_password (root-only): put the broker password in it"
fi

echo "== systemd unit"
sed "s#/opt/edge-asd/venv#$PREFIX/venv#g" "$HERE/edge-asd.service" > /etc/systemd/system/edge-asd.service
chmod 0644 /etc/systemd/system/edge-asd.service
systemctl daemon-reload
systemctl enable edge-asd.service
if [ "$START" -eq 1 ]; then
    "$PREFIX/venv/bin/edge-asd" run --config /etc/edge-asd/config.toml --validate-config
    systemctl restart edge-asd.service
    systemctl --no-pager status edge-asd.service || true
fi

cat <<MSG

edge-asd is installed and enabled.
  1. copy bundles to $PREFIX/bundles/ and edit /etc/edge-asd/config.toml
  2. check it:   sudo -u edge-asd $PREFIX/venv/bin/edge-asd run --config /etc/edge-asd/config.toml --validate-config
  3. start it:   systemctl start edge-asd && journalctl -u edge-asd -f
  4. after edits: systemctl reload edge-asd
MSG
