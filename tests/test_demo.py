"""The main job: scripts/demo.sh is well-formed, and a shortened demo (2 fine-tuning steps, 2 flows per class) runs
end to end on the committed sample traffic with the shipped checkpoint; the study path (`train/run_study.py`:
pre-train -> fine-tune -> table) runs on a tiny synthetic dataset.
"""

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest

from mmae_hf.testing.synthetic import make_synthetic_traffic_dataset

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "scripts" / "demo.sh"


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _options(parser):
    return {opt for action in parser._actions for opt in action.option_strings}


def test_demo_script_is_valid_and_uses_existing_options():
    text = DEMO.read_text()
    subprocess.run(["bash", "-n", str(DEMO)], check=True)
    assert "bash scripts/setup.sh" in text and "outputs/demo" in text and "checkpoints/mmae-small" in text
    study = _load(REPO / "train" / "run_label_efficiency.py", "_demo_label_efficiency")
    assert _command_flags(text, "train/run_label_efficiency.py") <= _options(_capture_parser(study.parse_args))
    assert _command_flags(text, "dataset_scripts/build_dataset.py") <= set(
        opt for opt in re.findall(r"--[a-z][a-z0-9-]*", (REPO / "dataset_scripts" / "build_dataset.py").read_text())
    )
    sample = REPO / "examples" / "sample_traffic"
    classes = [d for d in sample.iterdir() if d.is_dir() and list(d.glob("*.pcap*"))]
    assert len(classes) >= 2, "the demo needs the committed sample traffic (>= 2 classes)"
    assert (REPO / "checkpoints" / "mmae-small" / "model.safetensors").is_file(), (
        "the demo needs the shipped checkpoint"
    )


def _capture_parser(parse_args):
    import argparse

    captured = {}

    def fake_parse(self, args=None, namespace=None):
        captured["parser"] = self
        raise SystemExit(0)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = fake_parse
    try:
        with pytest.raises(SystemExit):
            parse_args([])
    finally:
        argparse.ArgumentParser.parse_args = original
    return captured["parser"]


def _command_flags(text, script):
    """Long options passed to ``python <script>`` in demo.sh (continuation lines joined)."""
    joined = text.replace("\\\n", " ")
    lines = [line for line in joined.splitlines() if f"python {script}" in line]
    assert lines, f"demo.sh does not call {script}"
    return set(re.findall(r"\s(--[a-z][a-z0-9_-]*)", " ".join(lines)))


def test_shortened_demo_runs_end_to_end(tmp_path):
    import os

    env = {
        **os.environ,
        "DEMO_SKIP_SETUP": "1",
        "DEMO_OUT": str(tmp_path / "demo"),
        "DEMO_MAX_STEPS": "2",
        "DEMO_FEW": "2",
        "DEMO_JOBS": "2",
    }
    result = subprocess.run(["bash", str(DEMO)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "\r" not in log  # no progress bars in a log
    assert len(log.splitlines()) < 80, log
    for line in ("1/4 set up", "2/4 captures -> flow dataset", "3/4 fine-tune checkpoints/mmae-small", "4/4 done"):
        assert line in log
    for model in (
        "MMAE pre-trained, fine-tuned",
        "same encoder from scratch",
        "ExtraTrees, flow statistics",
        "random forest, raw 1600 bytes",
    ):
        assert model in result.stdout
    assert "with 2 labelled flows per class, the pre-trained encoder fine-tuned scores" in result.stdout
    study = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert {r["k"] for r in study["runs"]} == {"2", "all"}
    finetuned = [r for r in study["runs"] if r["model"] == "finetune"]
    assert all(r["steps"] == 2 for r in finetuned)
    model_dir = tmp_path / "demo" / "runs" / "dataset" / "finetune" / "kall" / "seed0" / "model"
    assert (model_dir / "README.md").is_file() and (model_dir / "preprocessor_config.json").is_file()
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["MMAEForSequenceClassification"] and len(config["id2label"]) == 6


def test_pretraining_demo_runs_and_exports_a_loadable_encoder(tmp_path):
    """scripts/pretrain_demo.sh, the second path's small default, shortened to 3 steps: sample traffic -> dataset
    -> `accelerate launch` of train/pretrain.py on 2 CPU processes -> an encoder folder that AutoModel loads."""
    import os

    env = {**os.environ, "DEMO_SKIP_SETUP": "1", "OUT": str(tmp_path / "pt"), "STEPS": "3", "PORT": "29581"}
    script = REPO / "scripts" / "pretrain_demo.sh"
    result = subprocess.run(["bash", str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    encoder = tmp_path / "pt" / "encoder"
    summary = json.loads((tmp_path / "pt" / "run" / "pretraining_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 3 and summary["finished"]
    import torch
    from transformers import AutoModel

    import mmae_hf  # noqa: F401

    model = AutoModel.from_pretrained(str(encoder))
    out = model(input_bytes=torch.zeros(2, model.config.num_bytes, dtype=torch.uint8))
    assert out.last_hidden_state.shape[0] == 2 and (encoder / "preprocessor_config.json").is_file()


def test_pipeline_pretrain_finetune_table_on_synthetic(tmp_path):
    dsd = make_synthetic_traffic_dataset(num_classes=2, flows_per_class=8, seed=0)
    dsd.save_to_disk(str(tmp_path / "dataset"))
    run_study = _load(REPO / "train" / "run_study.py", "_demo_run_study2")
    argv = [
        "--dataset",
        str(tmp_path / "dataset"),
        "--study",
        "demo-test",
        "--variants",
        "mmae",
        "linear_probe",
        "random_probe",
        "extra_trees",
        "--seeds",
        "0",
        "--output-dir",
        str(tmp_path / "out"),
        "--results-dir",
        str(tmp_path / "out"),
        "--pretrain-steps",
        "2",
        "--pretrain-batch-size",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--tree-estimators",
        "10",
        "--pretrain-args",
        "--report_to none",
        "--finetune-args",
        "--report_to none",
        "--quiet",
    ]
    assert run_study.main(argv) == 0
    study = json.loads((tmp_path / "out" / "demo-test.json").read_text())
    assert [row["variant"] for row in study["summary"]] == ["mmae", "linear_probe", "random_probe", "extra_trees"]
    probe = json.loads((tmp_path / "out" / "runs" / "random_probe" / "seed0" / "results.json").read_text())
    assert probe["pretrained"].endswith("random_encoder")  # the control never sees a pre-trained weight
    run = tmp_path / "out" / "runs" / "mmae" / "seed0"
    results = json.loads((run / "results.json").read_text())
    assert results["pretrained"] == str(tmp_path / "out" / "pretrain" / "mmae" / "seed0")  # fine-tuned from it
    assert (run / "eval" / "test_confusion.png").is_file()
    card = (run / "model" / "README.md").read_text()
    assert "extra_trees (no payload bytes)" in card and "linear_probe (pre-trained)" in card  # baselines in the card
    assert "random_probe (random encoder)" in card
    assert "2 pre-training steps of 4 flows on the train split" in card
    assert str(tmp_path) not in card  # no machine paths in what would be published
    table = (tmp_path / "out" / "demo-test.md").read_text()
    assert "| mmae | 1 |" in table and "| extra_trees | 1 |" in table
    assert "Chance on this test set: uniform guessing" in table and study["chance"]["uniform_accuracy"] == 0.5
