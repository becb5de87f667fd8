"""Runs that cannot mean anything are refused or flagged: one class, absent classes, configs that do not fit the
weights, damaged weight files; fine-tuning outputs appear complete or not at all."""

import json
import logging
import os
import shutil

import pytest
import torch
from test_flow_limits import deadline
from test_pipeline_traffic import CRAFTED_FLOWS, save_model, tiny_config, write_capture

import mmae_hf
from mmae_hf import MMAEForSequenceClassification
from mmae_hf.testing.synthetic import make_synthetic_traffic_dataset
from mmae_hf.training import finetuning
from mmae_hf.weight_check import WeightsMismatchError, load_checked


def _args(dataset, out, **extra):
    values = dict(
        dataset=str(dataset),
        output_dir=str(out),
        max_steps=2,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        logging_steps=1,
        report_to="none",
        seed=0,
    )
    values.update(extra)
    return finetuning.FinetuneArguments(**values)


# ---------------------------------------------------------------- classes
def test_one_class_dataset_is_refused(tmp_path):
    one = make_synthetic_traffic_dataset(num_classes=1, flows_per_class=8, seed=0)
    one.save_to_disk(str(tmp_path / "one"))
    with pytest.raises(
        ValueError,
        match=r"needs at least 2 classes with training flows; train holds 1 \(app_0\).*"
        r"macro-F1 1\.0",
    ):
        finetuning.run_finetuning(_args(tmp_path / "one", tmp_path / "out"))
    assert not (tmp_path / "out" / "results.json").exists()
    # three label names, but the train split holds flows of one class only
    three = make_synthetic_traffic_dataset(num_classes=3, flows_per_class=8, seed=0)
    three["train"] = three["train"].filter(lambda row: row["label"] == 2)
    with pytest.raises(ValueError, match=r"train holds 1 \(app_2\) of the 3 label names"):
        finetuning.run_finetuning(_args("unused", tmp_path / "out"), dataset=three)


def test_classes_missing_from_a_split_are_warned_about_and_recorded(tmp_path, caplog):
    dsd = make_synthetic_traffic_dataset(num_classes=3, flows_per_class=8, seed=0)
    dsd["test"] = dsd["test"].filter(lambda row: row["label"] != 1)  # app_1 has no test flow
    with caplog.at_level(logging.WARNING, logger="mmae_hf.training.finetuning"):
        summary = finetuning.run_finetuning(_args("synthetic", tmp_path / "run"), dataset=dsd)
    assert "class 'app_1' has no flows in test" in caplog.text
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert summary["classes_missing_from_splits"] == results["classes_missing_from_splits"] == {"app_1": ["test"]}
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "**Warning: classes missing from a split.** `app_1` has no\nflows in test." in card


