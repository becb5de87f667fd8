#!/usr/bin/env python
"""Pre-training step throughput, plain against torch.compile, with FLOP/s against the matmul rate.

    python benchmarks/bench_pretrain_step.py --threads 2               # -> benchmarks/results/pretrain_step.{json,md}

One step is what train/pretrain.py does per optimizer step: the EMA teacher's forward (decoder features), the
student's FlowMix forward with every loss, backward, AdamW, the EMA update. Inputs are random bytes of the real
layout with fixed partners and mask noise (the data path is measured by bench_pretrain_throughput.py). For each
preset and batch size: flows/s of the plain step and of the same step with ``--torch_compile`` (student and teacher
forward compiled; the compile time is reported apart), the FLOPs of one step counted by torch's FlopCounterMode, the
achieved FLOP/s as a share of a float32 2048^3 matmul on the same threads, and the largest relative difference of the
loss components between the two paths. The machine's load is recorded beside every number.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def matmul_rate(threads: int, size: int = 2048, repeats: int = 5) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def make_step(preset: str, batch: int, compiled: bool, seed: int = 0):
    import torch

    import mmae_hf  # noqa: F401
    from mmae_hf.configuration_mmae import MMAEConfig
    from mmae_hf.modeling_mmae import MMAEForPreTraining
    from mmae_hf.teacher import MeanTeacher
    from mmae_hf.training.pretraining import PretrainingArguments, build_optimizer_and_scheduler, teacher_targets

    config = MMAEConfig.from_preset(preset)
    torch.manual_seed(seed)
    model = MMAEForPreTraining(config).train()
    teacher = MeanTeacher(model, 0.96, 0.99, 1000)
    args = PretrainingArguments(dataset="-", output_dir="-", max_steps=1000, learning_rate=1e-3)
    optimizer, scheduler, _ = build_optimizer_and_scheduler(model, args, batch)
    student = torch.compile(model) if compiled else model
    if compiled:
        teacher.model.teacher_forward = torch.compile(teacher.model.teacher_forward)
    generator = torch.Generator().manual_seed(seed)

    def batch_inputs():
        return {
            "input_bytes": torch.randint(0, 256, (batch, config.num_bytes), dtype=torch.uint8, generator=generator),
            "packet_lengths": torch.randint(40, 1500, (batch, config.num_packets), generator=generator).int(),
            "packet_iats": torch.rand(batch, config.num_packets, generator=generator),
            "packet_directions": torch.ones(batch, config.num_packets, dtype=torch.int8),
            "partner_index": torch.arange(batch).view(-1, 2).flip(1).reshape(-1),
            "mask_noise": torch.rand(batch, config.num_tokens, generator=generator),
        }

    def step(inputs, step_index=0):
        inputs = dict(inputs)
        inputs.update(teacher_targets(teacher.model, inputs, config))
        out = student(**inputs)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        teacher.update(model, step_index)
        return {k: float(getattr(out, k)) for k in ("loss", "reconstruction_loss", "rank_loss", "distillation_loss")}

    return step, batch_inputs


def measure(preset: str, batch: int, threads: int, steps: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(threads)
    result = {"preset": preset, "batch": batch, "threads": threads, "load_before": os.getloadavg()[0]}
    losses = {}
    for compiled in (False, True):
        step, batch_inputs = make_step(preset, batch, compiled)
        inputs = [batch_inputs() for _ in range(steps + 2)]
        started = time.perf_counter()
        first = step(inputs[0], 0)  # compiles on the compiled path
        result["compile_seconds" if compiled else "first_step_seconds"] = round(time.perf_counter() - started, 1)
        losses[compiled] = first
        step(inputs[1], 1)
        started = time.perf_counter()
        for i in range(steps):
            step(inputs[2 + i], 2 + i)
        seconds = time.perf_counter() - started
        result["compiled" if compiled else "plain"] = round(steps * batch / seconds, 1)
        if not compiled:
            fresh_step, fresh_inputs = make_step(preset, batch, False)
            with FlopCounterMode(display=False) as counter:
                fresh_step(fresh_inputs(), 0)
            result["flops_per_flow"] = counter.get_total_flops() / batch
    result["max_relative_loss_difference"] = max(
        abs(losses[True][k] - losses[False][k]) / max(abs(losses[False][k]), 1e-12) for k in losses[False]
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

    rate = matmul_rate(args.threads)
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
