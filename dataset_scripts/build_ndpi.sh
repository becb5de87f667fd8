#!/usr/bin/env bash
# Builds the nDPI encrypted-services development set (../shared/data/ndpi-encrypted-services) into a DatasetDict,
# split by source capture (manifest column source_pcap), and keeps its build report under benchmarks/results/.
# Usage: bash dataset_scripts/build_ndpi.sh [OUTPUT_DIR] [extra build_dataset.py args]
#   The second benchmark split, "known services in new captures" (held-out captures hold only apps that train
#   captures hold too):
#   REPORT=ndpi_seen_apps_dataset_report bash dataset_scripts/build_ndpi.sh outputs/ndpi-seen-apps \
#       --seen-column ndpi_app --validation-size 0.15 --test-size 0.2
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${MMAE_SHARED_DIR:-../shared}
OUT=${1:-outputs/ndpi-encrypted-services}
shift || true
python dataset_scripts/build_dataset.py --recipe ndpi-encrypted-services \
    --input "$SHARED/data/ndpi-encrypted-services" --output "$OUT" --overwrite --seed 0 --num-proc 2 "$@"
mkdir -p benchmarks/results
REPORT=${REPORT:-ndpi_dataset_report}
cp "$OUT/build_report.json" "benchmarks/results/$REPORT.json"
python - "$OUT/build_report.json" > "benchmarks/results/$REPORT.md" <<'PY'
import json, sys
from mmae_hf.traffic.card import class_count_table
r = json.load(open(sys.argv[1]))
d, s, p = r["duplicates"], r["split"], r["packets"]
seen = r["input"].get("seen_column")
print("# nDPI encrypted services: dataset build report" + (f" (held-out captures hold only `{seen}` values seen in train)" if seen else "") + "\n")
print(f"Command: `{r['command']}`\n")
print(f"Split **{s['method']}** by `{r['input'].get('group_column')}` (seed {s['seed']}); groups per split "
      f"{s['groups_per_split']}; groups on several splits: {len(s['groups_on_several_splits'])}; "
      f"classes missing from a split: {s['classes_missing_from_splits'] or 'none'}.\n")
print(class_count_table(r) + "\n")
print(f"- captures read: {r['input']['files']}, flows extracted: {r['flows']['extracted']}, kept: {r['flows']['final']}")
print(f"- duplicates: {d['duplicate_clusters']} clusters, {d['removed_total']} flows removed "
      f"({d['removed_within_split']} within a split, {d['removed_across_splits']} across: {d['across_split_pairs']}); "
      f"removed by class {d['removed_by_class']}; label conflicts: {len(d['label_conflicts'])}")
print(f"- packets: {p['packets_read']} read, {p['packets_in_flows']} in flows, skipped by reason: {p['skipped'] or 'none'}")
print(f"- capture errors: {len(r['errors'])}")
if seen:
    print(f"- `{seen}` values per split: {s['seen_column_keys_per_split']}; held-out flows whose `{seen}` is not in train: "
          f"{s['held_out_flows_with_keys_unseen_in_train']}")
print(f"- build time (s): {r['timing_seconds']}")
PY
echo "report: benchmarks/results/$REPORT.{json,md}"
