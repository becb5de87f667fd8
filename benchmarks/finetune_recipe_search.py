#!/usr/bin/env python
"""Choose the small-data fine-tuning recipe on validation only.

    python benchmarks/finetune_recipe_search.py --checkpoint outputs/diag/tiny-default \
        --datasets outputs/ndpi-seen-apps outputs/sample-traffic --ks 10 25 --seeds 0 1

Each candidate recipe (a set of `FinetuneArguments` fields) fine-tunes both the pre-trained checkpoint and the same
architecture from scratch on the same k-per-class subsets; the table reports VALIDATION macro-F1 only (mean over
datasets, k and seeds), and the recipe with the best mean over both initialisations is the one to make the default.
Test scores are computed by the runs but never read here. Writes benchmarks/results/finetune_recipe_search.{json,md}.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# name -> FinetuneArguments overrides; every candidate trains for a fixed budget of optimizer steps
CANDIDATES = {
    "epochs10-official": {
        "num_train_epochs": 10.0,
        "learning_rate": 5e-4,
        "per_device_train_batch_size": 64,
        "layer_decay": 0.75,
    },
    "steps300-lr3e-4": {
        "max_steps": 300,
        "learning_rate": 3e-4,
        "per_device_train_batch_size": 32,
        "layer_decay": 1.0,
        "eval_every_steps": 30,
    },
    "steps300-lr1e-3": {
        "max_steps": 300,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 32,
        "layer_decay": 1.0,
        "eval_every_steps": 30,
    },
    "steps300-lr3e-3": {
        "max_steps": 300,
        "learning_rate": 3e-3,
        "per_device_train_batch_size": 32,
        "layer_decay": 1.0,
        "eval_every_steps": 30,
    },
    "steps300-lr1e-3-ld075": {
        "max_steps": 300,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 32,
        "layer_decay": 0.75,
        "eval_every_steps": 30,
    },
    "steps300-lr1e-3-head50": {
        "max_steps": 300,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 32,
        "layer_decay": 1.0,
        "head_warmup_steps": 50,
        "eval_every_steps": 30,
    },
    "steps600-lr1e-3": {
        "max_steps": 600,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 32,
        "layer_decay": 1.0,
        "eval_every_steps": 60,
    },
    "steps300-lr1e-3-nols": {
        "max_steps": 300,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 32,
        "layer_decay": 1.0,
        "label_smoothing_factor": 0.0,
        "eval_every_steps": 30,
    },
    # the small-data recipe as train/finetune.py picks it, with the head on the CLS output or on the token mean
    "small_data-cls": {"recipe": "small_data", "classifier_pooling": "cls"},
    "small_data-mean": {"recipe": "small_data", "classifier_pooling": "mean"},
}


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--datasets", nargs="+", required=True)
    p.add_argument("--ks", nargs="+", type=int, default=[10, 25])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=sorted(CANDIDATES))
    p.add_argument("--output-dir", default=str(REPO / "outputs" / "recipe-search"))
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process")
    p.add_argument("--name", default="finetune_recipe_search")
    args = p.parse_args(argv)

    import mmae_hf  # noqa: F401
    from mmae_hf.training.label_efficiency import LabelEfficiencySettings, run_study

    started = time.time()
    names = [Path(d).name for d in args.datasets]
    records = []
    for name in args.candidates:
        settings = LabelEfficiencySettings(
            checkpoint=args.checkpoint,
            datasets=args.datasets,
            output_dir=str(Path(args.output_dir) / name),
            ks=args.ks,
            seeds=args.seeds,
            models=["finetune", "scratch"],
            finetune_overrides=CANDIDATES[name],
        )
        study = run_study(settings, progress=lambda line: None, jobs=args.jobs)
        for run in study["runs"]:
            records.append(
                {
                    "recipe": name,
                    "dataset": run["dataset"],
                    "k": run["k"],
                    "seed": run["seed"],
                    "model": run["model"],
                    "validation_macro_f1": run["validation"]["macro_f1"],
                    "steps": run.get("steps"),
                    "seconds": run["seconds"],
                }
            )
            print(
                f"[recipe] {name} {run['dataset']} k={run['k']} seed {run['seed']} {run['model']}: validation "
                f"macro-F1 {run['validation']['macro_f1']:.3f}",
                flush=True,
            )
    table = []
    for name in args.candidates:
        mine = [r for r in records if r["recipe"] == name]
        row = {"recipe": name, "overrides": CANDIDATES[name]}
        for model in ("finetune", "scratch"):
            row[model] = float(np.mean([r["validation_macro_f1"] for r in mine if r["model"] == model]))
        for dataset in names:
            for model in ("finetune", "scratch"):
                row[f"{dataset}/{model}"] = float(
                    np.mean([r["validation_macro_f1"] for r in mine if r["model"] == model and r["dataset"] == dataset])
                )
        row["both"] = (row["finetune"] + row["scratch"]) / 2
        table.append(row)
    best = max(table, key=lambda r: r["both"])
    result = {
        "checkpoint": args.checkpoint,
        "datasets": names,
        "ks": args.ks,
        "seeds": args.seeds,
        "table": table,
        "best": best["recipe"],
        "records": records,
        "seconds": round(time.time() - started, 1),
    }
    results = REPO / "benchmarks" / "results"
    (results / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Fine-tuning recipe search (validation macro-F1 only; k = {args.ks}, seeds {args.seeds})",
        "",
        f"Checkpoint: `{args.checkpoint}`. Best mean over both initialisations: **{best['recipe']}**.",
        "",
        "| recipe | pre-trained | scratch | mean | "
        + " | ".join(f"{n} pre-trained | {n} scratch" for n in names)
        + " |",
        "|---|---:|---:|---:|" + "---:|---:|" * len(names),
    ]
    for row in table:
        lines.append(
            f"| {row['recipe']} | {row['finetune']:.3f} | {row['scratch']:.3f} | {row['both']:.3f} | "
            + " | ".join(f"{row[n + '/finetune']:.3f} | {row[n + '/scratch']:.3f}" for n in names)
            + " |"
        )
    (results / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
