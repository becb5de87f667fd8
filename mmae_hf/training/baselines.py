"""Baselines scored on the same splits with the same metric code as MMAE fine-tuning.

- **Tree ensembles** on the side-channel features only (no payload bytes): the 27 flow statistics plus the
  first 5 packet lengths, inter-arrival times and directions (42 numbers per flow). ExtraTrees, RandomForest or
  HistGradientBoosting from scikit-learn. Trained on ``train``; ``validation`` and ``test`` are only scored.
- **Linear probe** on a frozen pre-trained MMAE encoder: the CLS vector (``pooler_output``) of every flow, a
  standard scaler and a multinomial logistic regression; the regularisation strength is chosen on the
  validation split's macro-F1 (never on test).

Each baseline writes ``results.json`` (same layout as fine-tuning: ``validation`` and ``test`` headline
metrics, per-class test scores) and the test confusion matrix (JSON + PNG) into its output folder.
"""

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation import classification_metrics, headline, write_evaluation

PACKET_FEATURES = ("packet_lengths", "packet_iats", "packet_directions")
TREE_KINDS = ("extra_trees", "random_forest", "hist_gradient_boosting")


def _fixed_list_matrix(ds, column: str, dtype) -> np.ndarray:
    table = ds.with_format("arrow")[:]
    values = table[column].combine_chunks()
    width = values.type.list_size
    return values.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(len(ds), width)


def flow_feature_names(num_flow_stats: int = 27, num_packets: int = 5) -> list[str]:
    try:
        from ..traffic import FLOW_STAT_NAMES  # the documented order of flow_stats

        stat_names = list(FLOW_STAT_NAMES)
    except ImportError:
        stat_names = []
    if len(stat_names) != num_flow_stats:
        stat_names = [f"flow_stat_{i}" for i in range(num_flow_stats)]
    return stat_names + [f"{column[7:]}_{k}" for column in PACKET_FEATURES for k in range(num_packets)]


def flow_feature_matrix(ds) -> tuple[np.ndarray, np.ndarray]:
    """``X`` float64 ``[N, 27 + 3 * 5]`` (flow stats, packet lengths, IATs, directions) and labels ``y`` ``[N]``."""
    parts = [_fixed_list_matrix(ds, "flow_stats", np.float64)]
    parts += [_fixed_list_matrix(ds, column, np.float64) for column in PACKET_FEATURES]
    features = np.concatenate(parts, axis=1)
    features = np.nan_to_num(features, nan=0.0, posinf=np.finfo(np.float32).max, neginf=-np.finfo(np.float32).max)
    labels = np.asarray(ds.with_format("numpy")["label"], dtype=np.int64)
    return features, labels


def make_tree_model(kind: str, seed: int, n_estimators: int = 300, n_jobs: int = -1):
    from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier

    if kind == "extra_trees":
        return ExtraTreesClassifier(
            n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs, class_weight="balanced"
        )
    if kind == "random_forest":
        return RandomForestClassifier(
            n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs, class_weight="balanced"
        )
    if kind == "hist_gradient_boosting":
        return HistGradientBoostingClassifier(random_state=seed, class_weight="balanced", max_iter=200)
    raise ValueError(f"unknown tree baseline {kind!r}; choose one of {', '.join(TREE_KINDS)}")


def run_tree_baseline(
    dsd, output_dir, kind: str = "extra_trees", seed: int = 0, n_estimators: int = 300, name: str | None = None
) -> dict[str, Any]:
    """Fit a tree ensemble on ``train`` side-channel features; score ``validation`` and ``test``."""
    started = time.time()
    out = Path(output_dir)
    label_names = list(dsd["train"].features["label"].names)
    x_train, y_train = flow_feature_matrix(dsd["train"])
    model = make_tree_model(kind, seed, n_estimators=n_estimators)
    model.fit(x_train, y_train)
    scores = {}
    for split in ("validation", "test"):
        x, y = flow_feature_matrix(dsd[split])
        scores[split] = classification_metrics(y, model.predict(x), label_names)
    files = write_evaluation(scores["test"], out / "eval", stem="test", title=f"{name or kind} - test")
    write_evaluation(scores["validation"], out / "eval", stem="validation", title=f"{name or kind} - validation")
    summary = {
        "model_name": name or kind,
        "kind": kind,
        "seed": seed,
        "features": "flow_stats + packet_lengths + packet_iats + packet_directions (no payload bytes)",
        "num_rows": {split: len(dsd[split]) for split in dsd},
        "validation": headline(scores["validation"]),
        "test": {**headline(scores["test"]), "per_class": scores["test"]["per_class"]},
        "wall_time_s": time.time() - started,
        "files": {k: str(v) for k, v in files.items()},
    }
    importances = getattr(model, "feature_importances_", None)
    if importances is not None:
        names = flow_feature_names(x_train.shape[1] - 15)
        order = np.argsort(importances)[::-1][:15]
        summary["top_features"] = {names[i]: float(importances[i]) for i in order}
    _write_json(out / "results.json", summary)
    return summary


