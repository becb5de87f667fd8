"""Checks that turn a user's mistake into one clear line, shared by the command-line tools and the pipeline.

- `check_model_source`: a ``--model`` / ``--pretrained`` value that is neither a saved model folder nor a Hub repo id
  is refused before anything loads (transformers would say "Repo id must be in the form ..." for a missing folder).
- `require_trained_head`: a classifier whose head was never trained (a pre-training folder, a bare encoder) labels
  every flow at random; the classifier CLI and the pipeline refuse it unless the user forces it.
- `run_main`: runs a tool's body and prints user errors as one ``prog: error: ...`` line with the documented exit
  code (2: bad argument or input), with the traceback only under ``--debug``.

This module imports only the standard library (it may be imported by remote code that runs without mmae-hf).
"""

import os
import re
import sys
from collections.abc import Callable

# a Hub repo id: "name" or "owner/name" (letters, digits, "-", "_", "."; no leading/trailing "-" or ".")
_HUB_PART = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"^(?:{_HUB_PART}/)?{_HUB_PART}$")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
EXIT_BAD_INPUT = 2


class ModelSourceError(ValueError):
    """A model path or Hub id that does not lead to a saved model."""


class UntrainedHeadError(ValueError):
    """A classifier whose classification head was never trained."""


def is_hub_repo_id(value: str) -> bool:
    """Whether ``value`` has the form of a Hub repo id (``name`` or ``owner/name``); says nothing of existence."""
    return bool(_HUB_ID.match(value)) and ".." not in value and "--" not in value


def could_be_hub_id(value) -> bool:
    """False for what can only be a local path (``/x``, ``./x``, ``~/x``, ``a/b/c``) or is no repo id at all."""
    text = os.fspath(value)
    return not (text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text) and is_hub_repo_id(text)


# what to give instead, per option
EXPECTED = {
    "--model": "the model folder train/finetune.py wrote (OUTPUT_DIR/model) or a Hub repo id",
    "--pretrained": "the folder train/pretrain.py wrote (its --output_dir) or a Hub repo id",
}


def check_model_source(source: str, option: str = "--model") -> None:
    """Raise `ModelSourceError` unless ``source`` is a saved model folder or has the form of a Hub repo id.

    ``option`` names the argument in the message (``--model``, ``--pretrained``, ``model=``).
    """
    source = os.fspath(source)
    expected = EXPECTED.get(option, "a saved model folder or a Hub repo id")
    if os.path.isdir(source):
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise ModelSourceError(
                f"{option} {source}: not a saved model (no config.json in the folder); give {expected}"
            )
        if not any(os.path.isfile(os.path.join(source, name)) for name in WEIGHT_FILES):
            raise ModelSourceError(
                f"{option} {source}: no model.safetensors beside config.json (an interrupted save?); give a "
                "complete model folder"
            )
        return
    if os.path.exists(source):
        raise ModelSourceError(
            f"{option} {source}: is a file; give the folder that holds config.json and model.safetensors"
        )
    if not could_be_hub_id(source):
        raise ModelSourceError(
            f"{option} {source}: no such folder, and not a Hub repo id (owner/name); give {expected}"
        )


def hub_load_error(source: str, error: BaseException, option: str = "--model") -> ModelSourceError:
    """The one-line error for a Hub id that could not be loaded (not found, offline, no access)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ModelSourceError(
        f"{option} {source}: cannot be loaded ({first}); check the repo id and the network "
        "(HF_HUB_OFFLINE=1 only reads the local cache), or give a local model folder"
    )


def untrained_head_reason(model) -> str | None:
    """Why ``model``'s classification head is untrained, or None when it is (or may be) trained.

    Two signs together: the checkpoint it was loaded from was saved as another class (``config.architectures``:
    ``train/finetune.py`` saves ``MMAEForSequenceClassification``; a pre-training folder says ``MMAEForPreTraining``,
    a bare encoder ``MMAEModel``; their weights have no head), and the head still holds its initial weights (a zero
    bias: every head is created so, and any training step moves it). A model fine-tuned in this process from a
    pre-trained encoder therefore passes, and so does one built here and never saved (no ``architectures``).
    """
    if isinstance(model, (str, os.PathLike)):  # a saved folder, judged before loading: its config.json says
        return _architectures_reason(_saved_architectures(model))
    architectures = list(getattr(getattr(model, "config", None), "architectures", None) or [])
    if _architectures_reason(architectures) is None:
        return None
    bias = getattr(getattr(model, "classifier", None), "bias", None)
    if bias is not None and bool(bias.detach().abs().sum() != 0):
        return None  # trained since it was loaded
    return _architectures_reason(architectures)


def _saved_architectures(folder) -> list:
    """``architectures`` of a local model folder's config.json ([] for a Hub id or an unreadable config)."""
    import json

    path = os.path.join(os.fspath(folder), "config.json")
    try:
        with open(path) as handle:
            return list(json.load(handle).get("architectures") or [])
    except (OSError, ValueError, AttributeError):
        return []


def _architectures_reason(architectures) -> str | None:
    if not architectures or any(name.endswith("ForSequenceClassification") for name in architectures):
        return None
    return f"it was saved as {', '.join(architectures)}, without a classification head"


def require_trained_head(
    model, source=None, allow_untrained_head: bool = False, override: str = "--allow-untrained-head"
) -> None:
    """Raise `UntrainedHeadError` when ``model`` has no trained head, unless ``allow_untrained_head``.

    ``override`` names the way to force it in the message (a CLI flag or ``allow_untrained_head=True``).
    """
    reason = untrained_head_reason(model)
    if reason is None or allow_untrained_head:
        return
    name = os.fspath(source) if source is not None else getattr(model, "name_or_path", None) or "the model"
    raise UntrainedHeadError(
        f"{name}: no trained classification head ({reason}), so every flow would get a random label; fine-tune "
        f"it first (python train/finetune.py --pretrained {name} ...) or pass {override} to use it anyway"
    )


def error_line(error: BaseException) -> str:
    """One line describing ``error``: its message's first line, with the file for OS errors."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.filename}: {error.strerror}"
    text = str(error).strip()
    if isinstance(error, KeyError) and text.startswith("'"):
        text = f"missing key {text}"
    return text.splitlines()[0] if text else type(error).__name__


# errors a user's input can cause; anything else is a bug and keeps its traceback
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def run_main(
    prog: str,
    body: Callable[[], int],
    debug: bool = False,
    exit_code: int = EXIT_BAD_INPUT,
    user_errors: tuple[type[BaseException], ...] = USER_ERRORS,
) -> int:
    """Run ``body``; print a user error as one ``prog: error: ...`` line and return ``exit_code``.

    With ``debug`` the exception propagates (full traceback). Ctrl-C / SIGTERM are left to
    `mmae_hf.traffic.atomic.run_interruptible`, which the entry points wrap around this.
    """
    try:
        return body()
    except user_errors as error:
        if debug:
            raise
        print(f"{prog}: error: {error_line(error)}", file=sys.stderr)
        return exit_code


__all__ = [
    "EXIT_BAD_INPUT",
    "ModelSourceError",
    "USER_ERRORS",
    "UntrainedHeadError",
    "check_model_source",
    "could_be_hub_id",
    "error_line",
    "hub_load_error",
    "is_hub_repo_id",
    "require_trained_head",
    "run_main",
    "untrained_head_reason",
]
