#!/usr/bin/env python
"""Pre-train MMAE (FlowMix + PMP-guided masking + mean teacher) on the train split of a flow dataset.

The work is done by `mmae_hf.training.pretraining.run_pretraining`; this script only parses arguments. Options use
the Trainer's names (--output_dir, --per_device_train_batch_size, --max_steps, --learning_rate, --use_cpu, ...);
older spellings (--output-dir, --per-device-train-batch-size, --config-override, --no-progress-bar, --cpu, ...)
still work and print one deprecation line. Exit status: 0 on success, 2 on a bad argument or input (one line on
stderr; --debug shows the traceback), 1 when the run itself fails (a non-finite loss).
"""

import dataclasses
import os
import sys
import typing

LAUNCH_HELP = """\
launching:
  one process (CPU or one GPU):
    python train/pretrain.py --dataset DIR_OR_HUB_ID --config mmae-tiny --output_dir runs/mmae-tiny
  one node, 8 GPUs (DDP; --per_device_train_batch_size is per GPU, the global batch is 8x):
    accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 train/pretrain.py \\
        --dataset org/traffic --config mmae-base --mixed_precision bf16 --output_dir runs/mmae-base
  several nodes (run on every node; --num_processes counts ALL processes; $RANK = this node's index):
    accelerate launch --multi_gpu --num_machines 2 --num_processes 16 --machine_rank $RANK \\
        --main_process_ip $HEAD_IP --main_process_port 29500 train/pretrain.py ...
  FSDP / DeepSpeed: accelerate launch --config_file train/accelerate_configs/fsdp.yaml train/pretrain.py ...
    (also deepspeed_zero2.yaml, ddp_multi_node.yaml; see docs/training.md)
  two CPU processes (gloo; a test of the DDP path without GPUs). Note: `accelerate launch --cpu
  --num_processes 2` silently starts ONE process; this starts two:
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        --main_process_port 29533 train/pretrain.py --dataset ...   (ACCELERATE_USE_CPU=1 implies --use_cpu)
  `accelerate launch` without a config file warns that it chose defaults ("`--num_processes` was set to a value
  of `0`" on a machine without GPUs, i.e. one process); pass --num_processes 1 --num_machines 1
  --mixed_precision no --dynamo_backend no, or run `accelerate config default` once, to silence it.

outputs (in --output_dir):
  config.json + model.safetensors   the student, loadable with AutoModel / AutoModelForPreTraining
  README.md                         model card: corpus, steps, flows seen, final losses, curves
  preprocessor_config.json          copied from the dataset folder when it carries one
  metrics.jsonl, runs/ (tensorboard) every loss component, lr, EMA momentum, hard-mask share, samples/s
  checkpoints/checkpoint-<step>/    exact-resume states (--resume_from_checkpoint latest)
  pretraining_summary.json          final step, samples/s per process, last metrics
  pretraining_curves.png            loss components, lr, EMA momentum, hard-mask share over the steps
"""

# old option names; dash forms of every option are accepted too
RENAMED_OPTIONS = {
    "--config_override": "--config_overrides",
    "--no_progress_bar": "--disable_tqdm",
    "--cpu": "--use_cpu",
    "--num_workers": "--dataloader_num_workers",
}
SYNONYMS = {"--no_progress": "--disable_tqdm", "--no-progress": "--disable_tqdm"}

