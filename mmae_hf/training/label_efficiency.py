"""Label-efficiency study: how much a pre-trained MMAE encoder is worth when labels are few.

For every development dataset, every k (flows per class of the train split, or all of them) and every seed, the
same seeded subset of training rows (`mmae_hf.training.diagnostics.few_shot_indices`) is given to each model:

* ``finetune``: `MMAEForSequenceClassification` from the pre-trained checkpoint, fine-tuned with the HF Trainer
  (`run_finetuning`, the recipe ``train/finetune.py`` picks);
* ``scratch``: the same architecture, randomly initialised, trained with the same recipe;
* ``probe``: logistic regression on the frozen pre-trained encoder; ``random_probe``: the same on a frozen random
  encoder of the same architecture (what pre-training adds over random features);
* ``extra_trees``: ExtraTrees on the flow statistics and per-packet sizes / times / directions;
  ``random_forest_bytes``: a random forest on the raw 1600 input bytes.

Every choice (checkpoint, C, trees) is made on validation; test is scored once per run. Results are cached per run
(``<output_dir>/runs/<dataset>/<model>/k<k>/seed<seed>.json``) so an interrupted study continues where it stopped.
"""

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data_contract import BYTE_COLUMN

MODELS = ("finetune", "scratch", "probe", "random_probe", "extra_trees", "random_forest_bytes")
MODEL_LABELS = {
    "finetune": "MMAE pre-trained, fine-tuned",
    "scratch": "same encoder from scratch",
    "probe": "linear probe, pre-trained encoder",
    "random_probe": "linear probe, random encoder",
    "extra_trees": "ExtraTrees, flow statistics",
    "random_forest_bytes": "random forest, raw 1600 bytes",
}


@dataclass
class LabelEfficiencySettings:
    """What a study runs. ``ks`` holds ints and ``None`` (all train flows); ``finetune_overrides`` are
    `FinetuneArguments` fields applied to both fine-tuned models (``finetune`` and ``scratch``)."""

    checkpoint: str
    datasets: list
    output_dir: str
    ks: list = field(default_factory=lambda: [5, 10, 25, 50, None])
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    models: list = field(default_factory=lambda: list(MODELS))
    finetune_overrides: dict = field(default_factory=dict)
    probe_pooling: str = "mean"  # pre-training never trains the CLS output (docs/pretraining.md §3.5)
    tree_estimators: int = 300


def k_name(k) -> str:
    return "all" if k is None else str(int(k))


def _columns(ds, names):
    table = ds.with_format("arrow")[:]
    out = {}
    for name in names:
        column = table[name].combine_chunks()
        if hasattr(column.type, "list_size"):
            out[name] = column.values.to_numpy(zero_copy_only=False).reshape(len(ds), -1)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


class _DatasetCache:
    """Per dataset: its splits as numpy columns and the frozen-encoder features (computed once per encoder)."""

    def __init__(self, path):
        from .finetuning import load_traffic_dataset

        self.path = str(path)
        self.name = Path(path).name
        self.dsd = load_traffic_dataset(self.path)
        self.label_names = list(self.dsd["train"].features["label"].names)
        self.splits = {s: _columns(self.dsd[s], (BYTE_COLUMN, "label")) for s in ("train", "validation", "test")}
        self._features = {}

    def labels(self, split):
        return self.splits[split]["label"].astype(np.int64)

    def encoder_features(self, key, encoder, pooling):
        from .diagnostics import encoder_features

        if key not in self._features:
            self._features[key] = {
                s: encoder_features(encoder, self.splits[s][BYTE_COLUMN], pooling)
                for s in ("train", "validation", "test")
            }
        return self._features[key]


def _scores(y_true, y_pred, label_names):
    from ..evaluation import classification_metrics, headline

    return headline(classification_metrics(y_true, y_pred, label_names))


