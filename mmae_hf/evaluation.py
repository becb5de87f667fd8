"""Classification metrics, confusion matrices and the out-of-distribution threshold.

Everything here works on plain numpy arrays (predicted class ids, true class ids, logits), so the same
code scores MMAE, the tree baselines and the linear probe; only `predict_logits` (running a classifier over a split)
imports torch. Also here: the one out-of-distribution calibration, the one softmax and the one JSON sanitiser.

Naming is explicit because this code family has a history of mislabelling: ``macro_f1`` is the
unweighted mean of the per-class F1 scores (the headline number: every class counts the same),
``weighted_f1`` is the support-weighted mean (dominated by the large classes; what the official MMAE,
NetMamba and YaTC code print as "F1").
"""

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .data_contract import BYTE_COLUMN, contract_name


logger = logging.getLogger(__name__)


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_labels: int) -> np.ndarray:
    """Counts ``[num_labels, num_labels]``; row = true class, column = predicted class."""
    true = np.asarray(y_true, dtype=np.int64).ravel()
    predicted = np.asarray(y_pred, dtype=np.int64).ravel()
    if true.shape != predicted.shape:
        raise ValueError(f"y_true has {true.size} entries but y_pred has {predicted.size}")
    for name, arr in (("y_true", true), ("y_pred", predicted)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_labels):
            raise ValueError(f"{name} holds class ids outside [0, {num_labels}): min {arr.min()}, max {arr.max()}")
    counts = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(counts, (true, predicted), 1)
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


def classification_metrics(y_true: ArrayLike, y_pred: ArrayLike, label_names: Sequence[str]) -> dict[str, Any]:
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
    """Softmax over the last axis, in float64 (numerically stable)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def calibrate_ood_threshold(
    logits_or_model,
    labels_or_split,
    percentile: float = 5.0,
    *,
    batch_size: int = 256,
    device=None,
    set_config: bool = True,
) -> float | None:
    """Max-softmax threshold below which a flow is flagged as unknown / out of distribution.

    Taken on the *validation* split (never the test split): the ``percentile``-th percentile of the max-softmax
    probability of the correctly classified flows, so that about ``percentile`` % of correct in-distribution flows
    would be flagged. Returns ``None`` when no flow is classified correctly (no basis for a threshold).

    Two ways to call it:
        ``calibrate_ood_threshold(logits [N, K], labels [N], percentile)``: from predictions already made;
        ``calibrate_ood_threshold(model, validation_split, percentile, batch_size=, device=, set_config=True)``: runs
        the classifier over a split (`predict_logits`, an HF `Dataset` with ``input_bytes`` and ``label`` columns or
        a dict of those arrays) and, with ``set_config``, stores the result in ``model.config.ood_threshold`` (saved
        with the model; left unchanged when None).
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    model = logits_or_model if hasattr(logits_or_model, "config") and callable(logits_or_model) else None
    if model is None:
        logits, labels = logits_or_model, labels_or_split
    else:
        logits = predict_logits(model, labels_or_split, batch_size=batch_size, device=device)
        labels = dataset_labels(labels_or_split)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(logits):
        raise ValueError(f"{len(labels)} labels for {len(logits)} flows")
    probs = softmax(logits)
    correct = probs.argmax(-1) == labels
    if not correct.any():
        if model is not None:
            logger.warning("no validation flow is classified correctly; the OOD threshold was not calibrated")
        return None
    threshold = float(np.percentile(probs.max(-1)[correct], percentile))
    if model is not None and set_config:
        model.config.ood_threshold = threshold
    return threshold


def dataset_labels(dataset_split) -> np.ndarray:
    """The integer ``label`` column of a dataset split (an HF `Dataset` or a dict of columns)."""
    if hasattr(dataset_split, "with_format"):
        return np.asarray(dataset_split.with_format("numpy", columns=["label"])["label"], dtype=np.int64)
    return np.asarray(dataset_split["label"], dtype=np.int64)


