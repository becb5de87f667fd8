"""The shipped pre-trained checkpoint (checkpoints/mmae-small): loads with the Auto classes and with remote code, has
no surplus keys, carries its preprocessing and a valid card, fits the size budget, and its recreation script says
exactly what produced it."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "mmae-small"


def test_encoder_loads_with_the_auto_classes_and_nothing_left_over():
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    import mmae_hf  # noqa: F401
    from mmae_hf.configuration_mmae import PRESETS

    config = AutoConfig.from_pretrained(str(CHECKPOINT))
    for key, value in PRESETS["mmae-small"].items():
        assert getattr(config, key) == value, key
    encoder, info = AutoModel.from_pretrained(str(CHECKPOINT), output_loading_info=True)
    assert type(encoder).__name__ == "MMAEModel"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    classifier, info = AutoModelForSequenceClassification.from_pretrained(
        str(CHECKPOINT), num_labels=6, output_loading_info=True
    )
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"] and not info["unexpected_keys"]
    for name, value in encoder.state_dict().items():  # the classifier starts from exactly these weights
        assert torch.equal(value, classifier.mmae.state_dict()[name]), name


def test_folder_carries_its_preprocessing_card_and_fits_the_budget():
    from huggingface_hub import ModelCard
    from transformers import AutoFeatureExtractor

    import mmae_hf  # noqa: F401

    size = sum(p.stat().st_size for p in CHECKPOINT.iterdir() if p.is_file())
    assert size < 25 * 2**20
    extractor = AutoFeatureExtractor.from_pretrained(str(CHECKPOINT))
    assert extractor.flow_options["anonymize"] == "default"  # the corpus's anonymisation travels with the weights
    card = ModelCard.load(CHECKPOINT / "README.md")
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "feature-extraction"
    text = card.text
    assert "## Corpus" in text and "Kept out of pre-training" in text
    report = json.loads((CHECKPOINT / "corpus_report.json").read_text())
    assert report["excluded_captures"] > 0 and report["flows"]["train"] > 20_000
    summary = json.loads((CHECKPOINT / "pretraining_summary.json").read_text())
    assert summary["finished"] and summary["step"] == summary["max_steps"]


REMOTE = textwrap.dedent(
    """
    import sys, importlib.abc
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mmae_hf" or name.startswith("mmae_hf."):
                raise ImportError("mmae_hf is hidden in this test")
    sys.meta_path.insert(0, Block())
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification
    folder, inputs, expected = sys.argv[1:4]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert "transformers_modules" in type(model).__module__, type(model).__module__
    with torch.no_grad():
        same = torch.equal(model(input_bytes=torch.load(inputs)).pooler_output, torch.load(expected))
    head = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True, num_labels=3)
    print("REMOTE", same, type(head).__name__)
    """
)


def test_remote_code_loading_without_the_package_gives_the_same_features(tmp_path):
    import mmae_hf  # noqa: F401
    from transformers import AutoModel

    torch.manual_seed(0)
    x = torch.randint(0, 256, (3, 1600), dtype=torch.uint8)
    with torch.no_grad():
        expected = AutoModel.from_pretrained(str(CHECKPOINT)).eval()(input_bytes=x).pooler_output
    torch.save(x, tmp_path / "x.pt")
    torch.save(expected, tmp_path / "expected.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", REMOTE, str(CHECKPOINT), str(tmp_path / "x.pt"), str(tmp_path / "expected.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE True MMAEForSequenceClassification" in result.stdout


def test_the_recreation_script_matches_what_the_checkpoint_records():
    script = (REPO / "scripts" / "pretrain_mmae_small.sh").read_text()
    recorded = json.loads((CHECKPOINT / "pretraining_args.json").read_text())
    summary = json.loads((CHECKPOINT / "pretraining_summary.json").read_text())
    joined = script.replace("\\\n", " ")

    def option(name):
        match = re.search(rf"--{name}[ =](\S+)", joined)
        assert match, f"scripts/pretrain_mmae_small.sh does not set --{name}"
        return match.group(1).strip('"')

    assert option("config") == recorded["config"] == "mmae-small"
    assert float(option("learning_rate")) == recorded["learning_rate"]
    assert int(option("per_device_train_batch_size")) == recorded["per_device_train_batch_size"]
    assert float(option("warmup_ratio")) == recorded["warmup_ratio"]
    assert int(option("seed")) == recorded["seed"]
    assert re.search(r"STEPS=\$\{STEPS:-(\d+)\}", script).group(1) == str(recorded["max_steps"])
    assert "--num_processes 2" in joined and summary["world_size"] == 2
    assert recorded["config_overrides"] in ({}, None, [])  # the preset alone: nothing hidden on the command line


def test_the_remote_code_it_carries_is_the_package_code():
    """The folder's remote-code files are copies (a Hub folder must carry its code): they must not drift from the
    package, or `trust_remote_code=True` would run other code than `import mmae_hf` does."""
    shipped = sorted((REPO / "checkpoints" / "mmae-small").glob("*.py"))
    assert {p.name for p in shipped} >= {"configuration_mmae.py", "modeling_mmae.py"}
    for path in shipped:
        assert path.read_bytes() == (REPO / "mmae_hf" / path.name).read_bytes(), f"{path.name} differs from mmae_hf"
