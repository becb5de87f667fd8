#!/usr/bin/env python
"""Pre-training step throughput, plain against torch.compile, with FLOP/s against the matmul rate.

    python benchmarks/bench_pretrain_step.py --threads 2               # -> benchmarks/results/pretrain_step.{json,md}

One step is bench_model.py's pre-training step, what train/pretrain.py does per optimizer step: the EMA teacher's
forward, the student's FlowMix forward with every loss, backward, AdamW, the EMA update, on fixed collated batches
(the data path is measured by bench_pretrain_throughput.py). For each preset and batch size: flows/s of the plain
step and of the same step with ``--torch_compile`` (student and teacher forward compiled; the compile time is
reported apart), the FLOPs of one step (FlopCounterMode with the SDPA kernels counted), the achieved FLOP/s as a
share of a float32 2048^3 matmul on the same threads (bench_model.py's best of 12), and the largest relative
difference of the first step's losses between the two paths. The machine's load is recorded beside every number.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

LOSSES = ("loss", "reconstruction_loss", "rank_loss", "distillation_loss")


def measure(preset: str, batch: int, threads: int, steps: int) -> dict:
    """Plain and compiled flows/s of bench_model's pre-training step (the same seed, batches and initial weights),
    the FLOPs of one step (SDPA counted) and the largest relative difference of the first step's losses."""
    import torch
    from bench_model import count_flops, pretraining_step_factory

    torch.set_num_threads(threads)
    result = {"preset": preset, "batch": batch, "threads": threads, "load_before": os.getloadavg()[0]}
    losses = {}
    for compiled in (False, True):
        step = pretraining_step_factory(preset, batch, bf16=False, compiled=compiled)
        started = time.perf_counter()
        first = step()  # compiles on the compiled path
        result["compile_seconds" if compiled else "first_step_seconds"] = round(time.perf_counter() - started, 1)
        losses[compiled] = {k: float(getattr(first, k).detach()) for k in LOSSES}
        step()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        result["compiled" if compiled else "plain"] = round(steps * batch / (time.perf_counter() - started), 1)
    result["flops_per_flow"] = count_flops(pretraining_step_factory(preset, batch, bf16=False)) / batch
    result["max_relative_loss_difference"] = max(
        abs(losses[True][k] - losses[False][k]) / max(abs(losses[False][k]), 1e-12) for k in LOSSES
    )
    result["load_after"] = os.getloadavg()[0]
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--presets", nargs="+", default=["mmae-tiny", "mmae-small"])
    p.add_argument("--batches", nargs="+", type=int, default=[16, 64])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--name", default="pretrain_step")
    args = p.parse_args(argv)
    import torch
    from bench_model import matmul_flops

    torch.set_num_threads(args.threads)
    rate = matmul_flops(torch.float32)
    rows = []
    for preset in args.presets:
        for batch in args.batches:
            row = measure(preset, batch, args.threads, args.steps)
            for path in ("plain", "compiled"):
                row[f"{path}_share_of_matmul"] = row[path] * row["flops_per_flow"] / rate
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {
        "what": "pre-training step (teacher + FlowMix student + all losses + backward + AdamW + EMA), fp32",
        "command": "python benchmarks/bench_pretrain_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "matmul_flops_per_second": rate,
        "threads": args.threads,
        "rows": rows,
    }
    results = REPO / "benchmarks" / "results"
    (results / f"{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        f"# Pre-training step: plain vs torch.compile ({args.threads} threads, {out['date_utc']})",
        "",
        f"fp32 2048^3 matmul on {args.threads} threads: {rate / 1e9:.1f} GFLOP/s. Command: `{out['command']}`",
        "",
        "| preset | batch | plain flows/s | compiled flows/s | speed-up | GFLOP per flow | plain / compiled "
        "share of matmul | compile s | max loss rel. diff | load before / after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['batch']} | {r['plain']} | {r['compiled']} | "
            f"{r['compiled'] / r['plain']:.2f}x | {r['flops_per_flow'] / 1e9:.3f} | "
            f"{r['plain_share_of_matmul']:.0%} / {r['compiled_share_of_matmul']:.0%} | "
            f"{r['compile_seconds']} | {r['max_relative_loss_difference']:.1e} | "
            f"{r['load_before']:.1f} / {r['load_after']:.1f} |"
        )
    (results / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
