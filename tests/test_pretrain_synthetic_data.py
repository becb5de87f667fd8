"""The synthetic dataset used by the pre-training / fine-tuning tests obeys the data contract."""

import numpy as np
import pytest

from mmae_hf.testing.synthetic import make_synthetic_traffic_dataset

CONTRACT = {
    "input_bytes": ("uint8", 1600),
    "packet_lengths": ("int32", 5),
    "packet_iats": ("float32", 5),
    "packet_directions": ("int8", 5),
    "flow_stats": ("float32", 27),
}


def test_features_splits_and_determinism(tmp_path):
    from datasets import ClassLabel, Value, load_from_disk

    dd = make_synthetic_traffic_dataset(num_classes=3, flows_per_class=16, seed=0)
    assert set(dd) == {"train", "validation", "test"}
    assert [dd[s].num_rows for s in ("train", "validation", "test")] == [24, 12, 12]
    features = dd["train"].features
    for name, (dtype, length) in CONTRACT.items():
        assert features[name].length == length and features[name].feature.dtype == dtype, name
    assert isinstance(features["label"], ClassLabel) and features["label"].names == ["app_0", "app_1", "app_2"]
    expected_scalars = {
        "source_file": "string",
        "group": "string",
        "start_time": "float64",
        "end_time": "float64",
        "packet_count": "int64",
        "byte_count": "int64",
        "protocol": "int8",
    }
    for name, dtype in expected_scalars.items():
        assert features[name] == Value(dtype), name
    # split by capture file: no group in two splits
    groups = {s: set(dd[s]["group"]) for s in dd}
    assert not (groups["train"] & groups["validation"]) and not (groups["train"] & groups["test"])
    # same seed -> identical bytes; other seed -> other noise
    again = make_synthetic_traffic_dataset(seed=0)
    assert again["train"].data.table.equals(dd["train"].data.table)
    other = make_synthetic_traffic_dataset(seed=1)
    assert not other["train"].data.table.equals(dd["train"].data.table)
    # survives save_to_disk / load_from_disk with the ClassLabel names
    dd.save_to_disk(str(tmp_path / "ds"))
    back = load_from_disk(str(tmp_path / "ds"))
    assert back["train"].features == features


def test_classes_are_separable_by_their_bytes():
    dd = make_synthetic_traffic_dataset(num_classes=4, flows_per_class=8, seed=3)
    payload = np.asarray(dd["train"].with_format("numpy")["input_bytes"], dtype=np.float64)
    labels = np.asarray(dd["train"]["label"])
    centroids = np.stack([payload[labels == c].mean(0) for c in range(4)])
    test = dd["test"].with_format("numpy")
    test_payload = np.asarray(test["input_bytes"], dtype=np.float64)
    nearest = ((test_payload[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == np.asarray(test["label"])).mean() == 1.0
    lengths = np.asarray(dd["train"].with_format("numpy")["packet_lengths"])
    assert (lengths[:, 0] > 0).all() and (lengths >= 0).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="class_names"):
        make_synthetic_traffic_dataset(num_classes=2, class_names=["a"])
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic_traffic_dataset(num_classes=0)
