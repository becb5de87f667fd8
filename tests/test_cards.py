"""Cards and configs the Hub understands: every card renders and its metadata validates with huggingface_hub's
card classes; the fine-tuned config names the pipeline, so ``pipeline(model=folder)`` finds the task."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from dataset_pcaps import make_tree
from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

from mmae_hf import MMAEConfig, MMAEForSequenceClassification
from mmae_hf.model_card import build_finetuned_model_card, build_pretraining_model_card
from mmae_hf.pipeline_traffic import TASK, TrafficClassificationPipeline
from mmae_hf.training.finetuning import save_model_folder
from test_model_card import FE_CONFIG, _summary

INSTALL_LINE = "install it from a clone of its repository (`pip install .` in the clone"


def validated_model_card(path):
    """Load with ModelCard, and rebuild the metadata through ModelCardData (which rejects malformed fields)."""
    card = ModelCard.load(path)
    data = ModelCardData(**card.data.to_dict())
    assert data.to_dict() == card.data.to_dict()
    return card


def test_finetuned_card_metadata(tmp_path):
    card = build_finetuned_model_card(
        _summary(pretrained="someone/mmae-tiny-pretrained"),
        dataset_name="someone/traffic-sample",
        feature_extractor_config=FE_CONFIG,
        repo_id="someone/mmae-tiny-demo",
    )
    card.save(tmp_path / "README.md")
    loaded = validated_model_card(tmp_path / "README.md")
    meta = loaded.data
    assert meta.pipeline_tag == TASK == "traffic-classification"  # the task the package registers
    assert meta.base_model == "someone/mmae-tiny-pretrained" and meta.datasets == ["someone/traffic-sample"]
    assert meta.license == "apache-2.0" and meta.library_name == "transformers"
    assert {r.task_type for r in meta.eval_results} == {TASK}
    assert INSTALL_LINE in loaded.text and "pip install mmae-hf" not in loaded.text
    assert 'pipeline(model="someone/mmae-tiny-demo", trust_remote_code=True)' in loaded.text


def test_base_model_can_be_named_for_a_local_encoder(tmp_path):
    summary = _summary(pretrained=str(tmp_path))  # a local folder: not publishable
    assert build_finetuned_model_card(summary, dataset_name="x").data.base_model is None
    card = build_finetuned_model_card(summary, dataset_name="x", base_model="someone/mmae-base-traffic")
    assert card.data.base_model == "someone/mmae-base-traffic"
    assert "[someone/mmae-base-traffic](https://huggingface.co/someone/mmae-base-traffic)" in card.text


def write_pretraining_folder(folder, finished=True, curves=True):
    folder.mkdir(parents=True)
    (folder / "pretraining_summary.json").write_text(
        json.dumps(
            {
                "step": 300,
                "max_steps": 300 if finished else 1000,
                "finished": finished,
                "world_size": 2,
                "dataset": str(folder.parent / "corpus-folder"),
                "split": "train",
                "num_training_flows": 1200,
                "mixed_precision": "bf16",
                "global_batch_size": 64,
                "samples_per_second_per_process": [150.0, 149.5],
                "last_metrics": {
                    "train/loss": 1.2345,
                    "train/reconstruction_loss": 0.5,
                    "train/rank_loss": 0.25,
                    "train/distillation_loss": 0.4845,
                    "train/learning_rate": 1e-5,
                },
            }
        )
    )
    (folder / "pretraining_args.json").write_text(
        json.dumps({"dataset": "ignored", "learning_rate": None, "base_learning_rate": 1e-3})
    )
    (folder / "config.json").write_text(
        json.dumps(
            {
                "num_hidden_layers": 2,
                "hidden_size": 64,
                "num_attention_heads": 4,
                "use_flowmix": False,
                "mask_ratio": 0.9,
            }
        )
    )
    (folder / "preprocessor_config.json").write_text(json.dumps(FE_CONFIG))
    if curves:
        (folder / "pretraining_curves.png").write_bytes(b"\x89PNG")
    return folder


def test_pretraining_card_metadata_and_content(tmp_path):
    folder = write_pretraining_folder(tmp_path / "mmae-tiny-pre")
    card = build_pretraining_model_card(folder, dataset_name="someone/unlabelled-traffic")
    card.save(tmp_path / "README.md")
    loaded = validated_model_card(tmp_path / "README.md")
    assert loaded.data.pipeline_tag == "feature-extraction" and loaded.data.license == "apache-2.0"
    assert loaded.data.datasets == ["someone/unlabelled-traffic"] and "pretraining" in loaded.data.tags
    text = loaded.text
    for expected in (
        "| corpus | someone/unlabelled-traffic, split `train` (1200 flows) |",
        "| steps | 300 of 300 |",
        "| global batch | 64 flows (2 processes) |",
        "| flows seen | 19200 (about 16.0 passes",
        "| peak learning rate | 0.00025 ",
        "| loss | 1.2345 |",
        "| distillation_loss | 0.4845 |",
        "(switched off: FlowMix)",
        "| precision | bf16 |",
        "![pre-training curves](pretraining_curves.png)",
        "Anonymisation profile: **default**",
        INSTALL_LINE,
    ):
        assert expected in text, expected
    # a local corpus is named by its folder, never by its path
    local = build_pretraining_model_card(folder)
    assert "corpus-folder" in local.text and str(tmp_path) not in local.content and local.data.datasets is None
    stopped = build_pretraining_model_card(write_pretraining_folder(tmp_path / "stopped", finished=False, curves=False))
    assert "| steps | 300 of 1000 (stopped early" in stopped.text and "pretraining_curves.png)" not in stopped.text
    with pytest.raises(FileNotFoundError, match="no pretraining_summary.json"):
        build_pretraining_model_card(tmp_path / "stopped" / "nothing")


def test_dataset_card_metadata(tmp_path):
    from mmae_hf.traffic.dataset import build_dataset

    tree = make_tree(tmp_path / "tree", {"chat": 3, "web": 3}, flows_per_file=2)
    build_dataset(tree, tmp_path / "out", split_by="file", seed=0, progress=False, validation_size=0.34, test_size=0.34)
    card = DatasetCard.load(tmp_path / "out" / "README.md")
    data = DatasetCardData(**card.data.to_dict())
    assert data.license == "unknown" and "set `license:` above" in card.text
    assert data.task_categories == ["other"] and "traffic-classification" in data.tags
    assert data.pretty_name == "tree flows"  # the folder's name, not its path
    from mmae_hf.traffic.card import make_dataset_card

    report = json.loads((tmp_path / "out" / "build_report.json").read_text())
    assert make_dataset_card(report, license="cc0-1.0").data.license == "cc0-1.0"
    # the builder's --license reaches the card it writes
    from test_user_errors import load_script

    build = load_script("dataset_scripts/build_dataset.py")
    argv = ["--input", str(tree), "--output", str(tmp_path / "lic"), "--split-by", "file", "--license", "cc-by-4.0"]
    assert build.main(argv + ["--no-progress", "--validation-size", "0.34", "--test-size", "0.34"]) in (0, None)
    card = DatasetCard.load(tmp_path / "lic" / "README.md")
    assert card.data.license == "cc-by-4.0" and "set `license:` above" not in card.text


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    torch.manual_seed(0)
    config = MMAEConfig.from_preset(
        "mmae-tiny", num_labels=2, id2label={0: "chat", 1: "web"}, label2id={"chat": 0, "web": 1}
    )
    folder = tmp_path_factory.mktemp("finetuned") / "model"
    save_model_folder(MMAEForSequenceClassification(config).eval(), folder)
    return folder


def test_finetuned_config_names_the_pipeline(classifier_folder):
    from transformers import pipeline

    config = json.loads((classifier_folder / "config.json").read_text())
    assert config["custom_pipelines"] == {
        TASK: {
            "impl": "pipeline_traffic.TrafficClassificationPipeline",
            "pt": ["AutoModelForSequenceClassification"],
            "type": "multimodal",
        }
    }
    assert (classifier_folder / "pipeline_traffic.py").is_file()
    # with mmae-hf installed: the task is found, and the installed pipeline runs (no remote code, no trust needed)
    for pipe in (pipeline(model=str(classifier_folder)), pipeline(TASK, model=str(classifier_folder))):
        assert type(pipe) is TrafficClassificationPipeline


def test_without_mmae_hf_the_saved_pipeline_is_found(classifier_folder, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["mmae_hf"] = None  # the package is not installed here
        import numpy as np
        from transformers import pipeline
        pipe = pipeline(model={str(classifier_folder)!r}, trust_remote_code=True)
        assert type(pipe).__module__.startswith("transformers_modules"), type(pipe).__module__
        flows = pipe({{"payload": np.ones((2, 1600), dtype=np.uint8)}})
        print("OK", pipe.task, len(flows), flows[0]["label"] in ("chat", "web"))
        """)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith(f"OK {TASK} 2 True")


def test_pretrain_script_writes_the_card(tmp_path):
    """train/pretrain.py leaves a README.md model card in its output folder."""
    import importlib.util

    from mmae_hf.testing.synthetic import make_synthetic_traffic_dataset

    make_synthetic_traffic_dataset(num_classes=2, flows_per_class=8, seed=0).save_to_disk(str(tmp_path / "data"))
    spec = importlib.util.spec_from_file_location(
        "_pretrain_card", os.path.join(os.path.dirname(__file__), "..", "train", "pretrain.py")
    )
    pretrain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain)
    out = tmp_path / "pre"
    assert (
        pretrain.main(
            [
                "--dataset",
                str(tmp_path / "data"),
                "--config",
                "mmae-tiny",
                "--output_dir",
                str(out),
                "--max_steps",
                "2",
                "--per_device_train_batch_size",
                "4",
                "--save_steps",
                "0",
                "--report_to",
                "none",
                "--torch_threads",
                "1",
            ]
        )
        == 0
    )
    card = validated_model_card(out / "README.md")
    assert "| steps | 2 of 2 |" in card.text and "| corpus | data, split `train`" in card.text
    assert np.isfinite(float(card.text.split("| loss | ")[1].split(" ")[0]))
