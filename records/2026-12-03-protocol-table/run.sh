#!/usr/bin/env bash
# 2000-step Shakespeare runs for the protocol table and the small-bound frontier (issue 17, items 2 and 3):
# the CPU record's flags (records/2026-11-22-shakespeare-cpu) at the paper's full length, each saving a
# checkpoint to checkpoints/protocol/ (git-ignored) for eval_protocols.py. A run whose checkpoint exists is
# resumed from it (exactly), so a set cut off at the end of a session goes on where it stopped; a complete
# run is reported as such and skipped.
#   JOBS=2 bash records/2026-12-03-protocol-table/run.sh [NAME ...]      (from any directory)
# NAME: w<cap>[-als<attn logit scale>][-fls<final logit scale>][-head<lm_head cap>][-hlr<lm_head lr>][-s<seed>]
# (soft cap), or
# adamw[-s<seed>] (AdamW + weight decay 0.1, no constraint). Default: the protocol table's seven runs, then
# the 200-step frontier screen's best per bound bucket at full length.
# STEPS (default 2000), VAL_EVERY (100), CKPT_DIR and LOG_DIR let the 200-step frontier screen
# (records/2026-12-03-frontier-screen/run.sh) and the GPU wave (gpu_wave.sh) run through this script; EXTRA
# holds flags added to every run.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=records/2026-12-03-protocol-table
STEPS=${STEPS:-2000}; JOBS=${JOBS:-2}; VAL_EVERY=${VAL_EVERY:-100}
CKPT_DIR=${CKPT_DIR:-checkpoints/protocol}; LOG_DIR=${LOG_DIR:-$HERE/logs}
NAMES=${*:-w2-s0 w2-s1 w2-s2 w3-s0 w3-s1 w3-s2 adamw-s0 w1-als4 w1.25 w1.75-als4}
if [ ! -f data/tinyshakespeare/meta.json ]; then
  TXT=../shared/data/tinyshakespeare.txt
  [ -f "$TXT" ] || { TXT=data/tinyshakespeare/input.txt; python data/tinyshakespeare.py --out "$TXT"; }
  python data/shakespeare.py --input "$TXT" --out data/tinyshakespeare
fi
COMMON=(--preset=shakespeare --train_files='data/tinyshakespeare/*train*.bin' --val_files='data/tinyshakespeare/*val*.bin'
        --num_iterations="$STEPS" --val_every="$VAL_EVERY" --log_every=25 --muon_momentum_warmup_steps=30 --dtype=auto
        --checkpoint_minutes=10 --log_dir="$LOG_DIR" --checkpoint_dir="$CKPT_DIR")
flags() {  # the flags of one named run
  local name=$1 seed=0 parts out=""
  case "$name" in *-s[0-9]*) seed=${name##*-s}; name=${name%-s*} ;; esac
  out="--seed=$seed"
  if [ "$name" = adamw ]; then echo "$out --optimizer=adamw --constraint=none --weight_decay=0.1"; return; fi
  [[ "$name" == w* ]] || { echo "unknown run $1" >&2; return 2; }
  parts=${name#w}; local w=${parts%%-*}; parts=${parts#"$w"}
  out="$out --constraint=soft_cap --w_max=$w --lm_head_w_max=$w"
  for part in ${parts//-/ }; do
    case "$part" in
      als*)  out="$out --attn_logit_scale=${part#als}" ;;
      fls*)  out="$out --final_logit_scale=${part#fls}" ;;
      head*) out="$out --lm_head_w_max=${part#head}" ;;
      hlr*)  out="$out --lm_head_lr=${part#hlr}" ;;
      *) echo "unknown part $part of run $1" >&2; return 2 ;;
    esac
  done
  echo "$out"
}
for name in $NAMES; do flags "$name" > /dev/null; done  # every name is checked before anything runs
for name in $NAMES; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  resume=(); [ -f "$CKPT_DIR/$name.pt" ] && resume=(--resume="$CKPT_DIR/$name.pt")
  # shellcheck disable=SC2046
  OMP_NUM_THREADS=1 python train_gpt.py "${COMMON[@]}" --run_id="$name" $(flags "$name") ${EXTRA:-} "${resume[@]}" \
    >> "/tmp/$(basename "$CKPT_DIR")-$name.out" 2>&1 || echo "run $name exited with $?" &
done
wait
