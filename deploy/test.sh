#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite; CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
