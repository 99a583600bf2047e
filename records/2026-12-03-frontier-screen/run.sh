#!/usr/bin/env bash
# The frontier at small certified bounds, screened at 200 steps on a CPU: the paper's Shakespeare model
# (records/2026-11-22-shakespeare-cpu's flags, tiny Shakespeare, byte-level) with the soft cap, varying the
# hidden cap w_max, the lm_head cap and the two logit scales, to find the lowest val loss whose sharp certified
# bound is at most 10^2, 10^4 and 10^6. Checkpoints go to checkpoints/frontier/ (git-ignored) for scoring
# with records/2026-11-22-shakespeare-h100/gap-screen/eval_protocols.py.
#   JOBS=2 bash records/2026-12-03-frontier-screen/run.sh [NAME ...]      (from any directory)
# NAME: see flags() below (default: all, in that order). JOBS runs go in parallel, one thread each.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=records/2026-12-03-frontier-screen
STEPS=${STEPS:-200}; JOBS=${JOBS:-2}
NAMES=${*:-w1 w1-fls4 w1-fls3 w1-als4 w1.25 w1.5 w1.5-als4 w1.75-als4 w2 w2-als4}
if [ ! -f data/tinyshakespeare/meta.json ]; then
  TXT=../shared/data/tinyshakespeare.txt
  [ -f "$TXT" ] || { TXT=data/tinyshakespeare/input.txt; python data/tinyshakespeare.py --out "$TXT"; }
  python data/shakespeare.py --input "$TXT" --out data/tinyshakespeare
fi
COMMON=(--preset=shakespeare --train_files='data/tinyshakespeare/*train*.bin' --val_files='data/tinyshakespeare/*val*.bin'
        --num_iterations="$STEPS" --val_every=50 --log_every=25 --muon_momentum_warmup_steps=30 --dtype=auto
        --constraint=soft_cap --seed=0 --log_dir="$HERE/logs" --checkpoint_dir=checkpoints/frontier)
flags() {  # the flags of one named run: w<cap>[-als<attn logit scale>][-fls<final logit scale>][-head<lm_head cap>]
  local name=$1 w rest out
  w=${name%%-*}; w=${w#w}; rest=${name#"w$w"}
  out="--w_max=$w --lm_head_w_max=$w"
  for part in ${rest//-/ }; do
    case "$part" in
      als*)  out="$out --attn_logit_scale=${part#als}" ;;
      fls*)  out="$out --final_logit_scale=${part#fls}" ;;
      head*) out="$out --lm_head_w_max=${part#head}" ;;
      *) echo "unknown part $part of run $name" >&2; exit 2 ;;
    esac
  done
  echo "$out"
}
for name in $NAMES; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  # shellcheck disable=SC2046
  OMP_NUM_THREADS=1 python train_gpt.py "${COMMON[@]}" --run_id="$name" $(flags "$name") \
    > "/tmp/frontier-$name.out" 2>&1 || echo "run $name exited with $?" &
done
wait
