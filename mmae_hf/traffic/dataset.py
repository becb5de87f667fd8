"""pcap trees (or CSV manifests) -> Hugging Face `DatasetDict` of flows, leakage-safe and reported.

`build_dataset` does the whole job; `dataset_scripts/build_dataset.py` only parses arguments:

1. **collect** the captures: a tree ``ROOT/<label>/**/*.pcap[ng]`` (sub-folders and symlinks allowed), a CSV
   manifest (``file,label[,group]``), or a recipe of `mmae_hf.traffic.recipes` mapping publisher file names to labels;
2. **extract** flows with `mmae_hf.traffic.iter_flows` (one task per file, optionally in ``num_proc`` processes;
   results are gathered in file order so the output does not depend on scheduling);
3. **split** train / validation / test (`mmae_hf.traffic.splits`: by flow, by group = source file or manifest group,
   or by time), stratified by class;
4. **de-duplicate** identical anonymised payloads within and across splits (`mmae_hf.traffic.dedup`);
5. **cap** classes: drop classes under ``min_flows_per_class``, sample at most ``max_flows_per_class`` flows per class
   (seeded, in proportion to the split sizes so the split shares survive);
6. **write** a `DatasetDict` (``save_to_disk``) with the data contract's features (docs/INTERFACES.md), a dataset card
   (README.md), ``build_report.json`` and the feature extractor's ``preprocessor_config.json``; optionally push all of
   it to the Hub.

Every step is deterministic for a given seed. The columns are built as numpy arrays and handed to arrow directly
(`pyarrow.FixedSizeListArray`), which avoids the slow per-row list encoding of ``Dataset.from_generator``.
"""

import contextlib
import csv
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..data_contract import (
    ADDRESS_COLUMNS,
    BYTE_COLUMN,
    CAPTURE_SUFFIXES,
    FLOW_ARRAY_COLUMNS,
    FLOW_SCALAR_COLUMNS,
    PREPROCESSOR_CONFIG_NAME,
    preprocessor_config_json,
)
from .atomic import OutputWriteError, StagedFolder, describe_os_error, free_bytes
from .dedup import deduplicate
from .loading import load_traffic_dataset
from .pcapio import special_file_kind
from .splits import SPLIT_NAMES, split_flows

PCAP_SUFFIXES = CAPTURE_SUFFIXES
REPORT_NAME = "build_report.json"
MAX_FILES_IN_REPORT = 10_000  # above this, build_report.json lists only the captures with problems
CARD_NAME = "README.md"

# Per-flow scalar and array columns of the data contract and their numpy dtypes.
_SCALARS = {name: np.dtype(dtype) for name, dtype in FLOW_SCALAR_COLUMNS.items()}
_VECTORS = {name: np.dtype(dtype) for name, dtype in FLOW_ARRAY_COLUMNS.items()}
_ADDRESS_COLUMNS = tuple(ADDRESS_COLUMNS)


# ----------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class CaptureFile:
    """One capture to read.

    Attributes:
        path: where to read it (as found; symlinks are followed when opened).
        name: its name relative to the input root, POSIX style: the ``source_file`` column.
        label: its class name.
        group: its split group (``name`` unless a manifest gives one).
        seen_key: optional key (e.g. the application) that a group split with ``seen_column`` keeps in train
            whenever a held-out split holds it; ``""`` when there is none.
    """

    path: str
    name: str
    label: str
    group: str
    seen_key: str = ""


def _is_capture(name: str, suffixes) -> bool:
    return name.lower().endswith(tuple(s.lower() for s in suffixes)) and not name.startswith(".")


def walk_captures(root, suffixes=PCAP_SUFFIXES, special_files=None) -> list:
    """All capture files under ``root`` (following symlinked folders, once each), as sorted POSIX relative names.

    FIFOs, sockets and devices with a capture name are left out without being opened (a FIFO without a writer
    blocks its reader forever) and appended to ``special_files`` (when given) as ``{"file": name, "kind": kind}``.
    """
    root = Path(root)
    found, seen_dirs = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink cycle or a second link to the same folder
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        for filename in sorted(filenames):
            if not _is_capture(filename, suffixes):
                continue
            full = Path(dirpath) / filename
            if not full.exists():
                raise FileNotFoundError(f"{full}: broken symlink (its target does not exist)")
            name = PurePosixPath(*rel_dir.parts, filename).as_posix()
            kind = special_file_kind(full)
            if kind is not None:
                if special_files is not None:
                    special_files.append({"file": name, "kind": kind})
                continue
            found.append(name)
    return sorted(found)


