"""Variants of a study (MMAE, ablations, baselines) and the results table over seeds.

`VARIANTS` names every run ``train/run_study.py`` knows: how it is trained and, for the MMAE variants, which
pre-training config switches it uses. `summarize_study` turns the per-run ``results.json`` files into mean ± std
over seeds; `study_markdown` renders the table written to ``benchmarks/results/<study>.md``.
"""

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from ..evaluation import mean_std


@dataclass(frozen=True)
class Variant:
    """One row of the study.

    kind: ``finetune`` (pre-train with ``pretrain_overrides`` unless ``pretrain`` is None, then fine-tune with the
    Trainer), ``probe`` (logistic regression on the frozen encoder of pre-training ``pretrain``, or, when
    ``pretrain`` is None, on a randomly initialised encoder of the study's preset: the control that says what
    pre-training adds over random features) or ``tree`` (scikit-learn ensemble ``tree_kind`` on side-channel
    features).
    """

    kind: str
    description: str
    pretrain: str | None = None  # name of the pre-training run it starts from (shared between variants)
    pretrain_overrides: dict = field(default_factory=dict)
    tree_kind: str | None = None


# pre-training runs, by name: config switches passed to train/pretrain.py as --config_overrides KEY=VALUE
PRETRAININGS = {
    "mmae": {},
    "no_flowmix": {"use_flowmix": False},
    "no_teacher": {"use_teacher": False},
    "no_pmp": {"use_pmp": False, "use_guided_masking": False},
    "random_masking": {"use_guided_masking": False},
}

VARIANTS = {
    "mmae": Variant(
        "finetune", "MMAE: pre-trained (FlowMix + PMP-guided masking + mean teacher), fine-tuned", pretrain="mmae"
    ),
    "no_flowmix": Variant(
        "finetune",
        "ablation: pre-trained without FlowMix (plain masked autoencoder), fine-tuned",
        pretrain="no_flowmix",
    ),
    "no_teacher": Variant(
        "finetune", "ablation: pre-trained without the mean teacher, fine-tuned", pretrain="no_teacher"
    ),
    "no_pmp": Variant(
        "finetune", "ablation: pre-trained without PMP attention bias and guided masking, fine-tuned", pretrain="no_pmp"
    ),
    "random_masking": Variant(
        "finetune", "ablation: PMP kept, random masking (the official code's behaviour)", pretrain="random_masking"
    ),
    "scratch": Variant("finetune", "same encoder trained from scratch (no pre-training)"),
    "linear_probe": Variant("probe", "logistic regression on the frozen MMAE encoder's CLS vector", pretrain="mmae"),
    "random_probe": Variant("probe", "control: the same probe on a frozen, randomly initialised encoder"),
    "extra_trees": Variant(
        "tree", "ExtraTrees on flow statistics + packet lengths/IATs/directions", tree_kind="extra_trees"
    ),
    "random_forest": Variant(
        "tree", "RandomForest on flow statistics + packet lengths/IATs/directions", tree_kind="random_forest"
    ),
    "hist_gradient_boosting": Variant(
        "tree",
        "HistGradientBoosting on flow statistics + packet lengths/IATs/directions",
        tree_kind="hist_gradient_boosting",
    ),
}
for _variant in VARIANTS.values():
    if _variant.pretrain is not None:
        object.__setattr__(_variant, "pretrain_overrides", PRETRAININGS[_variant.pretrain])

DEFAULT_VARIANTS = ("mmae", "scratch", "linear_probe", "extra_trees", "no_flowmix", "no_teacher", "no_pmp")


def summarize_study(runs: list[dict[str, Any]], variants: list[str]) -> list[dict[str, Any]]:
    """Mean ± std over seeds per variant. ``runs`` items: ``{"variant", "seed", "test": {...}, "validation": {...}}``."""
    rows = []
    for name in variants:
        mine = sorted((r for r in runs if r["variant"] == name), key=lambda r: r["seed"])
        if not mine:
            continue
        row = {
            "variant": name,
            "description": VARIANTS[name].description if name in VARIANTS else "",
            "seeds": [r["seed"] for r in mine],
        }
        for split in ("test", "validation"):
            for metric in ("macro_f1", "accuracy", "weighted_f1"):
                values = [r[split][metric] for r in mine]
                mean, std = mean_std(values)
                row[f"{split}_{metric}"] = {"mean": mean, "std": std, "values": values}
        row["wall_time_s"] = mean_std([r.get("wall_time_s") or 0.0 for r in mine])[0]
        rows.append(row)
    return rows


def _pm(cell: dict[str, Any]) -> str:
    # one seed has no spread: "± 0.0000" would claim a precision nobody measured
    if len(cell.get("values", [])) < 2:
        return f"{cell['mean']:.4f} (1 seed)"
    return f"{cell['mean']:.4f} ± {cell['std']:.4f}"


def results_table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table (also printed at the end of a study)."""
    lines = [
        "| variant | seeds | test macro-F1 | test accuracy | test weighted-F1 | validation macro-F1 | time/run (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {len(row['seeds'])} | {_pm(row['test_macro_f1'])} | "
            f"{_pm(row['test_accuracy'])} | {_pm(row['test_weighted_f1'])} | "
            f"{_pm(row['validation_macro_f1'])} | {row['wall_time_s']:.0f} |"
        )
    return "\n".join(lines)


def study_markdown(study: dict[str, Any]) -> str:
    rows = study["summary"]
    dataset = study["dataset"]
    parts = [
        f"# Study `{study['study']}`",
        "",
        f"Generated {study['created']} by `train/run_study.py`. Dataset: `{dataset['name']}` "
        f"({', '.join(f'{k} {v}' for k, v in dataset['num_rows'].items())} flows; {len(dataset['label_names'])} "
        f"classes: {', '.join(dataset['label_names'])}). Seeds: {', '.join(map(str, study['seeds']))}."
        + (f" Code: `{study['code_version']}`." if study.get("code_version") else ""),
        "",
        "Mean ± sample standard deviation over seeds. Macro-F1 (unweighted mean over classes) is the headline; "
        "weighted-F1 weights classes by support. Every model is selected on the validation split only and "
        "scored once on the test split; all variants share the same splits and metric code.",
        "",
        results_table(rows),
        "",
    ]
    chance = study.get("chance")
    if chance:
        parts += [
            f"Chance on this test set: uniform guessing {chance['uniform_macro_f1']:.4f} macro-F1 "
            f"({chance['uniform_accuracy']:.4f} accuracy); always the majority class of train "
            f"{chance['majority_macro_f1']:.4f} macro-F1 ({chance['majority_accuracy']:.4f} accuracy).",
            "",
        ]
    parts += [
        "| variant | what it is |",
        "|---|---|",
    ]
    parts += [f"| {row['variant']} | {row['description']} |" for row in rows]
    parts += ["", "Settings:", "", "```", *(f"{k}: {v}" for k, v in study["settings"].items()), "```", ""]
    parts += ["Per run (test macro-F1 by seed):", ""]
    for row in rows:
        values = ", ".join(f"{s}: {v:.4f}" for s, v in zip(row["seeds"], row["test_macro_f1"]["values"]))
        parts.append(f"- {row['variant']}: {values}")
    parts.append("")
    return "\n".join(parts)


def now_utc() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


__all__ = [
    "DEFAULT_VARIANTS",
    "PRETRAININGS",
    "VARIANTS",
    "Variant",
    "now_utc",
    "results_table",
    "study_markdown",
    "summarize_study",
]
