"""Baselines (tree ensemble, linear probe) and the study table, on tiny synthetic data."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import mmae_hf
from mmae_hf.testing.synthetic import make_synthetic_traffic_dataset
from mmae_hf.training.baselines import flow_feature_matrix, run_linear_probe, run_tree_baseline
from mmae_hf.training.study import VARIANTS, results_table, study_markdown, summarize_study

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dsd():
    return make_synthetic_traffic_dataset(num_classes=4, flows_per_class=16, seed=3)


def test_tree_baseline_beats_chance(dsd, tmp_path):
    x, y = flow_feature_matrix(dsd["train"])
    assert x.shape == (len(dsd["train"]), 27 + 3 * 5)  # side-channel features only, no payload bytes
    summary = run_tree_baseline(dsd, tmp_path, kind="extra_trees", seed=0, n_estimators=50)
    chance = 1 / 4
    assert summary["test"]["macro_f1"] > chance + 0.3
    assert summary["test"]["accuracy"] > chance + 0.3
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["test"]["macro_f1"] == pytest.approx(summary["test"]["macro_f1"])
    assert (tmp_path / "eval" / "test_confusion.png").is_file()
    with pytest.raises(ValueError, match="unknown tree baseline"):
        run_tree_baseline(dsd, tmp_path / "x", kind="svm")


def test_linear_probe_picks_c_on_validation(dsd, tmp_path):
    model = mmae_hf.MMAEForPreTraining(mmae_hf.MMAEConfig.from_preset("mmae-tiny"))
    model.save_pretrained(str(tmp_path / "pre"))
    summary = run_linear_probe(dsd, str(tmp_path / "pre"), tmp_path / "probe", seed=0, c_grid=(0.1, 1.0))
    search = {entry["C"]: entry["validation_macro_f1"] for entry in summary["C_search_on_validation"]}
    assert set(search) == {0.1, 1.0}
    assert search[summary["selected_C"]] == max(search.values())
    assert summary["validation"]["macro_f1"] == pytest.approx(max(search.values()))
    assert summary["features"].startswith("frozen encoder CLS vector (64 dims")
    assert 0.0 <= summary["test"]["macro_f1"] <= 1.0


def test_summary_mean_std_and_markdown():
    runs = [
        {
            "variant": "mmae",
            "seed": s,
            "test": {"macro_f1": f, "accuracy": a, "weighted_f1": f},
            "validation": {"macro_f1": f, "accuracy": a, "weighted_f1": f},
            "wall_time_s": 10.0,
        }
        for s, f, a in ((0, 0.7, 0.8), (1, 0.8, 0.9), (2, 0.9, 1.0))
    ]
    rows = summarize_study(runs, ["mmae", "scratch"])
    assert len(rows) == 1  # variants without runs are left out
    assert rows[0]["test_macro_f1"]["mean"] == pytest.approx(0.8)
    assert rows[0]["test_macro_f1"]["std"] == pytest.approx(0.1)
    assert "| mmae | 3 | 0.8000 ± 0.1000 | 0.9000 ± 0.1000 |" in results_table(rows)
    study = {
        "study": "s",
        "created": "now",
        "seeds": [0, 1, 2],
        "summary": rows,
        "settings": {"epochs": 1},
        "dataset": {"name": "d", "num_rows": {"train": 1}, "label_names": ["a", "b"]},
    }
    text = study_markdown(study)
    assert VARIANTS["mmae"].description in text and "- mmae: 0: 0.7000, 1: 0.8000, 2: 0.9000" in text


def test_ablation_switches_exist_in_the_config():
    config = mmae_hf.MMAEConfig.from_preset("mmae-tiny")
    for variant in VARIANTS.values():
        for key in variant.pretrain_overrides:
            assert hasattr(config, key), key
            mmae_hf.MMAEConfig.from_preset("mmae-tiny", **variant.pretrain_overrides)  # a valid combination
    assert VARIANTS["no_flowmix"].pretrain_overrides == {"use_flowmix": False}
    assert VARIANTS["no_teacher"].pretrain_overrides == {"use_teacher": False}
    assert VARIANTS["linear_probe"].pretrain == "mmae" and VARIANTS["scratch"].pretrain is None


def test_run_study_cli_with_trees(dsd, tmp_path):
    dsd.save_to_disk(str(tmp_path / "data"))
    spec = importlib.util.spec_from_file_location("_run_study", REPO / "train" / "run_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = [
        "--dataset",
        str(tmp_path / "data"),
        "--study",
        "unit",
        "--variants",
        "extra_trees",
        "random_forest",
        "--seeds",
        "0",
        "1",
        "--output-dir",
        str(tmp_path / "out"),
        "--results-dir",
        str(tmp_path / "res"),
        "--tree-estimators",
        "20",
        "--quiet",
    ]
    assert module.main(argv) == 0
    study = json.loads((tmp_path / "res" / "unit.json").read_text())
    assert [r["variant"] for r in study["summary"]] == ["extra_trees", "random_forest"]
    assert len(study["runs"]) == 4
    values = study["summary"][0]["test_macro_f1"]["values"]
    assert study["summary"][0]["test_macro_f1"]["mean"] == pytest.approx(np.mean(values))
    assert "| extra_trees | 2 |" in (tmp_path / "res" / "unit.md").read_text()
    # a second call reuses the finished runs
    (tmp_path / "out" / "runs" / "extra_trees" / "seed0" / "eval" / "test_confusion.png").unlink()
    assert module.main(argv) == 0
    assert not (tmp_path / "out" / "runs" / "extra_trees" / "seed0" / "eval" / "test_confusion.png").exists()


def test_baselines_cli_tree(dsd, tmp_path, capsys):
    dsd.save_to_disk(str(tmp_path / "data"))
    spec = importlib.util.spec_from_file_location("_baselines_cli", REPO / "train" / "baselines.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (
        module.main(
            [
                "tree",
                "--dataset",
                str(tmp_path / "data"),
                "--output-dir",
                str(tmp_path / "tree"),
                "--kind",
                "random_forest",
                "--n-estimators",
                "20",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert '"macro_f1"' in printed and "test_confusion.png" in printed
    assert json.loads((tmp_path / "tree" / "results.json").read_text())["kind"] == "random_forest"


def test_one_seed_table_claims_no_spread():
    runs = [
        {
            "variant": "mmae",
            "seed": 0,
            "test": {"macro_f1": 0.7, "accuracy": 0.8, "weighted_f1": 0.7},
            "validation": {"macro_f1": 0.6, "accuracy": 0.7, "weighted_f1": 0.6},
            "wall_time_s": 1.0,
        }
    ]
    table = results_table(summarize_study(runs, ["mmae"]))
    assert "± 0.0000" not in table
    assert "0.7000 (1 seed)" in table