def _byte_batches(dataset_split, batch_size: int):
    """uint8 ``[n, num_bytes]`` batches of the byte column of an HF `Dataset`, a dict of columns or an array."""
    if hasattr(dataset_split, "with_format"):
        from .traffic.loading import rename_legacy_columns

        dataset_split = rename_legacy_columns(dataset_split)
        formatted = dataset_split.with_format("numpy", columns=[BYTE_COLUMN])
        for start in range(0, len(formatted), batch_size):
            yield np.asarray(formatted[start : start + batch_size][BYTE_COLUMN]).astype(np.uint8, copy=False)
        return
    if isinstance(dataset_split, dict):
        columns = {contract_name(name): value for name, value in dataset_split.items()}
        dataset_split = columns[BYTE_COLUMN]
    data = np.asarray(dataset_split)
    for start in range(0, len(data), batch_size):
        yield data[start : start + batch_size].astype(np.uint8, copy=False)


def predict_logits(model, dataset_split, batch_size: int = 256, device=None, transform=None) -> np.ndarray:
    """Logits ``[N, num_labels]`` of a classifier on the ``input_bytes`` column of a dataset split.

    Args:
        model: an MMAE classifier (`MMAEForSequenceClassification`; imports torch).
        dataset_split: an HF `Dataset` with the data contract's columns, a dict of columns, or a uint8 array
            ``[N, num_bytes]``.
        transform (callable, *optional*): applied to each uint8 batch ``[n, num_bytes]`` before the model (the
            shortcut report occludes bytes with it).
    """
    import torch

    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    outputs = []
    with torch.no_grad():
        for batch in _byte_batches(dataset_split, batch_size):
            if transform is not None:
                batch = transform(batch)
            logits = model(input_bytes=torch.from_numpy(np.ascontiguousarray(batch)).to(device)).logits
            outputs.append(logits.float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(outputs) if outputs else np.zeros((0, model.config.num_labels), dtype=np.float32)


def save_confusion_json(metrics: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "label_names": metrics["label_names"],
        "rows": "true class",
        "columns": "predicted class",
        "matrix": metrics["confusion_matrix"],
    }
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
                    ax.text(
                        j,
                        i,
                        str(counts[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if normalised[i, j] > 0.5 else "black",
                    )
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
    metrics_path.write_text(json.dumps(to_jsonable(metrics), indent=2) + "\n")
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


def chance_levels(
    train_labels: ArrayLike, test_labels: ArrayLike, num_labels: int, draws: int = 1000, seed: int = 0
) -> dict[str, float]:
    """What guessing scores on a test set: the floor a "beats chance" claim is measured against.

    ``uniform_*``: a guess drawn uniformly over the classes (macro-F1 averaged over ``draws`` seeded draws, accuracy
    exactly 1 / num_labels); ``majority_*``: always the most frequent class of train (exact).
    """
    train = np.asarray(train_labels, dtype=np.int64)
    test = np.asarray(test_labels, dtype=np.int64)
    if not len(test) or num_labels < 1:
        return {}
    rng = np.random.default_rng(seed)
    uniform = [
        metrics_from_confusion(confusion_matrix(test, rng.integers(0, num_labels, len(test)), num_labels))["macro_f1"]
        for _ in range(draws)
    ]
    majority = int(np.bincount(train, minlength=num_labels).argmax()) if len(train) else 0
    majority_metrics = metrics_from_confusion(confusion_matrix(test, np.full(len(test), majority), num_labels))
    return {
        "uniform_macro_f1": float(np.mean(uniform)),
        "uniform_accuracy": 1.0 / num_labels,
        "majority_macro_f1": float(majority_metrics["macro_f1"]),
        "majority_accuracy": float(majority_metrics["accuracy"]),
    }


def json_default(value: Any) -> Any:
    """`json.dumps(..., default=json_default)`: numpy scalars and arrays as Python values, paths and anything else as
    text."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def to_jsonable(obj: Any) -> Any:
    """A copy of `obj` that `json.dumps` writes as valid JSON: dict keys as text, tuples as lists, numpy values as
    Python values, NaN and infinities as null, other objects through `json_default`."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic, np.ndarray)):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return json_default(obj)
