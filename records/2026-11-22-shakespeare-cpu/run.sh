#!/usr/bin/env bash
# Reproduce this record set: the paper's Shakespeare model (d 256, 3 blocks, 4 heads, seq 256, batch 64)
# on tiny Shakespeare, byte-level, on a 2-core CPU. Steps are cut from the paper's 2000 to STEPS (see
# README.md) so the whole set fits a CPU session; the model and batch are the paper's.
#   bash records/2026-11-22-shakespeare-cpu/run.sh [STEPS] [SEEDS...]
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=records/2026-11-22-shakespeare-cpu
STEPS=${1:-200}; shift || true
SEEDS=${*:-0}
[ -f data/tinyshakespeare/meta.json ] || python data/shakespeare.py --input ../shared/data/tinyshakespeare.txt --out data/tinyshakespeare
COMMON=(--preset=shakespeare --train_files='data/tinyshakespeare/*train*.bin' --val_files='data/tinyshakespeare/*val*.bin'
        --num_iterations="$STEPS" --val_every=50 --log_every=25 --muon_momentum_warmup_steps=30 --dtype=bf16 --log_dir="$HERE/logs" --checkpoint_dir=/tmp/record-ckpt)
run() { python train_gpt.py "${COMMON[@]}" "$@" || echo "run $* exited with $?"; }
for seed in $SEEDS; do
  for w in 1 2 3; do
    run --seed="$seed" --run_id="softcap-w$w-s$seed" --constraint=soft_cap --w_max="$w" --lm_head_w_max="$w"
    run --seed="$seed" --run_id="specnorm-w$w-s$seed" --constraint=spectral_normalize --w_max="$w" --lm_head_w_max="$w"
  done
  run --seed="$seed" --run_id="adamw-wd-s$seed" --optimizer=adamw --constraint=none --weight_decay=0.1
  run --seed="$seed" --run_id="speedrun-arch-s$seed" --arch=speedrun --constraint=none
  run --seed="$seed" --run_id="normfree-unconstrained-s$seed" --constraint=none
done
python tools/compare.py "$HERE/logs" --plots "$HERE" > "$HERE/table.md"
