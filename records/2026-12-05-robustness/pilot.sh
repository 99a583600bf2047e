#!/usr/bin/env bash
# A pilot at reduced width while the 2000-step protocol checkpoints train: the same question on five small
# models that differ only in their constraint (3 blocks, d 64, 2 heads of 32, seq 64: the smoke preset with the
# paper's depth), trained STEPS (400) steps on tiny Shakespeare (byte-level) in seconds each on a CPU, then
# tools/robustness.py and report.py into pilot/. Not the paper's model: a quick read of the trend only.
#   bash records/2026-12-05-robustness/pilot.sh [NAME ...]      (from any directory)
# NAME: w<cap> (Muon + soft cap at w_max = lm_head_w_max = cap) or adamw (AdamW + weight decay 0.1, no constraint).
# Default: w1 w1.5 w2 w3 adamw. Checkpoints and logs go to WORK_DIR (/tmp/robustness-pilot); an existing
# checkpoint is reused.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=records/2026-12-05-robustness
WORK_DIR=${WORK_DIR:-/tmp/robustness-pilot}; STEPS=${STEPS:-400}; OUT_DIR=${OUT_DIR:-$HERE/pilot}
EPS=${EPS:-0.001,0.003,0.01,0.03,0.1}; TOKENS=${TOKENS:-8192}
NAMES=${*:-w1 w1.5 w2 w3 adamw}
if [ ! -f data/tinyshakespeare/meta.json ]; then
  TXT=../shared/data/tinyshakespeare.txt
  [ -f "$TXT" ] || { TXT=data/tinyshakespeare/input.txt; python data/tinyshakespeare.py --out "$TXT"; }
  python data/shakespeare.py --input "$TXT" --out data/tinyshakespeare
fi
flags() {
  case "$1" in
    adamw) echo "--optimizer=adamw --constraint=none --weight_decay=0.1" ;;
    w[0-9]*) echo "--constraint=soft_cap --w_max=${1#w} --lm_head_w_max=${1#w}" ;;
    *) echo "unknown run $1: use w<cap> or adamw" >&2; return 2 ;;
  esac
}
for name in $NAMES; do flags "$name" > /dev/null; done
paths=()
for name in $NAMES; do
  if [ ! -f "$WORK_DIR/ckpt/$name.pt" ]; then
    # shellcheck disable=SC2046
    OMP_NUM_THREADS=1 python train_gpt.py --preset=smoke --n_layer=3 --num_iterations="$STEPS" --val_every="$STEPS" \
      --val_tokens=8192 --dtype=fp32 --compile=no --train_files='data/tinyshakespeare/*train*.bin' \
      --val_files='data/tinyshakespeare/*val*.bin' --run_id="$name" --log_dir="$WORK_DIR/logs" \
      --checkpoint_dir="$WORK_DIR/ckpt" $(flags "$name") > "$WORK_DIR-$name.out" 2>&1 \
      || { echo "pilot.sh: run $name failed; see $WORK_DIR-$name.out" >&2; exit 1; }
  fi
  paths+=("$WORK_DIR/ckpt/$name.pt")
done
mkdir -p "$OUT_DIR"
OMP_NUM_THREADS=1 python tools/robustness.py "${paths[@]}" --json --eps="$EPS" --tokens="$TOKENS" \
  > "$OUT_DIR/robustness.json.tmp"
mv "$OUT_DIR/robustness.json.tmp" "$OUT_DIR/robustness.json"
python "$HERE/report.py" "$OUT_DIR/robustness.json" --out "$OUT_DIR"
