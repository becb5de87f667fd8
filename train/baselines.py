#!/usr/bin/env python
"""Baselines on the same splits and metrics as MMAE fine-tuning (one command each).

    # tree ensemble on flow statistics + packet lengths / IATs / directions (no payload bytes)
    python train/baselines.py tree --dataset DIR --output-dir OUT [--kind extra_trees|random_forest|hist_gradient_boosting]
    # logistic-regression probe on the frozen pre-trained encoder's CLS vector (C chosen on validation)
    python train/baselines.py linear-probe --dataset DIR --pretrained PRETRAINED_DIR --output-dir OUT
    # the same encoder trained from scratch is: python train/finetune.py --dataset DIR --preset mmae-tiny ...

Each writes OUT/results.json and OUT/eval/test_confusion.{png,json}.
"""

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="baseline", required=True)
    tree = sub.add_parser("tree", help="scikit-learn tree ensemble on side-channel features")
    tree.add_argument(
        "--kind", default="extra_trees", choices=["extra_trees", "random_forest", "hist_gradient_boosting"]
    )
    tree.add_argument("--n-estimators", type=int, default=300)
    probe = sub.add_parser("linear-probe", help="logistic regression on frozen pre-trained CLS features")
    probe.add_argument("--pretrained", required=True, help="pre-trained MMAE folder or Hub repo id")
    probe.add_argument("--batch-size", type=int, default=256)
    for p in (tree, probe):
        p.add_argument("--dataset", required=True, help="dataset folder or Hub repo id (train/validation/test)")
        p.add_argument("--output-dir", required=True)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    from mmae_hf.checks import run_main

    return run_main("baselines.py", lambda: _run(args), debug=args.debug)  # bad input: one line, exit 2


def _run(args) -> int:
    from mmae_hf.checks import check_model_source
    from mmae_hf.training.baselines import run_linear_probe, run_tree_baseline
    from mmae_hf.training.finetuning import load_traffic_dataset

    if args.baseline == "linear-probe":
        check_model_source(args.pretrained, "--pretrained")
    dsd = load_traffic_dataset(args.dataset)
    if args.baseline == "tree":
        summary = run_tree_baseline(
            dsd, args.output_dir, kind=args.kind, seed=args.seed, n_estimators=args.n_estimators
        )
    else:
        import mmae_hf  # noqa: F401

        summary = run_linear_probe(dsd, args.pretrained, args.output_dir, seed=args.seed, batch_size=args.batch_size)
    print(
        json.dumps(
            {
                "baseline": summary["model_name"],
                "validation": summary["validation"],
                "test": {k: v for k, v in summary["test"].items() if k != "per_class"},
            },
            indent=2,
        )
    )
    print(f"test_confusion_png: {summary['files']['confusion_png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
