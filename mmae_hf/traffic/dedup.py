"""Exact de-duplication of (anonymised) flow payloads, within and across splits.

Two flows are duplicates when their 1600 model-input bytes are identical (after anonymisation, so two captures
of the same exchange that only differed in addresses collide). For every cluster of identical payloads one
flow is kept: the one in the most trusted split (train, then validation, then test), first in row order.
The others are removed and counted as ``within_split`` (same split as the kept flow) or ``across_splits``
(the leak that matters: the same input seen in training and scored in test).

A cluster whose flows carry different labels is a *label conflict*: the input alone cannot tell the classes
apart. Conflicts are always reported; with ``drop_label_conflicts=True`` every flow of such a cluster is removed.
"""

from dataclasses import dataclass, field

import numpy as np

from .splits import SPLIT_NAMES


@dataclass
class DedupReport:
    """What de-duplication removed.

    Attributes:
        clusters: number of payloads that occur more than once.
        removed_within_split: flows removed because an identical payload stays in the same split.
        removed_across_splits: flows removed because an identical payload stays in an earlier split.
        removed_by_split: split name -> flows removed from it (duplicates and conflicts).
        removed_by_class: class id -> flows removed.
        across_pairs: "train->test" style keys -> number of flows removed from the second split.
        label_conflicts: one dict per conflicting cluster: ``labels`` (class id -> count), ``splits``,
            ``examples`` (up to 3 source names), ``dropped`` (whether the cluster was removed).
        removed_conflicts: flows removed because of label conflicts.
    """

    clusters: int = 0
    removed_within_split: int = 0
    removed_across_splits: int = 0
    removed_by_split: dict = field(default_factory=dict)
    removed_by_class: dict = field(default_factory=dict)
    across_pairs: dict = field(default_factory=dict)
    label_conflicts: list = field(default_factory=list)
    removed_conflicts: int = 0

    @property
    def removed(self) -> int:
        return self.removed_within_split + self.removed_across_splits + self.removed_conflicts

    def to_dict(self, class_names=None) -> dict:
        def name(c):
            return class_names[int(c)] if class_names is not None else int(c)

        return {
            "duplicate_clusters": self.clusters,
            "removed_total": self.removed,
            "removed_within_split": self.removed_within_split,
            "removed_across_splits": self.removed_across_splits,
            "removed_label_conflicts": self.removed_conflicts,
            "removed_by_split": self.removed_by_split,
            "removed_by_class": {name(c): n for c, n in sorted(self.removed_by_class.items())},
            "across_split_pairs": self.across_pairs,
            "label_conflicts": [
                {**conf, "labels": {name(c): n for c, n in sorted(conf["labels"].items())}}
                for conf in self.label_conflicts
            ],
        }


def row_keys(payload: np.ndarray) -> np.ndarray:
    """One opaque, exactly comparable key per row (a numpy void view of the row's bytes; no hashing)."""
    payload = np.ascontiguousarray(payload)
    if payload.ndim != 2:
        raise ValueError(f"payload must be 2-D [rows, bytes], got shape {payload.shape}")
    width = payload.shape[1] * payload.dtype.itemsize
    return payload.view(np.dtype((np.void, width))).reshape(len(payload))


def deduplicate(
    payload: np.ndarray, labels: np.ndarray, split: np.ndarray, *, sources=None, drop_label_conflicts: bool = False
) -> tuple:
    """Find exact duplicate payloads. Returns ``(keep bool [N], DedupReport)``.

    Args:
        payload: ``[N, L]`` array (uint8), the bytes compared.
        labels: ``[N]`` class ids.
        split: ``[N]`` split ids (0 train, 1 validation, 2 test); rows with a negative id are ignored (kept False).
        sources: optional ``[N]`` names (source files) quoted in the conflict report.
        drop_label_conflicts: remove every flow of a cluster whose flows disagree on the label.
    """
    labels = np.asarray(labels)
    split = np.asarray(split)
    n = len(labels)
    keep = split >= 0
    report = DedupReport(removed_by_split={name: 0 for name in SPLIT_NAMES})
    if n == 0:
        return keep, report
    active = np.flatnonzero(keep)
    keys = row_keys(payload[active])
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    dup_clusters = np.flatnonzero(counts > 1)
    report.clusters = int(len(dup_clusters))
    if not len(dup_clusters):
        return keep, report
    # rows of duplicate clusters, ordered by (cluster, split priority, row order)
    in_dup = np.isin(inverse, dup_clusters)
    rows = active[in_dup]
    cluster = inverse[in_dup]
    order = np.lexsort((rows, split[rows], cluster))
    rows, cluster = rows[order], cluster[order]
    boundaries = np.flatnonzero(np.diff(cluster)) + 1
    for members in np.split(rows, boundaries):
        kept = members[0]
        member_labels = labels[members]
        conflict = len(np.unique(member_labels)) > 1
        if conflict:
            values, value_counts = np.unique(member_labels, return_counts=True)
            report.label_conflicts.append(
                {
                    "labels": {int(v): int(k) for v, k in zip(values, value_counts)},
                    "splits": sorted({SPLIT_NAMES[int(s)] for s in split[members]}),
                    "examples": [str(sources[m]) for m in members[:3]] if sources is not None else [],
                    "dropped": bool(drop_label_conflicts),
                }
            )
        removed = members if (conflict and drop_label_conflicts) else members[1:]
        for m in removed:
            keep[m] = False
            s_name = SPLIT_NAMES[int(split[m])]
            report.removed_by_split[s_name] += 1
            report.removed_by_class[int(labels[m])] = report.removed_by_class.get(int(labels[m]), 0) + 1
            if conflict and drop_label_conflicts:
                report.removed_conflicts += 1
            elif split[m] == split[kept]:
                report.removed_within_split += 1
            else:
                report.removed_across_splits += 1
                pair = f"{SPLIT_NAMES[int(split[kept])]}->{s_name}"
                report.across_pairs[pair] = report.across_pairs.get(pair, 0) + 1
    return keep, report


__all__ = ["DedupReport", "deduplicate", "row_keys"]
