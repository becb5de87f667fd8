"""Fine-tuning with the Trainer on a tiny synthetic dataset: outputs, selection on validation only, reload."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import mmae_hf
from mmae_hf.feature_extraction_mmae import MMAEFeatureExtractor
from mmae_hf.testing.synthetic import make_synthetic_traffic_dataset
from mmae_hf.training import finetuning

REPO = Path(__file__).resolve().parents[1]
TEST_ROWS = 5  # differs from the validation size, so we can tell which split a metric call scored


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO / "train" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    dsd = make_synthetic_traffic_dataset(num_classes=3, flows_per_class=16, seed=1)
    dsd["test"] = dsd["test"].select(range(TEST_ROWS))
    dsd.save_to_disk(str(root / "dataset"))
    # the dataset builder saves the flow options it used beside the data
    MMAEFeatureExtractor(flow_options={"anonymize": "strict"}).save_pretrained(str(root / "dataset"))
    scored_sizes = []
    original = finetuning.make_compute_metrics

    def spying_make_compute_metrics(label_names):
        inner = original(label_names)

        def compute(prediction):
            scored_sizes.append(len(prediction.label_ids))
            return inner(prediction)

        return compute

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(finetuning, "make_compute_metrics", spying_make_compute_metrics)
        script = _load_script("finetune")
        rc = script.main(
            [
                "--dataset",
                str(root / "dataset"),
                "--output_dir",
                str(root / "run"),
                "--num_train_epochs",
                "3",
                "--per_device_train_batch_size",
                "8",
                "--learning_rate",
                "2e-3",
                "--logging_steps",
                "1",
                "--seed",
                "0",
                "--model_name",
                "mmae-tiny-synthetic",
            ]
        )
    assert rc == 0
    results = json.loads((root / "run" / "results.json").read_text())
    return {"root": root, "run": root / "run", "dsd": dsd, "results": results, "scored_sizes": scored_sizes}


def test_outputs_a_person_can_look_at(finetuned):
    run, results = finetuned["run"], finetuned["results"]
    for key in ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall", "per_class"):
        assert key in results["test"]
    assert set(results["test"]["per_class"]) == {"app_0", "app_1", "app_2"}
    assert (run / "eval" / "test_confusion.png").read_bytes()[:4] == b"\x89PNG"
    confusion = json.loads((run / "eval" / "test_confusion.json").read_text())
    assert np.asarray(confusion["matrix"]).sum() == TEST_ROWS
    assert list((run / "tensorboard").glob("events.out.tfevents.*")), "no tensorboard event file"
    card = (run / "model" / "README.md").read_text()
    assert f"{results['test']['macro_f1']:.4f}" in card and "model-index" in card
    assert "Anonymisation profile: **strict**" in card  # carried from the dataset's preprocessor_config.json
    from transformers import AutoFeatureExtractor

    extractor = AutoFeatureExtractor.from_pretrained(str(run / "model"))
    assert isinstance(extractor, MMAEFeatureExtractor) and extractor.flow_options["anonymize"] == "strict"


def test_selection_on_validation_only(finetuned):
    results, dsd = finetuned["results"], finetuned["dsd"]
    n_val = len(dsd["validation"])
    sizes = finetuned["scored_sizes"]
    # every metric call during training scored the validation split; the test split was scored once, last
    assert sizes.count(TEST_ROWS) == 1 and sizes[-1] == TEST_ROWS
    assert all(s == n_val for s in sizes[:-1]) and len(sizes) >= 4  # 3 epochs + final validation pass
    evals = [(e["step"], e["eval_macro_f1"]) for e in results["log_history"] if "eval_macro_f1" in e]
    assert len(evals) == 3
    best_step, best_f1 = max(evals, key=lambda se: (se[1], -se[0]))  # first occurrence of the maximum
    assert results["best_validation_macro_f1"] == pytest.approx(best_f1)
    assert results["best_checkpoint"] == f"checkpoint-{best_step}"
    assert results["validation"]["macro_f1"] == pytest.approx(best_f1)
    # the saved model holds exactly the weights of the best-by-validation checkpoint
    best = load_file(str(finetuned["run"] / "checkpoints" / results["best_checkpoint"] / "model.safetensors"))
    final = load_file(str(finetuned["run"] / "model" / "model.safetensors"))
    assert best.keys() == final.keys()
    for key in best:
        torch.testing.assert_close(best[key], final[key], rtol=0, atol=0)


def test_saved_model_reloads_with_labels_threshold_and_same_predictions(finetuned):
    from transformers import AutoModelForSequenceClassification

    run, results, dsd = finetuned["run"], finetuned["results"], finetuned["dsd"]
    config = json.loads((run / "model" / "config.json").read_text())
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForSequenceClassification"}
    assert (run / "model" / "modeling_mmae.py").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(str(run / "model")).eval()
    assert isinstance(model, mmae_hf.MMAEForSequenceClassification)
    assert model.config.id2label == {0: "app_0", 1: "app_1", 2: "app_2"}
    assert model.config.ood_threshold == pytest.approx(results["ood_threshold"])
    assert 0.0 < model.config.ood_threshold <= 1.0
    payload = torch.from_numpy(np.array(finetuning.payload_matrix(dsd["test"])))
    assert payload.dtype == torch.uint8
    with torch.no_grad():
        predicted = model(input_bytes=payload).logits.argmax(-1).numpy()
    labels = np.asarray(dsd["test"]["label"])
    assert float((predicted == labels).mean()) == pytest.approx(results["test"]["accuracy"])


def test_classifier_starts_from_pretrained_encoder(tmp_path):
    config = mmae_hf.MMAEConfig.from_preset("mmae-tiny")
    pretrained = mmae_hf.MMAEForPreTraining(config)
    pretrained.save_pretrained(str(tmp_path / "pre"))
    args = finetuning.FinetuneArguments(
        dataset="unused", output_dir=str(tmp_path / "out"), pretrained=str(tmp_path / "pre")
    )
    model = finetuning.build_model(args, ["a", "b"])
    assert model.config.id2label == {0: "a", 1: "b"} and model.config.label2id == {"a": 0, "b": 1}
    assert model.dtype == torch.float32
    reference = pretrained.mmae.state_dict()
    for name, tensor in model.mmae.state_dict().items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0)
    with pytest.raises(ValueError, match="--pretrained .*: not a saved model \\(no config.json"):
        finetuning.build_model(
            finetuning.FinetuneArguments(dataset="x", output_dir="y", pretrained=str(tmp_path)), ["a"]
        )


def test_collator_stacks_uint8_and_labels():
    dsd = make_synthetic_traffic_dataset(num_classes=2, flows_per_class=4, seed=0)
    view = finetuning.model_inputs_view(dsd["train"])
    rows = view.__getitems__([0, 1, 2])
    assert rows[0]["input_bytes"].dtype == np.int64  # the numpy formatter upcasts; the collator must undo it
    batch = finetuning.FlowClassificationCollator()(rows)
    assert batch["input_bytes"].dtype == torch.uint8 and batch["input_bytes"].shape == (3, 1600)
    assert batch["labels"].dtype == torch.long
    np.testing.assert_array_equal(batch["input_bytes"].numpy(), finetuning.payload_matrix(dsd["train"])[:3])


def test_dataset_errors_name_the_problem(tmp_path):
    dsd = make_synthetic_traffic_dataset(num_classes=2, flows_per_class=4, seed=0)
    del dsd["test"]
    dsd.save_to_disk(str(tmp_path / "no_test"))
    with pytest.raises(ValueError, match="missing: test"):
        finetuning.load_traffic_dataset(str(tmp_path / "no_test"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="file.txt"):
        finetuning.load_traffic_dataset(str(tmp_path / "file.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no dataset found"):
        finetuning.load_traffic_dataset(str(tmp_path / "empty"))


def test_freeze_encoder_trains_the_head_only(tmp_path):
    args = finetuning.FinetuneArguments(dataset="unused", output_dir=str(tmp_path), freeze_encoder=True)
    model = finetuning.build_model(args, ["a", "b", "c"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}


def test_the_recipe_fills_only_what_the_user_left_out():
    from mmae_hf.training.finetuning import SMALL_DATA_MAX_ROWS, FinetuneArguments, resolve_recipe

    small = resolve_recipe(FinetuneArguments(dataset="d", output_dir="o"), 90)
    assert small.recipe == "small_data"
    assert (
        small.max_steps,
        small.per_device_train_batch_size,
        small.learning_rate,
        small.layer_decay,
        small.head_warmup_steps,
        small.eval_every_steps,
        small.classifier_pooling,
    ) == (300, 32, 1e-3, 1.0, 50, 30, "mean")
    # 10 epochs when they are more than 300 steps: 1,283 flows / 32 per step
    assert resolve_recipe(FinetuneArguments(dataset="d", output_dir="o"), 1283).max_steps == 401
    big = resolve_recipe(FinetuneArguments(dataset="d", output_dir="o"), SMALL_DATA_MAX_ROWS + 1)
    assert big.recipe == "epochs" and big.max_steps == -1 and big.num_train_epochs == 10
    assert (big.per_device_train_batch_size, big.learning_rate, big.layer_decay, big.head_warmup_steps) == (
        64,
        5e-4,
        0.75,
        0,
    )
    given = resolve_recipe(FinetuneArguments(dataset="d", output_dir="o", learning_rate=3e-4, num_train_epochs=2), 90)
    assert given.learning_rate == 3e-4 and given.num_train_epochs == 2 and given.max_steps == -1  # the user's length
    short = resolve_recipe(FinetuneArguments(dataset="d", output_dir="o", max_steps=12), 90)
    assert short.max_steps == 12 and short.head_warmup_steps == 2 and short.eval_every_steps == 1
    forced = resolve_recipe(FinetuneArguments(dataset="d", output_dir="o", recipe="epochs"), 90)
    assert forced.recipe == "epochs" and forced.per_device_train_batch_size == 64
    with pytest.raises(ValueError, match="--recipe fast"):
        FinetuneArguments(dataset="d", output_dir="o", recipe="fast")
