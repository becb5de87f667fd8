"""Throughput, memory and FLOP efficiency of the MMAE model on this CPU (a benchmark, not a test).

    python benchmarks/bench_model.py [--presets mmae-base mmae-tiny] [--quick]

For each preset it measures, each in a fresh subprocess (so that the peak resident memory belongs to one measurement):
  * pre-training samples/s: one full step = teacher forward (unmasked flows, guided-masking scores) + student
    forward/backward (FlowMix, PMP loss predictor, distillation) + AdamW + in-place EMA update, batch 32;
  * inference flows/s: `MMAEForSequenceClassification` in eval mode, batch 256;
  * float32 and bfloat16 autocast for both;
  * achieved FLOP/s (FLOPs counted with torch.utils.flop_counter plus the CPU SDPA kernels, which it does not know)
    as a fraction of a plain float32 (and bf16) 2048^3 matmul measured in the same run;
  * a short loss curve of mmae-tiny in float32 vs bf16 autocast from the same initialisation and batches.
The machine is shared: the load average (uptime) before and after is recorded with the numbers, and every rate is
also given per CPU-second of the measuring process (robust to other processes holding the cores; with
`--num-threads 1` that is the single-core rate, and "x official on 2 busy cores" doubles it). Results go to
benchmarks/results/model.json. The official code's step for 32 flows takes ~15 s here (2.1 samples/s).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


RESULTS = Path(__file__).resolve().parent / "results" / "model.json"
OFFICIAL_SAMPLES_PER_S = 2.1


def load_average():
    return [round(x, 2) for x in os.getloadavg()]


def matmul_flops(dtype, size=2048, repeats=12):
    """Best of `repeats` (wall clock): the least disturbed run on a shared machine."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def sdpa_flops_mapping():
    """FlopCounterMode formulas for the CPU SDPA kernels (4*B*H*L*S*d forward, twice that backward)."""

    # FlopCounterMode passes the input shapes (torch.Size), not the tensors
    def fwd(query, key, value, *args, out_shape=None, **kwargs):
        b, h, l, d = query
        return 4 * b * h * l * key[-2] * d

    def bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        b, h, l, d = query
        return 8 * b * h * l * key[-2] * d

    mapping = {}
    aten = torch.ops.aten
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = fwd
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = bwd
    return mapping


def count_flops(fn):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=sdpa_flops_mapping()) as counter:
        fn()
    return counter.get_total_flops()


def make_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "input_bytes": rng.integers(0, 256, 1600, dtype=np.uint8),
            "packet_lengths": rng.integers(40, 1500, 5).astype(np.int32),
            "packet_iats": rng.random(5).astype(np.float32),
            "packet_directions": rng.choice([-1, 1], 5).astype(np.int8),
            "flow_stats": (rng.random(27) * 1000).astype(np.float32),
        }
        for _ in range(n)
    ]


def pretraining_step_factory(preset, batch_size, bf16, seed=0, compiled=False):
    """One pre-training step (teacher, FlowMix student with every loss, backward, AdamW, EMA) on fixed batches.
    ``compiled``: the student and the teacher's forward go through ``torch.compile``, as ``--torch_compile`` does."""
    from mmae_hf import DataCollatorForFlowMix, MeanTeacher, MMAEConfig, MMAEForPreTraining

    torch.manual_seed(seed)
    config = MMAEConfig.from_preset(preset)
    model = MMAEForPreTraining(config).train()
    teacher = MeanTeacher(model, total_steps=1000)
    student = torch.compile(model) if compiled else model
    if compiled:
        teacher.model.teacher_forward = torch.compile(teacher.model.teacher_forward)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    collator = DataCollatorForFlowMix(config, seed=seed)
    batches = [collator(make_rows(batch_size, seed=seed + i)) for i in range(4)]
    state = {"step": 0}

    def step():
        batch = batches[state["step"] % len(batches)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            with torch.no_grad():
                targets = teacher(**batch)
            out = student(
                **batch,
                teacher_features=targets.features,
                hard_token_scores=targets.predicted_token_loss,
                hard_mask_share=0.25,
            )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        teacher.update(model, state["step"])
        state["step"] += 1
        return out

    return step


def worker_pretrain(preset, bf16, batch_size, steps):
    step = pretraining_step_factory(preset, batch_size, bf16)
    flops = count_flops(step)  # also the warm-up step
    step()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - t0) / steps
    cpu = (time.process_time() - c0) / steps
    return {
        "seconds_per_step": seconds,
        "samples_per_s": batch_size / seconds,
        "flops_per_step": flops,
        "cpu_seconds_per_step": cpu,
    }


