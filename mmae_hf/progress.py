"""Quiet by default: progress bars only on a terminal, and one switch that silences every library's bars.

`progress_wanted` decides (bars when stderr is a terminal and the user did not turn them off), and
`set_library_progress_bars` applies it to the bars that datasets ("Saving the dataset", "Map"), transformers
("Loading weights", "Writing model shards") and huggingface_hub (uploads, downloads) draw on their own. The Trainer's
bars follow ``TrainingArguments.disable_tqdm``; with them off the Trainer would print every log dict, so
`EvaluationLogCallback` replaces its printer with one line per evaluation.

Torch-free: only the standard library at import time.
"""

import sys


def progress_wanted(disable: bool = False, stream=None) -> bool:
    """True when progress bars should be drawn: not disabled, and ``stream`` (stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    if disable:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def set_library_progress_bars(enabled: bool) -> None:
    """Turn the progress bars of datasets, transformers and huggingface_hub on or off (process-wide)."""
    try:
        import datasets

        (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if enabled else disable_progress_bars)()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as hf_logging

        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    except ImportError:
        pass


def evaluation_log_callback(stream=None, lines: int = 5):
    """A ``TrainerCallback`` that prints one line per evaluation (epoch, validation metrics, last training loss)
    instead of the Trainer's dict per log step; used when the Trainer's bars are off. Epoch-wise runs print about
    ``lines`` of them (every k-th epoch and the last), so that a log reads as a story."""
    import math

    from transformers import TrainerCallback

    class EvaluationLogCallback(TrainerCallback):
        def __init__(self):
            self.last_loss = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                self.last_loss = logs["loss"]
            if not state.is_world_process_zero or not any(k.startswith("eval_") for k in logs):
                return
            if args.max_steps <= 0 and lines > 0:
                every = max(1, math.ceil(args.num_train_epochs / lines))
                epoch = round(state.epoch or 0)
                if epoch % every and epoch < args.num_train_epochs:
                    return
            shown = {
                k[5:]: v for k, v in logs.items() if k.startswith("eval_") and k[5:] in ("loss", "accuracy", "macro_f1")
            }
            parts = [f"{name} {value:.4f}" for name, value in shown.items()]
            loss = "" if self.last_loss is None else f"; training loss {self.last_loss:.4f}"
            epoch = (
                f"epoch {state.epoch:.0f}/{args.num_train_epochs:g}"
                if args.max_steps <= 0
                else f"step {state.global_step}/{state.max_steps}"
            )
            print(f"{epoch}: validation {', '.join(parts)}{loss}", file=stream or sys.stdout, flush=True)

    return EvaluationLogCallback()


__all__ = ["evaluation_log_callback", "progress_wanted", "set_library_progress_bars"]
