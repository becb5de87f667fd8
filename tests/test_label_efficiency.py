"""Few-shot subsets are reproducible and shared by every model; the label-efficiency study runs end to end."""

import json

import numpy as np
import pytest

from mmae_hf.training.diagnostics import few_shot_indices


def test_few_shot_subsets_are_k_per_class_and_reproducible():
    labels = np.array([0] * 30 + [1] * 4 + [2] * 12)
    rows = few_shot_indices(labels, 5, seed=3)
    assert np.array_equal(rows, few_shot_indices(labels, 5, seed=3))  # same seed, same rows
    assert not np.array_equal(rows, few_shot_indices(labels, 5, seed=4))  # another seed, another draw
    counts = np.bincount(labels[rows], minlength=3)
    assert counts.tolist() == [5, 4, 5]  # a class with fewer than k rows gives all it has
    assert np.all(np.diff(rows) > 0)  # sorted, no duplicates
    assert np.array_equal(few_shot_indices(labels, None, seed=0), np.arange(len(labels)))
    # a larger k for the same seed is not required to contain a smaller one, but the draw never depends on row order
    shuffled = np.random.default_rng(0).permutation(len(labels))
    assert sorted(labels[shuffled][few_shot_indices(labels[shuffled], 5, 3)].tolist()) == sorted(labels[rows].tolist())
    with pytest.raises(ValueError, match="k must be"):
        few_shot_indices(labels, 0, seed=0)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    import torch

    import mmae_hf  # noqa: F401
    from mmae_hf.configuration_mmae import MMAEConfig
    from mmae_hf.modeling_mmae import MMAEForPreTraining
    from mmae_hf.testing.synthetic import make_synthetic_traffic_dataset
    from mmae_hf.training.label_efficiency import MODELS, LabelEfficiencySettings, run_study

    root = tmp_path_factory.mktemp("le")
    make_synthetic_traffic_dataset(num_classes=3, flows_per_class=16, seed=1).save_to_disk(str(root / "synth"))
    torch.manual_seed(0)
    config = MMAEConfig.from_preset("mmae-tiny", num_hidden_layers=1, hidden_size=32, intermediate_size=64)
    MMAEForPreTraining(config).save_pretrained(str(root / "ckpt"))
    settings = LabelEfficiencySettings(
        checkpoint=str(root / "ckpt"),
        datasets=[str(root / "synth")],
        output_dir=str(root / "out"),
        ks=[2, None],
        seeds=[0, 1],
        models=list(MODELS),
        tree_estimators=5,
        finetune_overrides={
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "eval_every_steps": 1,
            "logging_steps": 1,
        },
    )
    study = run_study(settings, progress=lambda line: None)
    return root, settings, study


def test_every_model_sees_the_same_rows_of_a_seed(tiny_study):
    root, settings, study = tiny_study
    runs = study["runs"]
    assert len(runs) == 2 * 2 * 6  # ks x seeds x models
    by_subset = {}
    for run in runs:
        by_subset.setdefault((run["k"], run["seed"]), set()).add((run["train_rows"], run["train_rows_digest"]))
    for (k, seed), subsets in by_subset.items():
        assert len(subsets) == 1, f"k={k} seed {seed}: models trained on different rows {subsets}"
    assert by_subset[("2", 0)] != by_subset[("2", 1)]  # the seed draws another subset
    assert next(iter(by_subset[("2", 0)]))[0] == 6  # 2 flows x 3 classes
    assert next(iter(by_subset[("all", 0)]))[0] == 24
    finetuned = [r for r in runs if r["model"] in ("finetune", "scratch")]
    assert all(r["steps"] == 2 for r in finetuned)


def test_study_results_are_cached_and_summarised(tiny_study, tmp_path):
    from mmae_hf.training.label_efficiency import markdown, plot, run_study, summarize

    root, settings, study = tiny_study
    cached = root / "out" / "runs" / "synth" / "probe" / "k2" / "seed0.json"
    assert json.loads(cached.read_text())["model"] == "probe"
    again = run_study(settings, progress=lambda line: pytest.fail("a cached run was recomputed: " + line))
    assert again["runs"] == study["runs"]
    summary = summarize(study["runs"])
    rows = {(r["model"], r["k"]): r for r in summary["rows"]}
    assert rows[("probe", "2")]["seeds"] == 2
    gain = summary["gains"]["finetune_minus_scratch"]["2"]
    assert gain["mean_over_datasets"] == pytest.approx(
        rows[("finetune", "2")]["test_macro_f1"] - rows[("scratch", "2")]["test_macro_f1"]
    )
    text = markdown(study)
    assert "k = 2" in text and "k = all" in text and "random forest, raw 1600 bytes" in text
    assert plot(study, tmp_path / "le.png").stat().st_size > 1000
    assert not (root / "out" / "runs" / "synth" / "finetune" / "k2" / "seed0" / "checkpoints").exists()


def test_runs_in_worker_processes_give_the_same_results(tiny_study, tmp_path):
    import dataclasses

    from mmae_hf.training.label_efficiency import run_study

    root, settings, study = tiny_study
    models = ["probe", "random_probe", "extra_trees", "random_forest_bytes"]
    parallel = dataclasses.replace(settings, output_dir=str(tmp_path / "parallel"), models=models)
    again = run_study(parallel, progress=lambda line: None, jobs=2)
    expected = [r for r in study["runs"] if r["model"] in models]
    assert [(r["model"], r["k"], r["seed"], r["test"]) for r in again["runs"]] == [
        (r["model"], r["k"], r["seed"], r["test"]) for r in expected
    ]


def test_the_explanation_follows_the_numbers():
    from mmae_hf.training.label_efficiency import explain

    def study(ft_few, sc_few, ft_all, sc_all, tree):
        rows = []
        for model, few, every in (
            ("finetune", ft_few, ft_all),
            ("scratch", sc_few, sc_all),
            ("extra_trees", tree, tree),
        ):
            rows += [
                {"dataset": "d", "model": model, "k": "10", "test_macro_f1": few, "seeds": 1},
                {"dataset": "d", "model": model, "k": "all", "test_macro_f1": every, "seeds": 1},
            ]
        return {"summary": {"rows": rows, "datasets": ["d"]}}

    text = explain(study(0.8, 0.5, 0.9, 0.9, 0.6))
    assert "with 10 labelled flows per class, the pre-trained encoder fine-tuned scores 0.80" in text
    assert "against 0.50 from scratch (+0.30)" in text
    assert "pre-training pays where labels are few, and the two meet once every label is used" in text
    assert "1 seed: read small gaps as noise" in text
    assert "does not help" in explain(study(0.4, 0.6, 0.5, 0.7, 0.2))
    assert "the trees are at least as good" in explain(study(0.5, 0.5, 0.6, 0.6, 0.9))
