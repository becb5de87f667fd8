"""The model card renders the numbers it was given, and its YAML model-index parses back."""

import yaml

from mmae_hf.model_card import build_finetuned_model_card, describe_preprocessing, is_hub_repo_id


def _summary(pretrained="someone/mmae-tiny-pretrained"):
    per_class = {
        "web": {"precision": 0.9, "recall": 0.8, "f1": 0.8470588, "support": 10},
        "voip": {"precision": 0.5, "recall": 0.75, "f1": 0.6, "support": 4},
    }
    return {
        "model_name": "mmae-tiny-demo",
        "pretrained": pretrained,
        "preset": "mmae-tiny",
        "label_names": ["web", "voip"],
        "num_rows": {"train": 40, "validation": 12, "test": 14},
        "num_train_rows_used": 40,
        "best_checkpoint": "checkpoint-30",
        "best_validation_macro_f1": 0.8123,
        "validation": {
            "accuracy": 0.8333,
            "macro_f1": 0.8123,
            "weighted_f1": 0.8301,
            "macro_precision": 0.84,
            "macro_recall": 0.81,
        },
        "test": {
            "accuracy": 0.7857,
            "macro_f1": 0.7235,
            "weighted_f1": 0.7764,
            "macro_precision": 0.7,
            "macro_recall": 0.775,
            "per_class": per_class,
        },
        "ood_threshold": 0.4321,
        "ood_percentile": 5.0,
        "test_share_below_ood_threshold": 0.0714,
        "train_runtime_s": 12.3,
        "global_steps": 30,
        "hyperparameters": {"learning_rate": 5e-4, "layer_decay": 0.75, "label_smoothing": 0.1},
    }


FE_CONFIG = {
    "feature_extractor_type": "MMAEFeatureExtractor",
    "flow_options": {
        "bidirectional": True,
        "anonymize": "default",
        "num_packets": 5,
        "header_bytes": 80,
        "payload_bytes": 240,
        "idle_timeout": 120.0,
    },
}


def test_card_contains_given_numbers_and_sections(tmp_path):
    card = build_finetuned_model_card(
        _summary(),
        dataset_name="someone/traffic-sample",
        feature_extractor_config=FE_CONFIG,
        baselines=[
            {"name": "ExtraTrees (flow statistics)", "test": {"accuracy": 0.7, "macro_f1": 0.6543, "weighted_f1": 0.69}}
        ],
        repo_id="someone/mmae-tiny-demo",
    )
    text = str(card)
    for number in ("0.7235", "0.7857", "0.7764", "0.8123", "0.4321", "7.1%", "0.6543", "0.8471"):
        assert number in text, number
    for section in (
        "## Data",
        "## Preprocessing and anonymisation",
        "## Training recipe",
        "## Results",
        "## Limitations",
        "Anonymisation profile: **default**",
        "ExtraTrees (flow statistics)",
        'from_pretrained("someone/mmae-tiny-demo")',
        "| layer_decay | 0.75 |",
        "web, voip",
    ):
        assert section in text, section
    # the macro / weighted names are not swapped in the table row
    assert "| mmae-tiny-demo | test | 0.7857 | 0.7235 | 0.7764 |" in text

    path = tmp_path / "README.md"
    card.save(path)
    front = path.read_text().split("---")[1]
    meta = yaml.safe_load(front)
    assert meta["base_model"] == "someone/mmae-tiny-pretrained"
    assert meta["datasets"] == ["someone/traffic-sample"]
    results = meta["model-index"][0]["results"][0]
    assert results["dataset"]["split"] == "test"
    metrics = {(m["type"], m.get("name")): m["value"] for m in results["metrics"]}
    assert metrics[("accuracy", "Accuracy")] == 0.7857
    assert metrics[("f1", "Macro F1")] == 0.7235
    assert metrics[("f1", "Weighted F1")] == 0.7764

    from huggingface_hub import ModelCard

    loaded = ModelCard.load(path)
    assert {r.metric_name: r.metric_value for r in loaded.data.eval_results} == {
        "Accuracy": 0.7857,
        "Macro F1": 0.7235,
        "Weighted F1": 0.7764,
    }


def test_local_paths_never_reach_the_metadata(tmp_path):
    summary = _summary(pretrained=str(tmp_path))  # a local folder
    card = build_finetuned_model_card(summary, dataset_name=str(tmp_path))
    assert str(tmp_path) not in card.content.split("---")[1]
    assert "locally pre-trained" in card.content
    assert not is_hub_repo_id(str(tmp_path))
    assert is_hub_repo_id("org/name")


def test_pretraining_and_ablation_are_described():
    summary = _summary()
    summary["pretraining"] = {
        "steps": 40,
        "global_batch_size": 32,
        "split": "train",
        "switches": {"use_flowmix": False, "use_teacher": True, "mask_ratio": 0.9},
    }
    card = build_finetuned_model_card(summary, dataset_name="sample traffic (examples/x)")
    assert "40 pre-training steps of 32 flows on the train split; ablation, switched off: flowmix" in str(card)
    assert "type: sample-traffic-examples-x" in str(card)


def test_from_scratch_and_missing_feature_extractor():
    summary = _summary(pretrained=None)
    card = build_finetuned_model_card(summary, dataset_name="demo")
    assert "from scratch" in str(card)
    assert "not recorded" in describe_preprocessing(None)
