#!/usr/bin/env bash
# The main job, the way a user works: set up, turn captures into a flow dataset, load the shipped pre-trained
# encoder (checkpoints/mmae-small) with AutoModelForSequenceClassification, fine-tune it with the HF Trainer on the
# committed sample of real traffic (examples/sample_traffic/<label>/*.pcap, split by capture file) once with a few
# labelled flows per class and once with all of them, and print the test results beside the same encoder trained
# from scratch and two tree baselines, with one sentence on what the table means. About 6 minutes after setup on 2
# CPU cores (measured: see README).
#
#   bash scripts/demo.sh
#   DEMO_SEEDS="0 1 2" DEMO_FEW="5 10 25" bash scripts/demo.sh        # more seeds and label budgets (longer)
#
# Knobs (environment): DEMO_OUT (outputs/demo), DEMO_INPUT (examples/sample_traffic), DEMO_CHECKPOINT
# (checkpoints/mmae-small), DEMO_FEW (10: labelled flows per class of the few-label run), DEMO_SEEDS (0),
# DEMO_JOBS (2: runs at a time), DEMO_MAX_STEPS (empty: the fine-tuning recipe's budget), DEMO_SKIP_SETUP.
# Pre-training is the second path (docs/training.md): bash dataset_scripts/build_corpus.sh, then
# accelerate launch train/pretrain.py (bash scripts/pretrain_mmae_small.sh re-creates the shipped checkpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT=${DEMO_OUT:-outputs/demo}
INPUT=${DEMO_INPUT:-examples/sample_traffic}
CHECKPOINT=${DEMO_CHECKPOINT:-checkpoints/mmae-small}
FEW=${DEMO_FEW:-10}
SEEDS=${DEMO_SEEDS:-0}
JOBS=${DEMO_JOBS:-2}
# One compute thread per process: two processes use the two cores, and OpenMP's spinning threads collapse on a CPU
# that other jobs share (measured: a tiny-model step took 1.3 s with 2 threads vs 0.07 s with 1 under load).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
stamp() { echo "[demo +$(( $(date +%s) - START ))s] $*"; }

stamp "1/4 set up .venv (scripts/setup.sh: the pinned stack, CPU torch; nothing to do when it is current)"
if [ -z "${DEMO_SKIP_SETUP:-}" ]; then bash scripts/setup.sh; fi
. .venv/bin/activate
if [ ! -d "$INPUT" ]; then echo "demo: input folder $INPUT not found" >&2; exit 2; fi
if [ ! -f "$CHECKPOINT/config.json" ]; then echo "demo: no pre-trained checkpoint at $CHECKPOINT" >&2; exit 2; fi
rm -rf "$OUT"
mkdir -p "$OUT"

stamp "2/4 captures -> flow dataset: $INPUT (one folder per class) -> $OUT/dataset, split by capture file"
python dataset_scripts/build_dataset.py --input "$INPUT" --output "$OUT/dataset" --no-progress | tail -n 2

stamp "3/4 fine-tune $CHECKPOINT (AutoModelForSequenceClassification + HF Trainer, selected on validation) with" \
      "$FEW labelled flows per class and with all of them; the same encoder from scratch; trees on the same flows"
# shellcheck disable=SC2086  # word splitting of the k / seed lists is intended
python train/run_label_efficiency.py --checkpoint "$CHECKPOINT" --datasets "$OUT/dataset" --ks $FEW all \
    --seeds $SEEDS --models finetune scratch extra_trees random_forest_bytes --jobs "$JOBS" --explain \
    --name demo --output_dir "$OUT" --results_dir "$OUT" ${DEMO_MAX_STEPS:+--finetune_arg max_steps=$DEMO_MAX_STEPS}

FIRST_SEED=${SEEDS%% *}
run="$OUT/runs/dataset/finetune/kall/seed$FIRST_SEED"
stamp "4/4 done. Fine-tuned model (all labels): $run/model (model card README.md, test_confusion.png);" \
      "tables: $OUT/demo.md, $OUT/demo.png"
