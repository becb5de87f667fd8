"""MMAE pre-training loop on top of accelerate: student + mean teacher, FlowMix, exact checkpoint/resume.

The loop is a plain accelerate loop (no `Trainer`): one optimizer step = ``gradient_accumulation_steps``
micro-batches of ``per_device_train_batch_size`` flows on every process. Per micro-batch:

1. rows are read by index through one arrow ``take`` (uint8 kept, `data.FlowBatchReader`);
2. `DataCollatorForFlowMix` draws the FlowMix partners and the mask noise from its own seeded generator;
3. the EMA teacher (not wrapped by DDP, eval mode, no grad) encodes the unmixed flows and gives the
   distillation targets and the per-token predicted losses used for guided ("hard") masking;
4. the student's forward returns ``loss`` and its components; a NaN/inf in any of them (reduced over all
   processes, so every process stops together) raises `NonFiniteLossError` naming the step and component.

After each optimizer step the teacher takes an EMA step, the learning rate follows linear warm-up then a
cosine decay (counted in optimizer steps), and every ``logging_steps`` the loss components, lr, EMA momentum,
hard-mask share, gradient norm and samples/s per process go to tensorboard and ``metrics.jsonl``.

Checkpoints (``output_dir/checkpoints/checkpoint-<step>``) hold everything needed to continue *exactly*:
model, optimizer and scheduler (accelerate's ``save_state``, which also stores the python / numpy / torch
RNG states of every process), the teacher (safetensors), each process's collator generator state and the
data position (epoch, batch in epoch). A run stopped and resumed ends with the same weights as a run that
never stopped (tested).
"""

import dataclasses
import json
import logging
import math
import os
import random
import re
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..argparsing import renamed_fields
from ..data_contract import BYTE_COLUMN
from ..evaluation import to_jsonable as _jsonable
from ..traffic.loading import rename_legacy_columns
from .data import (
    EpochBatchSampler,
    FlowBatchReader,
    find_preprocessor_config,
    load_pretraining_split,
)

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_TMP_PREFIX = ".tmp-checkpoint-"  # written there, renamed to checkpoint-<step> when complete
TRAINER_STATE_NAME = "trainer_state.json"
TEACHER_WEIGHTS_NAME = "teacher.safetensors"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "pretraining_summary.json"
CURVES_NAME = "pretraining_curves.png"
ARGS_NAME = "pretraining_args.json"
LOSS_COMPONENTS = ("loss", "reconstruction_loss", "rank_loss", "distillation_loss")
# parameter names (substrings) that get no weight decay besides biases and norms
NO_DECAY_NAME_PARTS = ("position_embedding", "pos_embed", "cls_token")

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised when a loss component or the gradient norm becomes NaN or infinite."""


class LaunchError(RuntimeError):
    """The processes were launched in a way accelerate did not turn into one data-parallel job."""


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete or does not fit the current run."""


