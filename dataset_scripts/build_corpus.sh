#!/usr/bin/env bash
# The pre-training corpus in one command: builds the labelled development sets (their validation/test flows are what
# must stay out of pre-training), then the unlabelled corpus from ../shared/data/public-captures without them.
#   bash dataset_scripts/build_corpus.sh [OUTPUT_ROOT]        (default: outputs)
# Writes OUTPUT_ROOT/{ndpi-encrypted-services,ndpi-seen-apps,sample-traffic,corpus}; the corpus report
# (corpus/corpus_report.json) counts the captures left out and the flows removed because they equal held-out flows.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${MMAE_SHARED_DIR:-../shared}
OUT=${1:-outputs}
if [ ! -d "$SHARED/data/public-captures" ]; then
    echo "build_corpus.sh: $SHARED/data/public-captures not found (set MMAE_SHARED_DIR to the folder holding data/)" >&2
    exit 2
fi
python dataset_scripts/build_dataset.py --recipe ndpi-encrypted-services --input "$SHARED/data/ndpi-encrypted-services" \
    --output "$OUT/ndpi-encrypted-services" --overwrite --seed 0 --num-proc 2 --no-progress
python dataset_scripts/build_dataset.py --recipe ndpi-encrypted-services --input "$SHARED/data/ndpi-encrypted-services" \
    --output "$OUT/ndpi-seen-apps" --overwrite --seed 0 --num-proc 2 --no-progress \
    --seen-column ndpi_app --validation-size 0.15 --test-size 0.2
python dataset_scripts/build_dataset.py --input examples/sample_traffic --output "$OUT/sample-traffic" --overwrite \
    --no-progress
python dataset_scripts/build_corpus.py --input "$SHARED/data/public-captures" --output "$OUT/corpus" --overwrite \
    --exclude-held-out "$OUT/ndpi-seen-apps" "$OUT/ndpi-encrypted-services" "$OUT/sample-traffic" \
    --include-train "$OUT/sample-traffic" --num-proc 2 --no-progress
