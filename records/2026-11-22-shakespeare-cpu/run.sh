#!/usr/bin/env bash
# Reproduce this record set: the paper's Shakespeare model (d 256, 3 blocks, 4 heads, seq 256, batch 64)
# on tiny Shakespeare, byte-level, on a 2-core CPU. Steps are cut from the paper's 2000 to STEPS (see
# README.md) so the whole set fits a CPU session; the model and batch are the paper's.
#   STEPS=200 SEEDS="0" JOBS=2 bash records/2026-11-22-shakespeare-cpu/run.sh [RUN_NAME ...]
# LOG_DIR (default: this folder's logs/) and OUT (table.md and plots; default: this folder) keep other run sets,
# e.g. the 2000-step GPU set (records/2026-11-22-shakespeare-h100), from overwriting this record.
# RUN_NAME: softcap-w{1,2,3} specnorm-w{1,2,3} adamw-wd speedrun-arch normfree-unconstrained (default: all).
# JOBS runs go in parallel, each with OMP_NUM_THREADS=1 (on 2 cores this beats one run with 2 threads).
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=records/2026-11-22-shakespeare-cpu
STEPS=${STEPS:-200}; SEEDS=${SEEDS:-0}; JOBS=${JOBS:-2}; LOG_DIR=${LOG_DIR:-$HERE/logs}; OUT=${OUT:-$HERE}
NAMES=${*:-softcap-w1 softcap-w2 softcap-w3 specnorm-w1 specnorm-w2 specnorm-w3 adamw-wd speedrun-arch normfree-unconstrained}
if [ ! -f data/tinyshakespeare/meta.json ]; then  # byte-level shards of tiny Shakespeare (downloaded if not at hand)
  TXT=../shared/data/tinyshakespeare.txt
  [ -f "$TXT" ] || { TXT=data/tinyshakespeare/input.txt; python data/tinyshakespeare.py --out "$TXT"; }
  python data/shakespeare.py --input "$TXT" --out data/tinyshakespeare
fi
COMMON=(--preset=shakespeare --train_files='data/tinyshakespeare/*train*.bin' --val_files='data/tinyshakespeare/*val*.bin'
        --num_iterations="$STEPS" --val_every=50 --log_every=25 --muon_momentum_warmup_steps=30 --dtype=auto
        --log_dir="$LOG_DIR" --checkpoint_dir=/tmp/record-ckpt)
flags() {  # the flags of one named run
  case "$1" in
    softcap-w*)  echo "--constraint=soft_cap --w_max=${1#softcap-w} --lm_head_w_max=${1#softcap-w}" ;;
    specnorm-w*) echo "--constraint=spectral_normalize --w_max=${1#specnorm-w} --lm_head_w_max=${1#specnorm-w}" ;;
    adamw-wd)    echo "--optimizer=adamw --constraint=none --weight_decay=0.1" ;;
    speedrun-arch) echo "--arch=speedrun --constraint=none" ;;
    normfree-unconstrained) echo "--constraint=none" ;;
    *) echo "unknown run $1" >&2; exit 2 ;;
  esac
}
for seed in $SEEDS; do
  for name in $NAMES; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    # shellcheck disable=SC2046
    OMP_NUM_THREADS=1 python train_gpt.py "${COMMON[@]}" --seed="$seed" --run_id="$name-s$seed" $(flags "$name") \
      > "/tmp/record-$name-s$seed.out" 2>&1 || echo "run $name-s$seed exited with $?" &
  done
done
wait
mkdir -p "$OUT"
python tools/compare.py "$LOG_DIR" --bound=appendix_c --plots "$OUT" > "$OUT/table.md" || true  # the bound table.md shows
