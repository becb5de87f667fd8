#!/usr/bin/env python
"""Run MMAE, its ablations and the baselines over several seeds on one dataset; write a results table.

    python train/run_study.py --dataset outputs/demo/dataset --study sample-traffic --seeds 0 1 2 \
        --variants mmae scratch linear_probe extra_trees no_flowmix no_teacher no_pmp

Every variant uses the same splits and the same metric code; selection is on validation only. Pre-training
runs (train/pretrain.py, with the ablation's --config_overrides switches) are shared between the variants
that start from them (mmae and linear_probe) and fine-tuned identically (train/finetune.py).

Outputs: OUTPUT_DIR/pretrain/<name>/seed<k>/, OUTPUT_DIR/runs/<variant>/seed<k>/ (each with results.json,
eval/test_confusion.png, logs), and RESULTS_DIR/<study>.json + .md (mean ± std over seeds of test macro-F1,
accuracy and weighted-F1). Completed runs are reused when the study is run again (--force redoes them).
Variants: python train/run_study.py --list-variants
Exit status: 0 on success, 2 on a bad argument or input (one line on stderr; --debug shows the traceback), 1 when
a run fails (the tail of its log is printed).
"""

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    from mmae_hf.training.study import DEFAULT_VARIANTS, VARIANTS

    from mmae_hf.argparsing import ArgumentParser

    p = ArgumentParser(prog="run_study.py", description=__doc__.split("\n\n")[0], epilog=__doc__)
    p.add_argument("--dataset", help="dataset folder or Hub repo id with train/validation/test splits")
    p.add_argument("--study", default="study", help="name of the study (file names of the results)")
    p.add_argument(
        "--dataset-name",
        help="name (or Hub repo id) of the dataset in tables and model cards (default: the folder name)",
    )
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=sorted(VARIANTS), metavar="VARIANT")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--output-dir", help="runs go here (default: outputs/studies/<study>)")
    p.add_argument(
        "--results-dir",
        default=str(REPO / "benchmarks" / "results"),
        help="where <study>.json and <study>.md are written",
    )
    p.add_argument("--preset", default="mmae-tiny", help="model config preset for pre-training and from-scratch runs")
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--pretrain-batch-size", type=int, default=32)
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--layer-decay", type=float, default=0.75)
    p.add_argument("--tree-estimators", type=int, default=300)
    p.add_argument("--pretrain-args", default="", help="extra arguments for train/pretrain.py (one string)")
    p.add_argument("--finetune-args", default="", help="extra arguments for train/finetune.py (one string)")
    p.add_argument("--force", action="store_true", help="redo runs whose results already exist")
    p.add_argument("--quiet", action="store_true", help="send the runs' progress output to their log files only")
    p.add_argument("--list-variants", action="store_true")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = p.parse_args(argv)
    if args.list_variants:
        for name, variant in VARIANTS.items():
            print(f"{name:24s} {variant.description}")
        sys.exit(0)
    if not args.dataset:
        p.error("--dataset is required")
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds {' '.join(map(str, args.seeds))}: a seed is given twice")
    return args


class StudyRunError(RuntimeError):
    """One of the study's runs (a pre-training or fine-tuning subprocess) failed."""


