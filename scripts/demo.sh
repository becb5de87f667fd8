#!/usr/bin/env bash
# The main job, end to end on this machine (CPU is fine): set up from scratch, build a flow dataset from the
# committed sample of real traffic (examples/sample_traffic/<label>/*.pcap), pre-train mmae-tiny on its train
# split, fine-tune it with the HF Trainer (selection on validation macro-F1), evaluate once on test, train the
# same encoder from scratch and the tree baseline on the same splits, and print the results table, the
# confusion matrix PNG and the model card.
#
#   bash scripts/demo.sh                       # ~3-4 min on 2 CPU cores
#   DEMO_VARIANTS="mmae scratch linear_probe extra_trees no_flowmix" DEMO_SEEDS="0 1 2" bash scripts/demo.sh   # more
#
# Knobs (environment): DEMO_OUT (outputs/demo), DEMO_INPUT (examples/sample_traffic), DEMO_PRETRAIN_STEPS (200),
# DEMO_PRETRAIN_BATCH (32), DEMO_EPOCHS (20), DEMO_VARIANTS ("mmae scratch extra_trees"), DEMO_SEEDS (0).
# Everything is written under DEMO_OUT (gitignored); the folder is recreated on every run.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT=${DEMO_OUT:-outputs/demo}
INPUT=${DEMO_INPUT:-examples/sample_traffic}
PRETRAIN_STEPS=${DEMO_PRETRAIN_STEPS:-200}
PRETRAIN_BATCH=${DEMO_PRETRAIN_BATCH:-32}
EPOCHS=${DEMO_EPOCHS:-20}
VARIANTS=${DEMO_VARIANTS:-"mmae scratch extra_trees"}
SEEDS=${DEMO_SEEDS:-0}
# One compute thread per process unless told otherwise: on a CPU that other jobs share, OpenMP's spinning
# threads collapse (measured here: a tiny-model step took 1.3 s with 2 threads vs 0.07 s with 1 under load).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
stamp() { echo "[demo +$(( $(date +%s) - START ))s] $*"; }

stamp "1/4 setup (scripts/setup.sh)"
bash scripts/setup.sh
. .venv/bin/activate
if [ ! -d "$INPUT" ]; then echo "demo: input folder $INPUT not found" >&2; exit 1; fi
rm -rf "$OUT"
mkdir -p "$OUT"

stamp "2/4 build the flow dataset from $INPUT"
python dataset_scripts/build_dataset.py --input "$INPUT" --output "$OUT/dataset" --overwrite --no-progress

stamp "3/4 pre-train ($PRETRAIN_STEPS steps) -> fine-tune ($EPOCHS epochs) -> evaluate; baselines: $VARIANTS"
# shellcheck disable=SC2086  # word splitting of the variant / seed lists is intended
python train/run_study.py --dataset "$OUT/dataset" --dataset-name "mmae-hf sample traffic ($INPUT)" \
    --study demo --variants $VARIANTS --seeds $SEEDS \
    --output-dir "$OUT" --results-dir "$OUT" --preset mmae-tiny \
    --pretrain-steps "$PRETRAIN_STEPS" --pretrain-batch-size "$PRETRAIN_BATCH" --pretrain-lr 1e-3 \
    --epochs "$EPOCHS" --batch-size 32 --learning-rate 1e-3

stamp "4/4 results"
FIRST_SEED=${SEEDS%% *}
echo
cat "$OUT/demo.md" | sed -n '/^| variant | seeds/,/^$/p'
echo "results table:          $OUT/demo.md ($OUT/demo.json)"
for variant in $VARIANTS; do
    run="$OUT/runs/$variant/seed$FIRST_SEED"
    if [ -f "$run/eval/test_confusion.png" ]; then echo "confusion matrix ($variant): $run/eval/test_confusion.png"; fi
    if [ -f "$run/model/README.md" ]; then echo "model card ($variant):       $run/model/README.md"; fi
done
echo "logs:                   $OUT/logs/ (tensorboard: $OUT/runs/*/seed*/tensorboard, $OUT/pretrain/*/seed*/runs)"
stamp "done in $(( $(date +%s) - START )) s"
