"""Opening a built flow dataset: the one way every part of mmae-hf reads one.

`load_traffic_dataset(source, split=None)` takes a folder written by `save_to_disk` (what `build_dataset` writes), a
folder of parquet / arrow shards (a Hub download, `data/<split>-*.parquet` or `<split>/*.parquet`), a Hub dataset id,
or an already loaded `Dataset` / `DatasetDict`. Datasets built before the byte column got its contract name
(`payload` -> `input_bytes`) are renamed on load, with one info line. Errors name the source and the problem.
"""

import logging
import os
from pathlib import Path

from ..data_contract import legacy_columns


logger = logging.getLogger(__name__)

SAVE_TO_DISK_MARKERS = ("dataset_dict.json", "state.json")
DATA_FILE_SUFFIXES = (".parquet", ".arrow")


class DatasetLoadError(ValueError):
    """A dataset folder or Hub id that cannot be used (the message names it and why)."""


class DatasetNotFoundError(DatasetLoadError, FileNotFoundError):
    """No dataset where one was expected (a missing folder, or a folder without data files)."""


def load_traffic_dataset(source, split: str | None = None, *, cache_dir=None, allow_unsplit: bool = True):
    """The `DatasetDict` (or, with `split`, the `Dataset` of that split) of a flow dataset.

    Args:
        source: a `save_to_disk` folder, a folder of parquet / arrow shards, a Hub dataset id, or a `Dataset` /
            `DatasetDict` object.
        split (`str`, *optional*): return this split only (`DatasetLoadError` naming the splits there are when it
            is missing).
        cache_dir (`str`, *optional*): datasets cache folder for shard folders and Hub ids.
        allow_unsplit (`bool`, defaults to True): a folder holding one unsplit `Dataset` is returned as it is;
            False refuses it (callers that must prove validation/test flows are held out).
    """
    import datasets

    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        loaded, name, is_the_split = source, "dataset", False
    else:
        loaded, is_the_split = _open(source, split, cache_dir)
        name = os.fspath(source)
    loaded = rename_legacy_columns(loaded, name)
    if isinstance(loaded, datasets.Dataset):
        if not allow_unsplit and not is_the_split:
            raise DatasetLoadError(
                f"{name}: holds a single unsplit Dataset; a DatasetDict with a {split!r} split is needed "
                "(so that validation/test flows are provably held out)"
            )
        return loaded
    if split is None:
        return loaded
    if split not in loaded:
        raise DatasetLoadError(f"{name}: has no split {split!r} (splits: {sorted(loaded)})")
    return loaded[split]


def rename_legacy_columns(dataset, source="dataset"):
    """`dataset` (a `Dataset` or `DatasetDict`) with old column names renamed to the data contract's, logging one
    info line when something was renamed."""
    names = dataset.column_names
    if isinstance(names, dict):  # DatasetDict: split -> columns
        names = {column for columns in names.values() for column in columns}
    renames = legacy_columns(names)
    if not renames:
        return dataset
    logger.info(
        "%s: renamed column(s) %s to the data contract's names (a dataset built by an older mmae-hf)",
        source,
        ", ".join(f"{old!r} -> {new!r}" for old, new in renames.items()),
    )
    return dataset.rename_columns(renames)


def _open(source, split, cache_dir):
    """The dataset at `source` and whether it is already the requested split (a Hub split). A local folder whose
    splits disagree with its ``build_report.json`` is refused (`mmae_hf.traffic.dataset.verify_saved_splits`)."""
    import datasets

    from .dataset import verify_saved_splits

    path = Path(source)
    if path.is_dir():
        if any((path / marker).is_file() for marker in SAVE_TO_DISK_MARKERS):
            loaded = datasets.load_from_disk(str(path))
        else:
            if not any(p.suffix in DATA_FILE_SUFFIXES for p in path.rglob("*") if p.is_file()):
                raise DatasetNotFoundError(
                    f"{source}: no dataset found (expected dataset_dict.json or parquet shards named after their split)"
                )
            try:
                loaded = datasets.load_dataset(str(path), cache_dir=cache_dir)
            except Exception as error:  # noqa: BLE001 - re-raised with the folder named
                raise DatasetLoadError(f"{source}: could not load a dataset from this folder ({error})") from error
        try:
            verify_saved_splits(path, loaded)  # a half-rewritten folder must not be used silently
        except ValueError as error:
            raise DatasetLoadError(str(error)) from error
        return loaded, False
    if path.exists():
        raise DatasetLoadError(
            f"{source}: is a file; pass the dataset folder (save_to_disk or parquet shards) or a Hub id"
        )
    text = str(source)
    if text.startswith((".", os.sep, "~")) or text.count("/") > 1:
        raise DatasetNotFoundError(f"{source}: no such dataset folder, and not a Hub dataset id (owner/name)")
    try:
        return datasets.load_dataset(text, split=split, cache_dir=cache_dir), split is not None
    except Exception as error:  # noqa: BLE001 - datasets raises many types; re-raised with the id named
        what = f"split {split!r}" if split is not None else "it"
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DatasetLoadError(
            f"{source}: not a local folder, and {what} could not be loaded from the Hub ({first_line})"
        ) from error


__all__ = ["DatasetLoadError", "DatasetNotFoundError", "load_traffic_dataset", "rename_legacy_columns"]
