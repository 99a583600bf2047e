#!/usr/bin/env bash
# Accuracy at the paper's "2-Lipschitz" (issue 23, item 2), screened at 200 steps on a CPU: the paper's
# Shakespeare model (records/2026-11-22-shakespeare-cpu's flags, tiny Shakespeare, byte-level) with the soft cap
# near w_max 1, varying the two logit scales (down to 1), w_max and the lm_head cap, to find the best val accuracy
# whose paper-literal bound (lipschitz_bound_paper_literal_log10, the paper's recursion taken literally) stays at
# most 2, and the best whose sharp certified bound (lipschitz_bound_sharp_log10, sound) does. Checkpoints go to
# checkpoints/paper-bound/ (git-ignored) for eval_protocols.py and tools/robustness.py.
#   JOBS=1 bash records/2026-12-05-paper-bound-screen/run.sh [NAME ...]      (from any directory)
# NAME as in records/2026-12-03-protocol-table/run.sh: w<cap>[-als<s>][-fls<s>][-head<cap>][-hlr<lm_head lr>];
# the runs go through that script (the same flags at 200 steps, seed 0, validation every 50 steps), JOBS at a
# time, one thread each.
set -euo pipefail
cd "$(dirname "$0")/../.."
NAMES=${*:-w1-als1-fls2.5 w1-als2-fls2 w1-als1-fls2 w1.25-als1-fls1 w1-als1-fls1-head2 w1-als1-fls1}
# shellcheck disable=SC2086
STEPS=${STEPS:-200} VAL_EVERY=50 JOBS=${JOBS:-1} CKPT_DIR=checkpoints/paper-bound \
  LOG_DIR=records/2026-12-05-paper-bound-screen/logs exec bash records/2026-12-03-protocol-table/run.sh $NAMES
