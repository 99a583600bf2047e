#!/usr/bin/env bash
# The gap screen: the paper's Shakespeare model at soft cap w_max 2, 200 steps on a CPU, one change per run
# against the base run (which is, flag for flag, softcap-w2-s0 of records/2026-11-22-shakespeare-cpu).
#   bash records/2026-11-22-shakespeare-h100/gap-screen/run.sh [NAME ...]     (from any directory)
# NAME: base char65 linsched nozeroinit mass5 embnorm reshalf base-s1 nozeroinit-s1 (default: all). mass5,
# embnorm and reshalf stop after 100 steps (--max_steps_this_run; the lr schedule is the 200-step one) and
# compare with base at step 100. (nozeroinit-s0 was run as 100 steps plus a --resume for the other 100.)
# JOBS (default 2) runs go in parallel, each on one thread. The flags lr_final_frac, zero_init_out,
# blocks_mass, embed_grad_norm_max and residual_lr_decay are this record's additions to train_gpt.py. The last
# three changed nothing and have since left train_gpt.py: mass5, embnorm and reshalf need the train_gpt.py
# whose source heads their logs (logs/mass5-s0.txt, ...), e.g. cut out of the log into a scratch checkout.
# Default: the runs the current code can make.
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=records/2026-11-22-shakespeare-h100/gap-screen
JOBS=${JOBS:-2}
NAMES=${*:-base char65 linsched nozeroinit base-s1 nozeroinit-s1}
TXT=../shared/data/tinyshakespeare.txt
[ -f "$TXT" ] || { TXT=data/tinyshakespeare/input.txt; [ -f "$TXT" ] || python data/tinyshakespeare.py --out "$TXT"; }
[ -f /tmp/gap-byte/meta.json ] || python data/shakespeare.py --input "$TXT" --out /tmp/gap-byte
[ -f /tmp/gap-char/meta.json ] || python data/shakespeare.py --input "$TXT" --out /tmp/gap-char --tokenizer char
COMMON=(--preset=shakespeare --num_iterations=200 --val_every=50 --log_every=25 --muon_momentum_warmup_steps=30
        --dtype=auto --constraint=soft_cap --w_max=2 --lm_head_w_max=2 --log_dir="$HERE/logs"
        --checkpoint_dir=/tmp/gap-ckpt)
flags() {  # data set and flags of one named run
  case "$1" in
    base|base-s1) echo "byte" ;;
    char65)     echo "char" ;;
    linsched)   echo "byte --cooldown_frac=1 --lr_final_frac=0" ;;
    nozeroinit|nozeroinit-s1) echo "byte --zero_init_out=0" ;;
    mass5|embnorm|reshalf) echo "run $1: its flag has left train_gpt.py; run it with the source in logs/$1-s0.txt" >&2
                exit 2 ;;
    *) echo "unknown run $1" >&2; exit 2 ;;
  esac
}
for name in $NAMES; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  read -r data extra <<< "$(flags "$name")"
  seed=0; case "$name" in *-s1) seed=1; name=${name%-s1} ;; esac
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 python train_gpt.py "${COMMON[@]}" --train_files="/tmp/gap-$data/*train*.bin" \
    --val_files="/tmp/gap-$data/*val*.bin" --seed="${seed}" --run_id="$name-s$seed" $extra > "/tmp/gap-$name-s$seed.out" 2>&1 \
    || echo "run $name exited with $?" &
done
wait
