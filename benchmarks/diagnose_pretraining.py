#!/usr/bin/env python
"""What did pre-training learn? Probes against pre-training steps, and masked-byte reconstruction by field.

    python benchmarks/diagnose_pretraining.py --run outputs/diag/tiny-default --corpus outputs/corpus \
        --eval-datasets outputs/ndpi-seen-apps outputs/sample-traffic --name tiny-default

For the run's checkpoints (``checkpoints/checkpoint-<step>``, saved with ``--save-steps N --save-total-limit 0``), its
final model, and a randomly initialised encoder of the same config (step 0, the control):

* a logistic-regression probe on the frozen encoder (CLS vector and mean of the token outputs), trained on k flows
  per class of each evaluation dataset's train split (the same seeded subsets for every checkpoint), C chosen on
  validation macro-F1, scored on validation and test;
* masked-byte reconstruction on the corpus's held-out validation captures, by header field, beside the trivial
  baseline that predicts the most frequent byte of each position (counted on the corpus train split);
* the loss components logged at each checkpoint's step (``metrics.jsonl``).

Writes benchmarks/results/diagnostics/<name>.json and .md (and a PNG of probe macro-F1 against steps).
"""

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", required=True, help="pre-training output folder")
    p.add_argument("--corpus", help="corpus folder with a validation split (reconstruction diagnostics)")
    p.add_argument("--eval-datasets", nargs="*", default=[], help="labelled dataset folders for the probes")
    p.add_argument("--ks", nargs="+", default=["10", "25", "all"], help="flows per class of the probe's train rows")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--poolings", nargs="+", default=["cls", "mean"], choices=["cls", "mean", "cls+mean"])
    p.add_argument("--steps", nargs="*", type=int, help="only these checkpoint steps (default: all)")
    p.add_argument("--max-reconstruction-flows", type=int, default=1200)
    p.add_argument("--name", help="result file name (default: the run folder's name)")
    p.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results" / "diagnostics"))
    return p.parse_args(argv)


def checkpoints_of(run: Path, only=None):
    """(step, folder) of every checkpoint, plus the finished model folder as its final step."""
    found = []
    for path in (run / "checkpoints").glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / "model.safetensors").is_file():
            found.append((int(match.group(1)), path))
    summary = run / "pretraining_summary.json"
    if (run / "config.json").is_file() and summary.is_file():
        step = json.loads(summary.read_text())["step"]
        if step not in {s for s, _ in found}:
            found.append((step, run))
    found.sort()
    return [(s, p) for s, p in found if not only or s in only]


def columns_of(
    ds, names=("input_bytes", "packet_lengths", "packet_iats", "packet_directions", "flow_stats", "label", "protocol")
):
    out = {}
    table = ds.with_format("arrow")[:]
    for name in names:
        if name not in ds.column_names:
            continue
        column = table[name].combine_chunks()
        if hasattr(column.type, "list_size"):
            out[name] = column.values.to_numpy(zero_copy_only=False).reshape(len(ds), -1)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


