#!/usr/bin/env python
"""Pre-train MMAE (FlowMix + PMP-guided masking + mean teacher) on the train split of a flow dataset.

The work is done by `mmae_hf.training.pretraining.run_pretraining`; this script only parses arguments.
"""

import argparse
import sys

LAUNCH_HELP = """\
launching:
  one process (CPU or one GPU):
    python train/pretrain.py --dataset DIR_OR_HUB_ID --config mmae-tiny --output-dir runs/mmae-tiny
  one node, 8 GPUs (DDP; --per-device-train-batch-size is per GPU, the global batch is 8x):
    accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 train/pretrain.py \\
        --dataset org/traffic --config mmae-base --mixed-precision bf16 --output-dir runs/mmae-base
  several nodes (run on every node; --num_processes counts ALL processes; $RANK = this node's index):
    accelerate launch --multi_gpu --num_machines 2 --num_processes 16 --machine_rank $RANK \\
        --main_process_ip $HEAD_IP --main_process_port 29500 train/pretrain.py ...
  FSDP / DeepSpeed: accelerate launch --config_file train/accelerate_configs/fsdp.yaml train/pretrain.py ...
    (also deepspeed_zero2.yaml, ddp_multi_node.yaml; see docs/training.md)
  two CPU processes (gloo; a test of the DDP path without GPUs). Note: `accelerate launch --cpu
  --num_processes 2` silently starts ONE process; this starts two:
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        --main_process_port 29533 train/pretrain.py --dataset ...   (ACCELERATE_USE_CPU=1 implies --cpu)

outputs (in --output-dir):
  config.json + model.safetensors   the student, loadable with AutoModel / AutoModelForPreTraining
  preprocessor_config.json          copied from the dataset folder when it carries one
  metrics.jsonl, runs/ (tensorboard) every loss component, lr, EMA momentum, hard-mask share, samples/s
  checkpoints/checkpoint-<step>/    exact-resume states (--resume-from-checkpoint latest)
  pretraining_summary.json          final step, samples/s per process, last metrics
  pretraining_curves.png            loss components, lr, EMA momentum, hard-mask share over the steps
"""