def run_one(
    model_name: str, data: _DatasetCache, k, seed: int, settings: LabelEfficiencySettings, encoders: dict
) -> dict:
    """One (model, dataset, k, seed) run -> ``{"validation": ..., "test": ..., "train_rows": n, ...}``."""
    from .diagnostics import few_shot_indices, linear_probe

    rows = few_shot_indices(data.labels("train"), k, seed)
    started = time.time()
    result = {
        "model": model_name,
        "dataset": data.name,
        "k": k_name(k),
        "seed": seed,
        "train_rows": int(len(rows)),
        "train_rows_digest": _rows_digest(rows),
    }
    y_train = data.labels("train")[rows]
    if len(np.unique(y_train)) < 2:
        raise ValueError(f"{data.name}: k={k_name(k)} seed {seed} gives fewer than 2 classes")
    if model_name in ("finetune", "scratch"):
        from .finetuning import FinetuneArguments, run_finetuning

        out = Path(settings.output_dir) / "runs" / data.name / model_name / f"k{k_name(k)}" / f"seed{seed}"
        source = {"pretrained": settings.checkpoint} if model_name == "finetune" else {"preset": settings.checkpoint}
        args = FinetuneArguments(
            dataset=data.path,
            output_dir=str(out),
            seed=seed,
            few_shot_k=k,
            few_shot_seed=seed,
            report_to="none",
            save_total_limit=1,
            **source,
            **settings.finetune_overrides,
        )
        out.mkdir(parents=True, exist_ok=True)
        # the Trainer's evaluation lines go to the run's own log: the study prints one line per run
        with open(out / "train.log", "w") as log, contextlib.redirect_stdout(log):
            summary = run_finetuning(args)  # reads the folder: the model folder gets the dataset's feature extractor
        if summary["num_train_rows_used"] != len(rows):
            raise AssertionError(f"fine-tuning used {summary['num_train_rows_used']} rows, the subset has {len(rows)}")
        result.update(
            validation=summary["validation"],
            test={k2: v for k2, v in summary["test"].items() if k2 != "per_class"},
            steps=summary["global_steps"],
            best_checkpoint=summary["best_checkpoint"],
        )
        _drop_checkpoints(out)
    elif model_name in ("probe", "random_probe"):
        encoder = encoders[model_name]
        # the pre-trained encoder's features serve every seed; a random encoder is drawn per seed
        feats = data.encoder_features(
            "probe" if model_name == "probe" else f"random-{seed}", encoder, settings.probe_pooling
        )
        probe = linear_probe(
            feats["train"][rows],
            y_train,
            feats["validation"],
            data.labels("validation"),
            feats["test"],
            data.labels("test"),
            num_labels=len(data.label_names),
            seed=seed,
        )
        result.update(validation=probe["validation"], test=probe["test"], C=probe["C"], pooling=settings.probe_pooling)
    elif model_name in ("extra_trees", "random_forest_bytes"):
        from .baselines import flow_feature_matrix, make_tree_model

        if model_name == "extra_trees":
            x = {s: flow_feature_matrix(data.dsd[s])[0] for s in ("train", "validation", "test")}
            tree = make_tree_model("extra_trees", seed, settings.tree_estimators)
        else:
            x = {s: data.splits[s][BYTE_COLUMN] for s in ("train", "validation", "test")}
            tree = make_tree_model("random_forest", seed, settings.tree_estimators)
        tree.fit(x["train"][rows], y_train)
        result.update(
            {s: _scores(data.labels(s), tree.predict(x[s]), data.label_names) for s in ("validation", "test")}
        )
    else:
        raise ValueError(f"unknown model {model_name!r}; choose from {', '.join(MODELS)}")
    result["seconds"] = round(time.time() - started, 2)
    return result


def _rows_digest(rows) -> str:
    import hashlib

    return hashlib.sha1(np.asarray(rows, np.int64).tobytes()).hexdigest()[:12]


def _drop_checkpoints(run_dir: Path) -> None:
    """A study keeps each run's results and model card, not its Trainer checkpoints (tens of MB each)."""
    import shutil

    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def load_encoders(checkpoint: str, seed: int):
    """The frozen pre-trained encoder and a random encoder of the same config (seeded)."""
    import torch
    from transformers.utils import logging as hf_logging

    from ..modeling_mmae import MMAEModel

    hf_logging.set_verbosity_error()  # an encoder out of a pre-training folder: the decoder keys are expected
    pretrained = MMAEModel.from_pretrained(checkpoint, dtype=torch.float32).eval()
    hf_logging.set_verbosity_warning()
    torch.manual_seed(seed)
    random = MMAEModel(pretrained.config).eval()
    return {"probe": pretrained, "random_probe": random}


def _cache_path(settings: LabelEfficiencySettings, dataset: str, model_name: str, k, seed: int) -> Path:
    return Path(settings.output_dir) / "runs" / dataset / model_name / f"k{k_name(k)}" / f"seed{seed}.json"


_WORKER_STATE: dict = {}


def _run_task(settings: LabelEfficiencySettings, path: str, k, seed: int, model_name: str) -> dict:
    """One run, with the dataset and the encoders loaded once per process (also in a pool's worker)."""
    if "quiet" not in _WORKER_STATE:  # a spawned worker starts with the libraries' bars on
        from ..progress import progress_wanted, set_library_progress_bars

        set_library_progress_bars(progress_wanted(False))
        _WORKER_STATE["quiet"] = True
    data = _WORKER_STATE.get(("data", path))
    if data is None:
        data = _WORKER_STATE[("data", path)] = _DatasetCache(path)
    encoders = {}
    if model_name in ("probe", "random_probe"):
        encoders = _WORKER_STATE.get(("encoders", seed))
        if encoders is None:
            encoders = _WORKER_STATE[("encoders", seed)] = load_encoders(settings.checkpoint, seed)
    return run_one(model_name, data, k, seed, settings, encoders)