def main(argv=None):
    args = parse_args(argv)
    import torch
    from mmae_hf.traffic import load_traffic_dataset

    import mmae_hf  # noqa: F401
    from mmae_hf.configuration_mmae import MMAEConfig
    from mmae_hf.modeling_mmae import MMAEForPreTraining
    from mmae_hf.training.diagnostics import (
        FIELD_NAMES,
        byte_field_codes,
        encoder_features,
        few_shot_indices,
        linear_probe,
        load_pretraining_checkpoint,
        most_frequent_bytes,
        reconstruct_masked_bytes,
        reconstruction_by_field,
    )

    torch.set_num_threads(1)
    run = Path(args.run)
    name = args.name or run.name
    config = MMAEConfig.from_dict(json.loads((run / "pretraining_config.json").read_text()))
    ks = [None if k == "all" else int(k) for k in args.ks]
    started = time.time()

    evals = {}
    for folder in args.eval_datasets:
        dsd = load_traffic_dataset(folder)
        evals[Path(folder).name] = {split: columns_of(dsd[split]) for split in ("train", "validation", "test")}
        evals[Path(folder).name]["num_labels"] = dsd["train"].features["label"].num_classes
    recon = None
    if args.corpus:
        corpus = load_traffic_dataset(args.corpus)
        train_payload = columns_of(corpus["train"], ("input_bytes",))["input_bytes"]
        baseline = most_frequent_bytes(train_payload)
        mean_baseline = train_payload.mean(axis=0)
        held = columns_of(corpus["validation"])
        n = min(args.max_reconstruction_flows, len(held["input_bytes"]))
        held = {k: v[:n] for k, v in held.items()}
        codes = byte_field_codes(held["input_bytes"], held["packet_lengths"], held.get("protocol"))
        recon = (held, codes, baseline, mean_baseline)

    metrics = {}
    metrics_path = run / "metrics.jsonl"
    if metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                metrics[record["step"]] = record

    points = [(0, None)] + checkpoints_of(run, args.steps)
    results = []
    for step, path in points:
        if path is None:
            torch.manual_seed(0)
            model = MMAEForPreTraining(config)
        else:
            model = load_pretraining_checkpoint(path, config)
        model.eval()
        entry = {
            "step": step,
            "source": "random init" if path is None else str(path.relative_to(run)),
            "probe": {},
            "losses": {
                k: v
                for k, v in metrics.get(step, {}).items()
                if k in ("loss", "reconstruction_loss", "rank_loss", "distillation_loss")
            },
        }
        for dname, splits in evals.items():
            for pooling in args.poolings:
                feats = {
                    s: encoder_features(model.mmae, splits[s]["input_bytes"], pooling)
                    for s in ("train", "validation", "test")
                }
                for k in ks:
                    scores = []
                    for seed in args.seeds:
                        rows = few_shot_indices(splits["train"]["label"], k, seed)
                        r = linear_probe(
                            feats["train"][rows],
                            splits["train"]["label"][rows],
                            feats["validation"],
                            splits["validation"]["label"],
                            feats["test"],
                            splits["test"]["label"],
                            num_labels=splits["num_labels"],
                            seed=seed,
                        )
                        scores.append(r)
                        if k is None:
                            break  # all rows: the subset does not depend on the seed
                    key = f"{dname}/{pooling}/k={'all' if k is None else k}"
                    entry["probe"][key] = {
                        "validation_macro_f1": float(np.mean([s["validation"]["macro_f1"] for s in scores])),
                        "test_macro_f1": float(np.mean([s["test"]["macro_f1"] for s in scores])),
                        "test_macro_f1_std": float(np.std([s["test"]["macro_f1"] for s in scores], ddof=1))
                        if len(scores) > 1
                        else 0.0,
                        "seeds": len(scores),
                    }
        if recon is not None:
            held, codes, baseline, mean_baseline = recon
            for pairing in ("random", "similar") if config.use_flowmix else ("random",):
                predicted, masked = reconstruct_masked_bytes(model, held, seed=0, pairing=pairing)
                key = "reconstruction" if pairing == "random" else "reconstruction_similar_partner"
                entry[key] = reconstruction_by_field(
                    predicted, masked, held["input_bytes"], codes, baseline, mean_baseline
                )
        results.append(entry)
        print(
            f"[diagnose] step {step}: "
            + ", ".join(
                f"{k} {v['test_macro_f1']:.3f}" for k, v in entry["probe"].items() if "k=10" in k or "k=all" in k
            )
            + (
                f"; masked-byte RMSE {entry['reconstruction']['all']['model_rmse']:.1f} "
                f"(position-mean baseline {entry['reconstruction']['all']['mean_baseline_rmse']:.1f})"
                if recon
                else ""
            ),
            flush=True,
        )

    out = {
        "name": name,
        "run": str(run),
        "config": {
            k: getattr(config, k)
            for k in (
                "hidden_size",
                "num_hidden_layers",
                "bytes_per_token",
                "mask_ratio",
                "use_flowmix",
                "flowmix_pairing",
                "use_teacher",
                "use_pmp",
                "use_guided_masking",
                "reconstruction_loss_on",
            )
        },
        "ks": args.ks,
        "seeds": args.seeds,
        "points": results,
        "field_names": list(FIELD_NAMES),
        "seconds": round(time.time() - started, 1),
    }
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    (results_dir / f"{name}.md").write_text(markdown(out))
    plot(out, results_dir / f"{name}.png")
    print(f"wrote {results_dir / (name + '.md')}")
    return 0