def worker_inference(preset, bf16, batch_size, batches):
    from mmae_hf import MMAEConfig, MMAEForSequenceClassification

    torch.manual_seed(0)
    model = MMAEForSequenceClassification(MMAEConfig.from_preset(preset, num_labels=8)).eval()
    x = torch.randint(0, 256, (batch_size, 1600), dtype=torch.uint8)

    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(x).logits

    flops = count_flops(run)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        run()
    seconds = (time.perf_counter() - t0) / batches
    cpu = (time.process_time() - c0) / batches
    return {
        "seconds_per_batch": seconds,
        "flows_per_s": batch_size / seconds,
        "flops_per_batch": flops,
        "cpu_seconds_per_batch": cpu,
    }


def worker_curve(preset, steps, batch_size):
    curves = {}
    for name, bf16 in (("float32", False), ("bf16_autocast", True)):
        step = pretraining_step_factory(preset, batch_size, bf16, seed=1)
        curves[name] = [round(float(step().loss), 5) for _ in range(steps)]
    f32, b16 = np.array(curves["float32"]), np.array(curves["bf16_autocast"])
    return {
        "steps": steps,
        "batch_size": batch_size,
        "loss_float32": curves["float32"],
        "loss_bf16_autocast": curves["bf16_autocast"],
        "max_relative_difference": float(np.max(np.abs(f32 - b16) / np.abs(f32))),
        "float32_first_last": [float(f32[0]), float(f32[-1])],
        "bf16_first_last": [float(b16[0]), float(b16[-1])],
    }


