"""MMAE and the Hugging Face machinery: save/load round trip, Auto classes, trust_remote_code without the package."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import torch
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, AutoModelForSequenceClassification

import mmae_hf  # noqa: F401  (registers the Auto classes)
from mmae_hf import MMAEConfig, MMAEForPreTraining, MMAEForSequenceClassification, MMAEModel


def tiny(**overrides):
    return MMAEConfig.from_preset("mmae-tiny", **overrides)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 1600), dtype=torch.uint8)
    model = MMAEForSequenceClassification(tiny(num_labels=3, ood_threshold=0.7)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "mmae" and config["ood_threshold"] == 0.7
    assert set(config["auto_map"]) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForPreTraining",
        "AutoModelForSequenceClassification",
    }
    for name in ("configuration_mmae.py", "modeling_mmae.py", "pmp.py"):
        assert (tmp_path / name).is_file(), name
    loaded = MMAEForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(model(x).logits, loaded(x).logits)

    pre = MMAEForPreTraining(tiny()).eval()
    pre.save_pretrained(tmp_path / "pre")
    loaded_pre = MMAEForPreTraining.from_pretrained(tmp_path / "pre").eval()
    noise = torch.rand(2, pre.config.num_tokens)
    kw = dict(input_bytes=x, mask_noise=noise, partner_index=torch.tensor([1, 0]))
    assert torch.equal(pre(**kw).loss, loaded_pre(**kw).loss)
    # encoder weights carry over from a pre-training folder into a classifier (base_model_prefix "mmae")
    clf = MMAEForSequenceClassification.from_pretrained(tmp_path / "pre", num_labels=4).eval()
    assert torch.equal(clf.mmae(x).last_hidden_state, pre.mmae(x).last_hidden_state)


def test_auto_classes(tmp_path):
    MMAEForPreTraining(tiny()).save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is MMAEConfig
    assert type(AutoModel.from_pretrained(tmp_path)) is MMAEModel
    assert type(AutoModelForPreTraining.from_pretrained(tmp_path)) is MMAEForPreTraining
    clf = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    assert type(clf) is MMAEForSequenceClassification and clf.config.num_labels == 2
    assert type(AutoModel.from_config(tiny())) is MMAEModel


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys, importlib.abc
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mmae_hf" or name.startswith("mmae_hf."):
                raise ImportError("mmae_hf is hidden in this test")
    sys.meta_path.insert(0, Block())
    try:
        import mmae_hf
        raise SystemExit("mmae_hf should not be importable")
    except ImportError:
        pass
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForPreTraining
    folder, bytes_file, expect_file = sys.argv[1:4]
    x = torch.load(bytes_file)
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    assert "transformers_modules" in type(model).__module__, type(model).__module__
    expected = torch.load(expect_file)
    assert torch.equal(model(x).logits, expected["logits"]), "classifier logits differ"
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert torch.equal(base(x).last_hidden_state, expected["hidden"]), "hidden states differ"
    pre = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True)
    print("REMOTE-OK", type(model).__name__, type(base).__name__, type(pre).__name__)
    """
)


def test_trust_remote_code_without_the_package(tmp_path):
    torch.manual_seed(1)
    model = MMAEForSequenceClassification(tiny(num_labels=3)).eval()
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    folder = tmp_path / "mmae_remote"
    shutil.copytree(saved, folder)
    x = torch.randint(0, 256, (2, 1600), dtype=torch.uint8)
    torch.save(x, tmp_path / "x.pt")
    torch.save({"logits": model(x).logits, "hidden": model.mmae(x).last_hidden_state}, tmp_path / "expect.pt")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["HF_HOME"] = str(tmp_path / "hf_home")
    env["HF_HUB_OFFLINE"] = "1"
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(folder), str(tmp_path / "x.pt"), str(tmp_path / "expect.pt")],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-OK MMAEForSequenceClassification MMAEModel MMAEForPreTraining" in result.stdout