def build_parser():
    from mmae_hf.training.pretraining import PretrainingArguments

    defaults = PretrainingArguments(dataset="", output_dir="")
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=LAUNCH_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = p.add_argument_group("data and model")
    data.add_argument("--dataset", required=True, help="dataset folder (save_to_disk or parquet shards) or Hub dataset id")
    data.add_argument("--split", default=defaults.split, help="split to pre-train on (validation/test refused; default: train)")
    data.add_argument("--dataset-cache-dir", default=None, help="datasets cache folder for parquet folders / Hub ids")
    data.add_argument("--config", default=defaults.config,
                      help="preset (mmae-base, mmae-tiny), config.json or model folder (default: mmae-base)")
    data.add_argument("--config-override", action="append", default=[], metavar="KEY=VALUE",
                      help="change a config field, e.g. --config-override mask_ratio=0.75 (repeatable)")
    data.add_argument("--output-dir", required=True)
    run = p.add_argument_group("length and batch")
    run.add_argument("--max-steps", type=int, default=defaults.max_steps, help="optimizer steps (default: 150000)")
    run.add_argument("--per-device-train-batch-size", type=int, default=defaults.per_device_train_batch_size,
                     help="flows per process per micro-batch; even (default: 128)")
    run.add_argument("--gradient-accumulation-steps", type=int, default=defaults.gradient_accumulation_steps)
    run.add_argument("--stop-after-step", type=int, default=None,
                     help="end this invocation after this step with a checkpoint (schedules still span --max-steps)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--learning-rate", type=float, default=None,
                     help="peak lr (default: base lr x global batch / 256)")
    opt.add_argument("--base-learning-rate", type=float, default=defaults.base_learning_rate)
    opt.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    opt.add_argument("--adam-beta1", type=float, default=defaults.adam_beta1)
    opt.add_argument("--adam-beta2", type=float, default=defaults.adam_beta2)
    opt.add_argument("--warmup-steps", type=int, default=None)
    opt.add_argument("--warmup-ratio", type=float, default=defaults.warmup_ratio)
    opt.add_argument("--min-lr-ratio", type=float, default=defaults.min_lr_ratio)
    opt.add_argument("--max-grad-norm", type=float, default=defaults.max_grad_norm, help="0 disables clipping")
    opt.add_argument("--ema-momentum-start", type=float, default=defaults.ema_momentum_start)
    opt.add_argument("--ema-momentum-end", type=float, default=defaults.ema_momentum_end)
    rt = p.add_argument_group("runtime")
    rt.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None,
                    help="default: the launcher's setting (accelerate launch --mixed_precision / config file), else no")
    rt.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    rt.add_argument("--seed", type=int, default=defaults.seed)
    rt.add_argument("--num-workers", type=int, default=defaults.num_workers, help="background batch-reading threads")
    rt.add_argument("--logging-steps", type=int, default=defaults.logging_steps)
    rt.add_argument("--save-steps", type=int, default=defaults.save_steps, help="checkpoint every N steps (0: off)")
    rt.add_argument("--save-total-limit", type=int, default=defaults.save_total_limit)
    rt.add_argument("--resume-from-checkpoint", default=None, help="checkpoint folder or 'latest'")
    rt.add_argument("--allow-inexact-resume", action="store_true",
                    help="continue even if the checkpoint's RNG / collator states cannot be restored (not exact)")
    rt.add_argument("--report-to", choices=("tensorboard", "none"), default=defaults.report_to)
    rt.add_argument("--ddp-find-unused-parameters", choices=("auto", "true", "false"),
                    default=defaults.ddp_find_unused_parameters)
    rt.add_argument("--save-teacher", action="store_true", help="also save the EMA teacher in OUTPUT_DIR/teacher")
    rt.add_argument("--overwrite-output-dir", action="store_true",
                    help="start over in a folder holding an earlier run's checkpoints (deletes them)")
    rt.add_argument("--torch-threads", type=int, default=None,
                    help="CPU threads per process (on small shared machines 1 can be much faster than all cores)")
    rt.add_argument("--no-progress-bar", action="store_true")
    return p


def main(argv=None):
    parser = build_parser()
    ns = parser.parse_args(argv)
    from mmae_hf.training.pretraining import (
        CheckpointError,
        LaunchError,
        NonFiniteLossError,
        PretrainingArguments,
        parse_config_overrides,
        run_pretraining,
    )
    from mmae_hf.training.data import DatasetLoadError

    values = vars(ns).copy()
    values["config_overrides"] = parse_config_overrides(values.pop("config_override"))
    values["progress_bar"] = not values.pop("no_progress_bar")
    try:
        args = PretrainingArguments(**values)
        run_pretraining(args)
    except (NonFiniteLossError, CheckpointError, DatasetLoadError, LaunchError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
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
        print(f"warning: the run finished but the process did not exit within {grace_seconds:.0f} s; "
              "stacks of all threads follow, then the process exits", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    threading.Thread(target=watchdog, name="mmae-exit-watchdog", daemon=True).start()
    faulthandler.dump_traceback_later(grace_seconds + 30.0, exit=True)


if __name__ == "__main__":
    from mmae_hf.traffic.atomic import run_interruptible

    # Ctrl-C / SIGTERM: one line and exit 130 / 143 (checkpoints are renamed into place only when complete)
    exit_code = run_interruptible(main, "pretrain.py", "the checkpoints written so far are complete "
                                  "(continue with --resume-from-checkpoint latest)")
    guard_process_exit(exit_code)  # only as a script: in-process callers (tests) keep their interpreter
    sys.exit(exit_code)
