"""Data side of pre-training: load the train split of a flow dataset, sample it per process, read batches fast.

Reading path (measured in hf-notes §4): rows are stored as ``List(Value("uint8"), length=1600)``; going
through the `numpy`/`torch` formatters upcasts every byte to int64 and runs at ~20-30k rows/s, while one
arrow ``take`` per batch followed by a zero-copy ``values.to_numpy()`` keeps uint8 and runs at >100k rows/s.
`FlowBatchReader` does the latter for all fixed-length columns of the data contract.

Sampling: `EpochBatchSampler` gives every process its own share of each epoch's seeded permutation
(``set_epoch``), drops the tail so every batch is full (FlowMix pairs flows inside a batch, so the batch
must be even), and can start in the middle of an epoch (exact resume).
"""

from pathlib import Path

import numpy as np

from ..data_contract import FLOW_ARRAY_COLUMNS, PREPROCESSOR_CONFIG_NAME, column_widths
from ..traffic.loading import DatasetLoadError, load_traffic_dataset, rename_legacy_columns

# data-contract column -> (numpy dtype, values per row)
CONTRACT_COLUMNS = {name: (np.dtype(dtype), column_widths()[name]) for name, dtype in FLOW_ARRAY_COLUMNS.items()}
PRETRAINING_COLUMNS = tuple(CONTRACT_COLUMNS)
# split names pre-training refuses: their flows are for model selection and evaluation only
HELD_OUT_SPLITS = ("validation", "valid", "val", "dev", "test", "eval", "evaluation")


def load_pretraining_split(source, split="train", cache_dir=None, allow_held_out_split=False):
    """Load the rows pre-training may see: one split (default ``train``) of a folder or Hub dataset.

    Args:
        source (`str` or `os.PathLike`): a folder written by ``DatasetDict.save_to_disk``, a folder of
            parquet/arrow shards (``data/train-*.parquet``), or a Hub dataset id.
        split (`str`, defaults to ``"train"``): the split to read. Validation and test splits are refused
            unless ``allow_held_out_split`` is set: pre-training on them leaks the evaluation flows.
        cache_dir (`str`, *optional*): datasets cache folder for parquet folders and Hub ids.

    Returns:
        `datasets.Dataset` with at least the data-contract columns of `PRETRAINING_COLUMNS`.
    """
    if split.lower() in HELD_OUT_SPLITS and not allow_held_out_split:
        raise DatasetLoadError(
            f"{source}: refusing to pre-train on split {split!r}: validation/test flows must stay unseen "
            "(pre-train on 'train' or on an external unlabelled corpus)"
        )
    dataset = load_traffic_dataset(source, split, cache_dir=cache_dir, allow_unsplit=False)
    check_pretraining_columns(dataset, source)
    return dataset


def check_pretraining_columns(dataset, source="dataset"):
    """Raise `DatasetLoadError` naming every data-contract column that is missing or has the wrong width."""
    problems = []
    for name, (_, width) in CONTRACT_COLUMNS.items():
        if name not in dataset.features:
            problems.append(f"missing column {name!r}")
            continue
        length = getattr(dataset.features[name], "length", None)
        if length not in (None, -1) and length != width:
            problems.append(f"column {name!r} has length {length}, expected {width}")
    if problems:
        raise DatasetLoadError(f"{source}: not a flow dataset of the data contract: " + "; ".join(problems))


def find_preprocessor_config(source, cache_dir=None):
    """Path of the dataset's ``preprocessor_config.json`` (MMAEFeatureExtractor), or None when it has none."""
    path = Path(source)
    if path.is_dir():
        candidate = path / PREPROCESSOR_CONFIG_NAME
        return candidate if candidate.is_file() else None
    if path.exists():
        return None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(str(source), PREPROCESSOR_CONFIG_NAME, repo_type="dataset", cache_dir=cache_dir))
    except Exception:  # noqa: BLE001 - a Hub dataset without one (or offline): nothing to copy
        return None


def _column_to_numpy(column, dtype, width, name):
    """A (chunked) arrow list column -> [rows, width] numpy array without going through python objects."""
    array = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    rows = len(array)
    # `flatten()` honours slice offsets (a plain `.values` would not)
    values = array.flatten().to_numpy(zero_copy_only=False)
    if values.size != rows * width:
        raise ValueError(f"column {name!r}: expected {width} values per row, got {values.size} for {rows} rows")
    return values.reshape(rows, width).astype(dtype, copy=False)


