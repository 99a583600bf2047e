#!/usr/bin/env bash
# The whole protocol-table set as one wave on one lent GPU, scored there: every run of run.sh's default set (or
# NAMES) at once, then eval_protocols.py on every checkpoint. The checkpoints (20 MB each) stay on the GPU
# machine; OUT_DIR gets what the tables need: scores.json, logs.tar.gz (the runs' logs), wave.txt (the console).
#   bash records/2026-12-03-protocol-table/gpu_wave.sh OUT_DIR
# Device call (data/tinyshakespeare is git-ignored and ../shared does not travel, so carry the shards):
#   run(command='bash records/2026-12-03-protocol-table/gpu_wave.sh "$OUT"', carry=["data/tinyshakespeare"], timeout_s=540)
# Then here: tar xzf logs.tar.gz -C records/2026-12-03-protocol-table/ (a logs-gpu/ folder) and
#   python records/2026-12-03-protocol-table/table.py scores.json --logs records/2026-12-03-protocol-table/logs-gpu
# WAVE_SECONDS (default 420) boxes the training; runs cut by it keep their last timed checkpoint and are
# scored at the step they reached (table.py leaves them out of the means and names them).
set -uo pipefail
cd "$(dirname "$0")/../.."
HERE=records/2026-12-03-protocol-table
OUT=${1:?give the results folder: bash $HERE/gpu_wave.sh OUT_DIR}
mkdir -p "$OUT/logs-gpu"
CKPT=$(mktemp -d)
NAMES=${NAMES:-w2-s0 w2-s1 w2-s2 w3-s0 w3-s1 w3-s2 adamw-s0 w1-als4 w1.25 w1.75-als4}
JOBS=$(wc -w <<< "$NAMES")
{
  echo "gpu_wave: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  # checkpoint_minutes=1: a run cut by the box keeps at most a minute's loss
  # shellcheck disable=SC2086
  JOBS=$JOBS CKPT_DIR=$CKPT LOG_DIR="$OUT/logs-gpu" EXTRA="--checkpoint_minutes=1" \
    timeout --signal=TERM --kill-after=30 "${WAVE_SECONDS:-420}" bash "$HERE/run.sh" $NAMES
  echo "training: exit $? after ${SECONDS}s"
  # cut by the box, run.sh is gone but its runs are still finishing their step and checkpoint
  while pgrep -f -- "--checkpoint_dir=$CKPT" > /dev/null; do sleep 1; done
  for name in $NAMES; do tail -n 3 "/tmp/$(basename "$CKPT")-$name.out" | sed "s/^/$name: /"; done
  python records/2026-11-22-shakespeare-h100/gap-screen/eval_protocols.py "$CKPT"/*.pt --json > "$OUT/scores.json"
  echo "scoring: exit $? after ${SECONDS}s"
} 2>&1 | tee "$OUT/wave.txt"
tar czf "$OUT/logs.tar.gz" -C "$OUT" logs-gpu && rm -rf "$OUT/logs-gpu" "$CKPT"
