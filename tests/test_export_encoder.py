"""train/export_encoder.py: a pre-training run becomes an encoder-only checkpoint that loads cleanly with the Auto
classes, with remote code, and is published with one option (against the offline stand-in Hub)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mmae_hf.testing.synthetic import make_synthetic_traffic_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pretraining_run(tmp_path_factory):
    from mmae_hf.training.pretraining import PretrainingArguments, run_pretraining

    root = tmp_path_factory.mktemp("export")
    make_synthetic_traffic_dataset(num_classes=3, flows_per_class=8, seed=0).save_to_disk(str(root / "data"))
    args = PretrainingArguments(
        dataset=str(root / "data"),
        output_dir=str(root / "run"),
        config="mmae-tiny",
        max_steps=2,
        per_device_train_batch_size=4,
        save_steps=0,
        report_to="none",
        progress_bar=False,
        seed=0,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_pretraining(args)
    finally:
        torch.set_num_threads(threads)
    return root


def test_export_writes_an_encoder_only_folder_that_loads_without_surprises(pretraining_run, tmp_path):
    from transformers import AutoModel, AutoModelForSequenceClassification

    import mmae_hf  # noqa: F401
    from mmae_hf.training.export import export_encoder

    out = export_encoder(pretraining_run / "run", tmp_path / "mmae-exported")
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "README.md",
        "modeling_mmae.py",
        "configuration_mmae.py",
        "pretraining_args.json",
        "pretraining_summary.json",
    } <= names
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MMAEModel"]
    assert config["auto_map"]["AutoModel"] == "modeling_mmae.MMAEModel"
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert keys and not [k for k in keys if k.startswith(("decoder", "loss_predictor", "mmae."))]

    encoder, info = AutoModel.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    classifier, info = AutoModelForSequenceClassification.from_pretrained(
        str(out), num_labels=3, output_loading_info=True
    )
    assert not info["unexpected_keys"]
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    # the exported encoder is the run's encoder, weight for weight
    from mmae_hf.modeling_mmae import MMAEForPreTraining

    pre = MMAEForPreTraining.from_pretrained(str(pretraining_run / "run"))
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, pre.mmae.state_dict()[name]), name
    card = (out / "README.md").read_text()
    assert card.startswith("---") and "# mmae-exported" in card and "pipeline_tag: feature-extraction" in card


def test_export_refuses_an_unfinished_run_and_an_existing_folder(pretraining_run, tmp_path):
    from mmae_hf.training.export import export_encoder

    with pytest.raises(FileNotFoundError, match="not a finished run"):
        export_encoder(tmp_path, tmp_path / "x")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        export_encoder(pretraining_run / "run", tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


LOAD_REMOTE = textwrap.dedent(
    """
    import sys, importlib.abc
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mmae_hf" or name.startswith("mmae_hf."):
                raise ImportError("mmae_hf is hidden in this test")
    sys.meta_path.insert(0, Block())
    import torch
    from transformers import AutoModel
    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    assert "transformers_modules" in type(model).__module__
    x = torch.zeros(2, 1600, dtype=torch.uint8)
    print("REMOTE-OK", tuple(model(input_bytes=x).pooler_output.shape))
    """
)


def test_export_publishes_with_one_option_and_loads_by_repo_id_without_the_package(pretraining_run, tmp_path):
    from fake_hub import FakeHub

    repo_id = "tester/mmae-exported"
    with FakeHub() as hub:
        env = {**hub.env(), "HF_HOME": str(tmp_path / "hf_home")}
        result = subprocess.run(
            [
                sys.executable,
                str(REPO / "train" / "export_encoder.py"),
                "--pretraining_dir",
                str(pretraining_run / "run"),
                "--output_dir",
                str(tmp_path / "mmae-exported"),
                "--push_to_hub",
                repo_id,
            ],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "published to tester/mmae-exported" in result.stdout
        assert "\r" not in result.stdout + result.stderr  # no progress bars in a log
        local = {p.name for p in (tmp_path / "mmae-exported").iterdir()}
        assert set(hub.files(repo_id)) >= local  # exactly the exported folder is uploaded
        load = subprocess.run(
            [sys.executable, "-c", LOAD_REMOTE, repo_id],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert load.returncode == 0, load.stderr[-3000:]
        assert "REMOTE-OK (2, 64)" in load.stdout


def test_export_refuses_a_bad_repo_id_before_any_work(pretraining_run, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train" / "export_encoder.py"),
            "--pretraining_dir",
            str(pretraining_run / "run"),
            "--output_dir",
            str(tmp_path / "x"),
            "--push_to_hub",
            "not a repo",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "export_encoder.py: error: --push_to_hub not a repo: not a Hub repo id (owner/name)"
    ]
    assert not (tmp_path / "x").exists()
