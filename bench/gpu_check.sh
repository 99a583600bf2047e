#!/usr/bin/env bash
# One GPU check of this checkout, at most 8 minutes of wall time on one H100/H200, compile included, no network,
# nothing installed. Each stage runs under `timeout`, so a crash or a hang costs only that stage:
#   versions  python, torch, triton, CUDA, GPU (nvidia-smi), commit
#   shards    synthetic shards of uniformly random GPT-2 token ids (bench/step_gpu.py's write_synthetic_shards)
#   anchor    the speedrun record #21 patched for one GPU (bench/anchors/speedrun_1gpu.py, a copy of ../shared/anchors)
#   soft_cap  python train_gpt.py --constraint=soft_cap   } 30 steps of 8 x 48K tokens each, on the same shards, after
#   none      python train_gpt.py --constraint=none       } 2 warm-up steps, no step-0 validation (--val_at_start=0);
#                                                           TORCH_LOGS=recompiles,graph_breaks in <stage>.err
#   kernels   python bench/constraints.py --device cuda (the constraint and Triton-vs-cuBLAS kernel tables)
#   muon      python bench/step_gpu.py --steps=0 --split_steps=3 (Muon's ms inside one compiled step)
#   tests     python -m pytest -q tests/test_cuda.py -m cuda (after the timed runs, so nothing runs beside them)
#
#   bash bench/gpu_check.sh OUT_DIR              # on a CUDA machine: OUT_DIR/results.md and OUT_DIR/raw.tar.gz
#   bash bench/gpu_check.sh --dry-run [OUT_DIR]  # any machine, seconds: checks what it would run parses, prints the plan
#   bash bench/gpu_check.sh --prepare            # copy ../shared/anchors/*.py to bench/anchors/ (git-ignored; carry it)
#   bash bench/gpu_check.sh --cpu-smoke OUT_DIR  # the whole path on the CPU with tiny runs (the anchor fails there; the
#                                                # tests stage runs every CPU test of tests/test_cuda.py): for tests
#
# Time: each stage has a box (seconds, below); stage i must end by box_1 + ... + box_i after the script started
# (the CUDA check before stage 1 included), so time a stage does not use passes on to the next ones and the
# whole run ends by the sum of the boxes (460 s) plus at most one kill grace (8 s), the summary and the tar
# (~2 s): under 8 minutes whatever happens.
# Environment: PYTHON (default python3), GPU_CHECK_STEPS (default 30), GPU_CHECK_SKIP=tests,kernels,... (the
# skipped stages' boxes pass on to the next stages), GPU_CHECK_BOX_<stage>=seconds, GPU_CHECK_ANCHORS_SRC
# (default ../shared/anchors), GPU_CHECK_ANCHOR (default bench/anchors/speedrun_1gpu.py), GPU_CHECK_COMMIT
# (reported as the commit where the copy has no .git).
# Outputs: OUT_DIR holds only results.md and raw.tar.gz, both rewritten (atomically) after every stage and on any
# exit, an interrupt included, so a run killed from outside, even by SIGKILL, leaves at most those two files and
# whatever they had measured (the device tool brings back at most 8). raw.tar.gz unpacks to raw/: each stage's
# stdout/stderr, the runs' logs, stages.tsv and plan.txt. Shards, checkpoints and temporary files live in a
# scratch folder outside OUT_DIR (mktemp -d), deleted on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# The boxes, in seconds (sum 460). One H100, torch 2.11, 2026-11-22: the anchor ran at 765 ms/step, ours at
# ~1480 ms/step, and each printed its first step line 1-3 minutes after starting (compilation). No box can
# hold the slow end of that for all three runs in 8 minutes, so: unused time passes on, the anchor is stopped
# as soon as its measurement is complete, a run cut short still reports its steps (train_gpt.py stops after
# the step on SIGTERM and logs its peak), and the ratios compare runs at the last step both reached.
#   versions  20: the CUDA check's torch import (~5-10 s on a cold disk) counts here, then one more torch
#                 import (warm) and nvidia-smi.
#   shards    15: 20M + 2M random uint16 tokens (~2 s) after a torch import.
#   anchor   105: ~10 s start + 60-120 s compile + 10 untimed warm-up steps (~7 s) + 30 steps (~21 s); it is
#                 stopped at its `train peak memory allocated` line, before its final validation (another
#                 compile, at 256K tokens per sequence), which this check does not need.
#   soft_cap 135: ~10 s start + compile of the train graph (cold cache) + 2 warm-up steps (~3 s) + 30 steps
#                 (~45 s) + the last validation (compiling the eval graph) and the final checkpoint. The heaviest.
#   none      65: the same graphs from the inductor cache that soft_cap filled (the model is the same; only
#                 Muon's constraint differs): start, warm-up, 30 steps, the last validation.
#   kernels   20: Triton JIT per shape and dtype, then CUDA-event timings (a few seconds of GPU work).
#   muon      40: bench/step_gpu.py's in-process split of the full compiled step: ~10 s start, the compile
#                 again (dynamo traces anew; inductor's cache, warm from soft_cap, serves the kernels),
#                 2 warm-up steps measuring the kernel dispatch + 3 timed steps (~6 s).
#   tests     60: tests/test_cuda.py's CUDA tests (compiled flex backward, kernels, a smoke run); last, so that
#                 nothing they compile or allocate runs beside the timed runs.
STAGES=(versions shards anchor soft_cap none kernels muon tests)
declare -A BOXES=([versions]=20 [shards]=15 [anchor]=105 [soft_cap]=135 [none]=65 [kernels]=20 [muon]=40 [tests]=60)
MIN_GIVEN=3    # a stage with fewer seconds than this left is skipped
TOTAL_LIMIT=470  # the boxes must sum to at most this (plus kill grace, summary and tar: under 480 s)

