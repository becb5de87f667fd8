"""Split strategies, de-duplication and class caps on plain numpy rows (no pcaps)."""

import numpy as np
import pytest

from mmae_hf.traffic.dataset import cap_classes
from mmae_hf.traffic.dedup import deduplicate
from mmae_hf.traffic.splits import split_flows


def _grouped_rows(seed=0, num_classes=4, num_groups=60, n=600):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, num_groups, n)
    # each group mostly one class, like a capture file, sometimes mixed like a source capture
    labels = np.where(rng.random(n) < 0.8, groups % num_classes, rng.integers(0, num_classes, n))
    return labels, np.array([f"g{g}" for g in groups], dtype=object)


def test_group_split_never_puts_a_group_on_two_sides_and_is_stratified():
    labels, groups = _grouped_rows()
    assignment, report = split_flows("group", labels, groups=groups, seed=3)
    for g in np.unique(groups):
        assert len(np.unique(assignment[groups == g])) == 1, g
    assert report.groups_on_several_splits == []
    for c in np.unique(labels):
        share = np.bincount(assignment[labels == c], minlength=3) / (labels == c).sum()
        assert share[0] > 0.65 and 0.03 < share[1] < 0.2 and 0.03 < share[2] < 0.2, (c, share)
    assert report.classes_missing == {}


def test_group_split_reports_classes_that_cannot_be_everywhere():
    labels = np.array([0] * 30 + [1] * 5 + [2] * 4)
    groups = np.array([f"a{i % 10}" for i in range(30)] + ["b0"] * 5 + ["c0"] * 2 + ["c1"] * 2, dtype=object)
    assignment, report = split_flows("group", labels, groups=groups, seed=0)
    assert set(assignment[labels == 1]) == {0}  # one group: train only
    assert set(assignment[labels == 2]) == {0, 2}  # two groups: train and test
    assert report.classes_missing == {1: ["validation", "test"], 2: ["validation"]}
    assert set(assignment[labels == 0]) == {0, 1, 2}


def test_seen_keys_split_holds_out_only_keys_that_train_holds():
    rng = np.random.default_rng(5)
    n, num_groups = 800, 80
    groups = rng.integers(0, num_groups, n)
    # captures 0-59 hold 1-2 of 12 common apps; captures 60-79 each hold an app no other capture has
    apps = np.array([f"app{(g + int(rng.random() < 0.3)) % 12}" if g < 60 else f"app{g}" for g in groups], dtype=object)
    labels = np.array([int(a[3:]) % 4 for a in apps])
    group_names = np.array([f"cap{g}" for g in groups], dtype=object)
    assignment, report = split_flows("group", labels, groups=group_names, seed=2, seen_keys=apps)
    train_apps = set(apps[assignment == 0])
    held_out = assignment > 0
    assert held_out.sum() > 0.1 * n
    assert set(apps[held_out]) <= train_apps
    for g in np.unique(group_names):
        assert len(np.unique(assignment[group_names == g])) == 1, g
    # an app held by a single capture stays in train, even when that capture is small
    single = [a for a in np.unique(apps) if len(np.unique(group_names[apps == a])) == 1]
    for a in single:
        assert set(assignment[apps == a]) == {0}, a
    # without the constraint the same rows put apps in test that train never saw
    plain, _ = split_flows("group", labels, groups=group_names, seed=2)
    assert not set(apps[plain > 0]) <= set(apps[plain == 0])
    # deterministic, and empty keys ask for nothing
    again, _ = split_flows("group", labels, groups=group_names, seed=2, seen_keys=apps)
    assert np.array_equal(assignment, again)
    blank = np.array([""] * n, dtype=object)
    assert np.array_equal(split_flows("group", labels, groups=group_names, seed=2, seen_keys=blank)[0], plain)
    with pytest.raises(ValueError, match="seen_keys only applies to a group split"):
        split_flows("flow", labels, seed=0, seen_keys=apps)
    with pytest.raises(ValueError, match="seen_keys has 3 values for 800 flows"):
        split_flows("group", labels, groups=group_names, seed=0, seen_keys=apps[:3])