def markdown(out) -> str:
    points = out["points"]
    keys = list(points[0]["probe"]) if points else []
    lines = [
        f"# Pre-training diagnostics: {out['name']}",
        "",
        f"Config: `{json.dumps(out['config'])}`",
        "",
        "## Probe test macro-F1 against pre-training steps (step 0 = random encoder)",
        "",
        "| probe | " + " | ".join(str(p["step"]) for p in points) + " |",
        "|---|" + "---:|" * len(points),
    ]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(f"{p['probe'][key]['test_macro_f1']:.3f}" for p in points) + " |")
    lines += [
        "",
        "Validation macro-F1 (what a recipe may be chosen on):",
        "",
        "| probe | " + " | ".join(str(p["step"]) for p in points) + " |",
        "|---|" + "---:|" * len(points),
    ]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(f"{p['probe'][key]['validation_macro_f1']:.3f}" for p in points) + " |")
    if points and "reconstruction" in points[-1]:
        last = points[-1]
        lines += [
            "",
            f"## Masked-byte reconstruction on held-out corpus flows (step {last['step']}, random partners)",
            "",
            "Exact-byte accuracy and mean absolute error beside the most-frequent-byte-per-position baseline; "
            "root mean squared error (the model's own loss) beside the mean-byte-per-position baseline.",
            "",
            "| field | masked bytes | model accuracy | most-frequent-byte accuracy | model MAE | "
            "most-frequent-byte MAE | model RMSE | mean-byte RMSE |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for field, row in last["reconstruction"].items():
            if row.get("masked_bytes"):
                lines.append(
                    f"| {field} | {row['masked_bytes']:,} | {row['model_accuracy']:.3f} | "
                    f"{row['baseline_accuracy']:.3f} | {row['model_mae']:.1f} | {row['baseline_mae']:.1f} | "
                    f"{row['model_rmse']:.1f} | {row['mean_baseline_rmse']:.1f} |"
                )
        lines += [
            "",
            "RMSE of all masked bytes against steps (random partners): "
            + ", ".join(f"{p['step']}: {p['reconstruction']['all']['model_rmse']:.1f}" for p in points),
        ]
        if "reconstruction_similar_partner" in last:
            lines += [
                "",
                "Same with the training collator's look-alike partners: "
                + ", ".join(
                    f"{p['step']}: {p['reconstruction_similar_partner']['all']['model_rmse']:.1f}" for p in points
                ),
            ]
    lines += [
        "",
        "## Loss components at the checkpoints",
        "",
        "| step | loss | reconstruction | rank | distillation |",
        "|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        losses = p["losses"]
        if losses:
            lines.append(
                f"| {p['step']} | "
                + " | ".join(
                    f"{losses[k]:.4f}" if losses.get(k) is not None else "-"
                    for k in ("loss", "reconstruction_loss", "rank_loss", "distillation_loss")
                )
                + " |"
            )
    return "\n".join(lines) + "\n"


def plot(out, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = out["points"]
    if not points:
        return
    steps = [p["step"] for p in points]
    figure, axis = plt.subplots(figsize=(7, 4))
    for key in points[0]["probe"]:
        axis.plot(steps, [p["probe"][key]["test_macro_f1"] for p in points], marker="o", label=key)
    axis.set_xlabel("pre-training step (0 = random encoder)")
    axis.set_ylabel("probe test macro-F1")
    axis.set_title(f"probe against pre-training steps: {out['name']}")
    axis.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
