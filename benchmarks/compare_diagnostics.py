#!/usr/bin/env python
"""One table over pre-training runs diagnosed by benchmarks/diagnose_pretraining.py (same corpus, same probes).

    python benchmarks/compare_diagnostics.py tiny-default tiny-m50 tiny-m75 ... [--step 1500]

For each run, at the given step (default: its last diagnosed step), beside the random encoder of the same config:
probe VALIDATION macro-F1 averaged over datasets, k and seeds (what recipes are chosen on), per pooling; the same on
test (reported, never used to choose); masked-byte RMSE on held-out corpus flows against the mean-byte-per-position
baseline (below 1.0: the encoder reads the flow it is given). Writes benchmarks/results/diagnostics/comparison.md.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "diagnostics"


def summarize(run: dict, step=None) -> dict:
    points = {p["step"]: p for p in run["points"]}
    chosen = points[step] if step in points else run["points"][-1]
    random = points[0]
    row = {"name": run["name"], "step": chosen["step"], "config": run["config"]}
    for pooling in ("cls", "mean"):
        for split in ("validation", "test"):
            keys = [k for k in chosen["probe"] if f"/{pooling}/" in k]
            if not keys:
                continue
            row[f"{pooling}_{split}"] = float(np.mean([chosen["probe"][k][f"{split}_macro_f1"] for k in keys]))
            row[f"{pooling}_{split}_random"] = float(np.mean([random["probe"][k][f"{split}_macro_f1"] for k in keys]))
            for k_name in ("k=10", "k=25", "k=all"):
                sub = [k for k in keys if k.endswith(k_name)]
                row[f"{pooling}_{split}_{k_name}"] = float(
                    np.mean([chosen["probe"][k][f"{split}_macro_f1"] for k in sub])
                )
                row[f"{pooling}_{split}_{k_name}_random"] = float(
                    np.mean([random["probe"][k][f"{split}_macro_f1"] for k in sub])
                )
    recon = chosen.get("reconstruction", {}).get("all", {})
    if recon.get("mean_baseline_rmse"):
        row["rmse_ratio"] = recon["model_rmse"] / recon["mean_baseline_rmse"]
    similar = chosen.get("reconstruction_similar_partner", {}).get("all", {})
    if similar.get("mean_baseline_rmse"):
        row["rmse_ratio_similar_partner"] = similar["model_rmse"] / similar["mean_baseline_rmse"]
    return row


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("names", nargs="*", help="diagnostics names (default: every JSON in the folder)")
    p.add_argument("--step", type=int)
    p.add_argument("--output", default=str(RESULTS / "comparison.md"))
    args = p.parse_args(argv)
    names = args.names or sorted(f.stem for f in RESULTS.glob("*.json"))
    rows = [summarize(json.loads((RESULTS / f"{n}.json").read_text()), args.step) for n in names]
    lines = [
        "# Pre-training variants compared (probe macro-F1 averaged over datasets, k in {10, 25, all}, 3 seeds)",
        "",
        "Validation is what a recipe is chosen on; test is reported only. Random = the same probe on a random "
        "encoder of the same config. RMSE ratio: masked-byte RMSE on held-out corpus flows / mean-byte baseline "
        "(random partners; in brackets with the training collator's look-alike partners).",
        "",
        "| run | step | tokens | mask | FlowMix | pairing | guided | CLS val (random) | mean val (random) | "
        "CLS test (random) | mean test (random) | RMSE ratio |",
        "|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c = r["config"]
        ratio = f"{r['rmse_ratio']:.2f}" if "rmse_ratio" in r else "-"
        if "rmse_ratio_similar_partner" in r:
            ratio += f" ({r['rmse_ratio_similar_partner']:.2f})"
        lines.append(
            f"| {r['name']} | {r['step']} | {c['bytes_per_token']}B x {1600 // c['bytes_per_token']} | {c['mask_ratio']} "
            f"| {'yes' if c['use_flowmix'] else 'no'} | {c.get('flowmix_pairing', 'similar')} | "
            f"{'yes' if c['use_guided_masking'] else 'no'} | "
            f"{r['cls_validation']:.3f} ({r['cls_validation_random']:.3f}) | "
            f"{r['mean_validation']:.3f} ({r['mean_validation_random']:.3f}) | "
            f"{r['cls_test']:.3f} ({r['cls_test_random']:.3f}) | {r['mean_test']:.3f} ({r['mean_test_random']:.3f}) "
            f"| {ratio} |"
        )
    text = "\n".join(lines) + "\n"
    Path(args.output).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