# option groups of --help; fields of PretrainingArguments not named here go to "runtime"
GROUPS = {
    "data and model": ("dataset", "split", "dataset_cache_dir", "config", "config_overrides", "output_dir"),
    "length and batch": ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "stop_after_step"),
    "optimisation": (
        "learning_rate",
        "base_learning_rate",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "warmup_steps",
        "warmup_ratio",
        "min_lr_ratio",
        "max_grad_norm",
        "ema_momentum_start",
        "ema_momentum_end",
    ),
}
HELP = {
    "dataset": "dataset folder (save_to_disk or parquet shards) or Hub dataset id",
    "output_dir": "where the model, checkpoints, logs and the model card go",
    "split": "split to pre-train on (validation and test are refused)",
    "dataset_cache_dir": "datasets cache folder for parquet folders and Hub ids",
    "config": "preset (mmae-base, mmae-tiny), config.json or model folder",
    "config_overrides": "config fields to change, KEY=VALUE ..., e.g. --config_overrides mask_ratio=0.75 use_pmp=false",
    "max_steps": "optimizer steps",
    "per_device_train_batch_size": "flows per process per micro-batch; even (FlowMix pairs flows)",
    "gradient_accumulation_steps": "micro-batches per optimizer step",
    "stop_after_step": "end this invocation after this step with a checkpoint (schedules still span --max_steps)",
    "learning_rate": "peak lr (default: --base_learning_rate x global batch / 256)",
    "base_learning_rate": "lr per 256 flows of global batch, used when --learning_rate is not given",
    "weight_decay": "AdamW weight decay (not on biases, norms, position embeddings, CLS)",
    "adam_beta1": "AdamW beta1",
    "adam_beta2": "AdamW beta2",
    "adam_epsilon": "AdamW epsilon",
    "warmup_steps": "linear warm-up steps (default: --warmup_ratio of --max_steps)",
    "warmup_ratio": "share of the steps used for linear warm-up",
    "min_lr_ratio": "the cosine decays to this share of the peak lr",
    "max_grad_norm": "gradient clipping; 0 turns it off",
    "ema_momentum_start": "teacher EMA momentum at the start (cosine schedule)",
    "ema_momentum_end": "teacher EMA momentum at the end",
    "mixed_precision": "no, bf16 or fp16 (default: the launcher's setting, accelerate launch --mixed_precision or "
    "a config file, else no)",
    "use_cpu": "run on the CPU even when a GPU is present",
    "seed": "model init, data order, FlowMix pairs, mask noise",
    "dataloader_num_workers": "background threads reading batches",
    "logging_steps": "log every N steps",
    "save_steps": "checkpoint every N steps (0: off)",
    "save_total_limit": "checkpoints kept",
    "resume_from_checkpoint": "checkpoint folder, or 'latest'",
    "allow_inexact_resume": "continue even if the checkpoint's RNG / collator states cannot be restored (not exact)",
    "report_to": "tensorboard or none (metrics.jsonl is always written)",
    "ddp_find_unused_parameters": "auto, true or false",
    "save_teacher": "also save the EMA teacher in OUTPUT_DIR/teacher",
    "overwrite_output_dir": "start over in a folder holding an earlier run's checkpoints (deletes them)",
    "torch_threads": "CPU threads per process (on small shared machines 1 can be much faster than all cores)",
    "torch_compile": "compile the student's and teacher's forward (torch.compile; the first step pays the compilation)",
    "disable_tqdm": "no progress bar at all (--no_progress works too); without it the bar is drawn only when stderr "
    "is a terminal",
}
CLI_ONLY = {"config_overrides", "progress_bar"}  # fields whose command-line form differs (see cli_dataclasses)


def cli_dataclasses():
    """Dataclasses for HfArgumentParser, one per --help group, made from PretrainingArguments' fields (so a new
    field is an option at once): ``config_overrides`` becomes a KEY=VALUE list, ``progress_bar`` ``--disable_tqdm``."""
    from mmae_hf.training.pretraining import PretrainingArguments

    hints = typing.get_type_hints(PretrainingArguments)
    specs = {}
    for f in dataclasses.fields(PretrainingArguments):
        if f.name in CLI_ONLY:
            continue
        if f.default is not dataclasses.MISSING:
            default = dataclasses.field(default=f.default, metadata={"help": HELP.get(f.name, "")})
        elif f.default_factory is not dataclasses.MISSING:
            default = dataclasses.field(default_factory=f.default_factory, metadata={"help": HELP.get(f.name, "")})
        else:
            default = dataclasses.field(metadata={"help": HELP.get(f.name, "")})
        specs[f.name] = (f.name, hints[f.name], default)
    specs["config_overrides"] = (
        "config_overrides",
        list[str],
        dataclasses.field(
            default_factory=list,
            metadata={"help": HELP["config_overrides"], "action": "extend", "metavar": "KEY=VALUE"},
        ),
    )
    specs["disable_tqdm"] = (
        "disable_tqdm",
        bool,
        dataclasses.field(default=False, metadata={"help": HELP["disable_tqdm"]}),
    )
    grouped = {name: [specs.pop(n) for n in names if n in specs] for name, names in GROUPS.items()}
    grouped["runtime"] = list(specs.values())
    classes = []
    for title, fields in grouped.items():
        required = [
            f for f in fields if f[2].default is dataclasses.MISSING and f[2].default_factory is dataclasses.MISSING
        ]
        optional = [f for f in fields if f not in required]
        cls = dataclasses.make_dataclass("Pretrain_" + title.replace(" ", "_"), required + optional)
        cls._argument_group_name = title
        classes.append(cls)
    return classes


