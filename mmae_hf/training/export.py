"""Export a pre-training run as a shippable encoder checkpoint (and publish it on the Hub).

`export_encoder` reads a folder written by ``train/pretrain.py`` and writes a folder that holds only what a user of
the encoder needs: the encoder weights (`MMAEModel`: no decoder, loss predictor or teacher, so loading it prints no
"unexpected keys"), ``config.json`` with the full ``auto_map`` and the remote-code files (``trust_remote_code=True``
works without mmae-hf installed), the feature extractor's ``preprocessor_config.json`` (the flow extraction and
anonymisation the encoder was pre-trained with), the curves, the run's settings and a model card stating the corpus,
the recipe, the curves and the probe results. The folder is staged and renamed into place.
"""

import json
import shutil
from pathlib import Path

KEPT_FILES = ("preprocessor_config.json", "pretraining_curves.png", "pretraining_args.json", "pretraining_summary.json")
CORPUS_REPORT_NAME = "corpus_report.json"


def encoder_of(pretraining_dir):
    """The `MMAEModel` inside a finished pre-training folder (float32, eval mode)."""
    import torch
    from transformers.utils import logging as hf_logging

    from ..modeling_mmae import MMAEForPreTraining

    folder = Path(pretraining_dir)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder}: no config.json (not a finished run of train/pretrain.py; a run that "
            "stopped early leaves only checkpoints: resume it first)"
        )
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = MMAEForPreTraining.from_pretrained(str(folder), dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    encoder = model.mmae.eval()
    encoder.config.architectures = ["MMAEModel"]
    return encoder


def export_encoder(
    pretraining_dir,
    output_dir,
    *,
    corpus_report=None,
    diagnostics=None,
    label_efficiency=None,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
) -> Path:
    """Write the encoder checkpoint folder (see the module docstring); returns its path.

    Args:
        pretraining_dir: a finished ``train/pretrain.py`` output folder.
        output_dir: the folder to write (replaced only with ``overwrite``).
        corpus_report: the corpus's ``corpus_report.json`` (default: beside the run's ``--dataset`` when local).
        diagnostics: a ``benchmarks/diagnose_pretraining.py`` JSON (probe against steps, reconstruction by field).
        label_efficiency: a ``train/run_label_efficiency.py`` JSON (fine-tuned vs scratch vs trees against k).
        repo_id: where the checkpoint is published, for the card's usage lines.
        push_to_hub: a Hub repo id to upload the finished folder to (one commit).
    """
    from ..model_card import build_pretraining_model_card
    from ..modeling_mmae import set_auto_map
    from ..traffic.atomic import StagedFolder

    source = Path(pretraining_dir)
    encoder = encoder_of(source)
    run_args = _read_json(source / "pretraining_args.json")
    if corpus_report is None and run_args.get("dataset"):
        candidate = Path(run_args["dataset"]) / CORPUS_REPORT_NAME
        corpus_report = candidate if candidate.is_file() else None
    corpus = _read_json(Path(corpus_report)) if corpus_report else {}
    diag = _read_json(Path(diagnostics)) if diagnostics else {}
    study = _read_json(Path(label_efficiency)) if label_efficiency else {}
    target = Path(output_dir)
    with StagedFolder(target, overwrite=overwrite) as staged:
        set_auto_map(encoder.config)
        encoder.save_pretrained(str(staged.path))
        for name in KEPT_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, staged.path / name)
        if corpus:
            shutil.copyfile(corpus_report, staged.path / CORPUS_REPORT_NAME)
        card = build_pretraining_model_card(
            source,
            repo_id=repo_id or push_to_hub,
            license=license,
            dataset_name=corpus.get("name") or _corpus_name(run_args),
            model_name=target.name,
        )
        text = str(card).rstrip("\n") + "\n" + extra_card_sections(corpus, diag, study)
        (staged.path / "README.md").write_text(text)
        staged.commit()
    if push_to_hub:
        from ..hub import push_model_folder

        push_model_folder(
            target,
            push_to_hub,
            private=private,
            commit_message="Upload pre-trained MMAE encoder (mmae-hf export_encoder)",
        )
    return target


def _corpus_name(run_args: dict) -> str | None:
    dataset = run_args.get("dataset")
    return Path(dataset).name if dataset and Path(dataset).exists() else dataset


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else {}


def extra_card_sections(corpus: dict, diagnostics: dict, study: dict) -> str:
    """Markdown appended to the pre-training card: the corpus and what was kept out, the probe against steps, the
    reconstruction by field, and the label-efficiency table (each only when its report is given)."""
    lines = []
    if corpus:
        lines += [
            "",
            "## Corpus",
            "",
            f"{sum(corpus['flows'].values()):,} unlabelled flows (train {corpus['flows'].get('train', 0):,}, "
            f"held-out validation {corpus['flows'].get('validation', 0):,}, split by capture), anonymisation "
            f"`{corpus['anonymize']}`, built with `{corpus.get('command')}`.",
            "",
            "| source | train flows | licence |",
            "|---|---:|---|",
        ]
        for source, count in sorted(corpus["flows_by_source"].get("train", {}).items()):
            lines.append(f"| {source} | {count:,} | {corpus['licenses'].get(source) or '?'} |")
        lines += [
            "",
            "Kept out of pre-training, so that the evaluation sets below are unseen: "
            f"{corpus['excluded_captures']} captures that a validation or test flow of "
            f"{', '.join(e['path'] for e in corpus['evaluation_sets']) or 'no evaluation set'} was cut from, and "
            f"{corpus['removed_held_out_payloads']} corpus flows whose bytes equal such a flow's.",
        ]
    if diagnostics and diagnostics.get("points"):
        points = diagnostics["points"]
        # both poolings: pre-training never trains the CLS output, the token mean is what the classifier reads
        keys = [k for k in points[0]["probe"] if "/cls/" in k or "/mean/" in k]
        lines += [
            "",
            "## Linear probe against pre-training steps",
            "",
            "Logistic regression on the frozen encoder's CLS vector (cls) or on the mean of its token outputs "
            "(mean), k labelled flows per class of each development set's train split (3 seeded subsets), C "
            "chosen on validation; test macro-F1 (step 0 is a random encoder of the same architecture: the "
            "control).",
            "",
            "| probe | " + " | ".join(str(p["step"]) for p in points) + " |",
            "|---|" + "---:|" * len(points),
        ]
        for key in keys:
            lines.append(
                f"| {key.replace('/', ', ')} | "
                + " | ".join(f"{p['probe'][key]['test_macro_f1']:.3f}" for p in points)
                + " |"
            )
        last = points[-1]
        if "reconstruction" in last:
            lines += [
                "",
                f"## Masked-byte reconstruction on held-out corpus flows (step {last['step']})",
                "",
                "| field | masked bytes | exact-byte accuracy | most-frequent-byte baseline | RMSE | "
                "mean-byte baseline RMSE |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for field, row in last["reconstruction"].items():
                if row.get("masked_bytes"):
                    lines.append(
                        f"| {field} | {row['masked_bytes']:,} | {row['model_accuracy']:.3f} | "
                        f"{row['baseline_accuracy']:.3f} | {row['model_rmse']:.1f} | "
                        f"{row.get('mean_baseline_rmse', float('nan')):.1f} |"
                    )
    if study and study.get("summary"):
        from .label_efficiency import markdown

        lines += [
            "",
            "## Label efficiency (fine-tuned from this checkpoint vs the same encoder from scratch)",
            "",
            markdown(study),
        ]
    return "\n".join(lines) + ("\n" if lines else "")


__all__ = ["encoder_of", "export_encoder", "extra_card_sections"]