class FlowBatchReader:
    """Read batches of rows by index as uint8/int/float numpy arrays through one arrow ``take`` per batch.

    Args:
        dataset (`datasets.Dataset`): a split with the data-contract columns.
        columns (`tuple[str]`, defaults to `PRETRAINING_COLUMNS`): columns to read.

    ``reader[indices]`` returns ``{"input_bytes": uint8 [n, 1600], "packet_lengths": int32 [n, 5],
    "packet_iats": float32 [n, 5], "packet_directions": int8 [n, 5], "flow_stats": float32 [n, 27]}``.
    """

    def __init__(self, dataset, columns=PRETRAINING_COLUMNS):
        dataset = rename_legacy_columns(dataset)
        check_pretraining_columns(dataset)
        unknown = [c for c in columns if c not in CONTRACT_COLUMNS]
        if unknown:
            raise ValueError(f"FlowBatchReader reads only data-contract columns, not {unknown}")
        self.columns = tuple(columns)
        self.dataset = dataset.select_columns(list(self.columns)).with_format("arrow")

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, indices):
        indices = [int(i) for i in indices]
        table = self.dataset[indices]
        return {
            name: _column_to_numpy(table.column(name), CONTRACT_COLUMNS[name][0], CONTRACT_COLUMNS[name][1], name)
            for name in self.columns
        }

    @staticmethod
    def to_rows(batch):
        """Columns -> list of row dicts (views, no copy): the form data collators take."""
        names = list(batch)
        size = len(batch[names[0]])
        return [{name: batch[name][i] for name in names} for i in range(size)]


class EpochBatchSampler:
    """Seeded per-epoch shuffling, split across processes, full batches only.

    Epoch ``e`` uses the permutation ``default_rng([seed, e]).permutation(num_rows)``, cut to a multiple of
    ``batch_size * num_replicas``; global batch ``b`` holds rows ``perm[b*B*R : (b+1)*B*R]`` and process ``r``
    takes the ``r``-th slice of ``B`` rows. Every process therefore sees the same number of equally sized
    batches (no DDP hang, even FlowMix batches) and the processes' rows are disjoint within an epoch.

    Args:
        num_rows (`int`): rows in the split.
        batch_size (`int`): rows per process per batch.
        num_replicas (`int`, defaults to 1), rank (`int`, defaults to 0): data-parallel layout.
        seed (`int`, defaults to 0): shuffling seed, the same on every process.
        shuffle (`bool`, defaults to True): False keeps the dataset order (still cut to full batches).
    """

    def __init__(self, num_rows, batch_size, num_replicas=1, rank=0, seed=0, shuffle=True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} not in [0, {num_replicas})")
        self.num_rows, self.batch_size = int(num_rows), int(batch_size)
        self.num_replicas, self.rank, self.seed, self.shuffle = int(num_replicas), int(rank), int(seed), shuffle
        self.epoch = 0
        if len(self) == 0:
            raise ValueError(
                f"{num_rows} rows cannot fill one batch of {batch_size} rows on each of {num_replicas} processes "
                f"({batch_size * num_replicas} rows needed): lower the batch size or add data"
            )

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return self.num_rows // (self.batch_size * self.num_replicas)

    def epoch_batches(self, epoch=None):
        """All of this process's batches of an epoch, as a [num_batches, batch_size] int64 array."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
        else:
            order = np.arange(self.num_rows)
        used = len(self) * self.batch_size * self.num_replicas
        layout = order[:used].reshape(len(self), self.num_replicas, self.batch_size)
        return layout[:, self.rank]

    def iter_from(self, start_batch=0):
        """Yield this process's batches of the current epoch, starting at batch ``start_batch``."""
        yield from self.epoch_batches()[start_batch:]

    def __iter__(self):
        return self.iter_from(0)


__all__ = [
    "CONTRACT_COLUMNS",
    "DatasetLoadError",
    "EpochBatchSampler",
    "FlowBatchReader",
    "HELD_OUT_SPLITS",
    "PRETRAINING_COLUMNS",
    "check_pretraining_columns",
    "find_preprocessor_config",
    "load_pretraining_split",
]
