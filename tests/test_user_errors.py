"""What a user meets: every error a user can cause is one line naming the input and the fix, with the documented
exit status and no traceback (unless --debug); argument conflicts are refused before any work; a model without a
trained head is refused; old option spellings still work with one deprecation line; help prints defaults once."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmae_hf
from mmae_hf import MMAEConfig, MMAEForPreTraining, MMAEForSequenceClassification, MMAEModel
from mmae_hf.checks import ModelSourceError, UntrainedHeadError
from mmae_hf.cli import classify_main, shortcut_report_main
from mmae_hf.pipeline_traffic import TrafficClassificationPipeline

REPO = Path(__file__).resolve().parents[1]
CAPTURE = REPO / "tests" / "data" / "netmamba_golden" / "flows" / "tls-chat-00.pcap"


def load_script(relative):
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny(**overrides):
    return MMAEConfig.from_preset(
        "mmae-tiny", hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=1, **overrides
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    MMAEForSequenceClassification(tiny(num_labels=2)).save_pretrained(root / "classifier")
    MMAEForPreTraining(tiny()).save_pretrained(root / "pretrained")
    MMAEModel(tiny()).save_pretrained(root / "encoder")
    (root / "not-a-model").mkdir()
    return root


def only_line(text):
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# ------------------------------------------------------------------------------------------- mmae-classify


def test_missing_model_folder_is_one_line_with_exit_2(capsys):
    assert classify_main([str(CAPTURE), "--model", "/no/such/dir", "--no-progress"]) == 2
    assert only_line(capsys.readouterr().err) == (
        "mmae-classify: error: --model /no/such/dir: no such folder, and not a Hub repo id (owner/name); give the "
        "model folder train/finetune.py wrote (OUTPUT_DIR/model) or a Hub repo id"
    )


def test_a_folder_that_is_no_model_is_named(folders, capsys):
    assert classify_main([str(CAPTURE), "--model", str(folders / "not-a-model"), "--no-progress"]) == 2
    assert only_line(capsys.readouterr().err).startswith(
        f"mmae-classify: error: --model {folders / 'not-a-model'}: not a saved model (no config.json in the folder)"
    )


@pytest.mark.parametrize("saved_as", ["pretrained", "encoder"])
def test_a_model_without_trained_head_is_refused_unless_forced(folders, saved_as, tmp_path, capsys):
    model = folders / saved_as
    assert classify_main([str(CAPTURE), "--model", str(model), "--no-progress"]) == 2
    name = {"pretrained": "MMAEForPreTraining", "encoder": "MMAEModel"}[saved_as]
    assert only_line(capsys.readouterr().err) == (
        f"mmae-classify: error: {model}: no trained classification head (it was saved as {name}, without a "
        "classification head), so every flow would get a random label; fine-tune it first (python "
        f"train/finetune.py --pretrained {model} ...) or pass --allow-untrained-head to use it anyway"
    )
    output = tmp_path / "flows.csv"
    assert (
        classify_main(
            [str(CAPTURE), "--model", str(model), "--allow-untrained-head", "--no-progress", "--output", str(output)]
        )
        == 0
    )
    assert len(output.read_text().splitlines()) == 2  # header + the capture's one flow


def test_a_trained_classifier_folder_is_accepted(folders, tmp_path):
    assert (
        classify_main(
            [
                str(CAPTURE),
                "--model",
                str(folders / "classifier"),
                "--no-progress",
                "--output",
                str(tmp_path / "f.jsonl"),
            ]
        )
        == 0
    )


def test_debug_shows_the_traceback():
    with pytest.raises(ModelSourceError, match="/no/such/dir"):
        classify_main([str(CAPTURE), "--model", "/no/such/dir", "--debug"])


def test_bad_arguments_are_refused_before_the_model_loads(folders, capsys, monkeypatch):
    loaded = []
    monkeypatch.setattr(mmae_hf.cli, "load_pipeline", lambda *a, **k: loaded.append(a))
    assert classify_main([str(CAPTURE), "--model", str(folders / "classifier"), "--device", "cuda:99"]) == 2
    assert only_line(capsys.readouterr().err).startswith("mmae-classify: error: --device cuda:99: ")
    with pytest.raises(SystemExit) as exit_info:
        classify_main([str(CAPTURE), "--model", str(folders / "classifier"), "--top-k", "0"])
    assert exit_info.value.code == 2
    assert only_line(capsys.readouterr().err) == (
        "mmae-classify: error: --batch-size, --top-k and --explain-steps must "
        "be >= 1, --explain-limit >= 0 (see mmae-classify --help)"
    )
    assert loaded == []


def test_entry_point_and_hub_id_offline_without_traceback(tmp_path):
    """The installed console script, a Hub id that cannot be reached (offline): one line, exit status 2."""
    script = Path(sys.executable).with_name("mmae-classify")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        [str(script), str(CAPTURE), "--model", "someone/no-such-model"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    line = only_line(done.stderr)
    assert line.startswith("mmae-classify: error: --model someone/no-such-model: cannot be loaded (")
    assert line.endswith(
        "check the repo id and the network (HF_HUB_OFFLINE=1 only reads the local cache), or give a local model folder"
    )


def test_shortcut_report_missing_model(tmp_path, capsys):
    assert shortcut_report_main(["--model", "./nope", "--dataset", str(tmp_path)]) == 2
    assert only_line(capsys.readouterr().err).startswith("mmae-shortcut-report: error: --model ./nope: no such folder")


# ------------------------------------------------------------------------------------------- pipeline


def test_pipeline_refuses_an_untrained_head_unless_allowed(folders):
    from transformers import pipeline

    with pytest.raises(UntrainedHeadError, match="pass allow_untrained_head=True to use it anyway"):
        pipeline("traffic-classification", model=str(folders / "pretrained"))
    forced = pipeline("traffic-classification", model=str(folders / "pretrained"), allow_untrained_head=True)
    assert isinstance(forced, TrafficClassificationPipeline)


def test_pipeline_accepts_a_head_trained_in_this_process(folders):
    """Loaded from a pre-training folder, then trained here (the head moved): not refused."""
    model = MMAEForSequenceClassification.from_pretrained(folders / "pretrained")
    assert model.config.architectures == ["MMAEForPreTraining"]
    with pytest.raises(UntrainedHeadError):
        TrafficClassificationPipeline(model=model, task="traffic-classification")
    with torch.no_grad():
        model.classifier.bias.add_(0.01)  # what any training step does
    TrafficClassificationPipeline(model=model, task="traffic-classification")
    TrafficClassificationPipeline(model=MMAEForSequenceClassification(tiny()), task="traffic-classification")


# ------------------------------------------------------------------------------------------- train/finetune.py


def test_push_to_hub_without_repo_is_refused_before_any_work(tmp_path, capsys):
    finetune = load_script("train/finetune.py")
    out = tmp_path / "run"
    assert finetune.main(["--dataset", "/no/such/data", "--output_dir", str(out), "--push_to_hub"]) == 2
    assert only_line(capsys.readouterr().err) == (
        "finetune.py: error: --push_to_hub needs --hub_model_id (the repo to create, e.g. me/mmae-tiny-traffic)"
    )
    assert not out.exists()


def test_finetune_missing_inputs_are_named(tmp_path, capsys):
    finetune = load_script("train/finetune.py")
    out = tmp_path / "run"
    assert finetune.main(["--dataset", "/no/such/data", "--output_dir", str(out), "--pretrained", "/no/such/dir"]) == 2
    assert only_line(capsys.readouterr().err) == (
        "finetune.py: error: --pretrained /no/such/dir: no such folder, and not a Hub repo id (owner/name); give the "
        "folder train/pretrain.py wrote (its --output_dir) or a Hub repo id"
    )
    assert not out.exists()
    assert finetune.main(["--dataset", "/no/such/data", "--output_dir", str(out)]) == 2
    assert only_line(capsys.readouterr().err) == (
        "finetune.py: error: /no/such/data: no such dataset folder, and not a Hub dataset id (owner/name)"
    )
    with pytest.raises(SystemExit) as exit_info:
        finetune.main(["--dataset", "x", "--output_dir", str(out), "--bogus", "1"])
    assert exit_info.value.code == 2
    assert only_line(capsys.readouterr().err) == (
        "finetune.py: error: unrecognized arguments: --bogus 1 (see finetune.py --help)"
    )


def test_finetune_old_spellings_still_work_with_one_deprecation_line(capsys):
    parser = load_script("train/finetune.py").build_parser()
    args, debug = parser.parse(
        [
            "--dataset",
            "d",
            "--output-dir",
            "o",
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--label_smoothing=0.2",
            "--eval-batch-size",
            "16",
            "--learning-rate",
            "1e-3",
            "--no-progress",
        ]
    )
    assert (args.output_dir, args.num_train_epochs, args.per_device_train_batch_size) == ("o", 3.0, 8)
    assert (args.label_smoothing_factor, args.per_device_eval_batch_size, args.learning_rate) == (0.2, 16, 1e-3)
    assert args.disable_tqdm is True and debug is False
    assert only_line(capsys.readouterr().err) == (
        "finetune.py: warning: deprecated option spellings: --output-dir -> --output_dir, --epochs -> "
        "--num_train_epochs, --batch-size -> --per_device_train_batch_size, --label_smoothing -> "
        "--label_smoothing_factor, --eval-batch-size -> --per_device_eval_batch_size, --learning-rate -> "
        "--learning_rate (the old spellings still work for now)"
    )
    args, _ = parser.parse(["--dataset", "d", "--output_dir", "o", "--num_train_epochs", "2"])
    assert args.num_train_epochs == 2.0 and capsys.readouterr().err == ""


def test_finetune_arguments_keep_their_old_field_names():
    from mmae_hf.training.finetuning import FinetuneArguments

    with pytest.warns(FutureWarning) as caught:
        args = FinetuneArguments(dataset="d", output_dir="o", epochs=4, batch_size=16)
    assert sorted(str(w.message) for w in caught) == [
        "FinetuneArguments(batch_size=...) is deprecated; use per_device_train_batch_size=",
        "FinetuneArguments(epochs=...) is deprecated; use num_train_epochs=",
    ]
    assert args.num_train_epochs == 4 and args.epochs == 4 and args.batch_size == args.per_device_train_batch_size == 16


def help_text(module) -> str:
    return module.build_parser().format_help()


@pytest.mark.parametrize("script", ["train/finetune.py", "train/pretrain.py"])
def test_help_prints_each_default_once_and_trainer_names(script):
    text = help_text(load_script(script))
    assert "(default: None)" not in text
    options = re.split(r"\n  (?=--)", text)
    assert not [o for o in options if o.count("(default:") > 1]
    for name in ("--output_dir", "--per_device_train_batch_size", "--learning_rate", "--max_steps", "--debug"):
        assert name in text
    assert "--output-dir" not in text.split("\n\n", 2)[1]  # the usage lists each option once, underscored


# ------------------------------------------------------------------------------------------- train/pretrain.py


def test_pretrain_errors_are_one_line(tmp_path, capsys):
    pretrain = load_script("train/pretrain.py")
    out = tmp_path / "pre"
    assert (
        pretrain.main(
            [
                "--dataset",
                "/no/such/data",
                "--output_dir",
                str(out),
                "--config",
                "mmae-tiny",
                "--per_device_train_batch_size",
                "3",
            ]
        )
        == 2
    )
    assert only_line(capsys.readouterr().err) == (
        "pretrain.py: error: invalid pre-training arguments: per_device_train_batch_size must be even and >= 2 "
        "(FlowMix pairs flows), got 3"
    )
    assert pretrain.main(["--dataset", "/no/such/data", "--output_dir", str(out), "--config", "mmae-tiny"]) == 2
    assert only_line(capsys.readouterr().err) == (
        "pretrain.py: error: /no/such/data: no such dataset folder, and not a Hub dataset id (owner/name)"
    )


def test_pretrain_old_spellings(capsys):
    parser = load_script("train/pretrain.py").build_parser()
    *groups, _ = parser.parse(
        [
            "--dataset",
            "d",
            "--output-dir",
            "o",
            "--per-device-train-batch-size",
            "8",
            "--config-override",
            "mask_ratio=0.75",
            "--config-override",
            "use_pmp=false",
            "--no-progress-bar",
            "--cpu",
            "--num-workers",
            "2",
        ]
    )
    values = {k: v for g in groups for k, v in vars(g).items()}
    assert values["output_dir"] == "o" and values["per_device_train_batch_size"] == 8
    assert values["config_overrides"] == ["mask_ratio=0.75", "use_pmp=false"]
    assert values["disable_tqdm"] is True and values["use_cpu"] is True and values["dataloader_num_workers"] == 2
    line = only_line(capsys.readouterr().err)
    assert line.startswith("pretrain.py: warning: deprecated option spellings: --output-dir -> --output_dir, ")
    assert "--config-override -> --config_overrides" in line and "--cpu -> --use_cpu" in line


def test_pretraining_arguments_keep_their_old_field_names():
    from mmae_hf.training.pretraining import PretrainingArguments

    with pytest.warns(FutureWarning):
        args = PretrainingArguments(dataset="d", output_dir="o", cpu=True, num_workers=3)
    assert args.use_cpu and args.cpu and args.dataloader_num_workers == args.num_workers == 3


# ------------------------------------------------------------------------------------------- dataset and study scripts


def test_build_dataset_conflicts_and_missing_input(tmp_path, capsys):
    build = load_script("dataset_scripts/build_dataset.py")
    with pytest.raises(SystemExit) as exit_info:
        build.main(
            [
                "--input",
                str(tmp_path),
                "--output",
                str(tmp_path / "o"),
                "--validation-size",
                "0.6",
                "--test-size",
                "0.5",
            ]
        )
    assert exit_info.value.code == 2
    assert only_line(capsys.readouterr().err) == (
        "build_dataset.py: error: --validation-size and --test-size must be in [0, 1) and sum to less than 1 "
        "(see build_dataset.py --help)"
    )
    assert build.main(["--input", "/no/such/captures", "--output", str(tmp_path / "o")]) == 2
    assert (
        only_line(capsys.readouterr().err) == "build_dataset.py: error: /no/such/captures: input folder does not exist"
    )


def test_run_study_missing_dataset(tmp_path, capsys):
    study = load_script("train/run_study.py")
    assert study.main(["--dataset", "/no/such/data", "--output-dir", str(tmp_path / "s"), "--seeds", "0"]) == 2
    assert only_line(capsys.readouterr().err) == (
        "run_study.py: error: /no/such/data: no such dataset folder, and not a Hub dataset id (owner/name)"
    )
    with pytest.raises(SystemExit):
        study.main(["--dataset", "d", "--seeds", "0", "0"])
    assert "a seed is given twice" in only_line(capsys.readouterr().err)
