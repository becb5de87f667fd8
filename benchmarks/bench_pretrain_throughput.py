#!/usr/bin/env python
"""Pre-training throughput (flows/s per process) for 1 and 2 data-parallel processes, mmae-tiny and mmae-base.

Each measurement is a short real run of train/pretrain.py (teacher, FlowMix, PMP, AdamW: everything a real
run does) on a synthetic dataset; the number is the script's own `samples_per_second_per_process` (the first
optimizer step, which pays one-off costs, is excluded). One process runs with plain `python`; two processes
with `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2` on a CPU machine (gloo) or
`accelerate launch --multi_gpu --num_processes 2` with GPUs.

    python benchmarks/bench_pretrain_throughput.py                     # -> benchmarks/results/pretrain_throughput.json
    python benchmarks/bench_pretrain_throughput.py --configs mmae-tiny --steps 4

The machine's load (`os.getloadavg`) before and after every run is recorded beside the numbers: on a shared
machine, numbers taken under load are lower bounds.
"""

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one(config, processes, steps, batch_size, data_dir, work_dir, use_gpu, threads, compiled=False, bf16=False):
    out = work_dir / f"{config}-{processes}p-{threads}t{'-compiled' if compiled else ''}{'-bf16' if bf16 else ''}"
    script_args = [
        str(REPO / "train" / "pretrain.py"),
        "--dataset",
        str(data_dir),
        "--config",
        config,
        "--output_dir",
        str(out),
        "--max_steps",
        str(steps),
        "--per_device_train_batch_size",
        str(batch_size),
        "--save_steps",
        "0",
        "--logging_steps",
        str(steps),
        "--report_to",
        "none",
        "--disable_tqdm",
    ]
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        HF_HOME=str(work_dir / "hf_home"),
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    if not use_gpu:
        script_args.append("--use_cpu")
    if compiled:
        script_args.append("--torch_compile")
    if bf16:  # bf16 autocast (weights stay fp32)
        script_args += ["--mixed_precision", "bf16"]
    if processes == 1:
        command = [sys.executable] + script_args
    else:
        if not use_gpu:
            env["ACCELERATE_USE_CPU"] = "1"
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.accelerate_cli",
            "launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--main_process_port",
            str(free_port()),
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ] + script_args
    load_before = os.getloadavg()
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{config} x {processes} processes failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    summary = json.loads((out / "pretraining_summary.json").read_text())
    per_process = summary["samples_per_second_per_process"]
    return {
        "config": config,
        "processes": processes,
        "world_size": summary["world_size"],
        "distributed_type": summary["distributed_type"],
        "per_device_batch_size": batch_size,
        "steps": steps,
        "threads_per_process": threads,
        "torch_compile": compiled,
        "mixed_precision": "bf16" if bf16 else "no",
        "samples_per_second_per_process": [round(v, 2) for v in per_process],
        "samples_per_second_total": round(sum(per_process), 2),
        "wall_seconds_including_startup": round(wall, 1),
        "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--configs", nargs="+", default=["mmae-tiny", "mmae-base"])
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is not timed)")
    parser.add_argument("--batch-size", type=int, default=16, help="flows per process per step")
    parser.add_argument(
        "--single-process-threads",
        nargs="+",
        type=int,
        default=None,
        help="CPU threads for the 1-process runs, one run each (default: all cores); "
        "multi-process runs use cores / processes each",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=["plain", "compiled", "bf16", "compiled-bf16"],
        default=["plain"],
        help="plain, --torch_compile and/or bf16 autocast runs (compiling happens in the first step, which is not timed)",
    )
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "pretrain_throughput.json"))
    args = parser.parse_args(argv)

    import torch

    from mmae_hf.testing.synthetic import make_synthetic_traffic_dataset

    use_gpu = torch.cuda.is_available()
    cores = os.cpu_count() or 1
    results = []
    with tempfile.TemporaryDirectory(prefix="mmae-bench-") as tmp:
        work = Path(tmp)
        flows_needed = args.batch_size * max(args.processes) * (args.steps + 1)
        per_class = max(16, 2 * flows_needed // 4 + 4)  # half of each class lands in train
        data = work / "data"
        make_synthetic_traffic_dataset(num_classes=4, flows_per_class=per_class, seed=0).save_to_disk(str(data))
        for config in args.configs:
            for processes in args.processes:
                if use_gpu:
                    thread_options = [1]
                elif processes == 1 and args.single_process_threads:
                    thread_options = args.single_process_threads
                else:
                    thread_options = [max(1, cores // processes)]
                for threads in thread_options:
                    for mode in args.modes:
                        print(f"{config}, {processes} process(es), {threads} thread(s) each, {mode} ...", flush=True)
                        row = run_one(
                            config,
                            processes,
                            args.steps,
                            args.batch_size,
                            data,
                            work,
                            use_gpu,
                            threads,
                            compiled=mode.startswith("compiled"),
                            bf16=mode.endswith("bf16"),
                        )
                        print(json.dumps(row), flush=True)
                        results.append(row)

    def git(*command):
        try:
            return subprocess.run(["git", *command], cwd=str(REPO), capture_output=True, text=True).stdout.strip()
        except OSError:
            return None

    report = {
        "git_commit": git("rev-parse", "HEAD"),
        # the model code measured: uncommitted edits in the working tree change the numbers
        "uncommitted_changes_in_mmae_hf": bool(git("status", "--porcelain", "--", "mmae_hf")),
        "what": "pre-training flows/s per process (train/pretrain.py, teacher + FlowMix + PMP + AdamW, fp32), "
        "first step excluded",
        "command": "python benchmarks/bench_pretrain_throughput.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": torch.cuda.get_device_name(0)
        if use_gpu
        else f"CPU ({platform.processor() or platform.machine()}, {cores} cores)",
        "torch": torch.__version__,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "shared machine: see load_average_1min_before_after; numbers under load are lower bounds",
        "results": results,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