# ---------------------------------------------------------------- outputs complete or absent
def test_interrupted_save_keeps_the_previous_model_folder(tmp_path, monkeypatch):
    dsd = make_synthetic_traffic_dataset(num_classes=2, flows_per_class=8, seed=0)
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text('{"from": "the previous run"}')
    original = finetuning.save_model_folder

    def interrupted(model, model_dir, **kwargs):
        original(model, model_dir, **kwargs)  # half of the folder is there ...
        raise KeyboardInterrupt  # ... when Ctrl-C arrives

    monkeypatch.setattr(finetuning, "save_model_folder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetuning.run_finetuning(_args("synthetic", out), dataset=dsd)
    assert json.loads((out / "model" / "config.json").read_text()) == {"from": "the previous run"}
    assert sorted(p.name for p in (out / "model").iterdir()) == ["config.json"]
    assert not (out / "results.json").exists() and not (out / "eval").exists()
    assert [p.name for p in out.iterdir() if "mmae-staging" in p.name] == []


# ---------------------------------------------------------------- configs that do not fit the weights
@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pre")
    mmae_hf.MMAEForPreTraining(mmae_hf.MMAEConfig.from_preset("mmae-tiny")).save_pretrained(str(folder))
    return folder


def _edit_config(src, dst, **changes):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_fine_tuning_refuses_a_config_that_does_not_fit_the_weights(pretrained_dir, tmp_path):
    labels = ["a", "b"]
    deeper = _edit_config(pretrained_dir, tmp_path / "deeper", num_hidden_layers=3)
    args = finetuning.FinetuneArguments(dataset="unused", output_dir=str(tmp_path / "o"), pretrained=str(deeper))
    with pytest.raises(
        WeightsMismatchError,
        match=r"deeper: config.json does not match the weights: the weights hold "
        r"2 encoder layers, the config builds 3 \(num_hidden_layers\); 12 "
        r"encoder tensors missing.*--allow-mismatched-weights",
    ):
        finetuning.build_model(args, labels)
    args.allow_mismatched_weights = True  # forced: loads, with a warning
    assert finetuning.build_model(args, labels).config.num_hidden_layers == 3
    shallower = _edit_config(pretrained_dir, tmp_path / "shallower", num_hidden_layers=1)
    with pytest.raises(WeightsMismatchError, match=r"12 saved encoder tensors the model has no place for"):
        finetuning.build_model(
            finetuning.FinetuneArguments(dataset="u", output_dir="o", pretrained=str(shallower)), labels
        )
    assert finetuning.build_model(  # the intact folder still loads
        finetuning.FinetuneArguments(dataset="u", output_dir="o", pretrained=str(pretrained_dir)), labels
    )


@pytest.fixture(scope="module")
def classifier_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifier")
    torch.manual_seed(0)
    good = save_model(root / "good", MMAEForSequenceClassification(tiny_config(num_hidden_layers=2)).eval())
    bad = _edit_config(good, root / "mismatched", num_hidden_layers=3)
    truncated = root / "truncated"
    shutil.copytree(good, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    capture = write_capture(root / "flows.pcap", CRAFTED_FLOWS)
    return good, bad, truncated, capture


def test_classifier_cli_refuses_mismatched_and_truncated_weights_in_one_line(classifier_dirs, tmp_path, capsys):
    from mmae_hf.cli import classify_main

    good, bad, truncated, capture = classifier_dirs
    assert classify_main([str(capture), "--model", str(bad), "--output", str(tmp_path / "a.csv"), "--no-progress"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mmae-classify")]
    assert err == [
        f"mmae-classify: error: {bad}: config.json does not match the weights: the weights hold 2 encoder "
        "layers, the config builds 3 (num_hidden_layers); 12 encoder tensors missing from the weights (e.g. "
        "encoder.layers.2.attention.proj.bias): they would keep their random initialisation. Fix "
        "config.json, or pass --allow-mismatched-weights to load anyway"
    ]
    assert not (tmp_path / "a.csv").exists()
    assert classify_main([str(capture), "--model", str(truncated), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"mmae-classify: error: {truncated / 'model.safetensors'}: not a readable safetensors file (Error "
        "while deserializing header: incomplete metadata, file not fully covered); the file is damaged or "
        "incomplete (re-download or re-save the model)"
    ]
    assert (
        classify_main(
            [
                str(capture),
                "--model",
                str(bad),
                "--allow-mismatched-weights",
                "--output",
                str(tmp_path / "forced.csv"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        classify_main([str(capture), "--model", str(good), "--output", str(tmp_path / "g.csv"), "--no-progress"]) == 0
    )
    capsys.readouterr()
    fifo = tmp_path / "trap.pcap"
    os.mkfifo(fifo)
    with deadline(60):  # a FIFO given as a capture is reported, never opened
        assert (
            classify_main(
                [str(fifo), str(capture), "--model", str(good), "--output", str(tmp_path / "f.csv"), "--no-progress"]
            )
            == 1
        )
    assert f"error: {fifo}: not a regular file (FIFO), not read" in capsys.readouterr().err.splitlines()


def test_pipeline_loading_refuses_mismatched_weights(classifier_dirs):
    from transformers import pipeline

    good, bad, truncated, _ = classifier_dirs
    with pytest.raises(WeightsMismatchError, match="the weights hold 2 encoder layers, the config builds 3"):
        pipeline("traffic-classification", model=str(bad))
    forced = pipeline("traffic-classification", model=str(bad), allow_mismatched_weights=True)
    assert forced.model.config.num_hidden_layers == 3
    assert pipeline("traffic-classification", model=str(good)).model.config.num_hidden_layers == 2
    with pytest.raises(WeightsMismatchError, match=r"model\.safetensors: not a readable safetensors file"):
        load_checked(MMAEForSequenceClassification, truncated)
    assert os.path.isfile(truncated / "model.safetensors")