def run_logged(cmd: list[str], log_path: Path, quiet: bool) -> float:
    """Run ``cmd``, copying its output to ``log_path`` (and to the console unless quiet). Returns seconds."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        log.write(("$ " + shlex.join(cmd) + "\n").encode())
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        while True:
            chunk = proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
            if not chunk:
                break
            log.write(chunk)
            if not quiet:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        code = proc.wait()
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise StudyRunError(
            f"command failed with exit code {code} (log: {log_path}):\n  {shlex.join(cmd)}\n" + "\n".join(tail)
        )
    return time.time() - started


def ensure_pretraining(name: str, seed: int, args, out: Path) -> tuple[Path, float]:
    from mmae_hf.training.study import PRETRAININGS

    run_dir = out / "pretrain" / name / f"seed{seed}"
    summary_path = run_dir / "pretraining_summary.json"
    if summary_path.is_file() and not args.force and json.loads(summary_path.read_text()).get("finished"):
        print(f"[study] reusing pre-training {name} seed {seed}: {run_dir}", flush=True)
        return run_dir, float(json.loads(summary_path.read_text()).get("wall_time_s") or 0.0)
    cmd = [
        sys.executable,
        str(REPO / "train" / "pretrain.py"),
        "--dataset",
        args.dataset,
        "--config",
        args.preset,
        "--output_dir",
        str(run_dir),
        "--max_steps",
        str(args.pretrain_steps),
        "--per_device_train_batch_size",
        str(args.pretrain_batch_size),
        "--learning_rate",
        str(args.pretrain_lr),
        "--seed",
        str(seed),
        "--save_steps",
        "0",
        "--logging_steps",
        "10",
    ]
    if PRETRAININGS[name]:
        cmd += ["--config_overrides", *(f"{key}={json.dumps(value)}" for key, value in PRETRAININGS[name].items())]
    cmd += shlex.split(args.pretrain_args)
    print(f"[study] pre-training {name} seed {seed} ({args.pretrain_steps} steps) -> {run_dir}", flush=True)
    seconds = run_logged(cmd, out / "logs" / f"pretrain-{name}-seed{seed}.log", args.quiet)
    summary = json.loads(summary_path.read_text())
    summary["wall_time_s"] = seconds
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return run_dir, seconds


def save_random_encoder(preset: str, seed: int, path: Path) -> Path:
    """A randomly initialised encoder of ``preset`` (seeded), saved like a pre-trained one."""
    import torch

    from mmae_hf.configuration_mmae import MMAEConfig
    from mmae_hf.modeling_mmae import MMAEModel

    torch.manual_seed(seed)
    MMAEModel(MMAEConfig.from_preset(preset)).save_pretrained(str(path))
    return path


def run_variant(name: str, seed: int, args, out: Path, dsd) -> dict:
    from mmae_hf.training.baselines import run_linear_probe, run_tree_baseline
    from mmae_hf.training.study import VARIANTS

    variant = VARIANTS[name]
    run_dir = out / "runs" / name / f"seed{seed}"
    results_path = run_dir / "results.json"
    pretrain_dir, pretrain_seconds = (None, 0.0)
    if variant.pretrain is not None:
        pretrain_dir, pretrain_seconds = ensure_pretraining(variant.pretrain, seed, args, out)
    if results_path.is_file() and not args.force:
        print(f"[study] reusing {name} seed {seed}: {results_path}", flush=True)
        results = json.loads(results_path.read_text())
    else:
        print(f"[study] {name} seed {seed}: {variant.description}", flush=True)
        if variant.kind == "finetune":
            cmd = [
                sys.executable,
                str(REPO / "train" / "finetune.py"),
                "--dataset",
                args.dataset,
                "--output_dir",
                str(run_dir),
                "--num_train_epochs",
                str(args.epochs),
                "--per_device_train_batch_size",
                str(args.batch_size),
                "--learning_rate",
                str(args.learning_rate),
                "--layer_decay",
                str(args.layer_decay),
                "--seed",
                str(seed),
                "--model_name",
                f"{args.study}-{name}-seed{seed}",
                "--dataset_name",
                args.dataset_name or _dataset_name(args.dataset),
            ]
            cmd += ["--pretrained", str(pretrain_dir)] if pretrain_dir else ["--preset", args.preset]
            cmd += shlex.split(args.finetune_args)
            run_logged(cmd, out / "logs" / f"{name}-seed{seed}.log", args.quiet)
            results = json.loads(results_path.read_text())
        elif variant.kind == "probe":
            encoder_dir = pretrain_dir or save_random_encoder(args.preset, seed, run_dir / "random_encoder")
            results = run_linear_probe(dsd, str(encoder_dir), run_dir, seed=seed, name=f"{name} seed {seed}")
        else:
            results = run_tree_baseline(
                dsd,
                run_dir,
                kind=variant.tree_kind,
                seed=seed,
                n_estimators=args.tree_estimators,
                name=f"{name} seed {seed}",
            )
    test = {k: v for k, v in results["test"].items() if k != "per_class"}
    print(
        f"[study] {name} seed {seed}: test macro-F1 {test['macro_f1']:.4f}, accuracy {test['accuracy']:.4f}", flush=True
    )
    return {
        "variant": name,
        "seed": seed,
        "kind": variant.kind,
        "test": test,
        "validation": results["validation"],
        "run_wall_time_s": results.get("wall_time_s"),
        "pretrain_wall_time_s": pretrain_seconds,
        "wall_time_s": (results.get("wall_time_s") or 0.0) + pretrain_seconds,
        "dir": str(run_dir),
        "files": results.get("files", {}),
    }


def _baseline_kind(name: str) -> str:
    from mmae_hf.training.study import VARIANTS

    variant = VARIANTS[name]
    if variant.kind == "tree":
        return "no payload bytes"
    return "pre-trained" if variant.pretrain else "random encoder"


def refresh_model_cards(runs: list[dict], dataset_name: str) -> None:
    """Rewrite each fine-tuned model's card with the other variants of the same seed as baselines."""
    from mmae_hf.model_card import build_finetuned_model_card

    for run in runs:
        if run["kind"] != "finetune":
            continue
        model_dir = Path(run["dir"]) / "model"
        summary = json.loads((Path(run["dir"]) / "results.json").read_text())
        others = [
            {
                "name": f"{r['variant']} ({_baseline_kind(r['variant'])})" if r["kind"] != "finetune" else r["variant"],
                "test": r["test"],
            }
            for r in runs
            if r["seed"] == run["seed"] and r["variant"] != run["variant"]
        ]
        fe_path = model_dir / "preprocessor_config.json"
        card = build_finetuned_model_card(
            summary,
            dataset_name=dataset_name,
            baselines=others,
            feature_extractor_config=json.loads(fe_path.read_text()) if fe_path.is_file() else None,
            config=json.loads((model_dir / "config.json").read_text()),
        )
        card.save(model_dir / "README.md")


