#!/usr/bin/env bash
# Accuracy under attack and certified, against eps, for the protocol-table checkpoints (issue 23, item 5):
# tools/robustness.py over every checkpoint in CKPT_DIR (default checkpoints/protocol/, git-ignored) into
# robustness.json, then report.py's table.md and accuracy_vs_eps.png, all in this folder.
#   bash records/2026-12-05-robustness/run.sh [NAME ...]      (from any directory)
# NAME: a run id (CKPT_DIR/NAME.pt). Default: every checkpoint there, the w1*, w2*, w3*, adamw* runs first,
# then the rest (the paper-literal <= 2 model, the speedrun arch, ... whatever is present).
# Each checkpoint is copied to SNAP_DIR first: the training runs rewrite theirs every 10 minutes (atomically,
# but the scores should name one step). EPS, TOKENS, RESTARTS, STEPS, DTYPE set the sweep; RATIO=1 adds the
# empirical Lipschitz lower bounds (--ratio, float64 advised: DTYPE=float64); OUT_DIR where the outputs go.
# JOBS (default 1) splits the checkpoints over that many one-thread processes, each writing its own
# robustness-<i>.json (robustness.json with JOBS=1); report.py reads them together.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=records/2026-12-05-robustness
CKPT_DIR=${CKPT_DIR:-checkpoints/protocol}; SNAP_DIR=${SNAP_DIR:-/tmp/robustness-checkpoints}
OUT_DIR=${OUT_DIR:-$HERE}
EPS=${EPS:-0.001,0.003,0.01,0.03,0.1}; TOKENS=${TOKENS:-4096}; RESTARTS=${RESTARTS:-2}; STEPS=${STEPS:-20}
DTYPE=${DTYPE:-float32}
if [ "$#" -gt 0 ]; then
  paths=(); for name in "$@"; do paths+=("$CKPT_DIR/$name.pt"); done
else
  shopt -s nullglob
  first=("$CKPT_DIR"/w1*.pt "$CKPT_DIR"/w2*.pt "$CKPT_DIR"/w3*.pt "$CKPT_DIR"/adamw*.pt)
  rest=(); for p in "$CKPT_DIR"/*.pt; do [[ " ${first[*]} " == *" $p "* ]] || rest+=("$p"); done
  paths=("${first[@]}" "${rest[@]}")
fi
[ "${#paths[@]}" -gt 0 ] || { echo "run.sh: no checkpoints in $CKPT_DIR; train them with records/2026-12-03-protocol-table/run.sh" >&2; exit 2; }
mkdir -p "$SNAP_DIR"
snaps=()
for p in "${paths[@]}"; do
  [ -f "$p" ] || { echo "run.sh: $p: no such checkpoint" >&2; exit 2; }
  cp "$p" "$SNAP_DIR/" && snaps+=("$SNAP_DIR/$(basename "$p")")
done
ratio=(); [ "${RATIO:-0}" = 1 ] && ratio=(--ratio)
JOBS=${JOBS:-1}; [ "$JOBS" -le "${#snaps[@]}" ] || JOBS=${#snaps[@]}
[ "$JOBS" -gt 1 ] && export OMP_NUM_THREADS=1
outs=(); pids=()
for ((i = 0; i < JOBS; i++)); do
  part=(); for ((k = i; k < ${#snaps[@]}; k += JOBS)); do part+=("${snaps[$k]}"); done
  out="$OUT_DIR/robustness.json"; [ "$JOBS" -gt 1 ] && out="$OUT_DIR/robustness-$((i + 1)).json"
  outs+=("$out")
  # each part writes a temp file and renames it when complete
  (python tools/robustness.py "${part[@]}" --json \
     --eps="$EPS" --tokens="$TOKENS" --restarts="$RESTARTS" --steps="$STEPS" --dtype="$DTYPE" "${ratio[@]}" \
     > "$out.tmp" && mv "$out.tmp" "$out") &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
python "$HERE/report.py" "${outs[@]}" --out "$OUT_DIR"