def worker(args):
    torch.set_num_threads(args.threads)
    if args.kind == "matmul":
        result = {"float32": matmul_flops(torch.float32), "bfloat16": matmul_flops(torch.bfloat16)}
    elif args.kind == "pretrain":
        result = worker_pretrain(args.preset, args.bf16, args.batch_size, args.steps)
    elif args.kind == "inference":
        result = worker_inference(args.preset, args.bf16, args.batch_size, args.steps)
    else:
        result = worker_curve(args.preset, args.steps, args.batch_size)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def run_worker(kind, preset="mmae-tiny", bf16=False, batch_size=32, steps=1, threads=None):
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--preset",
        preset,
        "--batch-size",
        str(batch_size),
        "--steps",
        str(steps),
        "--threads",
        str(threads or torch.get_num_threads()),
    ]
    if bf16:
        cmd.append("--bf16")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {kind} {preset} failed:\n{proc.stderr[-3000:]}")
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["mmae-base", "mmae-tiny"])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (rough numbers)")
    parser.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="torch threads per measurement (default: torch's default); on a loaded shared machine 1 "
        "thread avoids the spin-wait collapse of OpenMP under contention",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="mmae-tiny", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.kind = args.worker
        return worker(args)

    threads = args.num_threads or torch.get_num_threads()
    report = {
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__},
        "load_average_before": load_average(),
        "official_samples_per_s": OFFICIAL_SAMPLES_PER_S,
        "presets": {},
    }
    print(f"load average before: {report['load_average_before']}", flush=True)
    matmul = run_worker("matmul", threads=threads)
    report["matmul_flops_per_s"] = {"float32": matmul["float32"], "bfloat16": matmul["bfloat16"]}
    print(
        f"matmul 2048^3: float32 {matmul['float32'] / 1e9:.1f} GFLOP/s, bf16 {matmul['bfloat16'] / 1e9:.1f} GFLOP/s",
        flush=True,
    )
    for preset in args.presets:
        base = preset == "mmae-base"
        entry = {}
        for precision, bf16 in (("float32", False), ("bf16_autocast", True)):
            reference = matmul["bfloat16" if bf16 else "float32"]
            pre = run_worker(
                "pretrain", preset, bf16, batch_size=32, steps=1 if (base or args.quick) else 5, threads=threads
            )
            pre["flops_per_s"] = pre["flops_per_step"] / pre["seconds_per_step"]
            pre["fraction_of_float32_matmul"] = pre["flops_per_s"] / matmul["float32"]
            pre["fraction_of_same_dtype_matmul"] = pre["flops_per_s"] / reference
            if base:  # the official figure is for the base architecture
                pre["speedup_vs_official"] = pre["samples_per_s"] / OFFICIAL_SAMPLES_PER_S
            # Load-robust view: work per CPU-second of this process vs the per-thread matmul rate (on a shared machine
            # the wall clock also counts the time other processes hold the cores).
            per_thread = matmul["float32"] / threads
            pre["fraction_of_float32_matmul_by_cpu_time"] = (
                pre["flops_per_step"] / pre["cpu_seconds_per_step"] / per_thread
            )
            pre["samples_per_cpu_second"] = 32 / pre["cpu_seconds_per_step"]
            if base:
                pre["speedup_vs_official_if_2_cores_busy"] = 2 * pre["samples_per_cpu_second"] / OFFICIAL_SAMPLES_PER_S
            inf = run_worker(
                "inference", preset, bf16, batch_size=256, steps=1 if (base or args.quick) else 5, threads=threads
            )
            inf["flops_per_s"] = inf["flops_per_batch"] / inf["seconds_per_batch"]
            inf["fraction_of_float32_matmul"] = inf["flops_per_s"] / matmul["float32"]
            inf["fraction_of_same_dtype_matmul"] = inf["flops_per_s"] / reference
            inf["fraction_of_float32_matmul_by_cpu_time"] = (
                inf["flops_per_batch"] / inf["cpu_seconds_per_batch"] / (matmul["float32"] / threads)
            )
            inf["flows_per_cpu_second"] = 256 / inf["cpu_seconds_per_batch"]
            entry[precision] = {"pretraining_batch32": pre, "inference_batch256": inf}
            print(
                f"{preset:10s} {precision:13s} pre-training {pre['samples_per_s']:7.2f} samples/s "
                f"({pre['seconds_per_step']:.2f} s/step, {pre['fraction_of_float32_matmul']:.0%} of fp32 matmul, "
                f"{pre.get('speedup_vs_official', float('nan')):.1f}x official, peak {pre['peak_rss_mib']:.0f} MiB) | inference "
                f"{inf['flows_per_s']:8.1f} flows/s ({inf['fraction_of_float32_matmul']:.0%} of fp32 matmul, "
                f"{inf['fraction_of_same_dtype_matmul']:.0%} of same-dtype matmul, peak {inf['peak_rss_mib']:.0f} MiB)\n"
                f"{'':24s} by CPU time: pre-training {pre['samples_per_cpu_second']:.2f} samples/CPU-s "
                f"({pre['fraction_of_float32_matmul_by_cpu_time']:.0%} of fp32 matmul per thread, "
                f"{pre.get('speedup_vs_official_if_2_cores_busy', float('nan')):.1f}x official on 2 busy cores) | inference "
                f"{inf['flows_per_cpu_second']:.1f} flows/CPU-s ({inf['fraction_of_float32_matmul_by_cpu_time']:.0%})",
                flush=True,
            )
        report["presets"][preset] = entry
    curve = run_worker("curve", "mmae-tiny", batch_size=32, steps=15 if args.quick else 40, threads=threads)
    report["loss_curve_mmae_tiny"] = curve
    print(
        f"loss curve mmae-tiny, {curve['steps']} steps: float32 {curve['float32_first_last']} vs bf16 "
        f"{curve['bf16_first_last']}, max relative difference {curve['max_relative_difference']:.3%}",
        flush=True,
    )
    report["load_average_after"] = load_average()
    print(f"load average after: {report['load_average_after']}")
    # One file, one entry per thread count: a run replaces only the entry of its own thread count.
    runs = {}
    if args.output.is_file():
        try:
            previous = json.loads(args.output.read_text())
            runs = previous.get("runs", {})
        except (ValueError, AttributeError):
            runs = {}
    runs[str(threads)] = report
    summary = {
        "command": "python benchmarks/bench_model.py --num-threads N  (one entry per N under 'runs')",
        "runs": dict(sorted(runs.items())),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.output} (runs for thread counts {sorted(runs)})")


if __name__ == "__main__":
    main()