def run_study(settings: LabelEfficiencySettings, progress=print, jobs: int = 1) -> dict:
    """Run (or reuse) every run of the study, in ``jobs`` processes; returns ``{"runs", "summary"}`` (runs in a fixed
    order: dataset, seed, k, model)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    tasks = [
        (str(path), k, seed, model_name)
        for path in settings.datasets
        for seed in settings.seeds
        for k in settings.ks
        for model_name in settings.models
    ]
    missing = [t for t in tasks if not _cache_path(settings, Path(t[0]).name, t[3], t[1], t[2]).is_file()]

    def finished(task, result):
        cache = _cache_path(settings, Path(task[0]).name, task[3], task[1], task[2])
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result, indent=2) + "\n")
        progress(
            f"[label-efficiency] {result['dataset']} k={result['k']} seed {result['seed']} {result['model']}: "
            f"test macro-F1 {result['test']['macro_f1']:.3f} (validation {result['validation']['macro_f1']:.3f}, "
            f"{result['seconds']:.0f} s)"
        )

    if jobs <= 1 or len(missing) <= 1:
        for task in missing:
            finished(task, _run_task(settings, *task))
    else:
        # spawned workers (a fork would copy torch's thread pools); each loads the data and encoders once
        with ProcessPoolExecutor(max_workers=min(jobs, len(missing)), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_run_task, settings, *task): task for task in missing}
            for future in as_completed(futures):
                finished(futures[future], future.result())
    runs = [json.loads(_cache_path(settings, Path(t[0]).name, t[3], t[1], t[2]).read_text()) for t in tasks]
    return {"runs": runs, "summary": summarize(runs)}


def summarize(runs: list) -> dict:
    """Mean / sample std over seeds of test and validation macro-F1, per dataset, model and k; plus the gains the
    study is about, averaged over the datasets (finetune - scratch, probe - random_probe) for every k."""
    from ..evaluation import mean_std

    table = {}
    for run in runs:
        key = (run["dataset"], run["model"], run["k"])
        table.setdefault(key, []).append(run)
    rows = []
    for (dataset, model, k), group in sorted(table.items()):
        test_mean, test_std = mean_std([r["test"]["macro_f1"] for r in group])
        val_mean, val_std = mean_std([r["validation"]["macro_f1"] for r in group])
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "k": k,
                "seeds": len(group),
                "test_macro_f1": test_mean,
                "test_macro_f1_std": test_std,
                "validation_macro_f1": val_mean,
                "validation_macro_f1_std": val_std,
                "test_accuracy": float(np.mean([r["test"]["accuracy"] for r in group])),
            }
        )
    by = {(r["dataset"], r["model"], r["k"]): r["test_macro_f1"] for r in rows}
    datasets = sorted({r["dataset"] for r in rows})
    gains = {}
    for k in sorted({r["k"] for r in rows}, key=lambda v: (v == "all", int(v) if v != "all" else 0)):
        for name, (a, b) in {
            "finetune_minus_scratch": ("finetune", "scratch"),
            "probe_minus_random_probe": ("probe", "random_probe"),
        }.items():
            diffs = [by[(d, a, k)] - by[(d, b, k)] for d in datasets if (d, a, k) in by and (d, b, k) in by]
            if diffs:
                gains.setdefault(name, {})[k] = {
                    "mean_over_datasets": float(np.mean(diffs)),
                    "per_dataset": dict(zip(datasets, diffs)),
                }
    return {"rows": rows, "gains": gains, "datasets": datasets}


def markdown(study: dict) -> str:
    """Tables: per dataset, test macro-F1 (mean ± std over seeds) by model and k; then the gains."""
    summary = study["summary"]
    rows = summary["rows"]
    ks = sorted({r["k"] for r in rows}, key=lambda v: (v == "all", int(v) if v != "all" else 0))
    lines = []
    for dataset in summary["datasets"]:
        lines += [
            f"### {dataset}: test macro-F1, mean ± std over seeds",
            "",
            "| model | " + " | ".join(f"k = {k}" for k in ks) + " |",
            "|---|" + "---:|" * len(ks),
        ]
        for model in MODELS:
            cells = []
            for k in ks:
                match = [r for r in rows if r["dataset"] == dataset and r["model"] == model and r["k"] == k]
                cells.append(
                    f"{match[0]['test_macro_f1']:.3f} ± {match[0]['test_macro_f1_std']:.3f}"
                    if match and match[0]["seeds"] > 1
                    else (f"{match[0]['test_macro_f1']:.3f}" if match else "-")
                )
            if any(c != "-" for c in cells):
                lines.append(f"| {MODEL_LABELS[model]} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "### Gains averaged over the datasets (test macro-F1)",
        "",
        "| gain | " + " | ".join(f"k = {k}" for k in ks) + " |",
        "|---|" + "---:|" * len(ks),
    ]
    for name, by_k in summary["gains"].items():
        lines.append(
            f"| {name.replace('_', ' ')} | "
            + " | ".join(f"{by_k[k]['mean_over_datasets']:+.3f}" if k in by_k else "-" for k in ks)
            + " |"
        )
    return "\n".join(lines) + "\n"


def explain(study: dict, seeds_note: bool = True) -> str:
    """What the table means, in words drawn from its numbers: per dataset and k, fine-tuned from the checkpoint
    against from scratch, beside the best tree; then one verdict."""
    rows = {(r["dataset"], r["model"], r["k"]): r for r in study["summary"]["rows"]}
    sentences = []
    for dataset in study["summary"]["datasets"]:
        ks = sorted({k for (d, _, k) in rows if d == dataset}, key=lambda v: (v == "all", int(v) if v != "all" else 0))
        parts, gains, tree_wins = [], [], []
        for k in ks:
            ft, sc = rows.get((dataset, "finetune", k)), rows.get((dataset, "scratch", k))
            if ft is None or sc is None:
                continue
            gain = ft["test_macro_f1"] - sc["test_macro_f1"]
            gains.append((k, gain))
            label = "all labelled flows" if k == "all" else f"{k} labelled flows per class"
            text = (
                f"with {label}, the pre-trained encoder fine-tuned scores {ft['test_macro_f1']:.2f} test macro-F1 "
                f"against {sc['test_macro_f1']:.2f} from scratch ({gain:+.2f})"
            )
            trees = [rows[(dataset, m, k)] for m in ("extra_trees", "random_forest_bytes") if (dataset, m, k) in rows]
            if trees:
                best = max(trees, key=lambda r: r["test_macro_f1"])
                text += f" and {best['test_macro_f1']:.2f} for the best tree ({MODEL_LABELS[best['model']]})"
                tree_wins.append(best["test_macro_f1"] >= ft["test_macro_f1"])
            parts.append(text)
        if not parts:
            continue
        few = [g for k, g in gains if k != "all"]
        every = [g for k, g in gains if k == "all"]
        if few and min(few) > 0.02 and (not every or every[0] <= 0.02):
            verdict = "pre-training pays where labels are few, and the two meet once every label is used"
        elif all(g > 0.02 for _, g in gains):
            verdict = "pre-training helps at every label budget here"
        elif all(g < -0.02 for _, g in gains):
            verdict = "pre-training does not help on this data"
        else:
            verdict = "the difference pre-training makes is within a few points either way here"
        if tree_wins and all(tree_wins):
            verdict += ", and the trees are at least as good on this small set"
        seeds = {r["seeds"] for (d, _, _), r in rows.items() if d == dataset}
        note = f" ({max(seeds)} seed{'s' if max(seeds) > 1 else ''}: read small gaps as noise)" if seeds_note else ""
        sentences.append(f"On {dataset}, " + "; ".join(parts) + f": {verdict}{note}.")
    return " ".join(sentences)


def plot(study: dict, path) -> Path:
    """One panel per dataset: test macro-F1 against k (log axis, "all" last), one line per model, std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = study["summary"]
    datasets = summary["datasets"]
    figure, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.2), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        rows = [r for r in summary["rows"] if r["dataset"] == dataset]
        numeric = sorted({int(r["k"]) for r in rows if r["k"] != "all"})
        all_x = (max(numeric) * 2) if numeric else 1
        for model in MODELS:
            mine = [r for r in rows if r["model"] == model]
            if not mine:
                continue
            mine.sort(key=lambda r: all_x if r["k"] == "all" else int(r["k"]))
            xs = [all_x if r["k"] == "all" else int(r["k"]) for r in mine]
            axis.errorbar(
                xs,
                [r["test_macro_f1"] for r in mine],
                yerr=[r["test_macro_f1_std"] for r in mine],
                marker="o",
                capsize=3,
                label=MODEL_LABELS[model],
            )
        axis.set_xscale("log")
        ticks = numeric + [all_x]
        axis.set_xticks(ticks)
        axis.set_xticklabels([str(t) for t in numeric] + ["all"])
        axis.set_xlabel("labelled train flows per class (k)")
        axis.set_ylabel("test macro-F1")
        axis.set_title(dataset)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


__all__ = [
    "LabelEfficiencySettings",
    "MODELS",
    "explain",
    "k_name",
    "markdown",
    "plot",
    "run_one",
    "run_study",
    "summarize",
]
