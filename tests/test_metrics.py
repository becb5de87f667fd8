"""Metrics on a hand-made confusion matrix, checked against values worked out by hand."""

import json

import numpy as np
import pytest

from mmae_hf.evaluation import (
    calibrate_ood_threshold,
    chance_levels,
    classification_metrics,
    confusion_matrix,
    mean_std,
    metrics_from_confusion,
    write_evaluation,
)

# rows = true class, columns = predicted class
HAND_CONFUSION = np.array([[8, 2, 0], [1, 3, 0], [0, 1, 1]])
NAMES = ["web", "video", "voip"]


def _labels_from_confusion(confusion):
    y_true, y_pred = [], []
    for t in range(confusion.shape[0]):
        for p in range(confusion.shape[1]):
            y_true += [t] * int(confusion[t, p])
            y_pred += [p] * int(confusion[t, p])
    return np.array(y_true), np.array(y_pred)


def test_hand_computed_values():
    m = metrics_from_confusion(HAND_CONFUSION, NAMES)
    # F1 = 2TP / (2TP + FP + FN): web 16/19, video 6/10, voip 2/3
    f1 = [16 / 19, 6 / 10, 2 / 3]
    support = [10, 4, 2]
    assert m["num_samples"] == 16
    assert m["accuracy"] == pytest.approx(12 / 16)
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert m["weighted_f1"] == pytest.approx(sum(f * s for f, s in zip(f1, support)) / 16)
    # the two averages differ here: the mislabelling "weighted called macro" would be caught
    assert abs(m["macro_f1"] - m["weighted_f1"]) > 0.02
    assert m["per_class"]["web"] == pytest.approx({"precision": 8 / 9, "recall": 0.8, "f1": 16 / 19, "support": 10})
    assert m["per_class"]["video"] == pytest.approx({"precision": 0.5, "recall": 0.75, "f1": 0.6, "support": 4})
    assert m["per_class"]["voip"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert m["macro_precision"] == pytest.approx((8 / 9 + 0.5 + 1.0) / 3)
    assert m["macro_recall"] == pytest.approx((0.8 + 0.75 + 0.5) / 3)


def test_agrees_with_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score

    y_true, y_pred = _labels_from_confusion(HAND_CONFUSION)
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, 3), HAND_CONFUSION)
    m = classification_metrics(y_true, y_pred, NAMES)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert m["confusion_matrix"] == HAND_CONFUSION.tolist()


def test_class_absent_everywhere_is_left_out_of_macro():
    padded = np.zeros((4, 4), dtype=int)
    padded[:3, :3] = HAND_CONFUSION
    m4 = metrics_from_confusion(padded, NAMES + ["unused"])
    m3 = metrics_from_confusion(HAND_CONFUSION, NAMES)
    assert m4["macro_f1"] == pytest.approx(m3["macro_f1"])
    assert m4["per_class"]["unused"]["support"] == 0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 5], [0, 1], 3)
    with pytest.raises(ValueError, match="entries"):
        confusion_matrix([0, 1], [0], 3)


def test_ood_threshold_uses_correct_flows_only():
    # 3 correct flows with max-softmax ~0.9, 0.7, 0.5 and one wrong flow with max prob 0.99
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5 - 1e-9], [0.99, 0.01]])
    labels = np.array([0, 1, 0, 1])
    threshold = calibrate_ood_threshold(np.log(probs), labels, percentile=0)
    assert threshold == pytest.approx(0.5, abs=1e-6)
    assert calibrate_ood_threshold(np.log(probs), labels, percentile=100) == pytest.approx(0.9)
    assert calibrate_ood_threshold(np.log(probs[[3]]), labels[[3]]) is None


def test_write_evaluation_files(tmp_path):
    y_true, y_pred = _labels_from_confusion(HAND_CONFUSION)
    paths = write_evaluation(classification_metrics(y_true, y_pred, NAMES), tmp_path, stem="test", title="hand")
    saved = json.loads(paths["metrics"].read_text())
    assert saved["macro_f1"] == pytest.approx(metrics_from_confusion(HAND_CONFUSION)["macro_f1"])
    assert json.loads(paths["confusion_json"].read_text())["matrix"] == HAND_CONFUSION.tolist()
    assert paths["confusion_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([0.5]) == (0.5, 0.0)


def test_chance_levels_uniform_and_majority():
    from sklearn.metrics import f1_score

    test = np.repeat(np.arange(4), [40, 30, 20, 10])
    train = np.array([2] * 50 + [0] * 10 + [1] * 5)
    chance = chance_levels(train, test, 4, draws=400)
    assert chance["uniform_accuracy"] == 0.25
    # uniform guessing: each class's expected precision is its share, recall 1/4 -> macro-F1 well under 0.25
    expected = np.mean([2 * (n / 100) * 0.25 / (n / 100 + 0.25) for n in (40, 30, 20, 10)])
    assert chance["uniform_macro_f1"] == pytest.approx(expected, abs=0.02)
    assert chance["majority_accuracy"] == pytest.approx(0.2)  # train's majority is class 2, 20 % of test
    assert chance["majority_macro_f1"] == pytest.approx(f1_score(test, np.full(100, 2), average="macro"))
    assert chance_levels(train, test, 4, draws=50, seed=3) == chance_levels(train, test, 4, draws=50, seed=3)
    assert chance_levels(train, [], 4) == {}
