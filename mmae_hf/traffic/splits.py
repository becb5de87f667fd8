"""Leakage-safe train / validation / test assignment of flows.

Three strategies, all stratified by class and deterministic for a given seed:

- ``"flow"``: flows of each class are shuffled and cut by the ratios (the paper's per-sample split; flows of
  one capture land on both sides, so scores are optimistic).
- ``"group"`` (also called ``"file"``): whole groups (a capture file, or a manifest's group such as the source
  capture) go to one split, so no group is on two sides. Groups may hold several classes; a greedy, seeded
  assignment keeps each split's per-class share close to its target ratio.
- ``"time"``: per class, the latest flows (by start time) go to test, the ones before them to validation.

Everything works on plain numpy arrays: ``labels`` (int class ids), ``groups`` (any hashable ids) and
``start_times`` (float seconds). The result is an ``int8`` array with 0 = train, 1 = validation, 2 = test.
"""

from dataclasses import dataclass, field

import numpy as np

SPLIT_NAMES = ("train", "validation", "test")
TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_METHODS = ("flow", "file", "group", "time")


@dataclass
class SplitReport:
    """What a split did, in a JSON-friendly form.

    Attributes:
        method: the strategy used (``"flow"``, ``"group"`` or ``"time"``; ``"file"`` is reported as ``"group"``).
        ratios: target shares of (train, validation, test).
        seed: the seed of the random choices (unused by ``"time"``).
        rows_per_split: number of flows in each split.
        groups_per_split: number of distinct groups in each split.
        groups_on_several_splits: groups whose flows are in more than one split (always empty for ``"group"``).
        classes_missing: class id -> the splits that have no flow of it (classes too small for all three).
    """

    method: str
    ratios: tuple
    seed: int
    rows_per_split: dict = field(default_factory=dict)
    groups_per_split: dict = field(default_factory=dict)
    groups_on_several_splits: list = field(default_factory=list)
    classes_missing: dict = field(default_factory=dict)

    def to_dict(self, class_names=None) -> dict:
        def name(c):
            return class_names[c] if class_names is not None else int(c)

        return {
            "method": self.method,
            "ratios": dict(zip(SPLIT_NAMES, (float(r) for r in self.ratios))),
            "seed": self.seed,
            "rows_per_split": self.rows_per_split,
            "groups_per_split": self.groups_per_split,
            "groups_on_several_splits": self.groups_on_several_splits,
            "classes_missing_from_splits": {name(c): v for c, v in sorted(self.classes_missing.items())},
        }


def normalize_ratios(validation_size: float, test_size: float) -> tuple:
    """(train, validation, test) shares from the two held-out shares, checked."""
    if not (0.0 <= validation_size < 1.0 and 0.0 <= test_size < 1.0):
        raise ValueError(f"validation_size and test_size must lie in [0, 1): got {validation_size}, {test_size}")
    train = 1.0 - validation_size - test_size
    if train <= 0.0:
        raise ValueError(f"validation_size + test_size must be < 1: got {validation_size} + {test_size}")
    return (train, float(validation_size), float(test_size))


def _split_counts(n: int, ratios: tuple) -> tuple:
    """How many of ``n`` flows go to (train, validation, test).

    Rounded shares, then adjusted so that train has at least one flow, and validation / test get one each as
    long as the class has enough flows for all splits that want some (a positive ratio).
    """
    if n == 0:
        return (0, 0, 0)
    val = int(round(n * ratios[1]))
    test = int(round(n * ratios[2]))
    wanted = [s for s in (VALIDATION, TEST) if ratios[s] > 0]
    counts = [n - val - test, val, test]
    # give every wanted held-out split one flow while train keeps at least one
    for s in (TEST, VALIDATION):
        if s in wanted and counts[s] == 0 and counts[TRAIN] > 1:
            counts[s] = 1
            counts[TRAIN] -= 1
    while counts[TRAIN] < 1:  # rounding took everything: give it back to train
        s = VALIDATION if counts[VALIDATION] >= counts[TEST] else TEST
        counts[s] -= 1
        counts[TRAIN] += 1
    return tuple(counts)


def _group_array(groups) -> np.ndarray:
    """Groups as a sortable numpy array (integer codes stay integers; anything else becomes strings)."""
    groups = np.asarray(groups)
    return groups if groups.dtype.kind in "iuU" else groups.astype(str)


