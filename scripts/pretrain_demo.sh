#!/usr/bin/env bash
# The second path, pre-training, on a small default of its own: the flows of the committed sample traffic
# (examples/sample_traffic, train split only, labels ignored) pre-train mmae-small with `accelerate launch` on 2 CPU
# processes, and the run is exported as an encoder checkpoint that the main job can fine-tune. About a minute on 2
# cores (63 s measured); it shows the mechanics, not a useful encoder (a few hundred flows are far too few: the shipped
# checkpoints/mmae-small saw 320,000 flows of the public corpus, see scripts/pretrain_mmae_small.sh).
#
#   bash scripts/pretrain_demo.sh
#   DEMO_CHECKPOINT=outputs/pretrain-demo/encoder bash scripts/demo.sh      # fine-tune what it made
#
# Knobs (environment): OUT (outputs/pretrain-demo), STEPS (150), PROCESSES (2), INPUT (examples/sample_traffic).
# On GPUs: drop ACCELERATE_USE_CPU and --use_cpu, and give --num_processes the number of GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/pretrain-demo}
STEPS=${STEPS:-150}
PROCESSES=${PROCESSES:-2}
INPUT=${INPUT:-examples/sample_traffic}
if [ ! -x .venv/bin/python ] || [ -z "${DEMO_SKIP_SETUP:-}" ]; then bash scripts/setup.sh; fi
. .venv/bin/activate
rm -rf "$OUT"
mkdir -p "$OUT"
echo "[pretrain-demo] captures -> flow dataset ($INPUT -> $OUT/dataset)"
python dataset_scripts/build_dataset.py --input "$INPUT" --output "$OUT/dataset" --split-by file --no-progress \
    --license cc0-1.0 | tail -n 2
echo "[pretrain-demo] accelerate launch train/pretrain.py: mmae-small, $STEPS steps, $PROCESSES CPU processes"
ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes "$PROCESSES" --num_machines 1 \
    --mixed_precision no --dynamo_backend no --main_process_port "${PORT:-29563}" \
    train/pretrain.py --dataset "$OUT/dataset" --config mmae-small --output_dir "$OUT/run" --use_cpu \
    --max_steps "$STEPS" --per_device_train_batch_size 16 --learning_rate 1e-3 --warmup_ratio 0.05 \
    --save_steps "$STEPS" --logging_steps 10 --seed 0 --torch_threads 1 --report_to tensorboard --disable_tqdm
echo "[pretrain-demo] export the encoder (weights, config, feature extractor, card) -> $OUT/encoder"
python train/export_encoder.py --pretraining_dir "$OUT/run" --output_dir "$OUT/encoder" --overwrite
echo "[pretrain-demo] done: curves $OUT/run/metrics.jsonl (tensorboard --logdir $OUT/run/runs), encoder $OUT/encoder"