def discover_tree(root, suffixes=PCAP_SUFFIXES, special_files=None) -> list:
    """Captures of a tree ``root/<label>/**/<capture>``: the first folder level names the class (FIFOs, sockets
    and devices: see `walk_captures`)."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: input folder does not exist")
    files = []
    for rel in walk_captures(root, suffixes, special_files):
        parts = PurePosixPath(rel).parts
        if len(parts) < 2:
            continue  # a capture at the top level has no class folder
        files.append(CaptureFile(str(root / rel), rel, parts[0], rel))
    if not files:
        raise ValueError(f"{root}: no captures found in <label>/ sub-folders (suffixes {', '.join(suffixes)})")
    return files


def read_manifest(
    manifest,
    *,
    file_column: str = "file",
    label_column: str = "label",
    group_column=None,
    root=None,
    seen_column=None,
    special_files=None,
) -> list:
    """Captures listed in a CSV manifest with a header row (``file,label[,group]``).

    File paths are relative to ``root`` (default: the manifest's folder) unless absolute. ``group_column`` names
    the column holding the split group (default: ``group`` if present, else the file itself); ``seen_column``
    the column whose values held-out splits may only hold when train holds them too (see `split_by_group`).
    Every problem raises ``ValueError`` naming the manifest and the line. A listed FIFO, socket or device is left
    out unopened and appended to ``special_files`` (when given), as in `walk_captures`.
    """
    manifest = Path(manifest)
    root = Path(root) if root is not None else manifest.parent
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: manifest not found")
    files, first_line_of = [], {}
    with open(manifest, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in (file_column, label_column) if c not in header]
        if missing:
            raise ValueError(
                f"{manifest}:1: header must name the columns {file_column!r} and {label_column!r}; "
                f"missing {missing} (found {header})"
            )
        if group_column is None and "group" in header:
            group_column = "group"
        if group_column is not None and group_column not in header:
            raise ValueError(f"{manifest}:1: group column {group_column!r} is not in the header {header}")
        if seen_column is not None and seen_column not in header:
            raise ValueError(f"{manifest}:1: seen column {seen_column!r} is not in the header {header}")
        for row in reader:
            line = reader.line_num
            if None in row or any(v is None for v in row.values()):
                raise ValueError(
                    f"{manifest}:{line}: expected {len(header)} comma-separated fields "
                    f"({', '.join(header)}), got a different number"
                )
            name = row[file_column].strip()
            label = row[label_column].strip()
            if not name:
                raise ValueError(f"{manifest}:{line}: empty {file_column!r}")
            if not label:
                raise ValueError(f"{manifest}:{line}: empty {label_column!r} for file {name!r}")
            path = Path(name) if Path(name).is_absolute() else root / name
            kind = special_file_kind(path)
            if kind is not None:
                if special_files is not None:
                    special_files.append({"file": PurePosixPath(name).as_posix(), "kind": kind})
                continue
            if not path.is_file():
                raise ValueError(f"{manifest}:{line}: file {name!r} does not exist (looked for {path})")
            if name in first_line_of:
                raise ValueError(
                    f"{manifest}:{line}: file {name!r} is listed twice (first on line {first_line_of[name]})"
                )
            first_line_of[name] = line
            group = row[group_column].strip() if group_column else ""
            seen_key = row[seen_column].strip() if seen_column else ""
            files.append(CaptureFile(str(path), PurePosixPath(name).as_posix(), label, group or name, seen_key))
    if not files:
        raise ValueError(f"{manifest}: the manifest lists no files")
    return files


# ----------------------------------------------------------------------------------------------- extraction
def _empty_columns(num_bytes: int, num_packets: int, num_stats: int, keep_addresses: bool) -> dict:
    cols = {
        BYTE_COLUMN: np.zeros((0, num_bytes), np.uint8),
        "packet_lengths": np.zeros((0, num_packets), np.int32),
        "packet_iats": np.zeros((0, num_packets), np.float32),
        "packet_directions": np.zeros((0, num_packets), np.int8),
        "flow_stats": np.zeros((0, num_stats), np.float32),
    }
    cols.update({k: np.zeros(0, t) for k, t in _SCALARS.items()})
    if keep_addresses:
        cols.update(
            src_ip=np.zeros(0, "U1"),
            dst_ip=np.zeros(0, "U1"),
            src_port=np.zeros(0, np.int32),
            dst_port=np.zeros(0, np.int32),
        )
    return cols


def _records_to_columns(records: list, options, num_stats: int, keep_addresses: bool) -> dict:
    if not records:
        return _empty_columns(options.num_bytes, options.num_packets, num_stats, keep_addresses)
    cols = {
        name: np.stack([getattr(r, name) for r in records]).astype(dtype, copy=False)
        for name, dtype in _VECTORS.items()
    }
    cols.update({name: np.array([getattr(r, name) for r in records], dtype=dtype) for name, dtype in _SCALARS.items()})
    if keep_addresses:
        cols["src_ip"] = np.array([str(r.src_ip) for r in records])  # fixed-width unicode
        cols["dst_ip"] = np.array([str(r.dst_ip) for r in records])
        cols["src_port"] = np.array([r.src_port for r in records], dtype=np.int32)
        cols["dst_port"] = np.array([r.dst_port for r in records], dtype=np.int32)
    return cols


# Per-process extraction settings (set once per worker by `_init_worker`, or directly for num_proc=1).
_WORKER: dict = {}


def _init_worker(options_dict: dict, keep_addresses: bool, strict: bool, flow_reader, spill_dir) -> None:
    from . import FLOW_STAT_NAMES, FlowOptions

    _WORKER.update(
        options=FlowOptions.from_dict(options_dict),
        keep_addresses=keep_addresses,
        strict=strict,
        reader=flow_reader,
        num_stats=len(FLOW_STAT_NAMES),
        spill_dir=spill_dir,
    )


def _init_pool_worker(*args) -> None:
    """`_init_worker` in a pool process: Ctrl-C is the parent's to handle (it stops the pool); SIGTERM, which the
    pool sends when it stops, ends the worker quietly (a forked worker inherits the parent's Python handlers)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _init_worker(*args)


def payload_digests(payload: np.ndarray) -> np.ndarray:
    """``[N, 16]`` uint8 BLAKE2b-128 digests of the payload rows: the de-duplication key, 100x smaller than the rows
    (a collision between different payloads is astronomically unlikely: p ~ N^2 / 2^129)."""
    if len(payload) == 0:
        return np.zeros((0, 16), np.uint8)
    payload = np.ascontiguousarray(payload)
    joined = b"".join(hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in payload)
    return np.frombuffer(joined, np.uint8).reshape(len(payload), 16)


def spill_path(spill_dir, index: int) -> Path:
    return Path(spill_dir) / f"{index:08d}.npz"


def _extract_one(task) -> dict:
    """Read one capture. Its flows' columns go to ``<spill_dir>/<index>.npz`` (or stay in the result when there is
    no spill folder); the result carries the light per-flow metadata and the packet accounting.
    Never raises unless strict: a damaged capture keeps the flows read before the damage and reports the error."""
    from . import PacketAccounting, iter_flows

    index, path, name, max_packets = task
    options, strict = _WORKER["options"], _WORKER["strict"]
    if max_packets is not None and max_packets != options.max_packets:
        options = dataclasses.replace(options, max_packets=max_packets)
    reader = _WORKER["reader"] or iter_flows
    accounting = PacketAccounting()
    records, error = [], None
    started = time.perf_counter()
    try:
        for record in reader(path, options, accounting=accounting, strict=strict, source_name=name):
            records.append(record)
    except Exception as exc:  # keep the flows read before the damage; the report names the file
        if strict:
            raise
        error = str(exc) if name in str(exc) else f"{name}: {type(exc).__name__}: {exc}"
    columns = _records_to_columns(records, options, _WORKER["num_stats"], _WORKER["keep_addresses"])
    result = {
        "index": index,
        "name": name,
        "num_flows": len(records),
        "start_time": columns["start_time"],
        "digest": payload_digests(columns[BYTE_COLUMN]),
        "accounting": accounting.to_dict(),
        "error": error,
    }
    if _WORKER["spill_dir"] is not None:
        np.savez(spill_path(_WORKER["spill_dir"], index), **columns)  # plain arrays only: loads without pickle
    else:
        result["columns"] = columns
    result["seconds"] = time.perf_counter() - started
    return result


def iter_extract_captures(
    files: list,
    options,
    *,
    keep_addresses: bool = False,
    strict: bool = False,
    num_proc: int = 1,
    progress: bool = True,
    flow_reader=None,
    spill_dir=None,
    packet_caps=None,
):
    """Extract every capture, yielding one result dict per file in the order of ``files`` (whatever the workers'
    scheduling). A result holds ``columns`` (the flows as numpy arrays) unless ``spill_dir`` is given, in which
    case the workers write them to ``spill_path(spill_dir, index)``.

    Args:
        files: the `CaptureFile` list.
        options: the `FlowOptions` for every file.
        keep_addresses: also return the address / port columns.
        strict: raise on the first damaged capture instead of reporting it.
        num_proc: worker processes (1: read in this process).
        progress: show a progress bar.
        flow_reader: replaces `iter_flows` (same signature); for tests.
        spill_dir: folder the workers write each file's columns to (None: the columns stay in the result).
        packet_caps: {class label: max packets per flow}; a file whose label is listed is read with
            ``options.max_packets`` replaced by that cap (the recipes' per-class caps), the others with ``options``.
    """
    from tqdm.auto import tqdm

    packet_caps = packet_caps or {}
    if isinstance(num_proc, bool) or not isinstance(num_proc, (int, np.integer)) or num_proc < 1:
        raise ValueError(f"num_proc must be an integer >= 1, got {num_proc!r}")
    tasks = [(i, f.path, f.name, packet_caps.get(f.label)) for i, f in enumerate(files)]
    init_args = (options.to_dict(), keep_addresses, strict, flow_reader, None if spill_dir is None else str(spill_dir))
    bar = tqdm(total=len(tasks), desc="Reading captures", unit="file", disable=not progress)
    try:
        if num_proc <= 1 or len(tasks) <= 1:
            _init_worker(*init_args)
            for task in tasks:
                yield _extract_one(task)
                bar.update(1)
        else:
            import multiprocessing as mp

            # fork: workers inherit the (possibly injected) reader without pickling it and start instantly
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(num_proc, initializer=_init_pool_worker, initargs=init_args) as pool:
                # imap keeps the input order, so the result never depends on worker scheduling; chunks of a few
                # files cut the per-task overhead on many small captures, and stay small enough to balance the load
                chunksize = max(1, min(32, len(tasks) // (num_proc * 16)))
                for result in pool.imap(_extract_one, tasks, chunksize=chunksize):
                    yield result
                    bar.update(1)
    finally:
        bar.close()


def extract_captures(files: list, options, **kwargs) -> list:
    """`iter_extract_captures` as a list."""
    return list(iter_extract_captures(files, options, **kwargs))


class _FlowStore:
    """Per-capture flow columns, kept in memory up to ``budget_bytes`` and spilled to ``.npz`` files beyond, so a
    build's memory stays bounded whatever the input size while small builds never touch the disk."""

    def __init__(self, folder: Path, budget_bytes: int):
        self.folder, self.budget = folder, budget_bytes
        self.memory, self.bytes, self.spilled = {}, 0, 0

    def put(self, index: int, columns: dict) -> None:
        self.memory[index] = columns
        self.bytes += sum(v.nbytes for v in columns.values())
        if self.bytes > self.budget:
            self.folder.mkdir(parents=True, exist_ok=True)
            for i, cols in self.memory.items():
                np.savez(spill_path(self.folder, i), **cols)  # plain arrays only: loads without pickle
                self.spilled += 1
            self.memory, self.bytes = {}, 0

    def get(self, index: int, rows: np.ndarray) -> dict:
        if index in self.memory:
            return {name: values[rows] for name, values in self.memory[index].items()}
        with np.load(spill_path(self.folder, index), allow_pickle=False) as stored:
            return {name: stored[name][rows] for name in stored.files}


# ----------------------------------------------------------------------------------------------- features
def contract_features(
    class_names, *, keep_addresses: bool = False, num_bytes: int = 1600, num_packets: int = 5, num_stats: int = 27
):
    """The `datasets.Features` of the data contract (docs/INTERFACES.md) for these class names."""
    from datasets import ClassLabel, Features, List, Value

    widths = {BYTE_COLUMN: num_bytes, "flow_stats": num_stats}
    spec = {
        name: List(Value(dtype), length=widths.get(name, num_packets)) for name, dtype in FLOW_ARRAY_COLUMNS.items()
    }
    spec.update(label=ClassLabel(names=list(class_names)), source_file=Value("string"), group=Value("string"))
    spec.update({name: Value(dtype) for name, dtype in FLOW_SCALAR_COLUMNS.items()})
    if keep_addresses:
        spec.update({name: Value(dtype) for name, dtype in ADDRESS_COLUMNS.items()})
    return Features(spec)


def _arrow_table(columns: dict, features):
    """An arrow table with the features' schema, built straight from numpy (no per-row encoding)."""
    import pyarrow as pa

    arrays = []
    for name in features:
        values = columns[name]
        if values.ndim == 2:
            flat = pa.array(np.ascontiguousarray(values).reshape(-1))
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, values.shape[1]))
        elif values.dtype.kind in "OU":
            arrays.append(pa.array(values.tolist(), type=pa.string()))
        else:
            arrays.append(pa.array(values))
    return pa.Table.from_arrays(arrays, schema=features.arrow_schema)


def _arrow_dataset(columns: dict, features, split_name: str):
    """A `datasets.Dataset` over an in-memory arrow table of numpy columns (see `_arrow_table`)."""
    from datasets import Dataset, DatasetInfo, NamedSplit
    from datasets.table import InMemoryTable

    digest = hashlib.sha256()
    for name in features:
        values = columns[name]
        digest.update(name.encode())
        digest.update(values.tobytes() if values.dtype.kind != "O" else "\0".join(values.tolist()).encode())
    return Dataset(
        InMemoryTable(_arrow_table(columns, features)),
        info=DatasetInfo(features=features),
        split=NamedSplit(split_name),
        fingerprint=digest.hexdigest()[:16],
    )


class _SplitWriter:
    """Streams one split's rows into an arrow IPC stream file (what `Dataset.from_file` memory-maps)."""

    def __init__(self, path: Path, features, batch_rows: int = 8192):
        import pyarrow as pa

        self.path, self.features, self.batch_rows = path, features, batch_rows
        self._writer = pa.ipc.new_stream(str(path), features.arrow_schema)
        self._pending, self._pending_rows, self.rows = [], 0, 0

    def add(self, columns: dict) -> None:
        n = len(columns["label"])
        if n:
            self._pending.append(columns)
            self._pending_rows += n
            if self._pending_rows >= self.batch_rows:
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        merged = {k: np.concatenate([c[k] for c in self._pending]) for k in self._pending[0]}
        self._writer.write_table(_arrow_table(merged, self.features))
        self.rows += self._pending_rows
        self._pending, self._pending_rows = [], 0

    def close(self) -> None:
        self._flush()
        self._writer.close()


# ----------------------------------------------------------------------------------------------- caps
def cap_classes(
    labels: np.ndarray, split: np.ndarray, keep: np.ndarray, *, min_flows: int = 0, max_flows=None, seed: int = 0
) -> tuple:
    """Apply per-class minimum and maximum flow counts to the kept rows.

    Classes with fewer than ``min_flows`` kept flows are removed entirely. A class with more than ``max_flows``
    keeps a seeded random sample of exactly ``max_flows``, spread over the splits in proportion to the class's
    split sizes (largest remainder), so the split shares are preserved.

    Returns ``(keep bool [N], dropped_classes {class id: flows}, capped {class id: flows removed})``.
    """
    keep = keep.copy()
    rng = np.random.default_rng([seed, 1])
    dropped, capped = {}, {}
    for c in np.unique(labels[keep]):
        rows = np.flatnonzero(keep & (labels == c))
        if len(rows) < min_flows:
            keep[rows] = False
            dropped[int(c)] = int(len(rows))
            continue
        if max_flows is None or len(rows) <= max_flows:
            continue
        sizes = np.array([(split[rows] == s).sum() for s in range(3)], dtype=np.int64)
        exact = sizes * max_flows / len(rows)
        quota = np.floor(exact).astype(np.int64)
        for s in np.argsort(-(exact - quota), kind="stable")[: max_flows - quota.sum()]:
            quota[s] += 1
        for s in range(3):
            in_split = rows[split[rows] == s]
            chosen = np.sort(rng.choice(len(in_split), size=int(quota[s]), replace=False)) if quota[s] else []
            mask = np.zeros(len(in_split), bool)
            mask[chosen] = True
            keep[in_split[~mask]] = False
        capped[int(c)] = int(len(rows) - max_flows)
    return keep, dropped, capped


# ----------------------------------------------------------------------------------------------- build
@dataclass
class BuildResult:
    """What `build_dataset` returns.

    Attributes:
        dataset: the `datasets.DatasetDict` with ``train``, ``validation`` and ``test``.
        report: the JSON-friendly build report (also written as ``build_report.json``).
        output_dir: where it was saved (None if not saved).
    """

    dataset: object
    report: dict
    output_dir: object = None
    card: object = field(default=None, repr=False)


def _resolve_options(flow_options, overrides: dict):
    from . import FlowOptions

    if flow_options is None:
        values = FlowOptions().to_dict()
    elif isinstance(flow_options, dict):
        values = {**FlowOptions().to_dict(), **flow_options}
    else:
        values = flow_options.to_dict()
    values.update({k: v for k, v in overrides.items() if v is not None})
    return FlowOptions.from_dict(values)


def _collect(
    input_path, *, recipe, manifest, file_column, label_column, group_column, seen_column=None, special_files=None
):
    """(files, input description, excluded names) for any kind of input; FIFOs, sockets and devices found on the
    way are appended to ``special_files`` as ``{"file": name, "kind": kind}`` (never opened)."""
    input_path = Path(input_path)
    if recipe is not None:
        if seen_column is not None:
            raise ValueError(
                f"{input_path}: seen_column {seen_column!r} needs a CSV manifest that holds that column; "
                f"recipe {recipe.name!r} labels captures by their paths"
            )
        files, excluded = recipe.collect(input_path, special_files=special_files)
        return files, {"kind": "recipe", "recipe": recipe.name, "root": input_path.name}, excluded
    if manifest is None and input_path.is_file() and input_path.suffix.lower() == ".csv":
        manifest = input_path
    if seen_column is not None and manifest is None:
        raise ValueError(f"{input_path}: seen_column {seen_column!r} needs a CSV manifest that holds that column")
    if manifest is not None:
        manifest = Path(manifest)
        root = input_path if input_path.is_dir() else manifest.parent
        files = read_manifest(
            manifest,
            file_column=file_column,
            label_column=label_column,
            group_column=group_column,
            root=root,
            seen_column=seen_column,
            special_files=special_files,
        )
        return (
            files,
            {
                "kind": "manifest",
                "manifest": manifest.name,
                "root": root.name,
                "group_column": group_column,
                "seen_column": seen_column,
            },
            [],
        )
    return discover_tree(input_path, special_files=special_files), {"kind": "tree", "root": input_path.name}, []


@dataclass
class BuildOptions:
    """How `build_dataset` reads, splits, filters and writes (everything but the input and the output folder).

    Args:
        manifest: a CSV manifest (``file,label[,group]``) whose paths are relative to the input if that is a folder.
        recipe: a `mmae_hf.traffic.recipes.Recipe` or its name; sets the labels, caps and flow options
            (explicit options still win).
        file_column / label_column / group_column: manifest column names (``group_column``: the split group).
        seen_column: manifest column (e.g. the application) for a group split whose validation and test captures
            only hold values that train captures hold too: "known services in new captures"
            (see `mmae_hf.traffic.splits.split_by_group`).
        split_by: ``"flow"``, ``"file"`` (= ``"group"``: the source file, or the manifest group) or ``"time"``;
            default ``"file"`` (recipes may set another).
        validation_size / test_size: held-out shares.
        seed: drives the split and the per-class sampling; same seed and inputs give identical datasets.
        flow_options: a `FlowOptions` or dict; ``anonymize``, ``min_packets``, ``drop_service_chatter`` and
            ``max_packets`` override it.
        max_packets: keep only the first N packets of each flow (``FlowOptions.max_packets``; 0: no cap). A recipe
            with per-class ``packet_caps`` (ISCX-Tor) reads each capture with its class's cap unless a cap is given
            explicitly: this option, a ``max_packets`` key in a ``flow_options`` dict, or a `FlowOptions` whose
            ``max_packets`` is not 0. The report's ``packet_caps`` lists the caps used per class.
        min_flows_per_class / max_flows_per_class: class filter and cap (after de-duplication).
        dedup: remove exact duplicate payloads (keeping the copy in the earliest split).
        drop_label_conflicts: also remove every flow of a duplicate cluster whose labels disagree.
        keep_addresses: add ``src_ip``, ``dst_ip``, ``src_port``, ``dst_port`` columns.
        num_proc: worker processes for reading captures (>= 1; capped at the number of captures and of CPUs).
        strict: stop at the first damaged capture instead of reporting it and keeping what was read.
        overwrite: replace a non-empty output folder. The old content stays in place until the new dataset is
            complete (it is then swapped in); an interrupted or failed build leaves it untouched.
        push_to_hub: a repo id to publish the DatasetDict, card, report and preprocessor config to (after the local
            folder, if any, is complete).
        private: create the Hub repo private.
        license: the captures' license as a Hub license id (``cc0-1.0``, ``cc-by-4.0``, ``other``, ...), written to
            the dataset card; ``None`` writes ``unknown`` and a card line asking for it before publishing.
        flow_reader: replaces `iter_flows` (same signature); for tests.
        command: the command line to record in the report.
        tmp_dir: where the work folder (spilled flows, split files; removed at the end) goes; default: inside the
            staging folder beside the output, else the system temp folder.
        max_memory_mb: flow columns held in memory before they are spilled to the work folder; memory stays
            bounded by this plus ~60 bytes of metadata per flow.
    """

    manifest: Any = None
    recipe: Any = None
    file_column: str = "file"
    label_column: str = "label"
    group_column: str | None = None
    seen_column: str | None = None
    split_by: str | None = None
    validation_size: float = 0.1
    test_size: float = 0.1
    seed: int = 0
    flow_options: Any = None
    anonymize: str | None = None
    min_packets: int | None = None
    drop_service_chatter: bool | None = None
    max_packets: int | None = None
    min_flows_per_class: int | None = None
    max_flows_per_class: int | None = None
    dedup: bool = True
    drop_label_conflicts: bool = False
    keep_addresses: bool = False
    num_proc: int = 1
    strict: bool = False
    progress: bool = True
    overwrite: bool = False
    push_to_hub: str | None = None
    private: bool = False
    license: str | None = None
    flow_reader: Any = None
    command: str | None = None
    tmp_dir: Any = None
    max_memory_mb: int = 2048


@dataclass
class _Plan:
    """A build's resolved settings and inputs (what `_plan` decided before any capture is read)."""

    files: list
    options: Any  # FlowOptions
    recipe: Any
    split_by: str
    min_flows: int
    max_flows: int | None
    packet_caps: dict
    caps_source: str | None
    source: dict
    excluded: list
    num_proc: int


def _plan(input_path, build: BuildOptions) -> _Plan:
    """Resolve the settings (explicit option > recipe > default) and collect the captures."""
    from .recipes import get_recipe

    rec = build.recipe
    if rec is not None and not hasattr(rec, "collect"):
        rec = get_recipe(rec)
    if isinstance(build.num_proc, bool) or not isinstance(build.num_proc, (int, np.integer)) or build.num_proc < 1:
        raise ValueError(f"num_proc must be an integer >= 1, got {build.num_proc!r}")
    flow_options, manifest, group_column = build.flow_options, build.manifest, build.group_column
    explicit_cap = build.max_packets is not None or (
        "max_packets" in flow_options
        if isinstance(flow_options, dict)
        else bool(flow_options is not None and flow_options.max_packets)
    )
    split_by = build.split_by or (rec.split_by if rec else None) or "file"
    if build.seen_column is not None and split_by not in ("file", "group"):
        raise ValueError(
            f"seen_column {build.seen_column!r} needs a group split (split_by 'file' or 'group'), not {split_by!r}"
        )
    min_flows = (
        build.min_flows_per_class if build.min_flows_per_class is not None else (rec.min_flows_per_class if rec else 0)
    )
    max_flows = (
        build.max_flows_per_class
        if build.max_flows_per_class is not None
        else (rec.max_flows_per_class if rec else None)
    )
    if rec is not None:
        manifest = manifest if manifest is not None else (Path(input_path) / rec.manifest if rec.manifest else None)
        group_column = group_column or rec.group_column
        base = {**rec.flow_options, **(flow_options if isinstance(flow_options, dict) else {})}
        if flow_options is not None and not isinstance(flow_options, dict):
            base = flow_options.to_dict()
        flow_options = base
    options = _resolve_options(
        flow_options,
        {
            "anonymize": build.anonymize,
            "min_packets": build.min_packets,
            "drop_service_chatter": build.drop_service_chatter,
            "max_packets": build.max_packets,
        },
    )
    # the recipe's per-class packet caps (ISCX-Tor): each capture is read with its class's cap
    packet_caps = {} if rec is None or explicit_cap else {k: int(v) for k, v in rec.packet_caps.items()}
    for label, cap in packet_caps.items():  # a cap that FlowOptions rejects fails here, before any reading
        try:
            dataclasses.replace(options, max_packets=cap)
        except ValueError as exc:
            raise ValueError(f"recipe {rec.name!r}, class {label!r}: packet cap {cap}: {exc}") from None
    caps_source = "recipe" if packet_caps else ("max_packets" if options.max_packets else None)
    if rec is not None and rec.packet_caps and explicit_cap:
        caps_source = f"max_packets={options.max_packets} (overrides the recipe's packet_caps)"
    special = []
    columns = dict(
        file_column=build.file_column,
        label_column=build.label_column,
        group_column=group_column,
        seen_column=build.seen_column,
        special_files=special,
    )
    if rec is not None and rec.manifest:
        files, source, excluded = _collect(input_path, recipe=None, manifest=manifest, **columns)
        source.update(kind="recipe", recipe=rec.name)
    else:
        files, source, excluded = _collect(input_path, recipe=rec, manifest=manifest, **columns)
    if special:  # FIFOs, sockets, devices: skipped unopened (a FIFO without a writer blocks a reader forever)
        source["special_files_skipped"] = special
    # more workers than captures or CPUs only costs memory and start-up time
    num_proc = int(max(1, min(build.num_proc, len(files), _available_cpus())))
    return _Plan(
        files=files,
        options=options,
        recipe=rec,
        split_by=split_by,
        min_flows=min_flows,
        max_flows=max_flows,
        packet_caps=packet_caps,
        caps_source=caps_source,
        source=source,
        excluded=excluded,
        num_proc=num_proc,
    )


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# errno values that mean "the output could not be written" (rather than "an input could not be read")
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def build_dataset(input_path, output_dir=None, options: BuildOptions | None = None, **overrides) -> BuildResult:
    """Build a train / validation / test `DatasetDict` of flows from captures (see the module docstring).

    Args:
        input_path: a folder ``<label>/**/*.pcap[ng]``, a CSV manifest, or the raw folder of a recipe.
        output_dir: where to ``save_to_disk`` (with README.md, build_report.json, preprocessor_config.json); None:
            keep in memory. The folder appears complete or not at all: it is written beside ``output_dir`` under a
            hidden name and renamed into place at the end.
        options: a `BuildOptions`; keyword arguments (any `BuildOptions` field, e.g. ``split_by="flow"``)
            override its fields.

    Raises:
        ValueError: bad input or settings (named in the message); FileExistsError: a non-empty output without
        ``overwrite``; `mmae_hf.traffic.atomic.OutputWriteError` (an ``OSError``): the output could not be written
        (a full disk is named ENOSPC); the output folder is then unchanged.
    """
    started = time.perf_counter()
    build = dataclasses.replace(options or BuildOptions(), **overrides)
    staged = None
    if output_dir is not None:
        output_dir = Path(output_dir)
        # work folders of older versions lived inside the output folder; a killed build left one behind
        staged = StagedFolder(output_dir, overwrite=build.overwrite, ignore=(".mmae_build_*",))
        staged.check()  # before any capture is read
        if (
            build.overwrite
            and staged.existing_content()
            and not any((output_dir / marker).exists() for marker in ("dataset_dict.json", REPORT_NAME))
        ):
            # --overwrite replaces the whole folder: never a folder that holds something else than a dataset
            raise FileExistsError(
                f"{output_dir}: --overwrite replaces the whole folder, but this one is not a dataset "
                f"folder (no dataset_dict.json or {REPORT_NAME}); choose another --output"
            )
    plan = _plan(input_path, build)
    with contextlib.ExitStack() as stack:
        dataset_dir = stack.enter_context(staged).path if staged is not None else None
        work_parent = build.tmp_dir if build.tmp_dir is not None else dataset_dir
        work = Path(tempfile.mkdtemp(prefix=".mmae_build_", dir=None if work_parent is None else str(work_parent)))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        try:
            result = _build(plan, build, work, dataset_dir, started)
            if staged is not None:
                shutil.rmtree(work, ignore_errors=True)
                staged.commit()
        except OSError as error:
            if error.errno not in _WRITE_ERRNOS and (free_bytes(work) or 0) >= (1 << 20):
                raise
            where = output_dir if output_dir is not None else work  # (the staging folder is its sibling)
            raise OutputWriteError(
                f"{output_dir or 'dataset'}: the dataset could not be written: {describe_os_error(error, where)}; "
                + ("the output folder is unchanged" if output_dir is not None else "nothing was kept")
            ) from error
    if staged is not None:
        from datasets import load_from_disk

        result.dataset = load_from_disk(str(output_dir))  # the staged copy was renamed: serve the final one
        result.output_dir = output_dir
    if build.push_to_hub:
        push_dataset(
            result.dataset,
            build.push_to_hub,
            report=result.report,
            card=result.card,
            private=build.private,
            output_dir=output_dir,
        )
    return result


class _RowNames:
    """Row index -> source file name, without materialising one string per flow."""

    def __init__(self, row_file, files):
        self.row_file, self.files = row_file, files

    def __getitem__(self, row):
        return self.files[int(self.row_file[row])].name


def _build(plan: _Plan, build: BuildOptions, work: Path, output_dir, started: float) -> BuildResult:
    """Extract, split, de-duplicate, cap and write (into ``output_dir``, the staging folder, when given)."""
    from datasets import Dataset, DatasetDict, DatasetInfo, NamedSplit, load_from_disk
    from tqdm.auto import tqdm

    from .. import __version__
    from . import FLOW_STAT_NAMES, PacketAccounting
    from .card import make_dataset_card

    files, options, rec, packet_caps, source = plan.files, plan.options, plan.recipe, plan.packet_caps, plan.source
    min_flows, max_flows, keep_addresses = plan.min_flows, plan.max_flows, build.keep_addresses
    validation_size, test_size, seed = build.validation_size, build.test_size, build.seed

    # 1. extract; the columns go to the store (memory, then disk), light per-flow metadata stays here
    t0 = time.perf_counter()
    store = _FlowStore(work / "flows", int(build.max_memory_mb) << 20)
    results = []
    for res in iter_extract_captures(
        files,
        options,
        keep_addresses=keep_addresses,
        strict=build.strict,
        num_proc=plan.num_proc,
        progress=build.progress,
        flow_reader=build.flow_reader,
        packet_caps=packet_caps,
    ):
        store.put(res["index"], res.pop("columns"))
        results.append(res)
    extract_seconds = time.perf_counter() - t0
    accounting = PacketAccounting()
    per_file, errors = {}, []
    for f, res in zip(files, results):
        acc = PacketAccounting.from_dict(res["accounting"])
        accounting.merge(acc)
        per_file[f.name] = {
            "label": f.label,
            "group": f.group,
            "flows": res["num_flows"],
            "packets_read": acc.packets_read,
            "packets_skipped": dict(sorted(acc.skipped.items())),
        }
        file_cap = packet_caps.get(f.label, options.max_packets)
        if file_cap:
            per_file[f.name]["max_packets"] = file_cap
        file_errors = list(acc.errors) + ([res["error"]] if res["error"] else [])
        if file_errors:
            per_file[f.name]["errors"] = file_errors
            errors.extend({"file": f.name, "error": e} for e in file_errors)
    counts = np.array([r["num_flows"] for r in results], dtype=np.int64)
    row_file = np.repeat(np.arange(len(files), dtype=np.int64), counts)
    row_in_file = np.arange(len(row_file), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    start_times = np.concatenate([r["start_time"] for r in results]).astype(np.float64)
    digests = np.concatenate([r["digest"] for r in results])
    label_names_all = sorted({f.label for f in files})
    label_index = {name: i for i, name in enumerate(label_names_all)}
    labels = np.array([label_index[f.label] for f in files], dtype=np.int64)[row_file]
    group_names, file_group = np.unique(np.array([f.group for f in files], dtype=str), return_inverse=True)
    groups = file_group.reshape(-1)[row_file]
    num_flows = len(labels)

    # 2. split, 3. de-duplicate, 4. caps (on the light metadata only)
    seen_keys = None
    if any(f.seen_key for f in files):
        seen_keys = np.array([f.seen_key for f in files], dtype=str)[row_file]
    assignment, split_report = split_flows(
        plan.split_by,
        labels,
        groups=groups,
        start_times=start_times,
        validation_size=validation_size,
        test_size=test_size,
        seed=seed,
        seen_keys=seen_keys,
    )
    if build.dedup:
        keep, dedup_report = deduplicate(
            digests,
            labels,
            assignment,
            sources=_RowNames(row_file, files),
            drop_label_conflicts=build.drop_label_conflicts,
        )
    else:
        keep, dedup_report = assignment >= 0, None
    keep, dropped_classes, capped = cap_classes(
        labels, assignment, keep, min_flows=min_flows, max_flows=max_flows, seed=seed
    )

    # 5. final classes (sorted, Python order: MMAE's label mapping) and split files, one capture at a time
    class_names = sorted({label_names_all[c] for c in np.unique(labels[keep])})
    if not class_names:
        below = {label_names_all[c]: n for c, n in dropped_classes.items()}
        unreadable = ""
        if errors:
            shown = [e["error"] if e["file"] in e["error"] else f"{e['file']}: {e['error']}" for e in errors[:10]]
            unreadable = (
                f"; {len(errors)} capture(s) could not be read: "
                + "; ".join(shown)
                + (f"; ... and {len(errors) - 10} more" if len(errors) > 10 else "")
            )
        raise ValueError(
            f"no flows left to write: {num_flows} flows extracted from {len(files)} captures "
            f"(packets skipped: {dict(accounting.skipped)}; "
            f"classes under the minimum of {min_flows} flows: {below}){unreadable}"
        )
    remap = np.full(len(label_names_all), -1, dtype=np.int64)
    for new, name in enumerate(class_names):
        remap[label_index[name]] = new
    features = contract_features(
        class_names,
        keep_addresses=keep_addresses,
        num_bytes=options.num_bytes,
        num_packets=options.num_packets,
        num_stats=len(FLOW_STAT_NAMES),
    )
    t0 = time.perf_counter()
    writers = [_SplitWriter(work / f"{name}.arrow", features) for name in SPLIT_NAMES]
    kept_rows = np.flatnonzero(keep)
    file_bounds = np.searchsorted(row_file[kept_rows], np.arange(len(files) + 1))
    for i in tqdm(range(len(files)), desc="Writing splits", unit="file", disable=not build.progress):
        rows = kept_rows[file_bounds[i] : file_bounds[i + 1]]
        if not len(rows):
            continue
        columns = store.get(i, row_in_file[rows])
        columns["label"] = remap[labels[rows]]
        columns["source_file"] = np.array([files[i].name] * len(rows))
        columns["group"] = np.array([files[i].group] * len(rows))
        for s, writer in enumerate(writers):
            in_split = assignment[rows] == s
            writer.add({name: values[in_split] for name, values in columns.items()})
    for writer in writers:
        writer.close()
    splits, class_counts = {}, {}
    for s, (name, writer) in enumerate(zip(SPLIT_NAMES, writers)):
        ds = Dataset.from_file(
            str(writer.path), info=DatasetInfo(features=features), split=NamedSplit(name), in_memory=output_dir is None
        )
        # a content fingerprint (rows, labels, options) makes save_to_disk's state.json deterministic
        rows = np.flatnonzero(keep & (assignment == s))
        fingerprint = hashlib.sha256(
            json.dumps(
                [name, class_names, options.to_dict(), keep_addresses] + ([packet_caps] if packet_caps else [])
            ).encode()
        )
        for array in (digests[rows], remap[labels[rows]], row_file[rows]):
            fingerprint.update(np.ascontiguousarray(array).tobytes())
        ds._fingerprint = fingerprint.hexdigest()[:16]
        splits[name] = ds
        per_class = np.bincount(remap[labels[rows]], minlength=len(class_names))
        class_counts[name] = {c: int(n) for c, n in zip(class_names, per_class)}
    dataset = DatasetDict(splits)
    write_seconds = time.perf_counter() - t0

    missing = {}
    for name in class_names:
        absent = [
            s
            for s in SPLIT_NAMES
            if class_counts[s][name] == 0
            and (s == "train" or (validation_size if s == "validation" else test_size) > 0)
        ]
        if absent:
            missing[name] = absent
    group_sets = [set(np.unique(groups[keep & (assignment == s)]).tolist()) for s in range(3)]
    overlap = sorted(
        (group_sets[0] & group_sets[1]) | (group_sets[0] & group_sets[2]) | (group_sets[1] & group_sets[2])
    )
    split_dict = split_report.to_dict(label_names_all)
    split_dict["classes_missing_from_splits"] = missing
    split_dict["groups_on_several_splits"] = [str(group_names[g]) for g in overlap]
    split_dict["rows_per_split"] = {s: len(dataset[s]) for s in SPLIT_NAMES}
    split_dict["groups_per_split"] = {s: len(g) for s, g in zip(SPLIT_NAMES, group_sets)}
    if seen_keys is not None:
        # what the seen-keys split promises, checked on the flows actually written (after de-dup and caps)
        keys_in = [np.setdiff1d(seen_keys[keep & (assignment == s)], [""]) for s in range(len(SPLIT_NAMES))]
        split_dict["seen_column_keys_per_split"] = {name: len(k) for name, k in zip(SPLIT_NAMES, keys_in)}
        held_out_keys = seen_keys[keep & (assignment > 0)]
        split_dict["held_out_flows_with_keys_unseen_in_train"] = int(
            ((held_out_keys != "") & ~np.isin(held_out_keys, keys_in[0])).sum()
        )

    report = {
        "format": "mmae_hf.build_report/1",
        "mmae_hf_version": __version__,
        "command": build.command,
        "input": {
            **source,
            "files": len(files),
            "files_excluded": len(plan.excluded),
            "excluded_examples": list(plan.excluded[:20]),
            "num_proc": plan.num_proc,
        },
        "flow_options": options.to_dict(),
        # packets kept per flow, by class (0 = all): the recipe's per-class caps or flow_options' max_packets
        "packet_caps": {
            "source": plan.caps_source,
            "max_packets_by_class": {name: int(packet_caps.get(name, options.max_packets)) for name in label_names_all},
        },
        "keep_addresses": keep_addresses,
        "classes": class_names,
        "class_counts": class_counts,
        "split": split_dict,
        "flows": {
            "extracted": int(num_flows),
            "extracted_by_class": {n: int((labels == i).sum()) for i, n in enumerate(label_names_all)},
            "removed_duplicates": int(dedup_report.removed) if dedup_report else 0,
            "classes_below_minimum": {label_names_all[c]: n for c, n in sorted(dropped_classes.items())},
            "min_flows_per_class": int(min_flows),
            "max_flows_per_class": max_flows,
            "removed_by_cap": {label_names_all[c]: n for c, n in sorted(capped.items())},
            "final": int(sum(len(dataset[s]) for s in SPLIT_NAMES)),
        },
        "duplicates": dedup_report.to_dict(label_names_all) if dedup_report else None,
        "packets": {k: v for k, v in accounting.to_dict().items() if k != "errors"},
        "errors": errors,
        # per-capture details; for very large inputs only the captures with errors or skipped packets
        "files_listed": "all" if len(per_file) <= MAX_FILES_IN_REPORT else "with_errors_or_skipped_packets",
        "files": per_file
        if len(per_file) <= MAX_FILES_IN_REPORT
        else {k: v for k, v in per_file.items() if v.get("errors") or v["packets_skipped"]},
        "timing_seconds": {"extract": round(extract_seconds, 3), "write_splits": round(write_seconds, 3)},
        "captures_spilled_to_disk": store.spilled,
    }
    if rec is not None:
        report["recipe"] = rec.to_dict()

    if output_dir is not None:
        t0 = time.perf_counter()
        # an empty split needs one (empty) shard, or load_from_disk cannot read it back
        dataset.save_to_disk(str(output_dir), num_shards={k: 1 for k in dataset if len(dataset[k]) == 0} or None)
        dataset = load_from_disk(str(output_dir))  # the work folder goes away: serve the saved copy
        report["timing_seconds"]["save"] = round(time.perf_counter() - t0, 3)
        report["preprocessor_config"] = _save_preprocessor(output_dir, options)
    report["timing_seconds"]["total"] = round(time.perf_counter() - started, 3)
    card = make_dataset_card(report, pretty_name=(rec.title if rec else None), license=build.license)
    if output_dir is not None:
        card.save(str(output_dir / CARD_NAME))
        (output_dir / REPORT_NAME).write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return BuildResult(dataset=dataset, report=report, output_dir=output_dir, card=card)


def _save_preprocessor(output_dir: Path, options):
    """Save the feature extractor config (the flow options) beside the data, so training and inference reuse them:
    the file `MMAEFeatureExtractor.save_pretrained` writes, from the data contract (no transformers needed)."""
    (output_dir / PREPROCESSOR_CONFIG_NAME).write_text(preprocessor_config_json(options.to_dict()))
    return PREPROCESSOR_CONFIG_NAME


def push_dataset(dataset, repo_id: str, *, report: dict, card=None, private: bool = False, output_dir=None) -> str:
    """Publish a built DatasetDict: parquet shards (``DatasetDict.push_to_hub``), then our card, report and
    preprocessor config in one commit. The card keeps the ``dataset_info`` / ``configs`` YAML datasets wrote."""
    from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi

    from .card import make_dataset_card

    from datasets import DatasetDict

    # an empty split has no parquet shard to upload: publish the others (the card still lists its counts)
    non_empty = DatasetDict({name: split for name, split in dataset.items() if len(split)})
    non_empty.push_to_hub(repo_id, private=private, commit_message="Add flow dataset (mmae_hf.build_dataset)")
    api = HfApi()
    card = card or make_dataset_card(report)
    try:
        pushed = DatasetCard.load(repo_id, repo_type="dataset")
        for key in ("dataset_info", "configs"):
            value = getattr(pushed.data, key, None)
            if value is not None:
                setattr(card.data, key, value)
    except Exception:  # no README from datasets: our card stands alone
        pass
    operations = [
        CommitOperationAdd(CARD_NAME, str(card).encode()),
        CommitOperationAdd(REPORT_NAME, (json.dumps(report, indent=2) + "\n").encode()),
    ]
    from . import FlowOptions

    with tempfile.TemporaryDirectory() as tmp:  # the same file as in a saved build, even when nothing was saved
        name = _save_preprocessor(Path(tmp), FlowOptions.from_dict(report["flow_options"]))
        operations.append(CommitOperationAdd(name, (Path(tmp) / name).read_bytes()))
    api.create_commit(repo_id, operations, repo_type="dataset", commit_message="Add dataset card and build report")
    return repo_id


def verify_saved_splits(path, dataset) -> None:
    """Refuse a dataset folder whose splits disagree with its ``build_report.json`` (a folder half rewritten by an
    interrupted build of an older version, or edited afterwards). Folders without a report are not checked.

    Args:
        path: the dataset folder.
        dataset: what was loaded from it: a `DatasetDict`, or one split's `Dataset` (only that split is checked).
    """
    report_path = Path(path) / REPORT_NAME
    if not report_path.is_file():
        return
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{report_path}: unreadable build report ({error})") from error
    expected = (report.get("split") or {}).get("rows_per_split") if isinstance(report, dict) else None
    if not isinstance(expected, dict):
        return
    if hasattr(dataset, "keys"):
        found = {name: len(dataset[name]) for name in dataset.keys()}
    else:
        name = str(getattr(dataset, "split", None) or "")
        found, expected = {name: len(dataset)}, {k: v for k, v in expected.items() if k == name}
    wrong = [
        f"{name}: {found.get(name, 'missing')} rows (report: {rows})"
        for name, rows in expected.items()
        if found.get(name) != rows
    ]
    if wrong:
        raise ValueError(
            f"{path}: the saved splits do not match {REPORT_NAME} ({'; '.join(wrong)}): the folder is "
            "incomplete or was changed after the build; rebuild it"
        )


__all__ = [
    "BuildOptions",
    "BuildResult",
    "CaptureFile",
    "PCAP_SUFFIXES",
    "build_dataset",
    "cap_classes",
    "contract_features",
    "discover_tree",
    "extract_captures",
    "iter_extract_captures",
    "load_traffic_dataset",
    "push_dataset",
    "read_manifest",
    "verify_saved_splits",
    "walk_captures",
]