def _code_version() -> str | None:
    """The git commit the study ran at (with "+dirty" when the working tree had local changes), if known."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def _dataset_name(dataset: str) -> str:
    path = Path(dataset)
    return path.resolve().name if path.exists() else dataset


def main(argv=None) -> int:
    from mmae_hf.checks import run_main

    from mmae_hf.traffic.atomic import run_interruptible

    args = parse_args(argv)
    return run_interruptible(
        lambda: run_main("run_study.py", lambda: _main(args), debug=args.debug),
        "run_study.py",
        "completed runs are kept and reused by the next call",
    )


def _main(args) -> int:
    import mmae_hf  # noqa: F401
    from mmae_hf.progress import progress_wanted, set_library_progress_bars

    set_library_progress_bars(progress_wanted())  # the in-process baselines: bars only on a terminal
    from mmae_hf.evaluation import chance_levels
    from mmae_hf.training.finetuning import load_traffic_dataset
    from mmae_hf.training.study import now_utc, results_table, study_markdown, summarize_study

    started = time.time()
    out = Path(args.output_dir) if args.output_dir else REPO / "outputs" / "studies" / args.study
    out.mkdir(parents=True, exist_ok=True)
    dsd = load_traffic_dataset(args.dataset)
    runs = []
    try:
        for seed in args.seeds:
            for name in args.variants:
                runs.append(run_variant(name, seed, args, out, dsd))
    except StudyRunError as error:  # a run failed: its command and the tail of its log, no traceback
        print(f"run_study.py: {error}", file=sys.stderr)
        return 1
    rows = summarize_study(runs, args.variants)
    dataset_name = args.dataset_name or _dataset_name(args.dataset)
    refresh_model_cards(runs, dataset_name)
    settings = {
        k: getattr(args, k)
        for k in (
            "preset",
            "pretrain_steps",
            "pretrain_batch_size",
            "pretrain_lr",
            "epochs",
            "batch_size",
            "learning_rate",
            "layer_decay",
            "tree_estimators",
            "pretrain_args",
            "finetune_args",
        )
    }
    study = {
        "study": args.study,
        "created": now_utc(),
        "seeds": args.seeds,
        "variants": args.variants,
        "dataset": {
            "name": dataset_name,
            "num_rows": {s: len(dsd[s]) for s in dsd},
            "label_names": list(dsd["train"].features["label"].names),
        },
        "chance": chance_levels(
            dsd["train"]["label"], dsd["test"]["label"], dsd["train"].features["label"].num_classes
        ),
        "settings": settings,
        "summary": rows,
        "runs": runs,
        "wall_time_s": time.time() - started,
        "code_version": _code_version(),
    }
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{args.study}.json"
    md_path = results_dir / f"{args.study}.md"
    # run folders are written relative to the repository when inside it (no machine paths in committed results)
    json_path.write_text(json.dumps(_relative_paths(study), indent=2) + "\n")
    md_path.write_text(study_markdown(study))
    print()
    print(results_table(rows))
    print()
    print(f"results: {md_path}")
    print(f"         {json_path}")
    return 0


def _relative_paths(obj):
    if isinstance(obj, dict):
        return {k: _relative_paths(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative_paths(v) for v in obj]
    if isinstance(obj, str) and obj.startswith(str(REPO) + os.sep):
        return os.path.relpath(obj, REPO)
    return obj


if __name__ == "__main__":
    sys.exit(main())
