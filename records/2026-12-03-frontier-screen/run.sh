#!/usr/bin/env bash
# The frontier at small certified bounds, screened at 200 steps on a CPU: the paper's Shakespeare model
# (records/2026-11-22-shakespeare-cpu's flags, tiny Shakespeare, byte-level) with the soft cap, varying the
# hidden cap w_max, the lm_head cap and the two logit scales, to find the lowest val loss whose sharp certified
# bound is at most 10^2, 10^4 and 10^6. Checkpoints go to checkpoints/frontier/ (git-ignored) for scoring
# with records/2026-11-22-shakespeare-h100/gap-screen/eval_protocols.py.
#   JOBS=2 bash records/2026-12-03-frontier-screen/run.sh [NAME ...]      (from any directory)
# NAME: w<cap>[-als<attn logit scale>][-fls<final logit scale>][-head<lm_head cap>] (default: all ten, in
# this order); the runs go through records/2026-12-03-protocol-table/run.sh (the same flags at 200 steps, seed
# 0, validation every 50 steps), JOBS in parallel, one thread each.
set -euo pipefail
cd "$(dirname "$0")/../.."
NAMES=${*:-w1 w1-fls4 w1-fls3 w1-als4 w1.25 w1.5 w1.5-als4 w1.75-als4 w2 w2-als4}
# shellcheck disable=SC2086
STEPS=${STEPS:-200} VAL_EVERY=50 CKPT_DIR=checkpoints/frontier LOG_DIR=records/2026-12-03-frontier-screen/logs \
  exec bash records/2026-12-03-protocol-table/run.sh $NAMES
