"""Fine-tuning MMAE for flow classification with the Hugging Face Trainer.

`run_finetuning(FinetuneArguments(...))` is the whole recipe behind ``train/finetune.py``:

1. load the flow dataset (a folder written by ``dataset_scripts/build_dataset.py``, a ``save_to_disk`` folder,
   parquet shards or a Hub repo id) with its ``train`` / ``validation`` / ``test`` splits;
2. build ``MMAEForSequenceClassification`` from a pre-trained MMAE folder or repo (``from_pretrained`` with the
   dataset's ClassLabel names as ``id2label``) or from a config preset (training from scratch);
3. train with the Trainer: AdamW with layer-wise learning-rate decay by true depth
   (`mmae_hf.training.layer_decay`), label smoothing, linear warm-up then cosine decay, evaluation on the
   validation split every epoch, checkpoint selection by validation macro-F1 (the test split is never looked at
   during training or selection);
4. calibrate the out-of-distribution threshold (max-softmax) on the validation split and store it as
   ``config.ood_threshold``;
5. score the selected model once on the test split: accuracy, macro-F1, weighted-F1, per-class scores and the
   confusion matrix (JSON + PNG);
6. save a self-contained model folder (weights, config with the full ``auto_map``, remote-code files, the
   feature extractor's ``preprocessor_config.json``, metrics, confusion matrix, model card ``README.md``) and
   optionally upload it to the Hub.

Batches are built from the dataset's numpy format with a collator that stacks the flow bytes back into
``uint8`` (the numpy/torch formatters upcast integer columns to int64; see docs in hf-notes §4).
"""

import json
import logging
import math
import os
import shutil
import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

from ..argparsing import renamed_fields
from ..hub import push_model_folder
from ..checks import check_model_source, hub_load_error
from ..data_contract import BYTE_COLUMN
from ..evaluation import (
    calibrate_ood_threshold,
    classification_metrics,
    headline,
    softmax,
    to_jsonable,
    write_evaluation,
)
from ..progress import evaluation_log_callback, progress_wanted
from ..traffic.atomic import StagedFolder, atomic_write_text
from ..traffic.loading import load_traffic_dataset as open_traffic_dataset
from .layer_decay import format_parameter_groups, layer_decay_parameter_groups

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