def encoder_cls_features(model, payload: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """CLS vectors ``[N, hidden]`` of a frozen encoder (``MMAEModel`` or any model whose base returns ``pooler_output``)."""
    import torch

    base = getattr(model, "base_model", model)
    base.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(payload), batch_size):
            batch = torch.from_numpy(np.array(payload[start : start + batch_size], dtype=np.uint8))  # writable copy
            output = base(input_bytes=batch)
            pooled = (
                output.pooler_output
                if getattr(output, "pooler_output", None) is not None
                else output.last_hidden_state[:, 0]
            )
            chunks.append(pooled.float().numpy())
    if not chunks:
        return np.zeros((0, base.config.hidden_size), dtype=np.float32)
    return np.concatenate(chunks)


def run_linear_probe(
    dsd,
    pretrained: str,
    output_dir,
    seed: int = 0,
    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0),
    batch_size: int = 256,
    name: str = "linear probe",
) -> dict[str, Any]:
    """Logistic regression on frozen CLS features; C picked by validation macro-F1."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from transformers.utils import logging as hf_logging

    from ..modeling_mmae import MMAEModel
    from .finetuning import payload_matrix

    started = time.time()
    out = Path(output_dir)
    label_names = list(dsd["train"].features["label"].names)
    hf_logging.set_verbosity_error()  # loading the encoder out of a pre-training checkpoint drops the decoder
    encoder = MMAEModel.from_pretrained(pretrained, dtype=torch.float32)
    hf_logging.set_verbosity_warning()
    torch.manual_seed(seed)
    features = {
        split: encoder_cls_features(encoder, payload_matrix(dsd[split]), batch_size)
        for split in ("train", "validation", "test")
    }
    labels = {
        split: np.asarray(dsd[split].with_format("numpy")["label"], dtype=np.int64)
        for split in ("train", "validation", "test")
    }
    search = []
    best = None
    for c in c_grid:
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
        probe.fit(features["train"], labels["train"])
        val = classification_metrics(labels["validation"], probe.predict(features["validation"]), label_names)
        search.append({"C": c, "validation_macro_f1": val["macro_f1"]})
        if best is None or val["macro_f1"] > best[1]["macro_f1"]:
            best = (probe, val, c)
    probe, val_metrics, best_c = best
    test_metrics = classification_metrics(labels["test"], probe.predict(features["test"]), label_names)
    files = write_evaluation(test_metrics, out / "eval", stem="test", title=f"{name} - test")
    write_evaluation(val_metrics, out / "eval", stem="validation", title=f"{name} - validation")
    summary = {
        "model_name": name,
        "pretrained": pretrained,
        "seed": seed,
        "features": f"frozen encoder CLS vector ({features['train'].shape[1]} dims), standardised",
        "selected_C": best_c,
        "C_search_on_validation": search,
        "num_rows": {split: len(dsd[split]) for split in dsd},
        "validation": headline(val_metrics),
        "test": {**headline(test_metrics), "per_class": test_metrics["per_class"]},
        "wall_time_s": time.time() - started,
        "files": {k: str(v) for k, v in files.items()},
    }
    _write_json(out / "results.json", summary)
    return summary


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


__all__ = [
    "TREE_KINDS",
    "encoder_cls_features",
    "flow_feature_matrix",
    "flow_feature_names",
    "make_tree_model",
    "run_linear_probe",
    "run_tree_baseline",
]
