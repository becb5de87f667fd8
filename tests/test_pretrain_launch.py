"""A real 2-process data-parallel pre-training run on the CPU (gloo), launched the way docs/training.md says.

`accelerate launch --cpu --num_processes 2` silently starts ONE process (hf-notes §3); the launch that really
starts two DDP processes on a GPU-less machine is `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu ...`.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_cpu_launch(tmp_path):
    from mmae_hf.testing.synthetic import make_synthetic_traffic_dataset

    data = tmp_path / "data"
    make_synthetic_traffic_dataset(num_classes=3, flows_per_class=16, seed=1).save_to_disk(str(data))
    out = tmp_path / "run"
    env = dict(
        os.environ,
        ACCELERATE_USE_CPU="1",
        HF_HOME=str(tmp_path / "hf_home"),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )

    def launch(output_dir, *extra):
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.accelerate_cli",
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--main_process_port",
            str(free_port()),
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(REPO / "train" / "pretrain.py"),
            "--dataset",
            str(data),
            "--config",
            "mmae-tiny",
            "--output_dir",
            str(output_dir),  # no --use_cpu: ACCELERATE_USE_CPU=1 suffices
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--logging_steps",
            "1",
            "--save_steps",
            "1",
            "--report_to",
            "none",
            "--disable_tqdm",
            *extra,
        ]
        done = subprocess.run(command, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=280)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "world size 2 (DistributedType.MULTI_CPU)" in done.stdout
        return done

    launch(out)

    summary = json.loads((out / "pretraining_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["finished"]
    assert len(summary["samples_per_second_per_process"]) == 2  # one throughput per rank, gathered
    assert summary["global_batch_size"] == 8
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in records] == [2, 2]
    # both ranks checkpointed their own collator stream and RNG state
    checkpoint = out / "checkpoints" / "checkpoint-1"
    for rank in (0, 1):
        assert (checkpoint / f"collator_state_{rank}.json").is_file()
        assert (checkpoint / f"random_states_{rank}.pkl").is_file()
    streams = [json.loads((checkpoint / f"collator_state_{rank}.json").read_text())["state"] for rank in (0, 1)]
    assert streams[0] != streams[1]  # the ranks draw different FlowMix masks

    from transformers import AutoModelForPreTraining

    import mmae_hf  # noqa: F401

    model = AutoModelForPreTraining.from_pretrained(str(out))
    assert all(torch.isfinite(p).all() for p in model.parameters())

    # resumed from the step-1 checkpoint, the 2-process run ends with the same weights as the straight run
    # (per-rank RNG and collator streams, the teacher and the data position all restored)
    import shutil

    from safetensors.torch import load_file

    resumed = tmp_path / "resumed"
    shutil.copytree(checkpoint, resumed / "checkpoints" / "checkpoint-1")
    assert "resumed from" in launch(resumed, "--resume_from_checkpoint", "latest").stdout
    a, b = load_file(str(out / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


HUB_SCRIPT = r"""
import json, sys
from pathlib import Path
from huggingface_hub import HfApi
from mmae_hf.testing.synthetic import make_synthetic_traffic_dataset
sys.path.insert(0, sys.argv[2])
import pretrain

make_synthetic_traffic_dataset(num_classes=3, flows_per_class=16, seed=2).push_to_hub("tester/traffic-tiny")
HfApi().upload_file(path_or_fileobj=json.dumps({"feature_extractor_type": "MMAEFeatureExtractor"}).encode(),
                    path_in_repo="preprocessor_config.json", repo_id="tester/traffic-tiny", repo_type="dataset")
out = sys.argv[1]
code = pretrain.main(["--dataset", "tester/traffic-tiny", "--config", "mmae-tiny", "--output_dir", out,
                      "--max_steps", "1", "--per_device_train_batch_size", "4", "--save_steps", "0",
                      "--report_to", "none", "--disable_tqdm"])
sys.exit(code)
"""


def test_pretrain_from_a_hub_dataset_id(tmp_path):
    """`--dataset org/name` reads the train split from the Hub (an offline fake Hub here) and keeps its preprocessor config."""
    from fake_hub import FakeHub

    out = tmp_path / "run"
    with FakeHub() as hub:
        env = hub.env(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        done = subprocess.run(
            [sys.executable, "-c", HUB_SCRIPT, str(out), str(REPO / "train")],
            env=env,
            cwd=str(tmp_path),
            capture_output=True,
            text=True,
            timeout=280,
        )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "pretraining_summary.json").read_text())
    assert summary["finished"] and summary["dataset"] == "tester/traffic-tiny" and summary["num_training_flows"] == 24
    assert (
        json.loads((out / "preprocessor_config.json").read_text())["feature_extractor_type"] == "MMAEFeatureExtractor"
    )


def test_exit_guard_ends_a_process_whose_teardown_stalls(tmp_path):
    # A non-daemon thread that never ends stands in for a library whose teardown stalls after the run is done.
    script = tmp_path / "stall.py"
    script.write_text(
        "import sys, threading, time\n"
        f"sys.path.insert(0, {str(REPO / 'train')!r})\n"
        "from pretrain import guard_process_exit\n"
        "threading.Thread(target=lambda: time.sleep(3600)).start()\n"
        "print('results written', flush=True)\n"
        "guard_process_exit(0, grace_seconds=1.0)\n"
        "sys.exit(0)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "results written" in done.stdout
    assert "did not exit within 1 s" in done.stderr
    assert "Thread" in done.stderr  # the stacks of the stalled threads, for a bug report
