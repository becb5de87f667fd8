#!/usr/bin/env python
"""Label-efficiency study in one command: fine-tuned from a pre-trained checkpoint vs the same encoder from scratch,
linear probes on the pre-trained and on a random encoder, and two tree baselines, at k labelled flows per class.

    python train/run_label_efficiency.py --checkpoint checkpoints/mmae-small \
        --datasets outputs/ndpi-seen-apps outputs/sample-traffic --ks 5 10 25 50 all --seeds 0 1 2

The k-per-class training subsets are drawn by seed and are the same rows for every model (their digest is in each
run's JSON). Every choice is made on validation; test is scored once. Writes RESULTS_DIR/<name>.json, .md and .png;
runs are cached under OUTPUT_DIR, so a second call only runs what is missing. See mmae_hf/training/label_efficiency.py.
"""

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    from mmae_hf.training.label_efficiency import MODELS

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, help="pre-trained MMAE folder (save_pretrained) or Hub id")
    p.add_argument("--datasets", nargs="+", required=True, help="labelled dataset folders (train/validation/test)")
    p.add_argument("--ks", nargs="+", default=["5", "10", "25", "50", "all"], help="flows per class, or 'all'")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument(
        "--finetune_arg",
        "--finetune-arg",
        dest="finetune_arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a FinetuneArguments field for both fine-tuned models, e.g. learning_rate=1e-3 (repeatable); "
        "default: the recipe train/finetune.py picks",
    )
    p.add_argument(
        "--probe_pooling",
        "--probe-pooling",
        dest="probe_pooling",
        default="mean",
        choices=["cls", "mean", "cls+mean"],
        help="what the linear probes read: the CLS output, the mean of the token outputs (default: pre-training never "
        "trains the CLS output) or both concatenated",
    )
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process (default 1)")
    p.add_argument("--explain", action="store_true", help="print what the table means, in words, after it")
    p.add_argument("--name", default="label_efficiency", help="result file name")
    p.add_argument(
        "--output_dir",
        "--output-dir",
        dest="output_dir",
        default=str(REPO / "outputs" / "label-efficiency"),
        help="run cache",
    )
    p.add_argument("--results_dir", "--results-dir", dest="results_dir", default=str(REPO / "benchmarks" / "results"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import mmae_hf  # noqa: F401  (registers the Auto classes)
    from mmae_hf.training.label_efficiency import LabelEfficiencySettings, explain, markdown, plot, run_study
    from mmae_hf.training.pretraining import parse_config_overrides

    started = time.time()
    settings = LabelEfficiencySettings(
        checkpoint=args.checkpoint,
        datasets=args.datasets,
        output_dir=args.output_dir,
        ks=[None if k == "all" else int(k) for k in args.ks],
        seeds=args.seeds,
        models=args.models,
        finetune_overrides=parse_config_overrides(args.finetune_arg),
        probe_pooling=args.probe_pooling,
    )
    study = run_study(settings, progress=lambda line: print(line, flush=True), jobs=args.jobs)
    study["settings"] = {
        "checkpoint": args.checkpoint,
        "datasets": [Path(d).name for d in args.datasets],
        "ks": args.ks,
        "seeds": args.seeds,
        "models": args.models,
        "finetune_overrides": settings.finetune_overrides,
        "probe_pooling": args.probe_pooling,
    }
    study["wall_time_s"] = round(time.time() - started, 1)
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps(study, indent=2) + "\n")
    text = markdown(study)
    (results / f"{args.name}.md").write_text(f"# Label efficiency: {args.name}\n\n" + text)
    plot(study, results / f"{args.name}.png")
    print(text)
    if args.explain:
        print(explain(study))
        print()
    print(
        f"results: {results / (args.name + '.md')} (.json, .png); runs (model cards, confusion matrices): "
        f"{args.output_dir}/runs/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
