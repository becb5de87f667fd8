"""An unlabelled pre-training corpus of flows, provably free of the evaluation flows.

`build_pretraining_corpus` turns folders of captures (for example ``../shared/data/public-captures``, one sub-folder
per source repository) into a `DatasetDict` with a ``train`` split for pre-training and a small ``validation`` split
of held-out captures for diagnostics (masked-byte reconstruction on flows the model never saw). It is unlabelled:
the sub-folder a capture comes from is kept as a string column ``source``, never as a class.

Nothing of an evaluation set may reach pre-training. Two independent guards:

1. **captures**: every capture whose identity (its path in the source repository, from the corpus ``manifest.csv``,
   or its file name) equals the ``group`` of a validation or test flow of an evaluation dataset is left out whole
   (the nDPI development set's flows are cut from captures that the public corpus also holds);
2. **payloads**: every corpus flow whose 1600 model-input bytes (after the same anonymisation) equal those of a
   validation or test flow of an evaluation dataset is removed (BLAKE2b digest of the bytes, `payload_digests`).

Both are counted in the report (``excluded_captures``, ``removed_held_out_payloads``); the report also lists the
evaluation datasets and their anonymisation profiles, which must match the corpus's (a corpus anonymised
differently would not even collide on identical flows, so a mismatch is refused).

Labelled train splits (``include_train``) can be added as more unlabelled flows (``source`` = the dataset's name).

This module imports no torch (like all of `mmae_hf.traffic`).
"""

import csv
import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data_contract import BYTE_COLUMN

CORPUS_REPORT_NAME = "corpus_report.json"
CORPUS_CARD_NAME = "README.md"
HELD_OUT_SPLITS = ("validation", "test")


@dataclass
class EvaluationSet:
    """What an evaluation dataset contributes to the exclusion lists.

    Attributes:
        path: the dataset folder.
        held_out_groups: the ``group`` values (source captures) of its validation and test flows.
        held_out_digests: payload digests ``[N, 16]`` of its validation and test flows.
        anonymize: its anonymisation profile (from its build report), or None when unknown.
    """

    path: str
    held_out_groups: set = field(default_factory=set)
    held_out_digests: np.ndarray = field(default_factory=lambda: np.zeros((0, 16), np.uint8))
    anonymize: str | None = None


def read_evaluation_set(path) -> EvaluationSet:
    """Read the held-out captures and payload digests of a dataset built by ``build_dataset`` (a save_to_disk folder)."""
    from .dataset import payload_digests
    from .loading import load_traffic_dataset

    path = Path(path)
    if not (path / "dataset_dict.json").is_file():
        raise ValueError(f"{path}: not a dataset folder written by build_dataset.py (no dataset_dict.json)")
    dsd = load_traffic_dataset(path)
    groups, digests = set(), []
    for split in HELD_OUT_SPLITS:
        if split not in dsd or len(dsd[split]) == 0:
            continue
        ds = dsd[split]
        column = "group" if "group" in ds.column_names else "source_file"
        groups.update(str(g) for g in ds[column])
        digests.append(payload_digests(_payload_matrix(ds)))
    anonymize = None
    report = path / "build_report.json"
    if report.is_file():
        anonymize = json.loads(report.read_text()).get("flow_options", {}).get("anonymize")
    held = np.concatenate(digests) if digests else np.zeros((0, 16), np.uint8)
    return EvaluationSet(str(path), groups, held, anonymize)


def _payload_matrix(ds) -> np.ndarray:
    """All payload rows of a split as ``uint8 [N, width]`` (zero-copy arrow read)."""
    column = ds.with_format("arrow")[:][BYTE_COLUMN].combine_chunks()
    return column.values.to_numpy(zero_copy_only=False).astype(np.uint8, copy=False).reshape(len(ds), -1)


