#!/usr/bin/env bash
# The long-context default model and its comparisons, end to end on CPU, ONE thread, resumable:
# rerun this script after any interruption and every stage continues from its checkpoint (a stage
# that has reached its step count is skipped quickly).
#
#   nohup setsid bash models/train/run_long.sh >> models/train/runs/run_long.out 2>&1 < /dev/null &
#
#   0. corpus + tokens (once): models/train/data-long/{train,val}.tok.u16
#   1. long-c2       2 chains from scratch                              S1 steps (600); snapshots at SC, 2 SC
#   2. long-c4       +2 chains grown from long-c2, old chains frozen     S2 steps (250)
#   2b. long-c4b     chain 4 alone, chains 1-3 frozen, loss k=4          S2B steps (100) <- the default model
#   Comparisons at an equal, smaller token budget (2 x SC steps = 200 x 8192 = 1.64 M tokens each):
#   3. long-mini-c4  +2 chains grown from long-c2's step-SC snapshot     SC steps (100)   (progressive: 100 + 100)
#   4. long-joint4   the same 4-chain shape, jointly from scratch        2 x SC steps (200)
#   5. long-dense    dense baseline of the full width (D = 512)           2 x SC steps (200)
# A step is 4 windows of 2048 tokens (8192 tokens).  Runs 4-5 use stage 1's seed, so they see exactly
# the batches that long-c2 saw in its first 200 steps; run 3 sees long-c2's first 100 and then, with
# seed 2, the same 100 batches that stage 2 starts with.
# Note: the step-SC snapshot is in the constant-learning-rate phase (not decayed), so sub-models
# 1-2 of long-mini-c4 are an undecayed model; runs 4-5 decay over their own 200 steps.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-/usr/bin/python3}
export OMP_NUM_THREADS=${THREADS:-1} OPENBLAS_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
T="--threads ${THREADS:-1}"
S1=${S1:-600}
S2=${S2:-250}
S2B=${S2B:-100}
SC=${SC:-100}
RUNS=models/train/runs
DATA=models/train/data-long
mkdir -p "$RUNS"
if [ ! -f $DATA/train.tok.u16 ]; then
  $PY models/train/data_long.py --out $DATA
  # the committed tokenizer is used as is; `bpe.py train --vocab 12288 --sample-mb 200` rebuilds it
  $PY models/train/bpe.py encode --data $DATA --tokenizer models/train/tokenizer-long.json
fi
$PY models/train/train_long.py --preset colm2 --run $RUNS/long-c2 --steps $S1 --resume --snapshots $SC,$((2 * SC)) $T
# The default model (stages 2, 2b) is committed (models/colm-long, its evaluation in models/train/evals/):
# skipped unless its run folder is here or REDO_DEFAULT=1, so a fresh machine goes on to the comparisons.
if [ -d $RUNS/long-c4b ] || [ -n "${REDO_DEFAULT:-}" ] || [ ! -f models/train/evals/long-c4b.json ]; then
  $PY models/train/train_long.py --expand-from $RUNS/long-c2/ckpt.pt --add-chains 2 --seed 2 \
      --run $RUNS/long-c4 --steps $S2 --warmup 20 --resume $T
  # 2b: sub-model 4 was not yet better than 3 after stage 2, so chain 4 trains alone (1-3 frozen, loss k=4)
  $PY models/train/train_long.py --expand-from $RUNS/long-c4/ckpt.pt --add-chains 0 --freeze-chains 3 --seed 3 \
      --run $RUNS/long-c4b --steps $S2B --warmup 10 --lr 1e-3 --min-lr 1e-4 --decay-frac 0.5 --resume $T
fi
SNAP=$RUNS/long-c2/ckpt-step$SC.pt
if [ ! -f "$SNAP" ]; then
  # long-c2's snapshot is not in the repo (only its final weights are): replay stage 1's first SC steps
  # (same seed and schedule, so the same batches and learning rates) and keep that step as the snapshot
  $PY models/train/train_long.py --preset colm2 --run $RUNS/long-c2-head --steps $S1 --stop-at $SC --resume \
      --snapshots $SC $T
  SNAP=$RUNS/long-c2-head/ckpt-step$SC.pt
fi
$PY models/train/train_long.py --expand-from $SNAP --add-chains 2 --seed 2 \
    --run $RUNS/long-mini-c4 --steps $SC --warmup 20 --resume $T
$PY models/train/train_long.py --preset colm4 --run $RUNS/long-joint4 --steps $((2 * SC)) --resume $T
$PY models/train/train_long.py --preset dense --run $RUNS/long-dense --steps $((2 * SC)) --resume $T
echo "all stages done"