@renamed_fields({"cpu": "use_cpu", "num_workers": "dataloader_num_workers"})  # the Trainer's names
@dataclass
class PretrainingArguments:
    """Everything one pre-training run depends on (saved as ``pretraining_args.json`` beside the model).

    Data and model:
        dataset (`str`): dataset folder (``save_to_disk`` or parquet shards) or Hub dataset id.
        output_dir (`str`): where the ``save_pretrained`` folder, checkpoints and logs go.
        config (`str`, defaults to ``"mmae-base"``): a preset name (``mmae-base``, ``mmae-tiny``), a
            ``config.json`` path or a model folder holding one.
        config_overrides (`dict`): config fields to change, e.g. ``{"mask_ratio": 0.75}``.
        split (`str`, defaults to ``"train"``): the split pre-training reads; validation/test are refused.
        dataset_cache_dir (`str`, *optional*): datasets cache for parquet folders and Hub ids.

    Length and batch:
        max_steps (`int`, defaults to 150000): optimizer steps (official MMAE: 150k).
        per_device_train_batch_size (`int`, defaults to 128): flows per process per micro-batch (even: FlowMix pairs).
        gradient_accumulation_steps (`int`, defaults to 1): micro-batches per optimizer step.
        stop_after_step (`int`, *optional*): end this invocation after this optimizer step with a checkpoint,
            schedules unchanged (for time-boxed / preemptible jobs; continue with ``resume_from_checkpoint``).

    Optimisation:
        learning_rate (`float`, *optional*): absolute peak learning rate. Default: ``base_learning_rate *
            global_batch / 256`` (official: 1e-3 * 128 / 256 = 5e-4).
        base_learning_rate (`float`, defaults to 1e-3).
        weight_decay (`float`, defaults to 0.05): AdamW decay, not applied to biases, norms, position
            embeddings and the CLS token.
        adam_beta1, adam_beta2, adam_epsilon (defaults 0.9, 0.95, 1e-8).
        warmup_steps (`int`, *optional*) / warmup_ratio (`float`, defaults to 0.1): linear warm-up length.
        min_lr_ratio (`float`, defaults to 0.0): the cosine decays to ``min_lr_ratio * peak``.
        max_grad_norm (`float`, defaults to 1.0): gradient clipping (0 turns it off).
        ema_momentum_start / ema_momentum_end (defaults 0.96 / 0.99): teacher EMA momentum, cosine over the run.

    Runtime:
        mixed_precision (`str`, *optional*): ``no``, ``bf16`` or ``fp16``. Default: what the launcher says
            (``accelerate launch --mixed_precision`` / an accelerate config file), else ``no``.
        use_cpu (`bool`): force the CPU even when a GPU is present (old name: ``cpu``).
        seed (`int`, defaults to 0): model init, data order, FlowMix pairing / mask noise, drop path.
        dataloader_num_workers (`int`, defaults to 0): background threads reading batches (the arrow read is fast;
            keep 0 on small machines; old name: ``num_workers``).
        logging_steps (`int`, defaults to 10), save_steps (`int`, defaults to 5000), save_total_limit
            (`int`, defaults to 2): logging and checkpoint cadence; 0 disables periodic checkpoints.
        resume_from_checkpoint (`str`, *optional*): a checkpoint folder, or ``"latest"`` (newest one in
            ``output_dir/checkpoints``). Every file of it is loaded and checked first; one that cannot give an
            exact continuation (RNG or collator states unreadable) is refused.
        allow_inexact_resume (`bool`): continue from a checkpoint whose RNG / collator states cannot be restored
            (with a warning; the run then differs from an uninterrupted one). Weights and optimizer state must
            load in any case.
        report_to (`str`, defaults to ``"tensorboard"``): ``tensorboard`` or ``none`` (metrics.jsonl is always written).
        ddp_find_unused_parameters (`str`, defaults to ``"auto"``): ``auto`` probes one backward pass and turns
            it on when the config's switches leave parameters without gradient; ``true`` / ``false`` force it.
        save_teacher (`bool`): also save the EMA teacher as a ``save_pretrained`` folder in ``output_dir/teacher``.
        overwrite_output_dir (`bool`): start a fresh run in a folder that holds an earlier run's checkpoints
            (they are deleted); without it such a folder is refused.
        torch_threads (`int`, *optional*): intra-op CPU threads of each process (``torch.set_num_threads``). On a
            small shared machine 1 thread per process can be several times faster than all cores (measured in
            benchmarks/results/pretrain_throughput.json); default: torch's / the launcher's choice.
        torch_compile (`bool`): compile the student's and the teacher's forward with ``torch.compile`` (inductor).
            The first step pays the compilation (one to two minutes on a CPU); the losses equal the plain path's
            within float rounding (tested). Worth it for long runs; measured in docs/training.md.
        progress_bar (`bool`, defaults to True).
    """

    dataset: str
    output_dir: str
    config: str = "mmae-base"
    config_overrides: dict = field(default_factory=dict)
    split: str = "train"
    dataset_cache_dir: str | None = None
    max_steps: int = 150_000
    per_device_train_batch_size: int = 128
    gradient_accumulation_steps: int = 1
    stop_after_step: int | None = None
    learning_rate: float | None = None
    base_learning_rate: float = 1e-3
    weight_decay: float = 0.05
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    warmup_steps: int | None = None
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0
    ema_momentum_start: float = 0.96
    ema_momentum_end: float = 0.99
    mixed_precision: str | None = None
    use_cpu: bool = False
    seed: int = 0
    dataloader_num_workers: int = 0
    logging_steps: int = 10
    save_steps: int = 5000
    save_total_limit: int = 2
    resume_from_checkpoint: str | None = None
    allow_inexact_resume: bool = False
    report_to: str = "tensorboard"
    ddp_find_unused_parameters: str = "auto"
    save_teacher: bool = False
    overwrite_output_dir: bool = False
    torch_threads: int | None = None
    torch_compile: bool = False
    progress_bar: bool = True

    def __post_init__(self):
        problems = []
        if self.max_steps < 1:
            problems.append(f"max_steps must be >= 1 (got {self.max_steps})")
        if self.per_device_train_batch_size < 2 or self.per_device_train_batch_size % 2:
            problems.append(
                f"per_device_train_batch_size must be even and >= 2 (FlowMix pairs flows), got {self.per_device_train_batch_size}"
            )
        if self.gradient_accumulation_steps < 1:
            problems.append(f"gradient_accumulation_steps must be >= 1 (got {self.gradient_accumulation_steps})")
        if self.stop_after_step is not None and not 1 <= self.stop_after_step <= self.max_steps:
            problems.append(f"stop_after_step must be in [1, max_steps={self.max_steps}] (got {self.stop_after_step})")
        if self.mixed_precision not in (None, "no", "bf16", "fp16"):
            problems.append(f"mixed_precision must be no, bf16 or fp16 (got {self.mixed_precision!r})")
        if self.report_to not in ("tensorboard", "none"):
            problems.append(f"report_to must be tensorboard or none (got {self.report_to!r})")
        if self.ddp_find_unused_parameters not in ("auto", "true", "false"):
            problems.append(
                f"ddp_find_unused_parameters must be auto, true or false (got {self.ddp_find_unused_parameters!r})"
            )
        if not 0.0 <= self.warmup_ratio < 1.0:
            problems.append(f"warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.max_steps:
            problems.append(f"warmup_steps must be in [0, max_steps] (got {self.warmup_steps})")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            problems.append(f"min_lr_ratio must be in [0, 1] (got {self.min_lr_ratio})")
        if not 0.0 <= self.ema_momentum_start <= 1.0 or not 0.0 <= self.ema_momentum_end <= 1.0:
            problems.append("EMA momenta must be in [0, 1]")
        if self.logging_steps < 1 or self.save_steps < 0 or self.save_total_limit < 0:
            problems.append("logging_steps must be >= 1, save_steps and save_total_limit >= 0")
        if problems:
            raise ValueError("invalid pre-training arguments: " + "; ".join(problems))

    @property
    def num_warmup_steps(self):
        if self.warmup_steps is not None:
            return int(self.warmup_steps)
        return int(round(self.warmup_ratio * self.max_steps))

    def peak_learning_rate(self, global_batch_size):
        if self.learning_rate is not None:
            return float(self.learning_rate)
        return self.base_learning_rate * global_batch_size / 256

    def to_dict(self):
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------- config


def parse_config_overrides(items):
    """``["mask_ratio=0.75", "use_pmp=false"]`` -> ``{"mask_ratio": 0.75, "use_pmp": False}`` (values as JSON, else str)."""
    overrides = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"config override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        lowered = raw.strip()
        if lowered in ("true", "True"):
            value = True
        elif lowered in ("false", "False"):
            value = False
        elif lowered in ("none", "None", "null"):
            value = None
        else:
            try:
                value = json.loads(lowered)
            except json.JSONDecodeError:
                value = raw
        overrides[key.strip()] = value
    return overrides


def load_model_config(config, overrides=None):
    """A preset name, a config.json file or a folder holding one -> `MMAEConfig` with ``overrides`` applied."""
    from ..configuration_mmae import PRESETS, MMAEConfig

    overrides = dict(overrides or {})
    known = {f.name for f in dataclasses.fields(MMAEConfig)} | {"id2label", "label2id", "num_labels"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown MMAEConfig field(s) in overrides: {unknown}")
    if config in PRESETS:
        return MMAEConfig.from_preset(config, **overrides)
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"--config {config!r}: neither a preset ({sorted(PRESETS)}) nor a config.json / model folder")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if values.get("model_type", "mmae") != "mmae":
        raise ValueError(f"{path}: model_type is {values.get('model_type')!r}, expected 'mmae'")
    values.update(overrides)
    return MMAEConfig.from_dict(values)


# -------------------------------------------------------------------------------------------- optimizer


def is_no_decay_parameter(name, parameter):
    """Biases, norm weights (all 1-d tensors), position embeddings and the CLS token get no weight decay."""
    lowered = name.lower()
    return parameter.ndim <= 1 or lowered.endswith(".bias") or any(part in lowered for part in NO_DECAY_NAME_PARTS)


def optimizer_parameter_groups(model, weight_decay):
    """Two AdamW groups: ``decay`` (weight matrices, mask tokens) and ``no_decay``; frozen parameters are left out."""
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if is_no_decay_parameter(name, parameter):
            no_decay.append(parameter)
            no_decay_names.append(name)
        else:
            decay.append(parameter)
            decay_names.append(name)
    return [
        {"params": decay, "weight_decay": float(weight_decay), "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]


def warmup_cosine_factor(step, warmup_steps, total_steps, min_lr_ratio=0.0):
    """Learning-rate multiplier for optimizer step ``step`` (0-based): linear warm-up to 1, then cosine to ``min_lr_ratio``.

    Warm-up step ``s`` uses ``(s + 1) / (warmup_steps + 1)`` so that no step runs at lr 0; after warm-up the
    factor follows ``min + (1 - min) * 0.5 * (1 + cos(pi * progress))`` with progress 0 -> 1 over the rest.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer_and_scheduler(model, args, global_batch_size):
    groups = optimizer_parameter_groups(model, args.weight_decay)
    lr = args.peak_learning_rate(global_batch_size)
    optimizer = torch.optim.AdamW(
        [{k: v for k, v in g.items() if k != "names"} for g in groups if g["params"]],
        lr=lr,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )
    warmup, total, floor = args.num_warmup_steps, args.max_steps, args.min_lr_ratio
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine_factor(s, warmup, total, floor))
    return optimizer, scheduler, groups


# ------------------------------------------------------------------------------------------- RNG helpers


def generator_state(generator):
    """JSON-able state of a torch or numpy generator (or of an object exposing ``state_dict``)."""
    if isinstance(generator, torch.Generator):
        return {"kind": "torch", "state": generator.get_state().tolist()}
    if isinstance(generator, np.random.Generator):
        return {"kind": "numpy", "state": _jsonable(generator.bit_generator.state)}
    if isinstance(generator, random.Random):
        return {"kind": "python", "state": _jsonable(generator.getstate())}
    raise TypeError(f"cannot checkpoint a generator of type {type(generator).__name__}")


def set_generator_state(generator, saved):
    if saved["kind"] == "torch":
        generator.set_state(torch.tensor(saved["state"], dtype=torch.uint8))
    elif saved["kind"] == "numpy":
        generator.bit_generator.state = saved["state"]
    elif saved["kind"] == "python":
        version, internal, gauss = saved["state"]
        generator.setstate((version, tuple(internal), gauss))
    else:
        raise CheckpointError(f"unknown generator kind {saved['kind']!r}")


def collator_state(collator):
    """The collator's random state: its ``state_dict()`` when it has one, else its ``generator`` attribute."""
    if hasattr(collator, "state_dict") and callable(collator.state_dict):
        return {"kind": "state_dict", "state": _jsonable(_tensors_to_lists(collator.state_dict()))}
    generator = getattr(collator, "generator", None)
    if generator is None:
        return None
    return generator_state(generator)


def load_collator_state(collator, saved):
    if saved is None:
        return
    if saved["kind"] == "state_dict":
        collator.load_state_dict(saved["state"])
    else:
        set_generator_state(collator.generator, saved)


def _tensors_to_lists(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _tensors_to_lists(v) for k, v in value.items()}
    return value


# -------------------------------------------------------------------------------------------- checkpoints


def list_checkpoints(output_dir):
    """Checkpoint folders of a run, oldest first."""
    root = Path(output_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
        if match and path.is_dir() and (path / TRAINER_STATE_NAME).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def resolve_checkpoint(resume_from_checkpoint, output_dir):
    if resume_from_checkpoint in (None, ""):
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise CheckpointError(
                f"--resume_from_checkpoint latest: no checkpoint in {Path(output_dir) / CHECKPOINT_DIR}"
            )
        return checkpoints[-1]
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint folder does not exist")
    # accelerate's own files differ between DDP, FSDP and DeepSpeed; ours are always there
    missing = [name for name in (TRAINER_STATE_NAME, "collator_state_0.json") if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {missing}")
    return path


# ----------------------------------------------------------------------------------------------- probing


def _model_inputs(batch, device=None):
    names = (
        "input_bytes",
        "packet_lengths",
        "packet_iats",
        "packet_directions",
        "flow_stats",
        "partner_index",
        "mask_noise",
    )
    inputs = {k: batch[k] for k in names if k in batch and batch[k] is not None}
    if device is not None:
        inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
    return inputs


def teacher_targets(teacher_model, inputs, config):
    """Run the teacher on the unmixed flows -> extra student inputs: ``teacher_features`` and, with guided
    masking, ``hard_token_scores`` (the teacher's per-token predicted losses for this very batch)."""
    teacher_inputs = {k: v for k, v in inputs.items() if k not in ("partner_index", "mask_noise")}
    with torch.no_grad():
        out = teacher_model.teacher_forward(**teacher_inputs)
    extra = {"teacher_features": out.features.detach()}
    if out.predicted_token_loss is not None and getattr(config, "use_guided_masking", False):
        extra["hard_token_scores"] = out.predicted_token_loss.detach()
    return extra


def find_unused_parameters(model, collator, rows, config, teacher_model=None):
    """Names of trainable parameters that get no gradient in one forward/backward (RNG states left untouched)."""
    was_training = model.training
    model.train()
    with torch.random.fork_rng(devices=[]):
        saved = collator_state(collator)
        batch = collator(rows)
        load_collator_state(collator, saved)
        inputs = _model_inputs(batch)
        if teacher_model is not None:
            inputs.update(teacher_targets(teacher_model, inputs, config))
            inputs["hard_mask_share"] = 0.5 if getattr(config, "use_guided_masking", False) else 0.0
        out = model(**inputs)
        out.loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None)]
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return unused


# ------------------------------------------------------------------------------------------------- loop


@dataclass
class PretrainingResult:
    """What `run_pretraining` did: final step, where the model went, last logged values, throughput."""

    step: int
    output_dir: str
    finished: bool
    last_metrics: dict
    samples_per_second_per_process: list
    world_size: int
    checkpoint: str | None = None


class _BatchPrefetcher:
    """Reads upcoming index batches in background threads (arrow ``take`` releases the GIL); order preserved."""

    def __init__(self, reader, index_batches, num_workers):
        self.reader, self.index_batches, self.num_workers = reader, index_batches, num_workers

    def __iter__(self):
        if self.num_workers <= 0:
            for indices in self.index_batches:
                yield self.reader[indices]
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.num_workers) as pool:
            pending = []
            iterator = iter(self.index_batches)
            for indices in iterator:
                pending.append(pool.submit(self.reader.__getitem__, indices))
                if len(pending) > 2 * self.num_workers:
                    yield pending.pop(0).result()
            for future in pending:
                yield future.result()


def plot_metrics(metrics_path, png_path):
    """Loss components, lr, EMA momentum and hard-mask share over the steps of ``metrics.jsonl`` -> one PNG.

    Returns the PNG path, or None when there is nothing to plot or matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path = Path(metrics_path)
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        return None
    steps = [r["step"] for r in records]
    panels = [
        ("losses", [n for n in LOSS_COMPONENTS if n in records[-1]]),
        ("learning rate", ["learning_rate"]),
        ("schedules", [n for n in ("ema_momentum", "hard_mask_share") if n in records[-1]]),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for axis, (title, names) in zip(axes, panels):
        for name in names:
            axis.plot(steps, [r.get(name) for r in records], label=name)
        axis.set_title(title)
        axis.set_xlabel("optimizer step")
        if names:
            axis.legend(fontsize=8)
    axes[0].set_yscale("log")
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return Path(png_path)


def _non_finite_message(values, computed, step, epoch, micro, accumulation, lr, last_checkpoint):
    """Which component went non-finite first (the parts before the total), where, and what to do."""
    components = [name for name in LOSS_COMPONENTS[1:] if name in computed]
    culprit = next((name for name in components if not math.isfinite(values[name])), "loss")
    listed = ", ".join(f"{name} = {values[name]}" for name in LOSS_COMPONENTS if name in computed)
    return (
        f"non-finite {culprit} at optimizer step {step} (epoch {epoch}, micro-batch {micro}/{accumulation}, "
        f"lr {lr:.3g}): {listed}. Training stopped before the update; lower the learning rate, use bf16 instead "
        f"of fp16, or resume from the last checkpoint ({last_checkpoint or 'none yet'})."
    )


class _FullParameterView:
    """The student's parameters as full tensors, for the teacher's EMA step.

    Under DDP (and a single process) the parameters are plain tensors and are passed through. Under FSDP2 they are
    sharded DTensors; the teacher is a full copy on every process, so each DTensor is gathered (``full_tensor()``).
    """

    def __init__(self, module):
        self._student = module  # not `.module`: MeanTeacher.update unwraps that attribute

    def named_parameters(self):
        for name, parameter in self._student.named_parameters():
            yield name, (parameter.full_tensor() if hasattr(parameter, "full_tensor") else parameter)

    def named_buffers(self):
        for name, buffer in self._student.named_buffers():
            yield name, (buffer.full_tensor() if hasattr(buffer, "full_tensor") else buffer)


@dataclass
class _Run:
    """Everything one pre-training invocation works with: built by `_setup_run`, advanced by `_train_step`."""

    args: Any
    config: Any
    output_dir: Path
    accelerator: Any
    model: Any  # prepared (DDP / FSDP wrapper)
    unwrapped: Any
    teacher: Any  # MeanTeacher or None
    optimizer: Any
    scheduler: Any
    collator: Any
    reader: Any
    sampler: Any
    steps_per_epoch: int
    global_batch: int
    find_unused: bool
    unused_names: list
    started: float
    # position in the data and the schedules (what a checkpoint stores)
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    checkpoint: Path | None = None  # the one this invocation resumed from
    last_checkpoint: str | None = None
    metrics_path: Path | None = None
    compiled: Any = None  # torch.compile(model) with --torch_compile: what the step calls

    @property
    def step_model(self):
        return self.compiled if self.compiled is not None else self.model

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes


@dataclass
class _StepOutput:
    """What one optimizer step returns for logging: mean loss components (tensor, on the device), lr, ..."""

    sums: Any  # float64 [len(LOSS_COMPONENTS)], summed over the micro-batches
    computed: list  # loss components the model computed
    lr: float
    share: float
    grad_norm: float | None
    momentum: float | None


def _setup_run(args, dataset, model_cls) -> _Run:
    """Config, data, model, teacher, accelerator, sampler, collator, optimizer: everything before the first step."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType, ProjectConfiguration, set_seed

    from ..flowmix import DataCollatorForFlowMix
    from ..modeling_mmae import MMAEForPreTraining
    from ..teacher import MeanTeacher

    started = time.perf_counter()
    # ACCELERATE_USE_CPU=1 (the CPU multi-process launch) means --use_cpu: an explicit use_cpu=False would override it
    use_cpu = args.cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if args.torch_threads:
        torch.set_num_threads(int(args.torch_threads))
    model_cls = model_cls or MMAEForPreTraining
    output_dir = Path(args.output_dir)
    config = load_model_config(args.config, args.config_overrides)
    config.architectures = [model_cls.__name__]

    # ---- data (before the Accelerator: the probe below needs rows). The main process downloads / prepares the
    # cache first, the others then read it.
    if dataset is None:
        from accelerate import PartialState

        with PartialState(cpu=use_cpu).main_process_first():
            dataset = load_pretraining_split(args.dataset, split=args.split, cache_dir=args.dataset_cache_dir)
    dataset = rename_legacy_columns(dataset)  # also a dataset object built by an older mmae-hf
    width = dataset.features[BYTE_COLUMN].length
    if width not in (None, -1) and width != config.num_bytes:
        raise ValueError(
            f"{args.dataset}: {BYTE_COLUMN} has {width} bytes per flow but the model config expects {config.num_bytes} "
            f"(num_packets={config.num_packets} x (header_bytes={config.header_bytes} + payload_bytes={config.payload_bytes}))"
        )
    reader = FlowBatchReader(dataset)

    # ---- model, teacher (same init on every process: DDP also broadcasts rank 0's weights)
    set_seed(args.seed)
    model = model_cls(config)
    model.train()
    teacher = None
    if getattr(config, "use_teacher", True):
        teacher = MeanTeacher(
            model,
            momentum_start=args.ema_momentum_start,
            momentum_end=args.ema_momentum_end,
            total_steps=args.max_steps,
        )

    # ---- accelerator (DDP's find_unused_parameters decided by a one-batch probe unless forced)
    world_size_env = int(os.environ.get("WORLD_SIZE", "1"))
    find_unused = args.ddp_find_unused_parameters == "true"
    unused_names = []
    if args.ddp_find_unused_parameters == "auto" and world_size_env > 1:
        probe_collator = DataCollatorForFlowMix(config, seed=args.seed, use_flowmix=config.use_flowmix)
        probe_rows = FlowBatchReader.to_rows(reader[list(range(min(len(reader), 4)))])
        unused_names = find_unused_parameters(
            model, probe_collator, probe_rows, config, teacher.model if teacher is not None else None
        )
        find_unused = bool(unused_names)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        cpu=use_cpu,
        log_with="tensorboard" if args.report_to == "tensorboard" else None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "runs")),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
        step_scheduler_with_optimizer=False,
    )
    rank, world_size = accelerator.process_index, accelerator.num_processes
    if world_size_env != world_size:
        # e.g. `accelerate launch --num_processes 2` on a machine without GPUs and without ACCELERATE_USE_CPU=1:
        # two independent single-process runs would race on the same output folder
        raise LaunchError(
            f"launched as {world_size_env} processes (WORLD_SIZE) but accelerate set up {world_size} "
            f"({accelerator.distributed_type}): refusing to run independent copies into {output_dir}. "
            "On a machine without GPUs launch with `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
            "--num_processes N ... --use_cpu` (see docs/training.md)."
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED and args.gradient_accumulation_steps != 1:
        # DeepSpeed steps its engine (and scales the loss) inside accelerator.backward: the loop's own
        # accumulation would step every micro-batch and divide the loss twice
        raise LaunchError(
            "with DeepSpeed use --gradient_accumulation_steps 1 (and gradient_accumulation_steps: 1 "
            "in its config); raise --per_device_train_batch_size or the number of processes instead"
        )
    output_dir.mkdir(parents=True, exist_ok=True)

    sampler = EpochBatchSampler(len(reader), args.per_device_train_batch_size, world_size, rank, seed=args.seed)
    steps_per_epoch = len(sampler) // args.gradient_accumulation_steps
    if steps_per_epoch < 1:
        raise ValueError(
            f"{args.dataset}: {len(reader)} training flows give {len(sampler)} batches of "
            f"{args.per_device_train_batch_size} per process on {world_size} process(es), fewer than "
            f"gradient_accumulation_steps={args.gradient_accumulation_steps}: lower the batch size or accumulation"
        )
    # per-process collator seed: the processes must draw different partners / masks for different rows
    collator = DataCollatorForFlowMix(config, seed=args.seed + 100_003 * rank, use_flowmix=config.use_flowmix)

    global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size
    optimizer, scheduler, _groups = build_optimizer_and_scheduler(model, args, global_batch)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    if teacher is not None:
        teacher.model.to(accelerator.device)
    compiled = None
    if args.torch_compile:
        # the step calls the compiled wrapper; checkpoints, the EMA and save_pretrained keep using the plain modules
        compiled = torch.compile(model)
        if teacher is not None:
            teacher.model.teacher_forward = torch.compile(teacher.model.teacher_forward)
    return _Run(
        args=args,
        config=config,
        output_dir=output_dir,
        accelerator=accelerator,
        model=model,
        compiled=compiled,
        unwrapped=unwrapped,
        teacher=teacher,
        optimizer=optimizer,
        scheduler=scheduler,
        collator=collator,
        reader=reader,
        sampler=sampler,
        steps_per_epoch=steps_per_epoch,
        global_batch=global_batch,
        find_unused=find_unused,
        unused_names=unused_names,
        started=started,
    )


# ------------------------------------------------------------------------------------------------ resume


def _read_trainer_state(checkpoint: Path) -> dict:
    path = checkpoint / TRAINER_STATE_NAME
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable trainer state ({_brief(error)})") from error
    missing = [key for key in ("step", "epoch", "batch_in_epoch") if not isinstance(state.get(key), int)]
    if not isinstance(state, dict) or missing:
        raise CheckpointError(f"{path}: trainer state without integer {missing or 'fields'}; the checkpoint is damaged")
    return state


def _load_rng_states(path: Path) -> dict:
    """The RNG states accelerate saved for one process, read the way accelerate reads them (weights_only)."""
    from accelerate.utils import load

    states = load(str(path))
    missing = [k for k in ("random_state", "numpy_random_seed", "torch_manual_seed") if k not in states]
    if missing:
        raise ValueError(f"no {missing}")
    return states


def _rng_states_applied(states: dict) -> bool:
    """Whether the process's python / numpy / torch (and CUDA) generators now hold ``states``."""
    saved_np, now_np = states["numpy_random_seed"], np.random.get_state()
    same = (
        random.getstate() == states["random_state"]
        and saved_np[0] == now_np[0]
        and np.array_equal(saved_np[1], now_np[1])
        and tuple(saved_np[2:]) == tuple(now_np[2:])
        and torch.equal(torch.get_rng_state(), states["torch_manual_seed"])
    )
    if same and "torch_cuda_manual_seed" in states and torch.cuda.is_available():
        now = torch.cuda.get_rng_state_all()
        same = len(now) == len(states["torch_cuda_manual_seed"]) and all(
            torch.equal(a.cpu(), b.cpu()) for a, b in zip(now, states["torch_cuda_manual_seed"])
        )
    return same


def _brief(error: BaseException) -> str:
    """``Type: first line of the message`` (torch's loading errors run over many lines)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:200]}" + ("..." if len(text) > 200 else "")


def _resume(run: _Run, checkpoint: Path) -> None:
    """Load every file of ``checkpoint`` and check it, then set the run's position.

    A checkpoint that cannot give an *exact* continuation (RNG states or collator state unreadable or not applied)
    is a `CheckpointError` unless ``--allow_inexact_resume``; weights, optimizer, scheduler or teacher that cannot
    be loaded are always an error."""
    args, accelerator, rank = run.args, run.accelerator, run.rank
    state = _read_trainer_state(checkpoint)
    expected = {
        "world_size": run.world_size,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "seed": args.seed,
        "max_steps": args.max_steps,
    }
    mismatched = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
    if mismatched:
        raise CheckpointError(
            f"{checkpoint}: cannot continue exactly, the run layout differs (checkpoint vs now): {mismatched}"
        )
    needed = [f"random_states_{rank}.pkl", f"collator_state_{rank}.json"]
    if run.teacher is not None:
        needed.append(TEACHER_WEIGHTS_NAME)
    missing = [name for name in needed if not (checkpoint / name).is_file()]
    if missing:  # (accelerate would silently skip missing RNG states: no exact resume)
        raise CheckpointError(f"{checkpoint}: incomplete checkpoint for process {rank}, missing {missing}")
    inexact = []  # what cannot be restored exactly, with why
    rng_file = checkpoint / f"random_states_{rank}.pkl"
    try:
        rng_states = _load_rng_states(rng_file)
    except Exception as error:  # noqa: BLE001 - accelerate would only log this at INFO and go on
        rng_states = None
        inexact.append(f"{rng_file.name} cannot be read ({_brief(error)})")
    collator_file = checkpoint / f"collator_state_{rank}.json"
    try:
        collator_saved = json.loads(collator_file.read_text())
    except (OSError, ValueError) as error:
        collator_saved = None
        inexact.append(f"{collator_file.name} cannot be read ({_brief(error)})")
    if inexact and not args.allow_inexact_resume:
        raise CheckpointError(
            f"{checkpoint}: cannot resume exactly: {'; '.join(inexact)}. Resume from an earlier checkpoint, or pass "
            "--allow_inexact_resume to continue with fresh random states (the run will then differ from an "
            "uninterrupted one)"
        )
    try:
        accelerator.load_state(str(checkpoint))  # model, optimizer, scheduler, RNG (weights_only loading)
        if run.teacher is not None:
            from safetensors.torch import load_model

            # read on the CPU; load_state_dict copies into the teacher's tensors wherever they live
            # (safetensors rejects device strings such as "cpu:0" that accelerate uses under MULTI_CPU)
            load_model(run.teacher.model, str(checkpoint / TEACHER_WEIGHTS_NAME), device="cpu")
    except Exception as error:  # noqa: BLE001 - corrupted / foreign files: name the checkpoint
        raise CheckpointError(f"{checkpoint}: could not be loaded ({_brief(error)})") from error
    if collator_saved is not None:
        try:
            load_collator_state(run.collator, collator_saved)
        except Exception as error:  # noqa: BLE001
            if not args.allow_inexact_resume:
                raise CheckpointError(
                    f"{collator_file}: could not be applied ({_brief(error)}); "
                    "pass --allow_inexact_resume to continue without it"
                ) from error
            inexact.append(f"{collator_file.name} cannot be applied ({_brief(error)})")
    if rng_states is not None and not _rng_states_applied(rng_states):
        if not args.allow_inexact_resume:
            raise CheckpointError(
                f"{rng_file}: the random states were read but not restored; pass "
                "--allow_inexact_resume to continue without them"
            )
        inexact.append(f"{rng_file.name} was not restored")
    if inexact:
        logger.warning("resuming from %s INEXACTLY (--allow_inexact_resume): %s", checkpoint, "; ".join(inexact))
        accelerator.print(f"warning: resuming from {checkpoint} inexactly: {'; '.join(inexact)}")
    run.step, run.epoch, run.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
    run.checkpoint, run.last_checkpoint = checkpoint, str(checkpoint)


# ------------------------------------------------------------------------------------------- checkpoints


def _save_checkpoint(run: _Run) -> str:
    """Write ``checkpoints/checkpoint-<step>`` through a temp folder renamed at the end, so that an interrupted or
    failed write never leaves a half-written folder that ``--resume_from_checkpoint latest`` would pick up."""
    from ..traffic.atomic import describe_os_error

    accelerator, args = run.accelerator, run.args
    root = run.output_dir / CHECKPOINT_DIR
    final = root / f"{CHECKPOINT_PREFIX}{run.step}"
    tmp = root / f"{CHECKPOINT_TMP_PREFIX}{run.step}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"{CHECKPOINT_TMP_PREFIX}*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    failure = None
    try:
        accelerator.save_state(str(tmp))
        tmp.mkdir(parents=True, exist_ok=True)  # (made by the main process; do not race it)
        (tmp / f"collator_state_{run.rank}.json").write_text(json.dumps(collator_state(run.collator)))
        if accelerator.is_main_process:
            if run.teacher is not None:
                from safetensors.torch import save_model

                save_model(run.teacher.model, str(tmp / TEACHER_WEIGHTS_NAME))
            state = {
                "step": run.step,
                "epoch": run.epoch,
                "batch_in_epoch": run.batch_in_epoch,
                "world_size": run.world_size,
                "per_device_train_batch_size": args.per_device_train_batch_size,
                "gradient_accumulation_steps": args.gradient_accumulation_steps,
                "seed": args.seed,
                "max_steps": args.max_steps,
            }
            (tmp / TRAINER_STATE_NAME).write_text(json.dumps(state, indent=2) + "\n")
    except (OSError, RuntimeError) as error:  # a full disk shows as "unexpected pos ..." from torch's zip writer
        failure = error
    # every process learns whether any process failed (one tiny all-reduce per checkpoint, not per step)
    failed = accelerator.reduce(torch.tensor([float(failure is not None)], device=accelerator.device), "sum")
    if float(failed.item()):
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        reason = describe_os_error(failure, tmp) if failure is not None else "another process failed to write"
        raise CheckpointError(
            f"{final}: the checkpoint could not be written: {reason}; the previous checkpoint "
            f"({run.last_checkpoint or 'none'}) is unchanged"
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if args.save_total_limit:
            for old in list_checkpoints(run.output_dir)[: -args.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    run.last_checkpoint = str(final)
    return str(final)


# --------------------------------------------------------------------------------------------- logging


def _start_logging(run: _Run) -> None:
    """Trackers, the run's arguments and config, ``metrics.jsonl`` (trimmed to the resumed step), a summary line."""
    args, accelerator, output_dir = run.args, run.accelerator, run.output_dir
    tracker_config = {
        k: (json.dumps(v) if isinstance(v, (dict, list)) or v is None else v) for k, v in args.to_dict().items()
    }
    if args.report_to == "tensorboard":
        accelerator.init_trackers("pretrain", config=tracker_config)
    run.metrics_path = metrics_path = output_dir / METRICS_NAME
    if accelerator.is_main_process:
        (output_dir / ARGS_NAME).write_text(json.dumps(args.to_dict(), indent=2, sort_keys=True) + "\n")
        run.config.to_json_file(str(output_dir / "pretraining_config.json"))
        if run.checkpoint is not None and metrics_path.exists():  # keep what happened up to the checkpoint
            kept = [
                line
                for line in metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= run.step
            ]
            metrics_path.write_text("".join(line + "\n" for line in kept))
        elif run.checkpoint is None and metrics_path.exists():
            metrics_path.unlink()
    accelerator.print(
        f"pre-training: {len(run.reader)} training flows, world size {run.world_size} ({accelerator.distributed_type}), "
        f"device {accelerator.device}, {args.per_device_train_batch_size} flows/process/micro-batch x "
        f"{args.gradient_accumulation_steps} accumulation = global batch {run.global_batch}, "
        f"{run.steps_per_epoch} steps/epoch, peak lr {args.peak_learning_rate(run.global_batch):.3g}, "
        f"find_unused_parameters={run.find_unused}"
        + (f" (unused: {len(run.unused_names)} tensors)" if run.unused_names else "")
        + (f", resumed from {run.checkpoint} at step {run.step}" if run.checkpoint is not None else "")
    )
    if getattr(run.config, "use_guided_masking", False) and run.teacher is None:
        accelerator.print(
            "note: use_guided_masking needs the teacher's predicted losses; without a teacher "
            "(use_teacher=False) masking stays random"
        )


def _log_step(run: _Run, out: _StepOutput, samples_per_second) -> dict:
    """One logging point: metrics to tensorboard and ``metrics.jsonl``; returns them (``train/<name>``)."""
    args, accelerator = run.args, run.accelerator
    ga = args.gradient_accumulation_steps
    means = (out.sums / ga).tolist()
    metrics = {
        f"train/{name}": value for name, value in zip(LOSS_COMPONENTS, means) if name in out.computed
    }  # e.g. no distillation_loss without a teacher
    metrics.update(
        {
            "train/learning_rate": out.lr,
            "train/hard_mask_share": out.share,
            "train/epoch": run.epoch + run.batch_in_epoch / (run.steps_per_epoch * ga),
            "train/samples_per_second_per_process": samples_per_second,
        }
    )
    if out.momentum is not None:
        metrics["train/ema_momentum"] = out.momentum
    if out.grad_norm is not None:
        metrics["train/grad_norm"] = out.grad_norm
    if args.report_to == "tensorboard":
        accelerator.log({k: v for k, v in metrics.items() if v is not None}, step=run.step)
    if accelerator.is_main_process:
        record = {"step": run.step, "world_size": run.world_size, **{k.split("/", 1)[1]: v for k, v in metrics.items()}}
        with run.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
    return metrics


# ------------------------------------------------------------------------------------------------ step


def _train_step(run: _Run, batches, share: float) -> _StepOutput:
    """One optimizer step: ``gradient_accumulation_steps`` micro-batches from ``batches``, clipping, the update,
    the scheduler, the teacher's EMA step. Advances ``run.step`` and ``run.batch_in_epoch``."""
    accelerator, model, args, config = run.accelerator, run.step_model, run.args, run.config
    teacher, ga = run.teacher, args.gradient_accumulation_steps
    sums = torch.zeros(len(LOSS_COMPONENTS), device=accelerator.device, dtype=torch.float64)
    computed = []
    for micro in range(ga):
        rows = FlowBatchReader.to_rows(next(batches))
        inputs = _model_inputs(run.collator(rows), accelerator.device)
        if teacher is not None:
            with accelerator.autocast():
                inputs.update(teacher_targets(teacher.model, inputs, config))
        # a 0-d tensor, not a float: a compiled model would otherwise recompile at every new value of the curriculum
        inputs["hard_mask_share"] = torch.tensor(share, dtype=torch.float64)
        sync = micro == ga - 1
        with nullcontext() if sync else accelerator.no_sync(run.model):
            outputs = model(**inputs)
            computed = [name for name in LOSS_COMPONENTS if getattr(outputs, name, None) is not None]
            values = torch.stack(
                [
                    (getattr(outputs, name) if name in computed else torch.zeros((), device=accelerator.device))
                    .detach()
                    .double()
                    for name in LOSS_COMPONENTS
                ]
            )
            # one tiny all-reduce: a NaN on any process stops every process at the same point
            values = accelerator.reduce(values, reduction="mean")
            if not torch.isfinite(values).all():
                raise NonFiniteLossError(
                    _non_finite_message(
                        dict(zip(LOSS_COMPONENTS, values.tolist())),
                        computed,
                        run.step + 1,
                        run.epoch,
                        micro + 1,
                        ga,
                        run.scheduler.get_last_lr()[0],
                        run.last_checkpoint,
                    )
                )
            sums += values
            accelerator.backward(outputs.loss / ga)
        run.batch_in_epoch += 1
    grad_norm = None
    if args.max_grad_norm > 0:
        grad_norm = accelerator.clip_grad_norm_(run.model.parameters(), args.max_grad_norm)
        if grad_norm is not None:  # None under DeepSpeed, which clips by its own config
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        if grad_norm is not None and not math.isfinite(grad_norm) and accelerator.mixed_precision != "fp16":
            raise NonFiniteLossError(
                f"non-finite gradient norm ({grad_norm}) at optimizer step {run.step + 1} (epoch {run.epoch}) although "
                "every loss component was finite; lower the learning rate or resume from the last checkpoint "
                f"({run.last_checkpoint or 'none yet'})."
            )
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    momentum = None
    if teacher is not None:
        momentum = float(teacher.momentum(run.step))
        teacher.update(_FullParameterView(run.unwrapped), run.step)
    run.step += 1
    return _StepOutput(sums=sums, computed=computed, lr=lr, share=share, grad_norm=grad_norm, momentum=momentum)


# ------------------------------------------------------------------------------------------------- end


def _finish(run: _Run, last_metrics: dict, throughput: float) -> "PretrainingResult":
    """Save the model (when ``max_steps`` was reached), the summary and the curves; end the trackers."""
    args, accelerator, output_dir = run.args, run.accelerator, run.output_dir
    per_process = accelerator.gather(torch.tensor([throughput], device=accelerator.device, dtype=torch.float64))
    per_process = [float(v) for v in per_process.cpu().tolist()]
    finished = run.step >= args.max_steps
    accelerator.wait_for_everyone()
    if finished:
        state_dict = accelerator.get_state_dict(run.model)
        try:
            run.unwrapped.save_pretrained(
                str(output_dir),
                is_main_process=accelerator.is_main_process,
                save_function=accelerator.save,
                state_dict=state_dict,
            )
        except (OSError, RuntimeError) as error:
            from ..traffic.atomic import describe_os_error

            raise CheckpointError(
                f"{output_dir}: the model could not be saved: {describe_os_error(error, output_dir)}"
                f"; the last checkpoint is {run.last_checkpoint or 'none'}"
            ) from error
        if accelerator.is_main_process:
            preprocessor = find_preprocessor_config(args.dataset, args.dataset_cache_dir) if args.dataset else None
            if preprocessor is not None:
                shutil.copyfile(preprocessor, output_dir / preprocessor.name)
            if run.teacher is not None and args.save_teacher:
                run.teacher.model.save_pretrained(str(output_dir / "teacher"))
    if accelerator.is_main_process:
        plot_metrics(run.metrics_path, output_dir / CURVES_NAME)
        summary = {
            "step": run.step,
            "max_steps": args.max_steps,
            "finished": finished,
            "world_size": run.world_size,
            "dataset": args.dataset,
            "split": args.split,
            "num_training_flows": len(run.reader),
            "distributed_type": str(accelerator.distributed_type),
            "device": str(accelerator.device),
            "mixed_precision": accelerator.mixed_precision,
            "global_batch_size": run.global_batch,
            "samples_per_second_per_process": per_process,
            "last_metrics": last_metrics,
            "checkpoint": run.last_checkpoint,
            "find_unused_parameters": run.find_unused,
            "wall_seconds_this_invocation": round(time.perf_counter() - run.started, 1),
            "unused_parameters": run.unused_names,
        }
        (output_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    accelerator.print(
        f"pre-training {'finished' if finished else 'stopped'} at step {run.step}: samples/s per process "
        + ", ".join(f"{v:.1f}" for v in per_process)
        + (
            f"; model saved to {output_dir}"
            if finished
            else f"; continue with --resume_from_checkpoint {run.last_checkpoint}"
        )
    )
    # Every rank tears the process group down at the same moment: a rank that is still saving or plotting while
    # its peer has already destroyed the group and exited is the one window where gloo teardown can stall.
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return PretrainingResult(
        step=run.step,
        output_dir=str(output_dir),
        finished=finished,
        last_metrics=last_metrics,
        samples_per_second_per_process=per_process,
        world_size=run.world_size,
        checkpoint=run.last_checkpoint,
    )


# ------------------------------------------------------------------------------------------------- loop


def run_pretraining(args, dataset=None, model_cls=None):
    """Pre-train an MMAE model as described by ``args`` (a `PretrainingArguments`).

    The pieces: `_setup_run` (everything before the first step), `_resume` (a verified checkpoint),
    `_start_logging`, `_train_step` (one optimizer step), `_log_step`, `_save_checkpoint` and `_finish`.

    Args:
        args (`PretrainingArguments`).
        dataset (`datasets.Dataset`, *optional*): use these rows instead of loading ``args.dataset``
            (the caller is then responsible for passing training flows only).
        model_cls (*optional*): the pre-training model class (default `MMAEForPreTraining`).

    Returns:
        `PretrainingResult`. When the run reaches ``max_steps`` the student is saved with ``save_pretrained`` in
        ``output_dir`` (plus ``preprocessor_config.json`` when the dataset folder carries one).
    """
    from tqdm.auto import tqdm

    from ..pmp import hard_mask_share

    run = _setup_run(args, dataset, model_cls)
    accelerator, output_dir = run.accelerator, run.output_dir
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
    if checkpoint is not None:
        _resume(run, checkpoint)
    elif list_checkpoints(output_dir):  # a fresh run must not mix its checkpoints with an earlier run's
        if not args.overwrite_output_dir:
            raise CheckpointError(
                f"{output_dir / CHECKPOINT_DIR} holds checkpoints of an earlier run: continue it with "
                "--resume_from_checkpoint latest, or pass --overwrite_output_dir to start over"
            )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(output_dir / CHECKPOINT_DIR)
        accelerator.wait_for_everyone()
    _start_logging(run)

    stop_step = args.stop_after_step or args.max_steps
    progress = tqdm(
        total=args.max_steps,
        initial=run.step,
        desc="pre-training",
        dynamic_ncols=True,
        disable=not (args.progress_bar and accelerator.is_local_main_process),
    )
    guided = getattr(run.config, "use_guided_masking", False) and run.teacher is not None
    max_share = float(getattr(run.config, "hard_mask_max_share", 0.0)) if guided else 0.0
    ga = args.gradient_accumulation_steps
    first_step = run.step
    last_metrics, measured_samples, measured_seconds = {}, 0, 0.0
    try:
        while run.step < stop_step:
            run.sampler.set_epoch(run.epoch)
            index_batches = run.sampler.epoch_batches()[run.batch_in_epoch : run.steps_per_epoch * ga]
            batches = iter(_BatchPrefetcher(run.reader, index_batches, args.num_workers))
            while run.step < stop_step and run.batch_in_epoch + ga <= run.steps_per_epoch * ga:
                step_started = time.perf_counter()
                share = hard_mask_share(run.step, args.max_steps, max_share) if max_share > 0 else 0.0
                out = _train_step(run, batches, share)
                seconds = time.perf_counter() - step_started
                if run.step > first_step + 1:  # the first step of an invocation pays one-off costs
                    measured_samples += args.per_device_train_batch_size * ga
                    measured_seconds += seconds
                progress.update(1)
                if run.step % args.logging_steps == 0 or run.step == stop_step:
                    last_metrics = _log_step(
                        run, out, measured_samples / measured_seconds if measured_seconds else None
                    )
                    progress.set_postfix(loss=f"{last_metrics['train/loss']:.4f}", lr=f"{out.lr:.2e}")
                if args.save_steps and run.step % args.save_steps == 0 and run.step < args.max_steps:
                    _save_checkpoint(run)
            if run.batch_in_epoch + ga > run.steps_per_epoch * ga:
                run.epoch, run.batch_in_epoch = run.epoch + 1, 0
        if run.step < args.max_steps and (not args.save_steps or run.step % args.save_steps):
            _save_checkpoint(run)  # stopped early: leave a checkpoint to continue from
    finally:
        progress.close()
    throughput = measured_samples / measured_seconds if measured_seconds else 0.0  # 0: too few steps to measure
    return _finish(run, last_metrics, throughput)


__all__ = [
    "CheckpointError",
    "LaunchError",
    "NonFiniteLossError",
    "PretrainingArguments",
    "PretrainingResult",
    "build_optimizer_and_scheduler",
    "find_unused_parameters",
    "list_checkpoints",
    "load_model_config",
    "optimizer_parameter_groups",
    "parse_config_overrides",
    "plot_metrics",
    "run_pretraining",
    "warmup_cosine_factor",
]
