"""Classification metrics, confusion matrices and the out-of-distribution threshold.

Everything here works on plain numpy arrays (predicted class ids, true class ids, logits), so the same
code scores MMAE, the tree baselines and the linear probe. No torch.

Naming is explicit because this code family has a history of mislabelling: ``macro_f1`` is the
unweighted mean of the per-class F1 scores (the headline number: every class counts the same),
``weighted_f1`` is the support-weighted mean (dominated by the large classes; what the official MMAE,
NetMamba and YaTC code print as "F1").
"""

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> np.ndarray:
    """Counts ``[num_labels, num_labels]``; row = true class, column = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} entries but y_pred has {y_pred.size}")
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_labels):
            raise ValueError(f"{name} holds class ids outside [0, {num_labels}): min {arr.min()}, max {arr.max()}")
    counts = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    return counts


def metrics_from_confusion(confusion: np.ndarray, label_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Accuracy, macro/weighted precision-recall-F1 and per-class scores from a confusion matrix.

    Per class c: precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2PR / (P + R); an empty
    denominator gives 0. Macro averages run over the classes that occur in the true labels *or* in the
    predictions (a class absent from both says nothing about the classifier, so it is left out, like
    scikit-learn's default); weighted averages weight each class by its true support.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    num_labels = confusion.shape[0]
    if confusion.shape != (num_labels, num_labels):
        raise ValueError(f"confusion matrix must be square, got shape {confusion.shape}")
    names = list(label_names) if label_names is not None else [str(i) for i in range(num_labels)]
    if len(names) != num_labels:
        raise ValueError(f"{len(names)} label names for a {num_labels}-class confusion matrix")

    true_positive = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    total = confusion.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positive / predicted, 0.0)
        recall = np.where(support > 0, true_positive / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (support > 0) | (predicted > 0)

    def macro(values: np.ndarray) -> float:
        return float(values[present].mean()) if present.any() else 0.0

    def weighted(values: np.ndarray) -> float:
        return float((values * support).sum() / support.sum()) if support.sum() > 0 else 0.0

    return {
        "num_samples": int(total),
        "accuracy": float(true_positive.sum() / total) if total > 0 else 0.0,
        "macro_f1": macro(f1),
        "macro_precision": macro(precision),
        "macro_recall": macro(recall),
        "weighted_f1": weighted(f1),
        "weighted_precision": weighted(precision),
        "weighted_recall": weighted(recall),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(names)
        },
    }


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], label_names: Sequence[str]
) -> dict[str, Any]:
    """All metrics of :func:`metrics_from_confusion` plus the confusion matrix itself (as nested lists)."""
    confusion = confusion_matrix(y_true, y_pred, len(label_names))
    metrics = metrics_from_confusion(confusion, label_names)
    metrics["label_names"] = list(label_names)
    metrics["confusion_matrix"] = confusion.tolist()
    return metrics


def headline(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The scalar numbers only (what goes into logs, tables and the Trainer's ``compute_metrics``)."""
    keys = ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall")
    return {f"{prefix}{k}": float(metrics[k]) for k in keys}


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def calibrate_ood_threshold(logits: np.ndarray, labels: Sequence[int], percentile: float = 5.0) -> float | None:
    """Max-softmax threshold below which a flow is flagged as unknown / out of distribution.

    Taken on the *validation* split: the ``percentile``-th percentile of the max-softmax probability of
    the correctly classified flows, so that about ``percentile`` % of correct in-distribution flows would be
    flagged. Returns ``None`` when no flow is classified correctly (no basis for a threshold).
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    probs = softmax(logits)
    labels = np.asarray(labels, dtype=np.int64)
    correct = probs.argmax(-1) == labels
    if not correct.any():
        return None
    return float(np.percentile(probs.max(-1)[correct], percentile))


def save_confusion_json(metrics: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"label_names": metrics["label_names"], "rows": "true class", "columns": "predicted class",
               "matrix": metrics["confusion_matrix"]}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def plot_confusion_matrix(metrics: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (recall per true class) with the raw counts written in each cell."""
    import matplotlib

    matplotlib.use("Agg")  # headless; must precede pyplot
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    names = metrics["label_names"]
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    size = max(4.0, 0.55 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xticks(range(len(names)), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), labels=names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if len(names) <= 30:  # the numbers become unreadable beyond that
        for i in range(len(names)):
            for j in range(len(names)):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if normalised[i, j] > 0.5 else "black")
    subtitle = f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}, n={metrics['num_samples']}"
    ax.set_title(f"{title}\n{subtitle}" if title else subtitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_evaluation(
    metrics: dict[str, Any], out_dir: str | Path, stem: str = "test", title: str = ""
) -> dict[str, Path]:
    """Writes ``<stem>_metrics.json``, ``<stem>_confusion.json`` and ``<stem>_confusion.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / f"{stem}_metrics.json"
    metrics_path.write_text(json.dumps(_json_safe(metrics), indent=2) + "\n")
    return {
        "metrics": metrics_path,
        "confusion_json": save_confusion_json(metrics, out_dir / f"{stem}_confusion.json"),
        "confusion_png": plot_confusion_matrix(metrics, out_dir / f"{stem}_confusion.png", title=title),
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def chance_levels(train_labels: Sequence[int], test_labels: Sequence[int], num_labels: int, draws: int = 1000,
                  seed: int = 0) -> dict[str, float]:
    """What guessing scores on a test set: the floor a "beats chance" claim is measured against.

    ``uniform_*``: a guess drawn uniformly over the classes (macro-F1 averaged over ``draws`` seeded draws, accuracy
    exactly 1 / num_labels); ``majority_*``: always the most frequent class of train (exact).
    """
    train = np.asarray(train_labels, dtype=np.int64)
    test = np.asarray(test_labels, dtype=np.int64)
    if not len(test) or num_labels < 1:
        return {}
    rng = np.random.default_rng(seed)
    uniform = [metrics_from_confusion(confusion_matrix(test, rng.integers(0, num_labels, len(test)), num_labels))
               ["macro_f1"] for _ in range(draws)]
    majority = int(np.bincount(train, minlength=num_labels).argmax()) if len(train) else 0
    majority_metrics = metrics_from_confusion(confusion_matrix(test, np.full(len(test), majority), num_labels))
    return {"uniform_macro_f1": float(np.mean(uniform)), "uniform_accuracy": 1.0 / num_labels,
            "majority_macro_f1": float(majority_metrics["macro_f1"]),
            "majority_accuracy": float(majority_metrics["accuracy"])}


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj
