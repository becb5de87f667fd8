#!/usr/bin/env bash
# The pre-training variants of docs/pretraining.md §3, each followed by its diagnostics, then the comparison table.
#   bash benchmarks/run_pretraining_variants.sh [NAME ...]     (default: every variant; about 15 min each on 2 cores)
# Needs the corpus and the development sets: bash dataset_scripts/build_corpus.sh outputs
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export OMP_NUM_THREADS=1
declare -A VARIANTS=(
    [tiny-default]="--max_steps 3000"
    [tiny-m75]="--max_steps 1500 --config_overrides mask_ratio=0.75"
    [tiny-m50]="--max_steps 1500 --config_overrides mask_ratio=0.5"
    [tiny-m50-noguide]="--max_steps 1500 --config_overrides mask_ratio=0.5 use_guided_masking=false"
    [tiny-m50-rand]="--max_steps 1500 --config_overrides mask_ratio=0.5 flowmix_pairing=random"
    [tiny-m50-nofm]="--max_steps 1500 --config_overrides mask_ratio=0.5 use_flowmix=false"
    [tiny-m50-tok8]="--max_steps 1500 --config_overrides mask_ratio=0.5 bytes_per_token=8"
)
NAMES=("$@")
if [ ${#NAMES[@]} -eq 0 ]; then NAMES=("${!VARIANTS[@]}"); fi
for name in "${NAMES[@]}"; do
    # shellcheck disable=SC2086  # the variant's options are meant to split
    python train/pretrain.py --dataset outputs/corpus --config mmae-tiny --output_dir "outputs/diag/$name" \
        --per_device_train_batch_size 32 --learning_rate 1e-3 --save_steps 500 --save_total_limit 0 \
        --logging_steps 20 --torch_threads 1 --seed 0 --report_to none --overwrite_output_dir ${VARIANTS[$name]}
    python benchmarks/diagnose_pretraining.py --run "outputs/diag/$name" --corpus outputs/corpus \
        --eval-datasets outputs/ndpi-seen-apps outputs/sample-traffic --name "$name"
done
# mmae-small: bash scripts/pretrain_mmae_small.sh, then
#   python benchmarks/diagnose_pretraining.py --run outputs/pretrain/mmae-small --corpus outputs/corpus \
#       --eval-datasets outputs/ndpi-seen-apps outputs/sample-traffic --name mmae-small
python benchmarks/compare_diagnostics.py