def build_parser():
    from mmae_hf.argparsing import TrainingScriptParser

    return TrainingScriptParser(
        cli_dataclasses(),
        renamed=RENAMED_OPTIONS,
        synonyms=SYNONYMS,
        prog="pretrain.py",
        description=__doc__.split("\n\n")[0],
        epilog=LAUNCH_HELP,
    )


def main(argv=None):
    from mmae_hf.checks import run_main

    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    return run_main("pretrain.py", lambda: _run(argv), debug=debug)


def _run(argv) -> int:
    from mmae_hf.progress import progress_wanted, set_library_progress_bars

    *groups, _ = build_parser().parse(argv)
    values = {k: v for group in groups for k, v in dataclasses.asdict(group).items()}
    from mmae_hf.training.pretraining import (
        CheckpointError,
        LaunchError,
        NonFiniteLossError,
        PretrainingArguments,
        parse_config_overrides,
        run_pretraining,
    )

    values["config_overrides"] = parse_config_overrides(values.pop("config_overrides"))
    progress = progress_wanted(values.pop("disable_tqdm"))
    values["progress_bar"] = progress
    args = PretrainingArguments(**values)  # a ValueError here: one line, exit 2, before any data is read
    set_library_progress_bars(progress)
    try:
        result = run_pretraining(args)
    except NonFiniteLossError as error:  # the run failed (not the arguments)
        print(f"pretrain.py: error: {error}", file=sys.stderr)
        return 1
    except (CheckpointError, LaunchError) as error:
        print(f"pretrain.py: error: {error}", file=sys.stderr)
        return 2
    if result.finished and int(os.environ.get("RANK", "0")) == 0:  # one process writes the model card
        from mmae_hf.model_card import write_pretraining_model_card

        print(f"model card: {write_pretraining_model_card(args.output_dir)}")
    return 0


def guard_process_exit(code, grace_seconds=60.0):
    """Make sure a finished run's process really ends, even if a library's teardown stalls.

    Everything the run produces is written and closed by now. A stall in interpreter shutdown (a non-daemon
    thread, an atexit hook, a collective backend's destructor) would otherwise keep `accelerate launch` waiting
    forever with nothing printed. After `grace_seconds` a daemon thread dumps every thread's stack to stderr
    (the information a bug report needs) and ends the process with the run's own exit code; faulthandler's C
    watchdog covers a stall in C code that holds the interpreter, 30 s later.
    """
    import faulthandler
    import os
    import threading
    import time

    def watchdog():
        time.sleep(grace_seconds)
        print(
            f"warning: the run finished but the process did not exit within {grace_seconds:.0f} s; "
            "stacks of all threads follow, then the process exits",
            file=sys.stderr,
            flush=True,
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    threading.Thread(target=watchdog, name="mmae-exit-watchdog", daemon=True).start()
    faulthandler.dump_traceback_later(grace_seconds + 30.0, exit=True)


if __name__ == "__main__":
    from mmae_hf.traffic.atomic import run_interruptible

    # Ctrl-C / SIGTERM: one line and exit 130 / 143 (checkpoints are renamed into place only when complete)
    exit_code = run_interruptible(
        main,
        "pretrain.py",
        "the checkpoints written so far are complete (continue with --resume_from_checkpoint latest)",
    )
    guard_process_exit(exit_code)  # only as a script: in-process callers (tests) keep their interpreter
    sys.exit(exit_code)
