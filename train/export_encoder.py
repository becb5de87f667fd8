#!/usr/bin/env python
"""Export a pre-training run as a shippable encoder checkpoint, and publish it on the Hub with one option.

    python train/export_encoder.py --pretraining_dir outputs/pretrain/mmae-small --output_dir checkpoints/mmae-small \
        --diagnostics benchmarks/results/diagnostics/mmae-small.json \
        --label_efficiency benchmarks/results/label_efficiency.json [--push_to_hub me/mmae-small]

The folder holds the encoder weights only (no decoder, loss predictor or teacher: AutoModel loads it without
"unexpected keys"), config.json with the full auto_map and the remote-code files, preprocessor_config.json, the
pre-training curves and settings, and a model card with the corpus, the recipe, the probe against steps and the
label-efficiency table. It is staged and renamed into place. Exit status 2 on a bad argument or input.
"""

import argparse
import sys


def build_parser():
    p = argparse.ArgumentParser(
        prog="export_encoder.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pretraining_dir", required=True, help="a finished train/pretrain.py output folder")
    p.add_argument("--output_dir", required=True, help="the checkpoint folder to write")
    p.add_argument("--corpus_report", help="corpus_report.json (default: beside the run's --dataset)")
    p.add_argument("--diagnostics", help="benchmarks/diagnose_pretraining.py JSON for the card")
    p.add_argument("--label_efficiency", help="train/run_label_efficiency.py JSON for the card")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output_dir")
    p.add_argument("--push_to_hub", metavar="REPO_ID", help="upload the finished folder to this Hub model repo")
    p.add_argument("--hub_private_repo", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv=None) -> int:
    from mmae_hf.checks import run_main

    args = build_parser().parse_args(argv)
    return run_main("export_encoder.py", lambda: _run(args), debug=args.debug)


def _run(args) -> int:
    if args.push_to_hub:
        from mmae_hf.checks import is_hub_repo_id

        if not is_hub_repo_id(args.push_to_hub):
            raise ValueError(f"--push_to_hub {args.push_to_hub}: not a Hub repo id (owner/name)")
    import mmae_hf  # noqa: F401  (registers the Auto classes)
    from mmae_hf.progress import progress_wanted, set_library_progress_bars
    from mmae_hf.training.export import export_encoder

    set_library_progress_bars(progress_wanted(False))  # bars only on a terminal

    folder = export_encoder(
        args.pretraining_dir,
        args.output_dir,
        corpus_report=args.corpus_report,
        diagnostics=args.diagnostics,
        label_efficiency=args.label_efficiency,
        license=args.license,
        overwrite=args.overwrite,
        push_to_hub=args.push_to_hub,
        private=args.hub_private_repo,
    )
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    print(
        f"encoder checkpoint: {folder} ({size / 1e6:.1f} MB)"
        + (f"; published to {args.push_to_hub}" if args.push_to_hub else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
