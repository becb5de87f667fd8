#!/usr/bin/env python
"""Fine-tune MMAE for flow classification with the Hugging Face Trainer.

    # from a pre-trained encoder (folder written by train/pretrain.py, or a Hub repo id)
    python train/finetune.py --dataset outputs/demo/dataset --pretrained outputs/demo/pretrain/final \
        --output-dir outputs/demo/finetune --epochs 10
    # same encoder from scratch (baseline)
    python train/finetune.py --dataset DIR --preset mmae-tiny --output-dir OUT
    # publish (model card filled from model_cards/mmae_classifier.md)
    python train/finetune.py ... --push-to-hub --hub-model-id me/mmae-tiny-traffic

Model selection uses validation macro-F1 only; the test split is scored once at the end. Outputs in
OUTPUT_DIR: results.json, eval/{validation,test}_{metrics.json,confusion.json,confusion.png}, tensorboard/,
checkpoints/ and model/ (the self-contained save_pretrained folder with README.md model card).
Every option: python train/finetune.py --help.
"""

import json
import sys

from transformers import HfArgumentParser

import mmae_hf  # noqa: F401  (registers the Auto classes)
from mmae_hf.training.finetuning import FinetuneArguments, run_finetuning


def main(argv=None) -> int:
    parser = HfArgumentParser(FinetuneArguments, description=__doc__.split("\n\n")[0])
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    summary = run_finetuning(args)
    if "files" not in summary:  # a non-main process of a multi-process run: rank 0 reports
        return 0
    test = summary["test"]
    print(json.dumps({"test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
                      "test_weighted_f1": test["weighted_f1"], "best_checkpoint": summary["best_checkpoint"],
                      "ood_threshold": summary["ood_threshold"]}, indent=2))
    for key in ("test_confusion_png", "model_card", "model"):
        print(f"{key}: {summary['files'][key]}")
    return 0


if __name__ == "__main__":
    from mmae_hf.traffic.atomic import run_interruptible

    # Ctrl-C / SIGTERM: one line and exit 130 / 143; model/ and eval/ are renamed into place only when complete
    sys.exit(run_interruptible(main, "finetune.py", "the previous model/, eval/ and results.json are unchanged"))
