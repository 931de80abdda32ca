#!/usr/bin/env bash
# Reproduce the bundled colm-kjv model end to end on CPU (Debian python3 + PyTorch 1.13, numpy,
# `bible-kjv` package).  Run from anywhere:   bash models/train/reproduce.sh
#
# 1. prepare the corpus (models/train/data/{train,val}.bin)
# 2. train the CoLM-Air model and the dense one-chain baseline side by side (1 thread each,
#    700 steps, batch 16 x 256 bytes; --minutes is only a wall-clock safety cap)
# 3. evaluate both on the full validation split, export colm to models/colm-kjv,
#    write the golden fixtures and the model card.
# Runs (checkpoints, logs) go to models/train/runs/ (gitignored); a rerun resumes from the
# checkpoints.  With 1 thread per run the training is deterministic for a given machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-/usr/bin/python3}
STEPS=${STEPS:-700}
MINUTES=${MINUTES:-57}
RUNS=models/train/runs
mkdir -p "$RUNS"
$PY models/train/data.py models/train/data
COMMON="--steps $STEPS --minutes $MINUTES --batch 16 --context 256 --lr 3e-3 --min-lr 3e-4 --warmup 60 --decay-frac 0.4 \
        --threads 1 --eval-every 100 --eval-windows 48 --ckpt-every 50"
$PY models/train/train.py --preset colm  --run $RUNS/colm  $COMMON > $RUNS/colm.out  2>&1 &
P1=$!
$PY models/train/train.py --preset dense --run $RUNS/dense $COMMON > $RUNS/dense.out 2>&1 &
P2=$!
wait $P1
wait $P2
tail -n 2 $RUNS/colm.out $RUNS/dense.out
$PY models/train/evaluate.py --run $RUNS/colm
$PY models/train/evaluate.py --run $RUNS/dense
$PY models/train/export.py --run $RUNS/colm --out models/colm-kjv --name colm-kjv
$PY models/train/fixtures.py --model models/colm-kjv --out test/fixtures/colm-kjv-golden.json
$PY models/train/card.py --colm $RUNS/colm --dense $RUNS/dense --out models/colm-kjv/card.md
$PY models/train/check_reference.py --model models/colm-kjv --golden test/fixtures/colm-kjv-golden.json