def test_split_is_deterministic_per_seed_and_varies_across_seeds():
    labels, groups = _grouped_rows(1)
    for method in ("group", "flow"):
        a1, _ = split_flows(method, labels, groups=groups, seed=7)
        a2, _ = split_flows(method, labels, groups=groups, seed=7)
        a3, _ = split_flows(method, labels, groups=groups, seed=8)
        assert np.array_equal(a1, a2)
        assert not np.array_equal(a1, a3)


def test_flow_split_counts_per_class():
    labels = np.array([0] * 100 + [1] * 3 + [2] * 1)
    assignment, report = split_flows("flow", labels, seed=0)
    assert np.bincount(assignment[labels == 0], minlength=3).tolist() == [80, 10, 10]
    assert np.bincount(assignment[labels == 1], minlength=3).tolist() == [1, 1, 1]
    assert assignment[labels == 2].tolist() == [0]
    assert report.classes_missing == {2: ["validation", "test"]}


def test_time_split_puts_latest_flows_in_test():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    times = rng.permutation(100).astype(float)
    assignment, _ = split_flows("time", labels, start_times=times, seed=0)
    for c in (0, 1):
        t = times[labels == c]
        a = assignment[labels == c]
        assert t[a == 2].min() > t[a == 1].max() > t[a == 0].max() - 1e9
        assert t[a == 1].min() > t[a == 0].max()
        assert np.bincount(a, minlength=3).tolist() == [40, 5, 5]


def test_bad_split_arguments():
    with pytest.raises(ValueError, match="unknown split method"):
        split_flows("random", [0, 1])
    with pytest.raises(ValueError, match="must be < 1"):
        split_flows("flow", [0, 1], validation_size=0.5, test_size=0.5)
    with pytest.raises(ValueError, match="needs `groups`"):
        split_flows("group", [0, 1])


def test_dedup_within_and_across_splits_with_label_conflicts():
    rng = np.random.default_rng(0)
    payload = rng.integers(0, 256, (8, 32), dtype=np.uint8)
    payload[3] = payload[0]  # same class, test copy of a train flow -> removed across
    payload[5] = payload[4]  # same class, both validation -> removed within
    payload[7] = payload[6]  # different labels -> conflict
    labels = np.array([0, 0, 1, 0, 1, 1, 0, 1])
    split = np.array([2, 0, 0, 0, 1, 1, 0, 1])
    keep, report = deduplicate(payload, labels, split, sources=[f"f{i}" for i in range(8)])
    # row 3 (train) is kept over row 0 (test): train has priority
    assert keep.tolist() == [False, True, True, True, True, False, True, False]
    assert report.removed_across_splits == 2 and report.removed_within_split == 1
    assert report.across_pairs == {"train->test": 1, "train->validation": 1}
    assert report.label_conflicts == [
        {"labels": {0: 1, 1: 1}, "splits": ["train", "validation"], "examples": ["f6", "f7"], "dropped": False}
    ]
    keep2, report2 = deduplicate(payload, labels, split, drop_label_conflicts=True)
    assert not keep2[6] and not keep2[7] and report2.removed_conflicts == 2


def test_cap_classes_min_and_seeded_proportional_max():
    labels = np.array([0] * 100 + [1] * 5)
    split = np.array([0] * 80 + [1] * 10 + [2] * 10 + [0] * 5)
    keep = np.ones(105, bool)
    k1, dropped, capped = cap_classes(labels, split, keep, min_flows=6, max_flows=50, seed=1)
    assert dropped == {1: 5} and capped == {0: 50}
    assert np.bincount(split[k1], minlength=3).tolist() == [40, 5, 5]
    k2, _, _ = cap_classes(labels, split, keep, min_flows=6, max_flows=50, seed=1)
    k3, _, _ = cap_classes(labels, split, keep, min_flows=6, max_flows=50, seed=2)
    assert np.array_equal(k1, k2) and not np.array_equal(k1, k3)
