#!/usr/bin/env bash
# Launch the Lipschitz speedrun. With GPUs: torchrun over every local GPU with the defaults at the top of
# train_gpt.py (GPT-2 small on FineWeb10B, downloaded on first use). Without: the "shakespeare" preset on the
# CPU, from shards built offline. Extra arguments pass through to train_gpt.py, e.g.  bash run.sh --w_max=2
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

NGPU=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -gt 0 ]; then
    "$PYTHON" data/cached_fineweb10B.py 8  # resumable; skips shards already present and valid
    exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" train_gpt.py "$@"
fi

echo "run.sh: no GPU found; training the Shakespeare preset on the CPU (see README)."
if [ "$("$PYTHON" -c "import torch, muon; print(muon.default_orth_dtype(torch.device('cpu')) == torch.bfloat16)")" != True ]; then
    echo "run.sh: this CPU has no native bf16 (AVX512-BF16/AMX), so training runs in float32, 2-4x slower:" \
         "4-7 s per step measured on 2-core AMD EPYCs (2.2-4 hours for the 2000 steps), against 0.92 s on a" \
         "2-core Xeon with AMX (records/2026-12-03-protocol-table/logs/w2-s0.txt, step 125)." \
         "The run prints its own estimate after 3 steps; Ctrl-C stops it with a checkpoint that --resume continues."
fi
if ! ls data/shakespeare/*train*.bin >/dev/null 2>&1; then
    "$PYTHON" data/shakespeare.py
fi
exec "$PYTHON" train_gpt.py --preset=shakespeare "$@"
