#!/usr/bin/env bash
# Make a finished train_long.py run the served default model (models/colm-long) and check it, from
# the repository root:
#   bash models/train/install_long.sh [RUN] [OLD_RUN] [DATA]
#     RUN      the grown model's run        (default models/train/runs/long-c4b)
#     OLD_RUN  the run it was grown from    (default models/train/runs/long-c2)
#     DATA     data_long.py's folder        (default models/train/data-long; fixtures_long.py reads its held-out split)
# Steps: export → PyTorch golden fixtures → expansion identity (PyTorch, then colm-serve's graph at
# f32/q8/q4) → the TypeScript tests that read them. Stops at the first failure. ~2 min.
set -euo pipefail
RUN=${1:-models/train/runs/long-c4b}
OLD=${2:-models/train/runs/long-c2}
DATA=${3:-models/train/data-long}
PY=/usr/bin/python3
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
set -x
$PY models/train/export_long.py --run "$RUN" --out models/colm-long --name colm-long
$PY models/train/fixtures_long.py --model models/colm-long --out test/fixtures/colm-long-golden.json --data "$DATA"
$PY models/train/export_long.py --run "$OLD" --out "$TMP/old" --name colm-long-old
$PY models/train/check_expansion.py --old "$TMP/old" --new models/colm-long --data "$DATA"
node --import tsx loadtest/check-expansion.ts --old "$TMP/old" --new models/colm-long --tokens 2048 --decode 16
node --import tsx loadtest/check-expansion.ts --old "$TMP/old" --new models/colm-long --tokens 1024 --decode 16 --quant q8
node --import tsx loadtest/check-expansion.ts --old "$TMP/old" --new models/colm-long --tokens 1024 --decode 16 --quant q4
node --import tsx --test --test-concurrency=1 test/long-model.test.ts test/expansion.test.ts test/server-main.test.ts