def corpus_captures(root) -> list[dict]:
    """The captures of a corpus folder: ``{"file", "source", "identity", "license"}`` per capture.

    With a ``manifest.csv`` (columns ``source,path[,license]``; file name = ``<source>/<path with / as __>``) the
    identity is the path in the source repository; otherwise every capture under ``<source>/`` counts, with its file
    name as identity.
    """
    from .dataset import walk_captures

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: corpus folder not found")
    manifest = root / "manifest.csv"
    licenses = {}
    identity_of = {}
    if manifest.is_file():
        with open(manifest, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ("source", "path") if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{manifest}:1: header must name the columns source and path; missing {missing}")
            for row in reader:
                name = f"{row['source']}/{row['path'].replace('/', '__')}"
                identity_of[name] = row["path"]
                licenses[row["source"]] = row.get("license") or licenses.get(row["source"])
    captures = []
    for relative in walk_captures(root):
        if "/" not in relative:
            continue  # a capture at the top has no source folder
        source = relative.split("/", 1)[0]
        captures.append(
            {
                "file": relative,
                "source": source,
                "identity": identity_of.get(relative, Path(relative).name),
                "license": licenses.get(source),
            }
        )
    if not captures:
        raise ValueError(f"{root}: no captures found in <source>/ sub-folders")
    return captures


def build_pretraining_corpus(
    inputs,
    output_dir,
    *,
    evaluation_sets=(),
    include_train=(),
    anonymize="default",
    validation_size: float = 0.05,
    seed: int = 0,
    num_proc: int = 1,
    max_flows_per_source: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Build the corpus (see the module docstring) and save it atomically to ``output_dir``; returns the report.

    Args:
        inputs: corpus folders (``<source>/**/*.pcap[ng]``, optional ``manifest.csv``).
        output_dir: the output folder (``save_to_disk`` + ``corpus_report.json`` + ``README.md``); written to a temp
            sibling and renamed into place, so an interrupted build leaves the old corpus or none.
        evaluation_sets: dataset folders (built by ``build_dataset.py``) whose validation / test flows must not be
            in the corpus.
        include_train: dataset folders whose train split is added (unlabelled, ``source`` = folder name).
        anonymize: anonymisation profile; must equal the evaluation sets' profile.
        validation_size: share of the corpus captures held out (by capture) for diagnostics.
        max_flows_per_source: a seeded sample of at most this many train flows per source (None: all).
    """
    from datasets import DatasetDict, Value, concatenate_datasets

    from .dataset import build_dataset, payload_digests
    from .loading import load_traffic_dataset

    started = time.perf_counter()
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir}: output folder is not empty (pass --overwrite)")
    evaluations = [read_evaluation_set(p) for p in evaluation_sets]
    for ev in evaluations:
        if ev.anonymize is not None and ev.anonymize != anonymize:
            raise ValueError(
                f"{ev.path}: anonymised with {ev.anonymize!r} but the corpus uses {anonymize!r}: identical "
                "flows would not collide, so the payload exclusion could not work; build both alike"
            )
    held_groups = set().union(*(ev.held_out_groups for ev in evaluations)) if evaluations else set()
    held_digests = (
        np.concatenate([ev.held_out_digests for ev in evaluations]) if evaluations else np.zeros((0, 16), np.uint8)
    )
    held_digest_set = {row.tobytes() for row in held_digests}

    splits, sources, licenses, excluded, per_input = [], Counter(), {}, [], []
    with tempfile.TemporaryDirectory(prefix=".mmae_corpus_") as work:
        for index, root in enumerate(inputs):
            root = Path(root)
            captures = corpus_captures(root)
            kept = []
            for capture in captures:
                if capture["identity"] in held_groups:
                    excluded.append({"input": root.name, "file": capture["file"], "identity": capture["identity"]})
                else:
                    kept.append(capture)
                licenses.setdefault(capture["source"], capture["license"])
            manifest = Path(work) / f"manifest-{index}.csv"
            with open(manifest, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["file", "label", "group"])
                for capture in kept:
                    writer.writerow([capture["file"], capture["source"], capture["file"]])
            result = build_dataset(
                root,
                None,
                manifest=manifest,
                split_by="file",
                validation_size=validation_size,
                test_size=0.0,
                seed=seed,
                anonymize=anonymize,
                num_proc=num_proc,
                progress=progress,
            )
            per_input.append(
                {
                    "input": root.name,
                    "captures": len(captures),
                    "captures_used": len(kept),
                    "flows_extracted": result.report["flows"]["extracted"],
                    "duplicates_removed": result.report["flows"]["removed_duplicates"],
                    "packets_skipped": result.report["packets"]["skipped"],
                    "capture_errors": result.report["errors"],
                }
            )
            splits.append(result.dataset)
        for path in include_train:
            train = load_traffic_dataset(path, "train")
            name = Path(path).name
            splits.append(
                DatasetDict(
                    {
                        "train": train.map(
                            lambda b, name=name: {"label_name": [name] * len(b[BYTE_COLUMN])}, batched=True
                        ),
                    }
                )
            )
            licenses.setdefault(name, "see the dataset card of " + name)

        corpus = {}
        removed_held_out = Counter()
        for split in ("train", "validation"):
            parts = []
            for dsd in splits:
                if split not in dsd or len(dsd[split]) == 0:
                    continue
                ds = dsd[split]
                if "label_name" in ds.column_names:
                    source = ds["label_name"]
                    ds = ds.remove_columns(["label_name"])
                else:
                    names = ds.features["label"].names
                    source = [names[i] for i in ds["label"]]
                ds = ds.remove_columns(["label"]).add_column("source", source).cast_column("source", Value("string"))
                digests = payload_digests(_payload_matrix(ds))
                keep = np.array([row.tobytes() not in held_digest_set for row in digests], dtype=bool)
                for s, k in zip(source, keep):
                    if not k:
                        removed_held_out[s] += 1
                if not keep.all():
                    ds = ds.select(np.flatnonzero(keep))
                parts.append(ds)
            if parts:
                corpus[split] = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        corpus = _dedup_across(corpus, payload_digests)
        if max_flows_per_source:
            corpus["train"] = _cap_per_source(corpus["train"], max_flows_per_source, seed)
        for split, ds in corpus.items():
            sources.update({f"{split}:{k}": v for k, v in Counter(ds["source"]).items()})
        dsd = DatasetDict(corpus)
        report = {
            "command": command,
            "inputs": per_input,
            "include_train": [str(Path(p).name) for p in include_train],
            "anonymize": anonymize,
            "seed": seed,
            "validation_size": validation_size,
            "evaluation_sets": [
                {
                    "path": Path(ev.path).name,
                    "held_out_captures": len(ev.held_out_groups),
                    "held_out_flows": int(len(ev.held_out_digests)),
                    "anonymize": ev.anonymize,
                }
                for ev in evaluations
            ],
            "excluded_captures": len(excluded),
            "held_out_captures_not_in_corpus": sorted(held_groups - {c["identity"] for c in excluded}),
            "excluded_capture_list": excluded,
            "removed_held_out_payloads": sum(removed_held_out.values()),
            "removed_held_out_payloads_by_source": dict(sorted(removed_held_out.items())),
            "flows": {split: len(ds) for split, ds in dsd.items()},
            "flows_by_source": {split: dict(sorted(Counter(ds["source"]).items())) for split, ds in dsd.items()},
            "licenses": licenses,
            "seconds": round(time.perf_counter() - started, 1),
        }
        _save_atomically(dsd, output_dir, report, overwrite=overwrite, anonymize=anonymize)
    return report


def _dedup_across(corpus: dict, payload_digests) -> dict:
    """Drop validation flows whose payload is also in train (each input was de-duplicated on its own)."""
    result = {}
    seen = set()
    for split in ("train", "validation"):
        if split not in corpus:
            continue
        ds = corpus[split]
        digests = payload_digests(_payload_matrix(ds))
        keep = []
        for i, row in enumerate(digests):
            key = row.tobytes()
            if key not in seen:
                seen.add(key)
                keep.append(i)
        result[split] = ds if len(keep) == len(ds) else ds.select(keep)
    return result


def _cap_per_source(ds, limit: int, seed: int):
    rng = np.random.default_rng(seed)
    source = np.asarray(ds["source"])
    keep = []
    for name in np.unique(source):
        rows = np.flatnonzero(source == name)
        if len(rows) > limit:
            rows = np.sort(rng.choice(rows, limit, replace=False))
        keep.append(rows)
    return ds.select(np.sort(np.concatenate(keep)))


def _save_atomically(dsd, output_dir: Path, report: dict, *, overwrite: bool, anonymize: str) -> None:
    """save_to_disk into a staging folder beside ``output_dir``, add report, card and preprocessor config, then put it
    in place (`StagedFolder`: an interrupt or a full disk leaves the old corpus or none)."""
    from . import FlowOptions
    from .atomic import StagedFolder
    from .dataset import _save_preprocessor

    with StagedFolder(output_dir, overwrite=overwrite) as staged:
        dsd.save_to_disk(str(staged.path))
        (staged.path / CORPUS_REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        (staged.path / CORPUS_CARD_NAME).write_text(corpus_card(report))
        _save_preprocessor(staged.path, FlowOptions.from_dict({**FlowOptions().to_dict(), "anonymize": anonymize}))
        staged.commit()


def corpus_card(report: dict) -> str:
    """The corpus's README.md: YAML metadata, then what is in it and what was kept out."""
    total = sum(report["flows"].values())
    licenses = sorted({str(v) for v in report["licenses"].values() if v})
    lines = [
        "---",
        "license: other",
        "task_categories:",
        "- feature-extraction",
        "tags:",
        "- network-traffic",
        "- encrypted-traffic",
        "- pcap",
        "- unlabelled",
        "pretty_name: MMAE pre-training corpus",
        "---",
        "",
        "# MMAE pre-training corpus",
        "",
        f"{total:,} unlabelled flows (train {report['flows'].get('train', 0):,}, held-out validation "
        f"{report['flows'].get('validation', 0):,}, split by capture), anonymisation profile "
        f"`{report['anonymize']}`. The `source` column names where a flow comes from; it is not a label.",
        "",
        "| source | train flows | validation flows | licence |",
        "|---|---:|---:|---|",
    ]
    by = report["flows_by_source"]
    for source in sorted(set(by.get("train", {})) | set(by.get("validation", {}))):
        lines.append(
            f"| {source} | {by.get('train', {}).get(source, 0):,} | "
            f"{by.get('validation', {}).get(source, 0):,} | {report['licenses'].get(source) or '?'} |"
        )
    lines += ["", "## Kept out (evaluation flows never reach pre-training)", ""]
    for ev in report["evaluation_sets"]:
        lines.append(
            f"- `{ev['path']}`: {ev['held_out_flows']} validation/test flows from {ev['held_out_captures']} captures"
        )
    lines += [
        f"- captures left out whole (a held-out flow was cut from them): {report['excluded_captures']}",
        f"- corpus flows removed because their bytes equal a held-out flow's: "
        f"{report['removed_held_out_payloads']} {report['removed_held_out_payloads_by_source'] or ''}",
        "",
        f"Licences of the sources: {', '.join(licenses) or 'unknown'}.",
        "",
        f"Built with: `{report['command']}`",
        "",
    ]
    return "\n".join(lines)


__all__ = ["EvaluationSet", "build_pretraining_corpus", "corpus_captures", "corpus_card", "read_evaluation_set"]