@renamed_fields(
    {
        "epochs": "num_train_epochs",
        "batch_size": "per_device_train_batch_size",
        "eval_batch_size": "per_device_eval_batch_size",
        "label_smoothing": "label_smoothing_factor",
    }
)
@dataclass
class FinetuneArguments:
    """Arguments of ``train/finetune.py`` (parsed with ``HfArgumentParser``); the Trainer's names where the meaning
    is the Trainer's. The fields' old names (``epochs``, ``batch_size``, ``eval_batch_size``, ``label_smoothing``)
    are still accepted, with a warning."""

    dataset: str = field(
        metadata={"help": "dataset folder (build_dataset.py output, save_to_disk or parquet) or Hub repo id"}
    )
    output_dir: str = field(metadata={"help": "where checkpoints, metrics, plots, tensorboard logs and the model go"})
    pretrained: str | None = field(
        default=None, metadata={"help": "pre-trained MMAE folder or Hub repo id; omit to train from scratch"}
    )
    base_model: str | None = field(
        default=None,
        metadata={
            "help": "Hub repo id of the pre-trained encoder, for the model card's base_model when --pretrained is a local folder (default: --pretrained when it is a repo id)"
        },
    )
    preset: str = field(
        default="mmae-tiny",
        metadata={
            "help": "config used when training from scratch: a preset name, or a config.json / model folder (the same architecture as a checkpoint, randomly initialised)"
        },
    )
    recipe: str = field(
        default="auto",
        metadata={
            "help": "auto | small_data | epochs: the defaults of the options below that are not given. small_data (chosen on validation, benchmarks/results/finetune_recipe_search*.md): batch 32, lr 1e-3, no layer decay, 50 head warm-up steps, max(300 steps, 10 epochs), evaluated 10 times; epochs: 10 epochs, batch 64, lr 5e-4, layer decay 0.75. auto: small_data up to 2,000 training flows, else epochs"
        },
    )
    num_train_epochs: float | None = field(default=None, metadata={"help": "training epochs (default: the recipe's)"})
    max_steps: int | None = field(
        default=None,
        metadata={
            "help": "if > 0, stop after this many optimizer steps, overriding the epochs (default: the recipe's)"
        },
    )
    per_device_train_batch_size: int | None = field(
        default=None, metadata={"help": "flows per device per training step (default: the recipe's)"}
    )
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "flows per device per evaluation step"})
    learning_rate: float | None = field(
        default=None, metadata={"help": "peak learning rate of the top (head) group (default: the recipe's)"}
    )
    layer_decay: float | None = field(
        default=None, metadata={"help": "layer-wise lr decay per depth level, 1.0 = off (default: the recipe's)"}
    )
    weight_decay: float = field(
        default=0.05, metadata={"help": "AdamW weight decay (not on norms, biases, pos-embed, cls)"}
    )
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of the steps used for linear warm-up"})
    label_smoothing_factor: float = field(default=0.1, metadata={"help": "label smoothing of the cross-entropy"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_grad_norm: float = field(
        default=0.0, metadata={"help": "gradient clipping (0 = off, as in the official recipe)"}
    )
    freeze_encoder: bool = field(
        default=False, metadata={"help": "train the classifier head only (linear probe with the Trainer)"}
    )
    ood_percentile: float = field(
        default=5.0, metadata={"help": "percentile of correct validation max-softmax used as OOD threshold"}
    )
    seed: int = field(default=0, metadata={"help": "model init, data order and dropout"})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast (GPUs that support it)"})
    use_cpu: bool = field(default=False, metadata={"help": "force CPU even when a GPU is present"})
    dataloader_num_workers: int = field(default=0, metadata={"help": "background processes reading batches"})
    logging_steps: int = field(default=10, metadata={"help": "log the training loss every N steps"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept (the best one always is)"})
    push_to_hub: bool = field(
        default=False, metadata={"help": "upload the final model folder to the Hub (needs --hub_model_id)"}
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "repo id for --push_to_hub, e.g. me/mmae-tiny-ndpi"}
    )
    hub_private_repo: bool = field(default=False, metadata={"help": "create the Hub repo as private"})
    model_name: str | None = field(
        default=None, metadata={"help": "name used in the model card (default: the output folder's name)"}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "dataset name or Hub repo id for the model card (default: the dataset folder's name)"},
    )
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard or none"})
    disable_tqdm: bool = field(
        default=False,
        metadata={
            "help": "no progress bars at all (--no_progress works too); without it bars are drawn only when stderr is a terminal"
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "debug: cap on training rows"})
    few_shot_k: int | None = field(
        default=None,
        metadata={
            "help": "train on k flows per class of the train split, drawn by --few_shot_seed (label-efficiency runs)"
        },
    )
    few_shot_seed: int | None = field(
        default=None, metadata={"help": "seed of the --few_shot_k subset (default: --seed)"}
    )
    classifier_pooling: str | None = field(
        default=None,
        metadata={
            "help": "cls or mean: what the classification head reads, the CLS output or the mean of the token outputs (default: the recipe's)"
        },
    )
    head_warmup_steps: int | None = field(
        default=None,
        metadata={
            "help": "optimizer steps that train only the classifier head before the encoder joins, so a pre-trained encoder is not disturbed by a random head's gradients (default: the recipe's)"
        },
    )
    eval_every_steps: int | None = field(
        default=None,
        metadata={
            "help": "with a step budget: evaluate (and checkpoint) every N steps (default: a tenth of the budget with small_data, a quarter otherwise)"
        },
    )
    allow_mismatched_weights: bool = field(
        default=False,
        metadata={
            "help": "load --pretrained even when its config.json does not fit its encoder weights (parts stay random)"
        },
    )

    def __post_init__(self):
        """Conflicts and impossible values are refused here, before any data or model is loaded."""
        from ..checks import is_hub_repo_id

        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id (the repo to create, e.g. me/mmae-tiny-traffic)")
        if self.hub_model_id and not is_hub_repo_id(self.hub_model_id):
            raise ValueError(f"--hub_model_id {self.hub_model_id}: not a Hub repo id (owner/name)")
        if self.base_model and not is_hub_repo_id(self.base_model):
            raise ValueError(
                f"--base_model {self.base_model}: not a Hub repo id (owner/name); the model card can "
                "only name a published model"
            )
        if self.recipe not in RECIPES and self.recipe != "auto":
            raise ValueError(f"--recipe {self.recipe}: choose auto, {' or '.join(RECIPES)}")
        if (
            (self.max_steps is None or self.max_steps <= 0)
            and self.num_train_epochs is not None
            and self.num_train_epochs <= 0
        ):
            raise ValueError(f"--num_train_epochs {self.num_train_epochs:g}: must be > 0 (or give --max_steps)")
        for name in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
        ):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} {getattr(self, name)}: must be >= 1")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ValueError(f"--learning_rate {self.learning_rate:g}: must be > 0")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"--layer_decay {self.layer_decay:g}: must be in (0, 1] (1.0 turns it off)")
        for name in ("warmup_ratio", "label_smoothing_factor"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{name} {getattr(self, name):g}: must be in [0, 1)")
        if not 0 <= self.ood_percentile <= 100:
            raise ValueError(f"--ood_percentile {self.ood_percentile:g}: must be in [0, 100]")
        if self.report_to not in ("tensorboard", "none"):
            raise ValueError(f"--report_to {self.report_to}: use tensorboard or none")
        for name in ("few_shot_k", "eval_every_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} {getattr(self, name)}: must be >= 1")
        if self.classifier_pooling not in (None, "cls", "mean"):
            raise ValueError(f"--classifier_pooling {self.classifier_pooling}: use cls or mean")
        if self.head_warmup_steps is not None and self.head_warmup_steps < 0:
            raise ValueError(f"--head_warmup_steps {self.head_warmup_steps}: must be >= 0")


# --------------------------------------------------------------------------------------------- recipes

# The defaults of the options a user leaves out. "small_data" was chosen on validation macro-F1 only
# (benchmarks/finetune_recipe_search.py, k = 10 and 25 flows per class of two development sets, pre-trained and
# from-scratch encoders): a fixed budget of optimizer steps, because a budget in epochs gives a 60-flow train split
# a handful of steps (the epoch recipe scored 0.22 validation macro-F1 there, this one 0.47). Its head reads the
# mean of the token outputs: pre-training never trains the CLS output, and with mmae-small the token mean scored
# 0.477 against 0.476 for CLS (benchmarks/results/finetune_recipe_search_small_pooling.md: a tie within the noise;
# the frozen-encoder probe prefers the mean clearly, 0.498 against 0.414).
RECIPES = {
    "small_data": {
        "per_device_train_batch_size": 32,
        "learning_rate": 1e-3,
        "layer_decay": 1.0,
        "head_warmup_steps": 50,
        "classifier_pooling": "mean",
        "min_steps": 300,
        "min_epochs": 10,
        "evaluations": 10,
    },
    "epochs": {
        "num_train_epochs": 10.0,
        "per_device_train_batch_size": 64,
        "learning_rate": 5e-4,
        "layer_decay": 0.75,
        "head_warmup_steps": 0,
        "classifier_pooling": "cls",
    },
}
SMALL_DATA_MAX_ROWS = 2000  # auto: small_data up to this many training flows


def resolve_recipe(args: FinetuneArguments, num_train_rows: int) -> FinetuneArguments:
    """``args`` with every option left at None filled from the recipe (``auto`` picks ``small_data`` for up to
    `SMALL_DATA_MAX_ROWS` training flows, else ``epochs``); options the user gave are kept. The returned copy's
    ``recipe`` names the recipe used."""
    name = (
        args.recipe if args.recipe != "auto" else ("small_data" if num_train_rows <= SMALL_DATA_MAX_ROWS else "epochs")
    )
    recipe = RECIPES[name]
    values = {
        key: recipe[key]
        for key in (
            "per_device_train_batch_size",
            "learning_rate",
            "layer_decay",
            "head_warmup_steps",
            "classifier_pooling",
        )
        if getattr(args, key) is None
    }
    values["recipe"] = name
    batch = values.get("per_device_train_batch_size", args.per_device_train_batch_size)
    length_given = (args.max_steps is not None and args.max_steps > 0) or args.num_train_epochs is not None
    if name == "small_data" and not length_given:
        epoch_steps = math.ceil(recipe["min_epochs"] * num_train_rows / (batch * args.gradient_accumulation_steps))
        values["max_steps"] = max(recipe["min_steps"], epoch_steps)
    if args.num_train_epochs is None:  # (ignored by the Trainer when a step budget is set)
        values["num_train_epochs"] = RECIPES["epochs"]["num_train_epochs"]
    if args.max_steps is None and "max_steps" not in values:
        values["max_steps"] = -1
    steps = values.get("max_steps", args.max_steps)
    if args.eval_every_steps is None and steps and steps > 0:
        values["eval_every_steps"] = max(1, steps // recipe.get("evaluations", 4))
    if "head_warmup_steps" in values and steps and steps > 0:
        values["head_warmup_steps"] = min(values["head_warmup_steps"], steps // 6)  # a short run keeps most steps
    return dataclasses.replace(args, **values)


# ----------------------------------------------------------------------------------------------- data


def load_traffic_dataset(source):
    """The flow ``DatasetDict`` for fine-tuning, with its split names normalised (``valid``/``val``/``dev`` become
    ``validation``) and checked: train, validation and test, each non-empty with ``input_bytes`` and a ClassLabel
    ``label``.

    ``source``: a ``DatasetDict``, or anything `mmae_hf.traffic.load_traffic_dataset` opens (a ``save_to_disk``
    folder, parquet shards as written by the dataset builder and by ``push_to_hub``, a Hub repo id).
    """
    import datasets

    dsd = open_traffic_dataset(source)
    if isinstance(dsd, datasets.Dataset):
        dsd = datasets.DatasetDict({"train": dsd})
    renamed = {}
    for canonical, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            if alias in dsd:
                renamed[canonical] = dsd[alias]
                break
    missing = [s for s in SPLIT_ALIASES if s not in renamed]
    if missing:
        raise ValueError(
            f"{source}: dataset has splits {sorted(dsd)}; fine-tuning needs train, validation and test "
            f"(missing: {', '.join(missing)})"
        )
    for name, ds in renamed.items():
        for column in (BYTE_COLUMN, "label"):
            if column not in ds.column_names:
                raise ValueError(f"{source}: split {name!r} has no {column!r} column (columns: {ds.column_names})")
        if len(ds) == 0:
            raise ValueError(f"{source}: split {name!r} is empty")
    if not hasattr(renamed["train"].features["label"], "names"):
        raise ValueError(f"{source}: the 'label' column must be a ClassLabel (class names are needed for id2label)")
    return datasets.DatasetDict(renamed)


def label_names_of(dsd) -> list[str]:
    return list(dsd["train"].features["label"].names)


def classes_missing_from_splits(dsd, label_names: list[str]) -> dict[str, list[str]]:
    """``{class: [splits without any flow of it]}`` for the classes some split lacks (train, validation, test)."""
    missing: dict[str, list[str]] = {}
    for split in SPLIT_ALIASES:
        labels = dsd[split].with_format("numpy", columns=["label"])["label"] if len(dsd[split]) else []
        present = set(np.unique(np.asarray(labels, dtype=np.int64)).tolist())
        for index, name in enumerate(label_names):
            if index not in present:
                missing.setdefault(name, []).append(split)
    return missing


def check_classes(dsd, label_names: list[str], source) -> dict[str, list[str]]:
    """Refuse a dataset whose train split holds fewer than 2 classes; warn about classes missing from a split.

    One class gives loss 0 and macro-F1 1.0 by construction: a number that means nothing. A class missing from
    train cannot be learnt; one missing from validation or test is not measured (its F1 there is 0 or undefined).
    Returns the missing classes (recorded in ``results.json`` and the model card)."""
    missing = classes_missing_from_splits(dsd, label_names)
    in_train = [name for name in label_names if "train" not in missing.get(name, [])]
    if len(in_train) < 2:
        raise ValueError(
            f"{source}: fine-tuning needs at least 2 classes with training flows; train holds {len(in_train)} "
            f"({', '.join(in_train) or 'none'}) of the {len(label_names)} label names. A one-class classifier is "
            "right by construction (loss 0, macro-F1 1.0) and means nothing: add flows of other classes"
        )
    for name, splits in missing.items():
        logger.warning(
            "class %r has no flows in %s: %s",
            name,
            " and ".join(splits),
            "it cannot be learnt" if "train" in splits else "its scores there are not measured",
        )
    return missing


def model_inputs_view(ds):
    """The two columns the classifier needs, as numpy rows (cheap: no copy of the arrow data)."""
    return ds.select_columns([BYTE_COLUMN, "label"]).with_format("numpy")


class FlowClassificationCollator:
    """Rows ``{"input_bytes": int array [1600], "label": int}`` -> ``{"input_bytes": uint8 [B,1600], "labels": long [B]}``."""

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        payload = np.stack([np.asarray(r[BYTE_COLUMN]) for r in rows]).astype(np.uint8, copy=False)
        batch = {BYTE_COLUMN: torch.from_numpy(payload)}
        if "label" in rows[0]:
            batch["labels"] = torch.as_tensor(np.asarray([int(r["label"]) for r in rows]), dtype=torch.long)
        return batch


def payload_matrix(ds) -> np.ndarray:
    """The ``input_bytes`` of a split as one ``uint8 [N, 1600]`` array (zero-copy arrow read: may be read-only)."""
    column = ds.with_format("arrow")[:][BYTE_COLUMN] if len(ds) else None
    if column is None:
        return np.zeros((0, 1600), dtype=np.uint8)
    values = column.combine_chunks()
    width = values.type.list_size
    return values.values.to_numpy(zero_copy_only=False).astype(np.uint8, copy=False).reshape(len(ds), width)


# --------------------------------------------------------------------------------------------- trainer


class MMAEFinetuneTrainer(Trainer):
    """Trainer whose optimizer uses layer-wise learning-rate decay (see `layer_decay_parameter_groups`)."""

    def __init__(self, *args, layer_decay: float = 0.75, head_warmup_steps: int = 0, **kwargs):
        self.layer_decay = layer_decay
        self.head_warmup_steps = int(head_warmup_steps)
        self.parameter_group_summary = None
        super().__init__(*args, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """Linear warm-up then cosine decay for every group; with ``head_warmup_steps`` the encoder's groups stay at
        lr 0 for that many steps and then run the same warm-up and cosine over the remaining steps."""
        if self.lr_scheduler is not None or self.head_warmup_steps <= 0:
            return super().create_scheduler(num_training_steps, optimizer)
        optimizer = optimizer or self.optimizer
        top = max(group.get("layer_depth", 0) for group in optimizer.param_groups)
        head_steps = min(self.head_warmup_steps, max(0, num_training_steps - 1))
        warmup = self.args.get_warmup_steps(num_training_steps)

        def schedule(offset):
            total = max(1, num_training_steps - offset)
            ramp = min(warmup, total)

            def factor(step):
                if step < offset:
                    return 0.0
                step -= offset
                if step < ramp:
                    return (step + 1) / (ramp + 1)
                progress = min(1.0, (step - ramp) / max(1, total - ramp))
                return 0.5 * (1.0 + math.cos(math.pi * progress))

            return factor

        lambdas = [
            schedule(0 if group.get("layer_depth", top) == top else head_steps) for group in optimizer.param_groups
        ]
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups, summary = layer_decay_parameter_groups(
                opt_model,
                base_lr=self.args.learning_rate,
                weight_decay=self.args.weight_decay,
                layer_decay=self.layer_decay,
            )
            self.parameter_group_summary = summary
            logger.info("optimizer parameter groups:\n%s", format_parameter_groups(summary))
            self.optimizer = torch.optim.AdamW(
                groups,
                lr=self.args.learning_rate,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
            )
        return self.optimizer


def make_compute_metrics(label_names: list[str]):
    def compute_metrics(prediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return headline(classification_metrics(prediction.label_ids, np.argmax(logits, axis=-1), label_names))

    return compute_metrics


def build_model(args: FinetuneArguments, label_names: list[str]):
    """The classifier, from a pre-trained folder/repo or from ``args.preset``, with the dataset's label names."""
    from ..modeling_mmae import MMAEForSequenceClassification

    id2label = {i: name for i, name in enumerate(label_names)}
    label2id = {name: i for i, name in enumerate(label_names)}
    pooling = {"classifier_pooling": args.classifier_pooling} if args.classifier_pooling else {}
    if args.pretrained:
        from ..weight_check import load_checked

        from transformers import AutoModelForSequenceClassification

        from .. import modeling_mmae  # noqa: F401  (importing the package registered MMAE with the Auto classes)

        check_model_source(args.pretrained, "--pretrained")
        try:
            # what a user writes: the Auto class; refuses a config.json that does not fit the encoder weights and
            # names a damaged file
            model = load_checked(
                AutoModelForSequenceClassification,
                args.pretrained,
                allow_mismatched_weights=args.allow_mismatched_weights,
                num_labels=len(label_names),
                id2label=id2label,
                label2id=label2id,
                dtype=torch.float32,
                **pooling,
            )
        except OSError as error:  # a Hub id that is not there, or no network
            raise hub_load_error(args.pretrained, error, "--pretrained") from error
    else:
        from .pretraining import load_model_config

        # a preset name, or a config.json / model folder: "the same encoder from scratch" as a given checkpoint
        config = load_model_config(args.preset, {"id2label": id2label, "label2id": label2id, **pooling})
        config.architectures = None
        model = MMAEForSequenceClassification(config)
    if args.freeze_encoder:
        for parameter in model.base_model.parameters():
            parameter.requires_grad_(False)
    return model


def make_training_arguments(
    args: FinetuneArguments, output_dir: Path, num_train_rows: int | None = None
) -> TrainingArguments:
    """The Trainer's arguments; options still left to the recipe are resolved first (`resolve_recipe`; with an unknown
    number of training flows ``auto`` means the epoch recipe)."""
    if None in (
        args.max_steps,
        args.num_train_epochs,
        args.per_device_train_batch_size,
        args.learning_rate,
        args.layer_decay,
        args.head_warmup_steps,
    ):
        args = resolve_recipe(args, SMALL_DATA_MAX_ROWS + 1 if num_train_rows is None else num_train_rows)
    use_cpu = args.use_cpu or not torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup_ratio,  # v5: a float < 1 is a ratio of the total steps (warmup_ratio is gone)
        label_smoothing_factor=args.label_smoothing_factor,
        max_grad_norm=args.max_grad_norm,
        eval_strategy="epoch" if args.max_steps <= 0 else "steps",
        eval_steps=None if args.max_steps <= 0 else (args.eval_every_steps or max(1, args.max_steps // 4)),
        save_strategy="epoch" if args.max_steps <= 0 else "steps",
        save_steps=500 if args.max_steps <= 0 else (args.eval_every_steps or max(1, args.max_steps // 4)),
        save_total_limit=args.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="macro_f1",  # validation macro-F1, never a test number
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=args.logging_steps,
        logging_first_step=True,
        report_to=[] if args.report_to == "none" else [args.report_to],
        use_cpu=use_cpu,
        bf16=args.bf16,
        seed=args.seed,
        data_seed=args.seed,
        dataloader_num_workers=args.dataloader_num_workers,
        remove_unused_columns=False,  # the collator takes the rows as they are (input_bytes and label)
        label_names=["labels"],
        disable_tqdm=not progress_wanted(args.disable_tqdm),  # bars only on a terminal
    )


# ------------------------------------------------------------------------------------------ main entry


def run_finetuning(args: FinetuneArguments, dataset=None) -> dict[str, Any]:
    """Train, select on validation, test once, save (and push). Returns the result summary (also written as JSON)."""
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    started = time.time()
    if args.pretrained:
        check_model_source(args.pretrained, "--pretrained")  # before any data is read
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(args.seed)
    dsd = load_traffic_dataset(dataset if dataset is not None else args.dataset)
    label_names = label_names_of(dsd)
    train_ds = dsd["train"]
    if args.few_shot_k is not None:
        from .diagnostics import few_shot_indices

        seed = args.seed if args.few_shot_seed is None else args.few_shot_seed
        train_ds = train_ds.select(few_shot_indices(train_ds["label"], args.few_shot_k, seed))
    if args.max_train_samples:
        train_ds = train_ds.shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(train_ds))))
    # on the training rows actually used (a few-shot or capped subset may lose classes)
    missing_classes = check_classes(
        {**dsd, "train": train_ds}, label_names, "the dataset" if dataset is not None else args.dataset
    )
    args = resolve_recipe(args, len(train_ds))
    logger.info("fine-tuning recipe %s: %s", args.recipe, _recipe_summary(args))

    hf_logging.set_verbosity_error()  # the v5 LOAD REPORT (unused decoder keys, new head) is expected here
    model = build_model(args, label_names)
    hf_logging.set_verbosity_warning()

    training_args = make_training_arguments(args, out / "checkpoints")
    previous_tb = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tensorboard")
    try:
        trainer = MMAEFinetuneTrainer(
            model=model,
            args=training_args,
            train_dataset=model_inputs_view(train_ds),
            eval_dataset=model_inputs_view(dsd["validation"]),
            data_collator=FlowClassificationCollator(),
            compute_metrics=make_compute_metrics(label_names),
            layer_decay=args.layer_decay,
            head_warmup_steps=args.head_warmup_steps,
        )
    finally:
        if previous_tb is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = previous_tb
    if training_args.disable_tqdm:  # no bars: one line per evaluation instead of the Trainer's dict per log step
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(evaluation_log_callback())
    train_output = trainer.train()
    model = trainer.model
    model.eval()

    # --- validation: metrics of the selected checkpoint + OOD threshold ---------------------------------------
    val_pred = trainer.predict(model_inputs_view(dsd["validation"]), metric_key_prefix="validation")
    val_logits = val_pred.predictions[0] if isinstance(val_pred.predictions, tuple) else val_pred.predictions
    val_metrics = classification_metrics(val_pred.label_ids, val_logits.argmax(-1), label_names)
    threshold = calibrate_ood_threshold(val_logits, val_pred.label_ids, args.ood_percentile)
    model.config.ood_threshold = threshold

    # --- test: once, with the selected model ------------------------------------------------------------------
    test_pred = trainer.predict(model_inputs_view(dsd["test"]), metric_key_prefix="test")
    test_logits = test_pred.predictions[0] if isinstance(test_pred.predictions, tuple) else test_pred.predictions
    test_metrics = classification_metrics(test_pred.label_ids, test_logits.argmax(-1), label_names)
    test_probs = softmax(test_logits)
    ood_rate = float((test_probs.max(-1) < threshold).mean()) if threshold is not None else None

    model_name = args.model_name or out.name
    if not trainer.is_world_process_zero():  # several processes (DDP): predictions were gathered; one writes
        return {
            "model_name": model_name,
            "validation": headline(val_metrics),
            "test": headline(test_metrics),
            "ood_threshold": threshold,
        }
    # eval/ and model/ are written beside their final place and renamed into it when complete; results.json,
    # written last, is the mark of a finished run (an interrupted one leaves the previous outputs as they were)
    eval_dir, model_dir = out / "eval", out / "model"
    with StagedFolder(eval_dir, overwrite=True) as eval_stage, StagedFolder(model_dir, overwrite=True) as model_stage:
        val_files = write_evaluation(
            val_metrics, eval_stage.path, stem="validation", title=f"{model_name} - validation"
        )
        test_files = write_evaluation(test_metrics, eval_stage.path, stem="test", title=f"{model_name} - test")
        final = {
            key: str(eval_dir / Path(path).name)
            for key, path in (
                ("test_metrics", test_files["metrics"]),
                ("test_confusion_png", test_files["confusion_png"]),
                ("test_confusion_json", test_files["confusion_json"]),
                ("validation_metrics", val_files["metrics"]),
            )
        }

        best_checkpoint = trainer.state.best_model_checkpoint
        summary = {
            "model_name": model_name,
            "pretrained": args.pretrained,
            "base_model": args.base_model,
            "pretraining": describe_pretraining(args.pretrained),
            "preset": None if args.pretrained else args.preset,
            "seed": args.seed,
            "label_names": label_names,
            "classes_missing_from_splits": missing_classes,
            "num_rows": {split: len(dsd[split]) for split in dsd},
            "num_train_rows_used": len(train_ds),
            "best_checkpoint": Path(best_checkpoint).name if best_checkpoint else None,
            "best_validation_macro_f1": trainer.state.best_metric,
            "selection": "best validation macro-F1 over the evaluated checkpoints",
            "validation": headline(val_metrics),
            "test": {**headline(test_metrics), "per_class": test_metrics["per_class"]},
            "ood_threshold": threshold,
            "ood_percentile": args.ood_percentile,
            "test_share_below_ood_threshold": ood_rate,
            "train_runtime_s": float(train_output.metrics.get("train_runtime", math.nan)),
            "global_steps": trainer.state.global_step,
            "wall_time_s": None,
            "hyperparameters": _recipe(args, training_args),
            "files": {**final, "tensorboard": str(out / "tensorboard")},
            "log_history": trainer.state.log_history,
        }

        # --- the self-contained model folder ----------------------------------------------------------------
        save_model_folder(
            model,
            model_stage.path,
            dataset_source=None if dataset is not None else args.dataset,
            pretrained=args.pretrained,
        )
        shutil.copy(test_files["confusion_png"], model_stage.path / "test_confusion.png")
        shutil.copy(test_files["metrics"], model_stage.path / "test_metrics.json")
        summary["files"]["model"] = str(model_dir)
        summary["wall_time_s"] = time.time() - started

        from ..model_card import build_finetuned_model_card

        fe_config = _read_json(model_stage.path / "preprocessor_config.json")
        summary["flow_options"] = (fe_config or {}).get("flow_options") or _dataset_flow_options(
            None if dataset is not None else args.dataset
        )
        card = build_finetuned_model_card(
            summary,
            dataset_name=args.dataset_name or _dataset_display_name(args),
            feature_extractor_config=fe_config,
            config=model.config,
            repo_id=args.hub_model_id,
            base_model=args.base_model,
        )
        card.save(model_stage.path / "README.md")
        summary["files"]["model_card"] = str(model_dir / "README.md")
        eval_stage.commit()
        model_stage.commit()
    atomic_write_text(out / "results.json", json.dumps(to_jsonable(summary), indent=2) + "\n")

    if args.push_to_hub:  # the folder is complete by now: a push never publishes a half-written model
        summary["hub_url"] = push_model_folder(
            model_dir,
            args.hub_model_id,
            private=args.hub_private_repo,
            commit_message="Upload fine-tuned MMAE classifier",
        )
        atomic_write_text(out / "results.json", json.dumps(to_jsonable(summary), indent=2) + "\n")
    return summary


def save_model_folder(model, model_dir: Path, dataset_source: str | None = None, pretrained: str | None = None) -> Path:
    """``save_pretrained`` with the full ``auto_map`` and the pipeline (``custom_pipelines`` + its code, so that
    ``pipeline(model=folder, trust_remote_code=True)`` finds the task), plus the feature extractor of the dataset
    or pre-trained model."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    from ..modeling_mmae import set_auto_map

    set_auto_map(model.config)  # every Auto class, not only the saved one (trust_remote_code loading)
    from ..custom_pipelines import name_pipeline

    name_pipeline(model.config)
    model.save_pretrained(model_dir)
    from transformers.dynamic_module_utils import get_relative_import_files

    from .. import pipeline_traffic

    # the pipeline's file and the single-dot siblings it imports (the feature extractor, the data contract)
    for source in (pipeline_traffic.__file__, *get_relative_import_files(pipeline_traffic.__file__)):
        shutil.copy(source, model_dir / Path(source).name)
    _carry_feature_extractor(model_dir, [dataset_source, pretrained])
    return model_dir


def _carry_feature_extractor(model_dir: Path, sources: list[str | None]) -> Path | None:
    """Copy ``preprocessor_config.json`` (the flow-extraction / anonymisation settings) next to the model.

    Looked for first in the dataset folder (the settings the training flows were built with), then in the
    pre-trained model. Loaded and re-saved through ``MMAEFeatureExtractor`` so that a broken file fails here.
    """
    for source in sources:
        if not source:
            continue
        candidate = Path(source) / "preprocessor_config.json"
        if not candidate.is_file():
            continue
        try:
            from ..feature_extraction_mmae import MMAEFeatureExtractor
        except ImportError:  # feature extractor module not available: carry the file verbatim
            shutil.copy(candidate, model_dir / "preprocessor_config.json")
            return model_dir / "preprocessor_config.json"
        try:
            extractor = MMAEFeatureExtractor.from_pretrained(str(candidate.parent))
        except Exception as error:  # noqa: BLE001 - re-raised with the file named
            raise ValueError(f"{candidate}: cannot be read as an MMAEFeatureExtractor config: {error}") from error
        extractor.save_pretrained(str(model_dir))
        return model_dir / "preprocessor_config.json"
    logger.warning(
        "no preprocessor_config.json found in %s; the model folder has no feature extractor", [s for s in sources if s]
    )
    return None


PRETRAINING_SWITCHES = (
    "use_flowmix",
    "use_teacher",
    "use_loss_predictor",
    "use_pmp",
    "use_guided_masking",
    "mask_ratio",
)


def describe_pretraining(pretrained: str | None) -> dict[str, Any] | None:
    """What the encoder was pre-trained with, from the files train/pretrain.py leaves beside the model."""
    if not pretrained or not Path(pretrained).is_dir():
        return None
    folder = Path(pretrained)
    summary = _read_json(folder / "pretraining_summary.json") or {}
    run_args = _read_json(folder / "pretraining_args.json") or {}
    config = _read_json(folder / "config.json") or {}
    info = {
        "steps": summary.get("step"),
        "global_batch_size": summary.get("global_batch_size"),
        "split": run_args.get("split"),
        "peak_learning_rate": run_args.get("learning_rate") or run_args.get("base_learning_rate"),
        "switches": {k: config[k] for k in PRETRAINING_SWITCHES if k in config},
    }
    return {k: v for k, v in info.items() if v not in (None, {})} or None


def _recipe_summary(args: FinetuneArguments) -> str:
    length = f"{args.max_steps} steps" if args.max_steps and args.max_steps > 0 else f"{args.num_train_epochs:g} epochs"
    return (
        f"{length}, batch {args.per_device_train_batch_size}, lr {args.learning_rate:g}, layer decay "
        f"{args.layer_decay:g}, head warm-up {args.head_warmup_steps} steps, head on {args.classifier_pooling}"
    )


def _recipe(args: FinetuneArguments, training_args: TrainingArguments) -> dict[str, Any]:
    length = {"max_steps": args.max_steps} if args.max_steps > 0 else {"epochs": args.num_train_epochs}
    evaluated = f"every {args.eval_every_steps} steps" if args.max_steps > 0 else "every epoch"
    return {
        "recipe": args.recipe,
        **length,
        "head_warmup_steps": args.head_warmup_steps,
        "classifier_pooling": args.classifier_pooling,
        "batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "learning_rate": args.learning_rate,
        "layer_decay": args.layer_decay,
        "weight_decay": args.weight_decay,
        "warmup_ratio": args.warmup_ratio,
        "lr_scheduler": "linear warm-up then cosine",
        "label_smoothing": args.label_smoothing_factor,
        "optimizer": (f"AdamW (betas {training_args.adam_beta1:.3g}, {training_args.adam_beta2:.3g})"),
        "max_grad_norm": args.max_grad_norm,
        "freeze_encoder": args.freeze_encoder,
        "seed": args.seed,
        "precision": "bf16" if args.bf16 else "fp32",
        "selection": f"best validation macro-F1 (evaluated {evaluated})",
    }


def _dataset_display_name(args: FinetuneArguments) -> str:
    path = Path(args.dataset)
    return path.name if path.exists() else args.dataset


def _dataset_flow_options(dataset_source: str | None) -> dict | None:
    """Flow-extraction settings recorded by the dataset builder (``build_report.json``), if any."""
    if not dataset_source:
        return None
    report = _read_json(Path(dataset_source) / "build_report.json") if Path(dataset_source).is_dir() else None
    return (report or {}).get("flow_options")


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


__all__ = [
    "FinetuneArguments",
    "FlowClassificationCollator",
    "MMAEFinetuneTrainer",
    "build_model",
    "load_traffic_dataset",
    "make_compute_metrics",
    "make_training_arguments",
    "model_inputs_view",
    "payload_matrix",
    "push_model_folder",
    "run_finetuning",
    "save_model_folder",
]
