#!/usr/bin/env bash
# Re-creates the shipped pre-trained checkpoint checkpoints/mmae-small (encoder weights + config + feature extractor +
# model card) from scratch: the corpus (dataset_scripts/build_corpus.sh), then pre-training, then the export.
#
#   bash scripts/pretrain_mmae_small.sh            # about 2 h on 2 quiet CPU cores (3-4 h on a busy machine)
#
# Exactly: the same seed, the same corpus, the same launch (2 gloo processes x 1 thread, global batch 64) and the same
# torch build give the same weights. The shipped weights were trained on the corpus as the reader built it before the
# fix for backward capture-time jumps (commit adff07e: 22,043 train flows); today's reader builds 21,298 from the same
# captures (jumps no longer split flows), so a run now gives a close, not a bit-identical, checkpoint. Knobs (environment): OUT (outputs), STEPS (5000), SHARED (../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs}
STEPS=${STEPS:-5000}
if [ ! -x .venv/bin/python ]; then bash scripts/setup.sh; fi
. .venv/bin/activate
if [ ! -f "$OUT/corpus/corpus_report.json" ]; then
    MMAE_SHARED_DIR=${SHARED:-${MMAE_SHARED_DIR:-../shared}} bash dataset_scripts/build_corpus.sh "$OUT"
fi
# Two processes of one thread each use the two cores better than one process of two threads (measured in
# benchmarks/results/pretrain_throughput.json), and stay fast when another job shares the machine.
ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
    --mixed_precision no --dynamo_backend no --main_process_port 29561 \
    train/pretrain.py --dataset "$OUT/corpus" --config mmae-small --output_dir "$OUT/pretrain/mmae-small" \
    --max_steps "$STEPS" --per_device_train_batch_size 32 --learning_rate 1e-3 --warmup_ratio 0.05 \
    --save_steps 500 --save_total_limit 0 --logging_steps 20 --seed 0 --torch_threads 1 --report_to tensorboard \
    --overwrite_output_dir ${RESUME:+--resume_from_checkpoint latest}
