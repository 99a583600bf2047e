#!/usr/bin/env bash
# The whole protocol-table set as one wave on one lent GPU, scored there: every run of run.sh's default set (or
# NAMES) at once, then eval_protocols.py on every checkpoint. The checkpoints (20 MB each) and the runs' logs live
# in temporary folders outside OUT_DIR; OUT_DIR gets three files: wave.txt (the console), logs.tar.gz (the runs'
# logs, packed on any exit, an interrupt included) and scores.json (the device tool returns at most 8 files).
#   bash records/2026-12-03-protocol-table/gpu_wave.sh OUT_DIR
# Data: the tiny Shakespeare shards of data/tinyshakespeare/ (git-ignored), built here by run.sh from
# ../shared/data/tinyshakespeare.txt with data/shakespeare.py --input (no package needed); the GPU machine has
# neither ../shared nor a network, so the device call carries the built shards (2 MB). Its own call, after
# bench/gpu_check.sh's (each takes most of the 10 minutes one command may run):
#   run(command='bash records/2026-12-03-protocol-table/gpu_wave.sh "$OUT"', carry=["data/tinyshakespeare"], timeout_s=540)
# Then here: tar xzf logs.tar.gz -C records/2026-12-03-protocol-table/ (a logs-gpu/ folder) and
#   python records/2026-12-03-protocol-table/table.py scores.json --logs records/2026-12-03-protocol-table/logs-gpu
# WAVE_SECONDS (default 420) boxes the training; runs cut by it keep their last timed checkpoint and are
# scored at the step they reached (table.py leaves them out of the means and names them).
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=records/2026-12-03-protocol-table
OUT=${1:?give the results folder: bash $HERE/gpu_wave.sh OUT_DIR}
if [ ! -f data/tinyshakespeare/meta.json ]; then
  echo "gpu_wave.sh: no data/tinyshakespeare/meta.json: build it where ../shared exists (bash $HERE/run.sh builds it" \
       "first) and carry data/tinyshakespeare in the device call" >&2
  exit 2
fi
mkdir -p "$OUT"
CKPT=$(mktemp -d)  # run.sh names each run's console /tmp/<this folder's name>-<run>.out
LOGS_PARENT=$(mktemp -d)
LOGS=$LOGS_PARENT/logs-gpu
mkdir -p "$LOGS"

pack_logs() {  # logs.tar.gz in OUT_DIR, replaced atomically
  if tar czf "$OUT/.logs.tar.gz.tmp" -C "$LOGS_PARENT" logs-gpu; then
    mv -f "$OUT/.logs.tar.gz.tmp" "$OUT/logs.tar.gz"
  else
    rm -f "$OUT/.logs.tar.gz.tmp"
  fi
}
finish() {
  local code=$?
  trap - EXIT INT TERM
  pack_logs
  rm -rf "$CKPT" "$LOGS_PARENT" "/tmp/$(basename "$CKPT")"-*.out
  exit "$code"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run.sh and this script call `python`; the GPU image may name its interpreter python3 only
if ! command -v python >/dev/null 2>&1; then
  mkdir -p "$CKPT/bin"
  ln -s "$(command -v python3)" "$CKPT/bin/python"
  export PATH="$CKPT/bin:$PATH"
fi

NAMES=${NAMES:-w2-s0 w2-s1 w2-s2 w3-s0 w3-s1 w3-s2 adamw-s0 w1-als4 w1.25 w1.75-als4}
JOBS=$(wc -w <<< "$NAMES")
{
  echo "gpu_wave: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  # checkpoint_minutes=1: a run cut by the box keeps at most a minute's loss
  rc=0
  # shellcheck disable=SC2086
  JOBS=$JOBS CKPT_DIR=$CKPT LOG_DIR=$LOGS EXTRA="--checkpoint_minutes=1" \
    timeout --signal=TERM --kill-after=30 "${WAVE_SECONDS:-420}" bash "$HERE/run.sh" $NAMES || rc=$?
  echo "training: exit $rc after ${SECONDS}s"
  # cut by the box, run.sh is gone but its runs are still finishing their step and checkpoint
  while pgrep -f -- "--checkpoint_dir=$CKPT" > /dev/null; do sleep 1; done
  for name in $NAMES; do tail -n 3 "/tmp/$(basename "$CKPT")-$name.out" 2>&1 | sed "s/^/$name: /" || true; done
  rc=0
  python records/2026-11-22-shakespeare-h100/gap-screen/eval_protocols.py "$CKPT"/*.pt --json > "$OUT/scores.json" || rc=$?
  echo "scoring: exit $rc after ${SECONDS}s"
} 2>&1 | tee "$OUT/wave.txt"
