"""Refuse a model whose config does not fit its weights, and name damaged weight files in one line.

``from_pretrained`` builds the model from ``config.json`` and fills in what the weight file holds. When the config
and the weights disagree (a ``num_hidden_layers`` edited by hand, a config copied from another model) the encoder
tensors the file lacks keep their random initialisation and the model predicts differently, with no error. A
truncated ``model.safetensors`` gives a multi-line ``SafetensorError`` that names no file.

`load_checked` (for code that loads a model) and `verify_loaded_model` (for a model loaded by someone else, e.g. by
``pipeline(...)``) compare the ENCODER tensors (the base model, ``mmae.*``) of the saved files with the model's,
names and shapes. The rest is allowed to differ: a pre-training checkpoint carries a decoder a classifier does not
use, and a classifier built from it gets a new head.
"""

import json
import os
import re
from pathlib import Path

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
FORCE_HINT = "--allow-mismatched-weights"


class WeightsMismatchError(ValueError):
    """The saved weights cannot be read, or do not fit the model built from the config (message names the file)."""


def weight_files(name_or_path) -> list:
    """The safetensors files of a model folder (or of a Hub id already in the local cache); [] if none found."""
    folder = Path(os.fspath(name_or_path))
    if folder.is_dir():
        index = folder / WEIGHTS_INDEX_NAME
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as error:
                raise WeightsMismatchError(
                    f"{index}: unreadable shard index ({type(error).__name__}: {error})"
                ) from error
            return [folder / shard for shard in shards]
        return [folder / WEIGHTS_NAME] if (folder / WEIGHTS_NAME).is_file() else []
    try:  # a Hub id: the files from_pretrained downloaded
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name_or_path), WEIGHTS_NAME)
    except Exception:  # noqa: BLE001 - not a repo id, no cache: nothing to check against
        return []
    return [Path(cached)] if isinstance(cached, str) and os.path.isfile(cached) else []


def saved_tensor_shapes(files) -> dict:
    """``{tensor name: shape}`` of safetensors files, read from their headers (no tensor data is loaded).

    Raises `WeightsMismatchError` naming the file when one is truncated or not a safetensors file."""
    from safetensors import safe_open

    shapes = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except Exception as error:  # noqa: BLE001 - SafetensorError, OSError: one line naming the file
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise WeightsMismatchError(
                f"{path}: not a readable safetensors file ({reason}); the file is damaged "
                "or incomplete (re-download or re-save the model)"
            ) from error
    return shapes


def _encoder_part(model, shapes: dict) -> dict:
    """The entries of ``shapes`` that belong to the base model, keyed like ``model.base_model.state_dict()``."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    children = {name for name, _ in model.base_model.named_children()}
    part = {}
    for key, shape in shapes.items():
        if prefix and key.startswith(prefix + "."):
            part[key[len(prefix) + 1 :]] = shape
        elif key.split(".", 1)[0] in children:  # a base model saved on its own (no prefix)
            part[key] = shape
    return part


def _layer_count(keys) -> int:
    found = {int(m.group(1)) for key in keys for m in [re.match(r"encoder\.layers?\.(\d+)\.", key)] if m}
    return len(found)


def encoder_mismatch(model, shapes: dict) -> str | None:
    """What differs between the model's encoder and the saved one (None: they fit)."""
    expected = {key: tuple(value.shape) for key, value in model.base_model.state_dict().items()}
    saved = _encoder_part(model, shapes)
    if not saved:
        return None  # no encoder in the files (e.g. a bare head): nothing to compare
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(saved) if expected[k] != saved[k])
    if not (missing or unexpected or reshaped):
        return None
    parts = []
    layers_saved, layers_model = _layer_count(saved), _layer_count(expected)
    if layers_saved != layers_model:
        parts.append(
            f"the weights hold {layers_saved} encoder layers, the config builds {layers_model} (num_hidden_layers)"
        )
    if missing:
        parts.append(
            f"{len(missing)} encoder tensors missing from the weights (e.g. {missing[0]}): they would keep "
            "their random initialisation"
        )
    if unexpected:
        parts.append(f"{len(unexpected)} saved encoder tensors the model has no place for (e.g. {unexpected[0]})")
    if reshaped:
        k = reshaped[0]
        parts.append(
            f"{len(reshaped)} encoder tensors of another shape (e.g. {k}: saved {saved[k]}, model {expected[k]})"
        )
    return "; ".join(parts)


def _check(model, source, files, shapes, allow: bool) -> None:
    problem = encoder_mismatch(model, shapes)
    if problem is None:
        return
    where = files[0].parent if files else source
    message = f"{where}: config.json does not match the weights: {problem}"
    if not allow:
        raise WeightsMismatchError(f"{message}. Fix config.json, or pass {FORCE_HINT} to load anyway")
    import logging

    logging.getLogger(__name__).warning("%s (loaded anyway: %s)", message, FORCE_HINT)


def load_checked(model_class, name_or_path, *, allow_mismatched_weights: bool = False, **kwargs):
    """``model_class.from_pretrained(name_or_path, **kwargs)``, refusing weights that do not fit the config.

    Damaged weight files raise `WeightsMismatchError` (one line naming the file) before loading; after loading, the
    encoder tensors of the files and of the model are compared (names and shapes): a mismatch raises
    `WeightsMismatchError` unless ``allow_mismatched_weights`` (then a warning)."""
    files = weight_files(name_or_path)
    shapes = saved_tensor_shapes(files)
    try:
        model = model_class.from_pretrained(name_or_path, **kwargs)
    except RuntimeError as error:
        if "ignore_mismatched_sizes" not in str(error):
            raise
        raise WeightsMismatchError(
            f"{name_or_path}: config.json does not match the weights: tensors of another "
            "shape (listed in the load report above); fix config.json"
        ) from error
    if not files:  # downloaded just now: check the cached files
        files = weight_files(name_or_path)
        shapes = saved_tensor_shapes(files)
    _check(model, name_or_path, files, shapes, allow_mismatched_weights)
    model._mmae_weights_checked = True
    return model


def verify_loaded_model(model, *, allow_mismatched_weights: bool = False) -> None:
    """`load_checked`'s comparison for a model something else loaded (from ``model.name_or_path``); a model built
    in memory, or one `load_checked` already checked, passes."""
    if getattr(model, "_mmae_weights_checked", False) or not hasattr(model, "base_model"):
        return
    source = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not source:
        return
    files = weight_files(source)
    if not files:
        return
    _check(model, source, files, saved_tensor_shapes(files), allow_mismatched_weights)
    model._mmae_weights_checked = True


__all__ = [
    "WeightsMismatchError",
    "encoder_mismatch",
    "load_checked",
    "saved_tensor_shapes",
    "verify_loaded_model",
    "weight_files",
]