usage() {  # the comment block at the top of this file
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$ROOT/bench/gpu_check.sh"
}

MODE=run
SMOKE=0
OUT=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) MODE=dry ;;
    --prepare) MODE=prepare ;;
    --cpu-smoke) SMOKE=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "bench/gpu_check.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    *)
      if [ -n "$OUT" ]; then echo "bench/gpu_check.sh: one OUT_DIR only (got $OUT and $arg)" >&2; exit 2; fi
      OUT="$arg" ;;
  esac
done

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  PY="$(command -v python3 || command -v python || echo python3)"
fi

# ----------------------------------------------------------------------------- anchors
ANCHOR_SRC="${GPU_CHECK_ANCHORS_SRC:-$ROOT/../shared/anchors}"
ANCHOR_SRC="$(cd "$ANCHOR_SRC" 2>/dev/null && pwd || echo "$ANCHOR_SRC")"
ANCHOR_DIR="$ROOT/bench/anchors"
ANCHOR="${GPU_CHECK_ANCHOR:-$ANCHOR_DIR/speedrun_1gpu.py}"  # (tests point GPU_CHECK_ANCHOR at a stand-in)

anchor_state() {  # missing | stale | current | unchecked (present, no ../shared/anchors to compare with)
  if [ ! -f "$ANCHOR" ]; then echo missing; return; fi
  if [ ! -d "$ANCHOR_SRC" ]; then echo unchecked; return; fi
  local f
  for f in "$ANCHOR_SRC"/*.py; do
    [ -e "$f" ] || continue
    if ! cmp -s "$f" "$ANCHOR_DIR/$(basename "$f")"; then echo stale; return; fi
  done
  echo current
}

prepare_anchors() {
  if [ ! -f "$ANCHOR_SRC/speedrun_1gpu.py" ]; then
    echo "bench/gpu_check.sh --prepare: no $ANCHOR_SRC/speedrun_1gpu.py to copy" >&2
    return 1
  fi
  mkdir -p "$ANCHOR_DIR"
  local f n=0
  for f in "$ANCHOR_SRC"/*.py "$ANCHOR_SRC"/*.diff "$ANCHOR_SRC"/README.md; do
    [ -e "$f" ] || continue
    if ! cmp -s "$f" "$ANCHOR_DIR/$(basename "$f")"; then
      cp "$f" "$ANCHOR_DIR/"
      n=$((n + 1))
    fi
  done
  echo "anchors: $ANCHOR_DIR up to date with $ANCHOR_SRC ($n file(s) copied); name bench/anchors in the device call's carry"
}

if [ "$MODE" = prepare ]; then
  prepare_anchors
  exit 0
fi

# ----------------------------------------------------------------------------- before anything is made
if [ "$MODE" = run ] && [ "$SMOKE" = 0 ]; then
  # no CUDA: say so in one line. No nvidia-smi and no /dev/nvidia0 settles it without importing torch.
  if { ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /dev/nvidia0 ]; } ||
     ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    echo "bench/gpu_check.sh: no CUDA device on this machine; use --dry-run to check the plan (or --cpu-smoke OUT_DIR)"
    exit 2
  fi
fi
if [ "$MODE" = run ] && [ -z "$OUT" ]; then
  echo "bench/gpu_check.sh: give the results folder: bash bench/gpu_check.sh OUT_DIR (see --help)" >&2
  exit 2
fi
if [ -n "$OUT" ]; then
  if ! mkdir -p "$OUT" || ! OUT="$(cd "$OUT" && pwd)"; then
    echo "bench/gpu_check.sh: cannot create $OUT" >&2
    exit 2
  fi
fi
if [ "$MODE" = run ] && { [ -e "$OUT/results.md" ] || [ -e "$OUT/raw.tar.gz" ]; }; then
  echo "bench/gpu_check.sh: $OUT already holds results (results.md or raw.tar.gz); give an empty or new folder" >&2
  exit 2
fi

# ----------------------------------------------------------------------------- settings
PROBLEMS=()
STEPS="${GPU_CHECK_STEPS:-$([ "$SMOKE" = 1 ] && echo 4 || echo 30)}"
if ! [[ "$STEPS" =~ ^[0-9]+$ ]] || [ "$STEPS" -lt 1 ]; then
  PROBLEMS+=("GPU_CHECK_STEPS=$STEPS is not a positive integer")
  STEPS=1
fi
SKIP_LIST="${GPU_CHECK_SKIP:-}"
SKIP=",$SKIP_LIST,"
for name in "${STAGES[@]}"; do
  var="GPU_CHECK_BOX_$name"
  if [ -n "${!var:-}" ]; then
    if [[ "${!var}" =~ ^[0-9]+$ ]]; then BOXES[$name]="${!var}"; else PROBLEMS+=("$var=${!var} is not a number of seconds"); fi
  fi
done
for s in ${SKIP_LIST//,/ }; do
  [ -n "${BOXES[$s]:-}" ] || PROBLEMS+=("GPU_CHECK_SKIP names no stage $s (stages: ${STAGES[*]})")
done
if [ "$SMOKE" = 1 ] && [ -z "${GPU_CHECK_BOX_tests:-}" ]; then
  BOXES[tests]=300  # tests/test_cuda.py's CPU tests: 1-2 minutes on 2 shared cores (compiles, the Triton interpreter)
fi
TOTAL=0
for name in "${STAGES[@]}"; do TOTAL=$((TOTAL + BOXES[$name])); done
if [ "$SMOKE" = 0 ] && [ "$TOTAL" -gt "$TOTAL_LIMIT" ]; then  # a device's 8 minutes; a CPU smoke run has no such limit
  PROBLEMS+=("the stage boxes sum to $TOTAL s, over $TOTAL_LIMIT s (8 minutes less the grace and the summary)")
fi

if [ "$MODE" = run ]; then
  # shards, checkpoints, temporary files and the raw outputs: outside OUT_DIR, so OUT_DIR never holds more than
  # results.md and raw.tar.gz; the EXIT trap below removes the folder
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
  RAW="$WORK/raw"
else
  WORK='$WORK'  # the plan shows where the run would put things
  RAW='$WORK/raw'
fi
SCRATCH="$WORK/scratch"
SHARDS="$SCRATCH/shards"
LOGS="$RAW/logs"

if [ "$SMOKE" = 1 ]; then  # tiny CPU runs through the same path (CPU preset "smoke", a 256-token vocab)
  VOCAB=256; TRAIN_TOKENS=200000; VAL_TOKENS_SHARD=20000; VAL_TOKENS=2048
  OURS_BASE=(--preset=smoke --bos_token=-1)
  SPLIT_EXTRA=(--cpu-smoke --split_steps=2)
  TESTS=(tests/test_cuda.py)  # its CPU tests (the CUDA ones skip)
  TESTS_INTERPRET=1           # Triton's interpreter runs the kernel tests on CPU tensors
else
  # 20M train tokens, as in the baseline: 30 steps of 393,216 read 11.8M (more steps, more tokens)
  VOCAB=50257; TRAIN_TOKENS=$(( (STEPS + 1) * 393216 + 2 > 20000000 ? (STEPS + 1) * 393216 + 2 : 20000000 ))
  VAL_TOKENS_SHARD=2000000; VAL_TOKENS=393216
  OURS_BASE=()
  SPLIT_EXTRA=(--split_steps=3)
  TESTS=(tests/test_cuda.py -m cuda)  # the CPU ones ran in CI
  TESTS_INTERPRET=0
fi
# timing runs: 2 warm-up steps (compile and measure the kernel dispatch) and no step-0 validation
OURS_COMMON=("--train_files=$SHARDS/*train*.bin" "--val_files=$SHARDS/*val*.bin" "--vocab_size=$VOCAB"
             "--num_iterations=$STEPS" "--val_tokens=$VAL_TOKENS" --warmup_steps=2 --val_at_start=0
             --checkpoint_minutes=0 --checkpoint_every=0 "--log_dir=$LOGS")
SOFT_FLAGS=("${OURS_BASE[@]}" "${OURS_COMMON[@]}" --constraint=soft_cap --run_id=soft_cap "--checkpoint_dir=$SCRATCH/ckpt-soft_cap")
NONE_FLAGS=("${OURS_BASE[@]}" "${OURS_COMMON[@]}" --constraint=none --run_id=none "--checkpoint_dir=$SCRATCH/ckpt-none")
SPLIT_ARGS=(--steps=0 "${SPLIT_EXTRA[@]}" --runs=lipschitz/soft_cap "--data_dir=$SHARDS")
# every stage's temporary files (pytest's tmp_path, step_gpu's folder) go to the scratch folder; inductor keeps
# its usual cache, so a warm machine's compiled kernels still serve these runs
INDUCTOR_CACHE="${TORCHINDUCTOR_CACHE_DIR:-${TMPDIR:-/tmp}/torchinductor_$(id -un 2>/dev/null || echo user)}"
BASE_ENV=(PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 "TMPDIR=$SCRATCH/tmp" "TORCHINDUCTOR_CACHE_DIR=$INDUCTOR_CACHE")
RUN_ENV=("${BASE_ENV[@]}" "TORCH_LOGS=recompiles,graph_breaks")

# stage_setup NAME: sets CMD (argv), ENVS (VAR=value), CWD, GRACE (seconds between timeout's TERM and KILL)
stage_setup() {
  ENVS=("${BASE_ENV[@]}")
  CWD="$ROOT"
  GRACE=5
  case "$1" in
    versions) CMD=("$PY" bench/gpu_check_summary.py versions) ;;
    shards) CMD=("$PY" bench/gpu_check_summary.py shards "$SHARDS" "$VOCAB" "$TRAIN_TOKENS" "$VAL_TOKENS_SHARD") ;;
    anchor)  # logs/<uuid>.txt goes under its working directory, the raw folder
      ENVS=("${RUN_ENV[@]}" RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29517
            "NUM_ITERS=$STEPS" "VAL_TOKENS=$VAL_TOKENS" "TRAIN_GLOB=$SHARDS/*train*.bin" "VAL_GLOB=$SHARDS/*val*.bin")
      CWD="$RAW"
      CMD=("$PY" "$ANCHOR") ;;
    soft_cap) ENVS=("${RUN_ENV[@]}"); GRACE=8; CMD=("$PY" train_gpt.py "${SOFT_FLAGS[@]}") ;;  # TERM: it stops after the step, logs its peak
    none) ENVS=("${RUN_ENV[@]}"); GRACE=8; CMD=("$PY" train_gpt.py "${NONE_FLAGS[@]}") ;;
    kernels) CMD=("$PY" bench/constraints.py --device cuda) ;;
    muon) CMD=("$PY" bench/step_gpu.py "${SPLIT_ARGS[@]}") ;;
    tests)
      ENVS=("${BASE_ENV[@]/TRITON_INTERPRET=0/TRITON_INTERPRET=$TESTS_INTERPRET}")
      CMD=("$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}") ;;
  esac
}

cmdline() {  # the stage's command as one shell-quoted line
  local s
  s="$(printf '%q ' "${ENVS[@]}" "${CMD[@]}")"
  if [ "$CWD" != "$ROOT" ]; then s="(cd $(printf '%q' "$CWD") && $s)"; fi
  echo "${s% }"
}

print_plan() {
  local name cum=0 i=0 skip
  echo "plan: $STEPS steps per run$([ "$SMOKE" = 1 ] && echo ' (--cpu-smoke)'); stage i must end by start + the boxes of stages 1..i"
  for name in "${STAGES[@]}"; do
    i=$((i + 1))
    stage_setup "$name"
    cum=$((cum + BOXES[$name]))
    skip=""
    if [[ "$SKIP" == *",$name,"* ]]; then skip=" SKIPPED (GPU_CHECK_SKIP)"; fi
    printf '%d. %-8s box %3ss (ends by +%3ss)%s\n   %s\n' "$i" "$name" "${BOXES[$name]}" "$cum" "$skip" "$(cmdline)"
  done
  echo "total: $TOTAL s of boxes (+ at most 8 s of kill grace and ~2 s of summary and tar; limit 480 s)"
}

# ----------------------------------------------------------------------------- --dry-run
if [ "$MODE" = dry ]; then
  NOTES=()
  command -v timeout >/dev/null 2>&1 || PROBLEMS+=("no 'timeout' command (GNU coreutils)")
  command -v "$PY" >/dev/null 2>&1 || PROBLEMS+=("python '$PY' not found (set PYTHON=)")
  command -v nvidia-smi >/dev/null 2>&1 || NOTES+=("no nvidia-smi here (the versions stage then reports it unavailable)")
  command -v git >/dev/null 2>&1 || NOTES+=("no git here (the commit is then reported unavailable)")
  case "$(anchor_state)" in
    missing)
      if [ -d "$ANCHOR_SRC" ]; then NOTES+=("no anchor copy in bench/anchors: run 'bash bench/gpu_check.sh --prepare' (a real run copies it itself here, but the GPU machine has no ../shared)")
      else NOTES+=("no anchor: neither bench/anchors/speedrun_1gpu.py nor $ANCHOR_SRC; the anchor stage will fail with a clear line, the others run"); fi ;;
    stale) NOTES+=("bench/anchors differs from $ANCHOR_SRC: run 'bash bench/gpu_check.sh --prepare' before the device call") ;;
    current) NOTES+=("anchor: bench/anchors/speedrun_1gpu.py, same as $ANCHOR_SRC") ;;
    unchecked) NOTES+=("anchor: bench/anchors/speedrun_1gpu.py (no $ANCHOR_SRC to compare with)") ;;
  esac
  anchor_arg=()
  if [ -f "$ANCHOR" ]; then anchor_arg=("--anchor=$ANCHOR"); fi
  if command -v "$PY" >/dev/null 2>&1; then
    # the Python files compile, train_gpt.py takes both runs' flags, step_gpu.py / constraints.py take theirs
    rc=0
    check_out="$(timeout 120 "$PY" bench/gpu_check_summary.py dry-check "${anchor_arg[@]}" :: "${SOFT_FLAGS[@]}" :: "${NONE_FLAGS[@]}" :: "${SPLIT_ARGS[@]}" 2>&1)" || rc=$?
    while IFS= read -r line; do
      case "$line" in
        problem:*) PROBLEMS+=("${line#problem: }") ;;
        "python checks:"*) NOTES+=("$line") ;;
      esac
    done <<< "$check_out"
    if [ "$rc" -ne 0 ] && ! grep -q '^problem:' <<< "$check_out"; then
      PROBLEMS+=("bench/gpu_check_summary.py dry-check exited $rc: $(tail -n 1 <<< "$check_out")")
    fi
    # the tests stage's file collects
    stage_setup tests
    rc=0
    collect="$(env TRITON_INTERPRET=0 timeout 120 "${CMD[@]}" --collect-only 2>&1)" || rc=$?
    if [ "$rc" -eq 0 ]; then
      NOTES+=("tests: ${TESTS[*]}: $(grep -E 'collected|deselected|tests? collected' <<< "$collect" | tail -n 1)")
    else
      PROBLEMS+=("pytest --collect-only ${TESTS[*]} exited $rc: $(grep -m 1 -E '^(ERROR|E  |[A-Za-z_.]*Error)' <<< "$collect" || tail -n 1 <<< "$collect")")
    fi
  fi
  print_plan
  for n in "${NOTES[@]}"; do echo "note: $n"; done
  if [ -n "$OUT" ]; then print_plan > "$OUT/plan.txt"; fi  # dry run: nothing else in OUT_DIR
  if [ "${#PROBLEMS[@]}" -gt 0 ]; then
    for p in "${PROBLEMS[@]}"; do echo "problem: $p"; done
    exit 1
  fi
  echo "dry run: all is well"
  exit 0
fi

# ----------------------------------------------------------------------------- the run
pid=""
summarise() {  # results.md from the raw folder; never fails the script
  timeout 30 "$PY" bench/gpu_check_summary.py summary "$RAW" "$OUT/results.md" > /dev/null 2> "$RAW/summary.err" ||
    echo "summary failed: $(tail -n 1 "$RAW/summary.err")" >&2
}

pack() {  # raw.tar.gz beside results.md, replaced atomically: OUT_DIR holds the two files at every moment
  tar -czf "$OUT/.raw.tar.gz.tmp" -C "$WORK" raw && mv -f "$OUT/.raw.tar.gz.tmp" "$OUT/raw.tar.gz" ||
    { rm -f "$OUT/.raw.tar.gz.tmp"; echo "bench/gpu_check.sh: packing raw/ failed" >&2; }
}

finish() {  # on any exit: stop a running stage, write what was measured, pack it, remove the scratch
  local code=$?
  trap - EXIT INT TERM
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if [ -d "$RAW" ]; then
    summarise
    pack
  fi
  rm -rf "$WORK"
  exit "$code"
}
trap finish EXIT
trap 'echo "bench/gpu_check.sh: interrupted" >&2; exit 130' INT
trap 'echo "bench/gpu_check.sh: terminated" >&2; exit 143' TERM

if [ "${#PROBLEMS[@]}" -gt 0 ]; then
  for p in "${PROBLEMS[@]}"; do echo "problem: $p" >&2; done
  exit 2
fi
case "$(anchor_state)" in
  missing|stale) if [ -d "$ANCHOR_SRC" ]; then prepare_anchors || true; fi ;;
esac

mkdir -p "$SCRATCH/tmp" "$LOGS"
: > "$RAW/stages.tsv"
print_plan > "$RAW/plan.txt"

record() {  # name rc seconds given command
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${BOXES[$1]}" "$4" "$5" >> "$RAW/stages.tsv"
}

echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), results in $OUT/results.md and raw.tar.gz (rewritten after each stage)"
T0=0  # bash's SECONDS counts from the script's start: the CUDA check and the set-up count against stage 1
CUM=0
for name in "${STAGES[@]}"; do
  stage_setup "$name"
  CUM=$((CUM + BOXES[$name]))
  line="$(cmdline)"
  if [[ "$SKIP" == *",$name,"* ]]; then
    echo "GPU_CHECK_SKIP" > "$RAW/$name.out"
    record "$name" skipped 0 0 "$line"
    echo "== $name: skipped (GPU_CHECK_SKIP)"
    continue
  fi
  if [ "$name" = anchor ] && [ ! -f "$ANCHOR" ]; then
    echo "anchor script missing: bench/anchors/speedrun_1gpu.py (run 'bash bench/gpu_check.sh --prepare' where ../shared/anchors exists, and carry bench/anchors)" > "$RAW/$name.out"
    record "$name" missing 0 0 "$line"
    echo "== $name: $(cat "$RAW/$name.out")"
    summarise
    pack
    continue
  fi
  given=$((T0 + CUM - SECONDS))
  if [ "$given" -lt "$MIN_GIVEN" ]; then
    echo "no time left: ${given} s before its deadline" > "$RAW/$name.out"
    record "$name" skipped 0 "$given" "$line"
    echo "== $name: skipped, no time left"
    continue
  fi
  echo "== $name [$(date -u +%T), +$((SECONDS - T0)) s]: up to $given s (box ${BOXES[$name]} s): $line"
  start=$SECONDS
  ( cd "$CWD" && exec env "${ENVS[@]}" timeout -k "$GRACE" "$given" "${CMD[@]}" ) > "$RAW/$name.out" 2> "$RAW/$name.err" &
  pid=$!  # timeout's own pid (the subshell exec'd it): a TERM to it reaches the whole command
  if [ "$name" = anchor ]; then  # stop it once it printed its training peak: its measurement is complete
    while kill -0 "$pid" 2>/dev/null; do
      if grep -q '^train peak memory allocated' "$RAW/$name.out" 2>/dev/null; then
        sleep 1
        if kill -TERM "$pid" 2>/dev/null; then echo "stopped by bench/gpu_check.sh after its train peak line" >> "$RAW/$name.err"; fi
        break
      fi
      sleep 1
    done
  fi
  rc=0
  wait "$pid" || rc=$?
  pid=""
  if [ "$name" = anchor ] && [ "$rc" -ne 0 ] && grep -q '^stopped by bench/gpu_check.sh' "$RAW/$name.err"; then
    rc=0  # stopped on purpose after its measurement, not a failure
  fi
  record "$name" "$rc" "$((SECONDS - start))" "$given" "$line"
  case "$name" in soft_cap|none) rm -rf "$SCRATCH/ckpt-$name" ;; esac
  summarise
  pack
  echo "   $name: rc $rc after $((SECONDS - start)) s:$(grep -m 1 -F "| $name:" "$OUT/results.md" 2>/dev/null | cut -d'|' -f3,7 | tr -s ' ' || true)"
done
echo "== done in $((SECONDS - T0)) s"
summarise
cat "$OUT/results.md" 2>/dev/null || cat "$RAW/stages.tsv"