def split_by_flow(labels: np.ndarray, ratios: tuple, seed: int) -> np.ndarray:
    """Stratified random split of single flows: each class is shuffled and cut by ``ratios``."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = np.full(len(labels), -1, dtype=np.int8)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_train, n_val, _ = _split_counts(len(idx), ratios)
        out[idx[:n_train]] = TRAIN
        out[idx[n_train : n_train + n_val]] = VALIDATION
        out[idx[n_train + n_val :]] = TEST
    return out


def split_by_time(labels: np.ndarray, start_times: np.ndarray, ratios: tuple) -> np.ndarray:
    """Per class, the latest flows go to test and the ones just before them to validation.

    Ties in start time are broken by row order, so the result is deterministic (no seed involved).
    """
    labels = np.asarray(labels)
    start_times = np.asarray(start_times, dtype=np.float64)
    out = np.full(len(labels), -1, dtype=np.int8)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[np.argsort(start_times[idx], kind="stable")]
        n_train, n_val, _ = _split_counts(len(idx), ratios)
        out[idx[:n_train]] = TRAIN
        out[idx[n_train : n_train + n_val]] = VALIDATION
        out[idx[n_train + n_val :]] = TEST
    return out


def split_by_group(labels: np.ndarray, groups, ratios: tuple, seed: int, trials: int = 8, seen_keys=None) -> np.ndarray:
    """Group-aware stratified split: every group goes whole to one split.

    ``seen_keys`` (optional, one value per flow, e.g. the application behind a flow) asks for held-out splits
    that only test what training has seen: before anything else, every key value gets a train group (the group
    holding most flows of it; keys held by fewest groups first). A key held by one group is therefore in train
    only, and every group left for validation and test holds only keys that train also holds. The question
    such a split answers is "does the model recognise known services in captures it has never seen", not
    "does it generalise to services it has never seen"; empty strings are ignored.

    Phase 1 (coverage): classes in order of fewest groups first; for each class, train, then test, then validation
    receive one of its groups if they have none of that class yet and an unassigned group holding the class remains.
    The group chosen is the one whose count of that class is closest to the split's target (ties broken by the
    seeded random order), so big groups tend to go to train and small ones to the held-out splits.
    So a class with one group is in train only, with two in train and test, with three or more in all splits.

    Phase 2 (balance): the remaining groups, in seeded random order, each go to the split where adding it
    increases the per-class squared error of split sizes against the targets the least (errors are measured
    as shares of each class, so rare classes weigh as much as frequent ones).

    Both phases run for ``trials`` random orders drawn from ``seed``; the assignment with the smallest total error
    is kept (lumpy groups make a single greedy pass depend a lot on the order).
    """
    labels = np.asarray(labels)
    n = len(labels)
    out = np.full(n, -1, dtype=np.int8)
    if n == 0:
        return out
    group_ids, group_of_row = np.unique(_group_array(groups), return_inverse=True)
    group_of_row = group_of_row.reshape(-1)
    classes, class_of_row = np.unique(labels, return_inverse=True)
    num_groups, num_classes = len(group_ids), len(classes)
    # counts[g, c]: flows of class c in group g
    counts = np.zeros((num_groups, num_classes), dtype=np.int64)
    np.add.at(counts, (group_of_row, class_of_row.reshape(-1)), 1)
    class_totals = counts.sum(0).astype(np.float64)
    targets = np.outer(np.asarray(ratios, dtype=np.float64), class_totals)  # [3, C]
    scale = 1.0 / np.maximum(class_totals, 1.0)
    groups_per_class = (counts > 0).sum(0)
    class_order = np.lexsort((np.arange(num_classes), groups_per_class))
    wanted_splits = [TRAIN] + [s for s in (TEST, VALIDATION) if ratios[s] > 0]
    holders_of = [np.flatnonzero(counts[:, c] > 0) for c in range(num_classes)]
    key_holders = []  # per key value: (groups holding it, flows of it in each of those groups)
    if seen_keys is not None:
        keys = _group_array(seen_keys)
        if len(keys) != n:
            raise ValueError(f"seen_keys has {len(keys)} values for {n} flows")
        present = keys != ""
        key_ids, key_of_row = np.unique(keys[present], return_inverse=True)
        key_counts = np.zeros((num_groups, len(key_ids)), dtype=np.int64)
        np.add.at(key_counts, (group_of_row[present], key_of_row.reshape(-1)), 1)
        order = np.lexsort((np.arange(len(key_ids)), (key_counts > 0).sum(0)))
        key_holders = [(np.flatnonzero(key_counts[:, k] > 0), key_counts[key_counts[:, k] > 0, k]) for k in order]

    def one_trial(random_rank):
        current = np.zeros((3, num_classes), dtype=np.float64)
        assigned = np.full(num_groups, -1, dtype=np.int64)

        def assign(g, s):
            assigned[g] = s
            current[s] += counts[g]

        # phase 0 (seen_keys): every key value in train, through the group holding most of it
        for holders, held in key_holders:
            if (assigned[holders] == TRAIN).any():
                continue
            free = [i for i, g in enumerate(holders) if assigned[g] < 0]
            if free:
                assign(holders[min(free, key=lambda i: (-held[i], random_rank[holders[i]]))], TRAIN)
        # phase 1: coverage of every class in every split where its groups allow it
        for c in class_order:
            holders = holders_of[c]
            for s in wanted_splits:
                if (assigned[holders] == s).any():
                    continue
                free = [g for g in holders if assigned[g] < 0]
                if free:
                    assign(min(free, key=lambda g: (abs(counts[g, c] - targets[s, c]), random_rank[g])), s)
        # phase 2: balance the rest greedily, in random order
        for g in np.argsort(random_rank):
            if assigned[g] >= 0:
                continue
            best, best_cost = TRAIN, None
            for s in range(3):
                if ratios[s] <= 0 and s != TRAIN:
                    continue
                before = ((current[s] - targets[s]) * scale) ** 2
                after = ((current[s] + counts[g] - targets[s]) * scale) ** 2
                cost = float((after - before).sum())
                if best_cost is None or cost < best_cost - 1e-12:
                    best, best_cost = s, cost
            assign(g, best)
        error = float((((current - targets) * scale) ** 2).sum())
        return error, assigned

    rng = np.random.default_rng(seed)
    best_error, best_assigned = None, None
    for _ in range(max(1, trials)):
        random_rank = np.empty(num_groups, dtype=np.int64)
        random_rank[rng.permutation(num_groups)] = np.arange(num_groups)
        error, assigned = one_trial(random_rank)
        if best_error is None or error < best_error - 1e-12:
            best_error, best_assigned = error, assigned
    out[:] = best_assigned[group_of_row]
    return out


def split_flows(
    method: str,
    labels,
    *,
    groups=None,
    start_times=None,
    validation_size: float = 0.1,
    test_size: float = 0.1,
    seed: int = 0,
    seen_keys=None,
) -> tuple:
    """Assign each flow to a split. Returns ``(assignment int8 [N], SplitReport)``.

    ``method`` is ``"flow"``, ``"file"`` / ``"group"`` (needs ``groups``) or ``"time"`` (needs ``start_times``).
    ``seen_keys`` (group splits only): see `split_by_group`; held-out groups hold only key values train holds.
    """
    if method not in SPLIT_METHODS:
        raise ValueError(f"unknown split method {method!r}; choose one of {SPLIT_METHODS}")
    ratios = normalize_ratios(validation_size, test_size)
    labels = np.asarray(labels)
    if seen_keys is not None and method not in ("file", "group"):
        raise ValueError("seen_keys only applies to a group split")
    if method == "flow":
        assignment = split_by_flow(labels, ratios, seed)
    elif method in ("file", "group"):
        if groups is None:
            raise ValueError("a group split needs `groups` (one id per flow)")
        assignment = split_by_group(labels, groups, ratios, seed, seen_keys=seen_keys)
    else:
        if start_times is None:
            raise ValueError("a time split needs `start_times` (one per flow)")
        assignment = split_by_time(labels, start_times, ratios)
    report = SplitReport(method="group" if method == "file" else method, ratios=ratios, seed=seed)
    for s, name in enumerate(SPLIT_NAMES):
        report.rows_per_split[name] = int((assignment == s).sum())
    if groups is not None and len(labels):
        names, codes = np.unique(_group_array(groups), return_inverse=True)
        codes = codes.reshape(-1).astype(np.int64)
        for s, name in enumerate(SPLIT_NAMES):
            report.groups_per_split[name] = int(len(np.unique(codes[assignment == s])))
        pairs = np.unique(codes * 4 + (assignment.astype(np.int64) + 1))  # (group, split) pairs present
        per_group = np.bincount(pairs // 4, minlength=len(names))
        report.groups_on_several_splits = sorted(str(g) for g in names[per_group > 1])
    for c in np.unique(labels):
        present = set(np.unique(assignment[labels == c]).tolist())
        missing = [SPLIT_NAMES[s] for s in range(3) if s not in present and ratios[s] > 0]
        if missing:
            report.classes_missing[int(c)] = missing
    return assignment, report


__all__ = [
    "SPLIT_NAMES",
    "SPLIT_METHODS",
    "SplitReport",
    "normalize_ratios",
    "split_by_flow",
    "split_by_group",
    "split_by_time",
    "split_flows",
]
