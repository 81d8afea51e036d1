#!/usr/bin/env bash
# Retrain the shipped models in data/models/ with the project's own `train` command.
# Each model's validation perplexity is recorded in data/models/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
run=".venv/bin/lstmsearch train"

what=${1:-all}
if [ "$what" = all ] || [ "$what" = parens ]; then
    $run parens --arch lstm --layers 1 --hidden 64 --embed 16 --tokenizer char \
        --epochs 2 --batch 32 --seq-len 128 --lr 0.005 --out data/models/parens-lstm.pt
fi
if [ "$what" = all ] || [ "$what" = english ]; then
    $run english --arch lstm --layers 2 --hidden 256 --embed 64 --tokenizer word --vocab-size 3000 \
        --epochs 12 --batch 32 --seq-len 64 --lr 0.003 --dropout 0.2 --out data/models/english-word-lstm.pt
fi
if [ "$what" = all ] || [ "$what" = python-stdlib ]; then
    $run python-stdlib --arch lstm --layers 2 --hidden 256 --embed 32 --tokenizer char \
        --steps 800 --batch 32 --seq-len 128 --lr 0.003 --checkpoint-every 100 --out data/models/stdlib-char-lstm.pt
fi
