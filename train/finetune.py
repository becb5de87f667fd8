#!/usr/bin/env python
"""Fine-tune MMAE for flow classification with the Hugging Face Trainer.

    # from a pre-trained encoder (folder written by train/pretrain.py, or a Hub repo id)
    python train/finetune.py --dataset outputs/demo/dataset --pretrained outputs/demo/pretrain/final \\
        --output_dir outputs/demo/finetune --num_train_epochs 10
    # same encoder from scratch (baseline)
    python train/finetune.py --dataset DIR --preset mmae-tiny --output_dir OUT
    # publish (model card filled from the template in mmae_hf/templates/)
    python train/finetune.py ... --push_to_hub --hub_model_id me/mmae-tiny-traffic

Options use the Trainer's names (--per_device_train_batch_size, --num_train_epochs, --learning_rate, ...). Older
spellings (--epochs, --batch_size, --output-dir, ...) still work and print one deprecation line.

Model selection uses validation macro-F1 only; the test split is scored once at the end. Outputs in
OUTPUT_DIR: results.json, eval/{validation,test}_{metrics.json,confusion.json,confusion.png}, tensorboard/,
checkpoints/ and model/ (the self-contained save_pretrained folder with README.md model card).

Exit status: 0 on success, 2 on a bad argument or input (one line on stderr; --debug shows the traceback).
"""

import sys
from pathlib import Path

# old option names (before the Trainer's names were adopted); dash forms of every option are accepted too
RENAMED_OPTIONS = {
    "--epochs": "--num_train_epochs",
    "--batch_size": "--per_device_train_batch_size",
    "--eval_batch_size": "--per_device_eval_batch_size",
    "--label_smoothing": "--label_smoothing_factor",
}
SYNONYMS = {"--no_progress": "--disable_tqdm", "--no-progress": "--disable_tqdm"}


def build_parser():
    from mmae_hf.argparsing import TrainingScriptParser
    from mmae_hf.training.finetuning import FinetuneArguments

    summary, _, rest = __doc__.partition("\n\n")
    return TrainingScriptParser(
        FinetuneArguments,
        renamed=RENAMED_OPTIONS,
        synonyms=SYNONYMS,
        prog="finetune.py",
        description=summary,
        epilog=rest,
    )


def main(argv=None) -> int:
    from mmae_hf.checks import run_main

    parser = build_parser()
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    return run_main("finetune.py", lambda: _run(parser, argv), debug=debug)


def _run(parser, argv) -> int:
    args, _ = parser.parse(argv)  # argument errors (one line, exit 2) before anything is loaded

    import mmae_hf  # noqa: F401  (registers the Auto classes)
    from mmae_hf.progress import progress_wanted, set_library_progress_bars
    from mmae_hf.training.finetuning import run_finetuning

    set_library_progress_bars(progress_wanted(args.disable_tqdm))
    summary = run_finetuning(args)
    if "files" not in summary:  # a non-main process of a multi-process run: rank 0 reports
        return 0
    test, files, threshold = summary["test"], summary["files"], summary["ood_threshold"]
    print(
        f"test: accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}, weighted-F1 "
        f"{test['weighted_f1']:.4f} (selected: {summary['best_checkpoint'] or 'final'}, OOD threshold "
        f"{'none' if threshold is None else f'{threshold:.4f}'})"
    )
    print(
        f"model: {files['model']} (card: README.md; confusion matrix: {files['test_confusion_png']}; "
        f"everything: {Path(args.output_dir) / 'results.json'})"
    )
    return 0


if __name__ == "__main__":
    from mmae_hf.traffic.atomic import run_interruptible

    # Ctrl-C / SIGTERM: one line and exit 130 / 143; model/ and eval/ are renamed into place only when complete
    sys.exit(run_interruptible(main, "finetune.py", "the previous model/, eval/ and results.json are unchanged"))
