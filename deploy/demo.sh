#!/usr/bin/env bash
# The main job on embedded defaults, on a CPU, in about ten minutes:
#   synth -> train (stage 1 + 2 + AE reference) -> report -> export -> score -> evaluate
#   -> replay the test clips through the daemon to a private Mosquitto, watched by `edge-asd watch`.
# Everything lands in ./demo. Set DEMO_MACHINES, DEMO_EPOCHS or DEMO_CONFIG to change the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

OUT=${DEMO_OUT:-demo}
MACHINES=${DEMO_MACHINES:-fan,gearbox,bearing,valve}
CONFIG=${DEMO_CONFIG:-deploy/demo_train.json}
rm -rf "$OUT"
mkdir -p "$OUT"
T0=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - T0 )) s] $*"; }

step "synthesize machine sounds (DCASE layout)"
edge-asd synth "$OUT/data" --machines "$MACHINES" --sections 2 --train-source 40 --train-target 10 --test 10 --seed 0

for m in ${MACHINES//,/ }; do
  step "train $m: stage-1 extractor, stage-2 inlier models, DCASE autoencoder reference"
  edge-asd-train --data "$OUT/data" --machine "$m" --out "$OUT/runs/$m/demo" --config "$CONFIG" \
    --device cpu --approach specialization --detector knn --k 1 --baseline-epochs 20 --quiet
done

step "the report's Tables 1-4 on the test clips"
edge-asd-train report --data "$OUT/data" --out "$OUT/runs" --device cpu --quiet
cat "$OUT/runs/report/report.md" | sed -n '1,60p'

FIRST=${MACHINES%%,*}
step "export $FIRST to a deployment bundle"
edge-asd-export "$OUT/runs/$FIRST/demo" --out "$OUT/$FIRST.asd"

step "offline scoring with the bundle (no torch) and the DCASE metrics"
edge-asd score "$OUT/$FIRST.asd" "$OUT/data/$FIRST/test" --out "$OUT/submission" --quiet
edge-asd evaluate "$OUT/submission"

step "replay the test clips through the daemon to a private MQTT broker"
.venv/bin/python deploy/demo_replay.py --bundle "$OUT/$FIRST.asd" --clips "$OUT/data/$FIRST/test" --workdir "$OUT/daemon"

step "done in $(( $(date +%s) - T0 )) s; everything is in $OUT/"
