"""Pre-training library and script: data reading, sampling, schedules, optimizer groups, the loop, resume, NaN guard."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "train"))

from mmae_hf.testing.synthetic import make_synthetic_traffic_dataset  # noqa: E402
from mmae_hf.training import (  # noqa: E402
    CheckpointError,
    DatasetLoadError,
    EpochBatchSampler,
    FlowBatchReader,
    NonFiniteLossError,
    PretrainingArguments,
    load_pretraining_split,
    optimizer_parameter_groups,
    parse_config_overrides,
    run_pretraining,
    warmup_cosine_factor,
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # the test machine is shared: two intra-op threads contending with other jobs are slower than one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synthetic"
    make_synthetic_traffic_dataset(num_classes=3, flows_per_class=16, seed=0).save_to_disk(str(path))
    # a dataset folder built by the dataset scripts carries the feature extractor's config
    (path / "preprocessor_config.json").write_text(json.dumps({"feature_extractor_type": "MMAEFeatureExtractor"}))
    return path


def tiny_args(dataset_dir, output_dir, **overrides):
    values = dict(
        dataset=str(dataset_dir),
        output_dir=str(output_dir),
        config="mmae-tiny",
        max_steps=4,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_steps=0,
        report_to="none",
        progress_bar=False,
    )
    values.update(overrides)
    return PretrainingArguments(**values)


# ------------------------------------------------------------------------------------------------ data


def test_reader_matches_dataset_rows_and_keeps_dtypes(dataset_dir):
    train = load_pretraining_split(str(dataset_dir)).shuffle(seed=3)  # an indices mapping must be honoured
    reader = FlowBatchReader(train)
    batch = reader[[5, 0, 17]]
    reference = train.with_format("numpy")[[5, 0, 17]]
    expected = {
        "input_bytes": np.uint8,
        "packet_lengths": np.int32,
        "packet_iats": np.float32,
        "packet_directions": np.int8,
        "flow_stats": np.float32,
    }
    for name, dtype in expected.items():
        assert batch[name].dtype == dtype, name
        np.testing.assert_array_equal(batch[name], np.asarray(reference[name]).astype(dtype))
    assert batch["input_bytes"].shape == (3, 1600)
    rows = FlowBatchReader.to_rows(batch)
    assert len(rows) == 3 and rows[1]["input_bytes"].shape == (1600,)


def test_only_the_train_split_is_read(dataset_dir, tmp_path):
    assert load_pretraining_split(str(dataset_dir)).num_rows == 24
    with pytest.raises(DatasetLoadError, match="validation/test flows must stay unseen"):
        load_pretraining_split(str(dataset_dir), split="test")
    with pytest.raises(DatasetLoadError, match="no split 'unlabelled'"):
        load_pretraining_split(str(dataset_dir), split="unlabelled")
    # a parquet folder (data/<split>-*.parquet, as push_to_hub writes it) loads too
    parquet = tmp_path / "parquet"
    dd = make_synthetic_traffic_dataset(num_classes=2, flows_per_class=4)
    for split, ds in dd.items():
        ds.to_parquet(str(parquet / "data" / f"{split}-00000-of-00001.parquet"))
    loaded = load_pretraining_split(str(parquet), cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == 4 and loaded.features["label"].names == ["app_0", "app_1"]
    # wrong columns are named
    broken = tmp_path / "broken"
    dd.remove_columns(["flow_stats"]).save_to_disk(str(broken))
    with pytest.raises(DatasetLoadError, match="missing column 'flow_stats'"):
        load_pretraining_split(str(broken))


def test_sampler_shards_shuffles_and_resumes():
    samplers = [EpochBatchSampler(103, 4, num_replicas=3, rank=r, seed=7) for r in range(3)]
    assert len(samplers[0]) == 103 // 12
    epoch0 = [s.epoch_batches() for s in samplers]
    assert all(b.shape == (8, 4) for b in epoch0)
    flat = np.concatenate([b.ravel() for b in epoch0])
    assert len(set(flat.tolist())) == flat.size  # processes see disjoint rows within an epoch
    for s in samplers:
        s.set_epoch(1)
    assert not np.array_equal(samplers[0].epoch_batches(), epoch0[0])  # a new order every epoch
    np.testing.assert_array_equal(list(samplers[0].iter_from(5)), samplers[0].epoch_batches()[5:])
    again = EpochBatchSampler(103, 4, num_replicas=3, rank=0, seed=7)
    np.testing.assert_array_equal(again.epoch_batches(), epoch0[0])  # same seed, same order
    with pytest.raises(ValueError, match="cannot fill one batch"):
        EpochBatchSampler(5, 4, num_replicas=2, rank=0)


# ------------------------------------------------------------------------------------ optimizer, schedule


def test_warmup_cosine_schedule():
    factors = [warmup_cosine_factor(s, 4, 20, 0.1) for s in range(25)]
    assert factors[0] == pytest.approx(1 / 5) and factors[3] == pytest.approx(4 / 5)
    assert factors[4] == pytest.approx(1.0)  # peak right after warm-up
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))  # then never increases
    assert factors[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factors[20] == pytest.approx(0.1) and factors[24] == pytest.approx(0.1)
    assert warmup_cosine_factor(0, 0, 10) == pytest.approx(1.0)


def test_weight_decay_groups():
    from mmae_hf import MMAEConfig, MMAEForPreTraining

    model = MMAEForPreTraining(MMAEConfig.from_preset("mmae-tiny"))
    decay, no_decay = optimizer_parameter_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {"mmae.embeddings.cls_token", "mmae.embeddings.position_embeddings", "decoder.decoder_pos_embed"} <= set(
        no_decay["names"]
    )
    assert all(p.ndim >= 2 for p in decay["params"])  # biases and LayerNorm weights are 1-d
    assert "mmae.encoder.layers.0.attention.qkv.weight" in decay["names"]
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == total


def test_config_overrides_and_bad_arguments(tmp_path):
    assert parse_config_overrides(["mask_ratio=0.75", "use_pmp=false", "hidden_act=gelu"]) == {
        "mask_ratio": 0.75,
        "use_pmp": False,
        "hidden_act": "gelu",
    }
    with pytest.raises(ValueError, match="even"):
        PretrainingArguments(dataset="x", output_dir=str(tmp_path), per_device_train_batch_size=7)
    with pytest.raises(ValueError, match="unknown MMAEConfig field"):
        from mmae_hf.training import load_model_config

        load_model_config("mmae-tiny", {"no_such_field": 1})


# ------------------------------------------------------------------------------------------------- loop


def test_cli_run_writes_a_loadable_model_and_logs(dataset_dir, tmp_path):
    import pretrain  # train/pretrain.py
    from transformers import AutoModel, AutoModelForPreTraining

    import mmae_hf  # noqa: F401  (registers the Auto classes)

    out = tmp_path / "run"
    code = pretrain.main(
        [
            "--dataset",
            str(dataset_dir),
            "--config",
            "mmae-tiny",
            "--output_dir",
            str(out),
            "--max_steps",
            "3",
            "--per_device_train_batch_size",
            "4",
            "--logging_steps",
            "1",
            "--save_steps",
            "2",
            "--gradient_accumulation_steps",
            "2",
            "--disable_tqdm",
            "--config_overrides",
            "mask_ratio=0.75",
        ]
    )
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in (
        "loss",
        "reconstruction_loss",
        "rank_loss",
        "distillation_loss",
        "learning_rate",
        "ema_momentum",
        "hard_mask_share",
        "grad_norm",
    ):
        assert all(math.isfinite(r[key]) for r in records), key
    assert records[0]["hard_mask_share"] == 0.0 and records[-1]["hard_mask_share"] > 0  # curriculum rises
    assert records[0]["ema_momentum"] == pytest.approx(0.96)
    assert records[-1]["samples_per_second_per_process"] > 0
    assert list((out / "runs").rglob("events.out.tfevents.*"))  # tensorboard tracker wrote events
    assert (out / "pretraining_curves.png").stat().st_size > 1000
    assert (out / "preprocessor_config.json").read_text() == (dataset_dir / "preprocessor_config.json").read_text()
    assert (out / "checkpoints" / "checkpoint-2" / "teacher.safetensors").is_file()
    summary = json.loads((out / "pretraining_summary.json").read_text())
    assert summary["finished"] and summary["world_size"] == 1 and summary["global_batch_size"] == 8

    pretraining = AutoModelForPreTraining.from_pretrained(str(out))
    assert type(pretraining).__name__ == "MMAEForPreTraining" and pretraining.config.mask_ratio == 0.75
    encoder = AutoModel.from_pretrained(str(out))
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    for name, tensor in encoder.state_dict().items():
        torch.testing.assert_close(tensor, saved[f"mmae.{name}"], rtol=0, atol=0)


@pytest.mark.parametrize("accumulation", [2])
def test_resume_ends_with_the_same_weights(dataset_dir, tmp_path, accumulation):
    from safetensors.torch import load_file

    # 24 flows, batch 4, GA 2 -> 3 steps per epoch: stop mid-epoch (step 2), cross an epoch boundary after resuming
    common = dict(max_steps=4, gradient_accumulation_steps=accumulation)
    straight = run_pretraining(tiny_args(dataset_dir, tmp_path / "straight", **common))
    stopped = run_pretraining(tiny_args(dataset_dir, tmp_path / "resumed", stop_after_step=2, **common))
    assert not stopped.finished and stopped.checkpoint.endswith("checkpoint-2")
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    with pytest.raises(CheckpointError, match="per_device_train_batch_size"):
        run_pretraining(
            tiny_args(
                dataset_dir,
                tmp_path / "resumed",
                resume_from_checkpoint="latest",
                per_device_train_batch_size=2,
                **common,
            )
        )
    with pytest.raises(CheckpointError, match="earlier run"):  # a fresh run would mix its checkpoints with these
        run_pretraining(tiny_args(dataset_dir, tmp_path / "resumed", **common))
    # a damaged copy of the checkpoint is refused with its folder named, and the original stays usable
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path / "resumed", damaged)
    (damaged / "checkpoints" / "checkpoint-2" / "teacher.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"checkpoint-2: could not be loaded"):
        run_pretraining(tiny_args(dataset_dir, damaged, resume_from_checkpoint="latest", **common))
    resumed = run_pretraining(tiny_args(dataset_dir, tmp_path / "resumed", resume_from_checkpoint="latest", **common))
    assert straight.finished and resumed.finished and resumed.step == 4
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)

    # the logged trajectory is identical too (loss components of every step)
    def strip(path):
        return [
            {k: v for k, v in json.loads(line).items() if k != "samples_per_second_per_process"}
            for line in path.read_text().splitlines()
        ]

    assert strip(tmp_path / "straight" / "metrics.jsonl") == strip(tmp_path / "resumed" / "metrics.jsonl")


def test_nan_guard_names_step_and_component(dataset_dir, tmp_path):
    from mmae_hf import MMAEForPreTraining

    class PoisonedDistillation(MMAEForPreTraining):
        calls = 0

        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            type(self).calls += 1
            if type(self).calls == 3:  # third micro-batch = optimizer step 3
                out.distillation_loss = out.distillation_loss * float("nan")
                out.loss = out.loss + out.distillation_loss
            return out

    with pytest.raises(NonFiniteLossError, match=r"non-finite distillation_loss at optimizer step 3 \(epoch 0"):
        run_pretraining(tiny_args(dataset_dir, tmp_path / "poisoned"), model_cls=PoisonedDistillation)
    # a diverging learning rate is caught the same way, before any NaN reaches the weights
    with pytest.raises(NonFiniteLossError, match=r"non-finite \w+ at optimizer step 2 "):
        run_pretraining(
            tiny_args(dataset_dir, tmp_path / "diverged", learning_rate=1e30, warmup_steps=0, max_grad_norm=0.0)
        )


def test_find_unused_parameters_probe(dataset_dir):
    from mmae_hf import DataCollatorForFlowMix, MMAEConfig, MMAEForPreTraining
    from mmae_hf.training.pretraining import find_unused_parameters

    class WithDeadHead(MMAEForPreTraining):
        def __init__(self, config):
            super().__init__(config)
            self.dead_head = torch.nn.Linear(3, 3)

    config = MMAEConfig.from_preset("mmae-tiny")
    collator = DataCollatorForFlowMix(config, seed=0)
    rows = FlowBatchReader.to_rows(FlowBatchReader(load_pretraining_split(str(dataset_dir)))[range(4)])
    complete, dead = MMAEForPreTraining(config), WithDeadHead(config)
    before = collator.generator.get_state().clone()
    torch_before = torch.get_rng_state().clone()
    assert find_unused_parameters(complete, collator, rows, config) == []
    assert sorted(find_unused_parameters(dead, collator, rows, config)) == ["dead_head.bias", "dead_head.weight"]
    assert all(p.grad is None for p in dead.parameters())
    assert torch.equal(collator.generator.get_state(), before) and torch.equal(torch.get_rng_state(), torch_before)


def test_pretrain_on_a_dataset_built_from_pcaps(tmp_path):
    """pcaps -> dataset builder (train/validation/test by capture file) -> pre-training reads the train split only."""
    pytest.importorskip("scapy")
    import pretrain
    from dataset_pcaps import make_tree

    from mmae_hf.traffic.dataset import build_dataset

    tree = make_tree(tmp_path / "pcaps", {"chat": 5, "video": 5}, flows_per_file=2)
    built = build_dataset(
        tree, tmp_path / "dataset", split_by="file", validation_size=0.2, test_size=0.2, seed=0, progress=False
    )
    num_train = built.dataset["train"].num_rows
    assert 4 <= num_train < sum(ds.num_rows for ds in built.dataset.values())
    out = tmp_path / "run"
    assert (
        pretrain.main(
            [
                "--dataset",
                str(tmp_path / "dataset"),
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
                "--disable_tqdm",
            ]
        )
        == 0
    )
    summary = json.loads((out / "pretraining_summary.json").read_text())
    assert summary["finished"] and summary["num_training_flows"] == num_train and summary["split"] == "train"
    assert (out / "model.safetensors").is_file()
    # the dataset's feature extractor (flow options, anonymisation profile) travels with the weights
    from transformers import AutoFeatureExtractor

    import mmae_hf  # noqa: F401

    assert (out / "preprocessor_config.json").read_text() == (
        tmp_path / "dataset" / "preprocessor_config.json"
    ).read_text()
    extractor = AutoFeatureExtractor.from_pretrained(str(out))
    assert type(extractor).__name__ == "MMAEFeatureExtractor"


def test_background_reading_keeps_the_order(dataset_dir):
    from mmae_hf.training.pretraining import _BatchPrefetcher

    reader = FlowBatchReader(load_pretraining_split(str(dataset_dir)))
    batches = EpochBatchSampler(len(reader), 4, seed=1).epoch_batches()
    plain = list(_BatchPrefetcher(reader, batches, num_workers=0))
    threaded = list(_BatchPrefetcher(reader, batches, num_workers=2))
    assert len(plain) == len(threaded) == 6
    for a, b in zip(plain, threaded):
        np.testing.assert_array_equal(a["input_bytes"], b["input_bytes"])


def test_a_launch_that_did_not_set_up_data_parallel_is_refused(dataset_dir, tmp_path, monkeypatch):
    # what `accelerate launch --multi_gpu --num_processes 2` does on a machine without GPUs (and without
    # ACCELERATE_USE_CPU=1): each process sees WORLD_SIZE=2 but accelerate runs it as a lone process
    from mmae_hf.training.pretraining import LaunchError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LaunchError, match="launched as 2 processes .*ACCELERATE_USE_CPU=1"):
        run_pretraining(tiny_args(dataset_dir, tmp_path / "lonely"))
    assert not (tmp_path / "lonely" / "metrics.jsonl").exists()


def test_bf16_autocast_run_keeps_fp32_weights(dataset_dir, tmp_path):
    from accelerate.state import AcceleratorState
    from safetensors.torch import load_file

    AcceleratorState._reset_state(reset_partial_state=True)  # the process-wide state remembers mixed precision
    try:
        result = run_pretraining(tiny_args(dataset_dir, tmp_path / "bf16", max_steps=2, mixed_precision="bf16"))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert result.finished and all(math.isfinite(v) for k, v in result.last_metrics.items() if "loss" in k)
    summary = json.loads((tmp_path / "bf16" / "pretraining_summary.json").read_text())
    assert summary["mixed_precision"] == "bf16"
    assert {t.dtype for t in load_file(str(tmp_path / "bf16" / "model.safetensors")).values()} == {torch.float32}
    # autocast really ran in bf16: the same seed in fp32 gives other losses
    fp32 = run_pretraining(tiny_args(dataset_dir, tmp_path / "fp32", max_steps=2, mixed_precision="no"))
    assert fp32.last_metrics["train/reconstruction_loss"] != result.last_metrics["train/reconstruction_loss"]


def test_compiled_and_plain_steps_agree(dataset_dir, tmp_path):
    """--torch_compile changes how the step runs, not what it computes: the same losses and weights within float
    rounding (inductor fuses and reorders float operations)."""
    plain = run_pretraining(tiny_args(dataset_dir, tmp_path / "plain", max_steps=2))
    compiled = run_pretraining(tiny_args(dataset_dir, tmp_path / "compiled", max_steps=2, torch_compile=True))
    for name in ("train/loss", "train/reconstruction_loss", "train/rank_loss", "train/distillation_loss"):
        assert compiled.last_metrics[name] == pytest.approx(plain.last_metrics[name], rel=1e-4, abs=1e-6), name
    from safetensors.torch import load_file

    a, b = (
        load_file(str(tmp_path / "plain" / "model.safetensors")),
        load_file(str(tmp_path / "compiled" / "model.safetensors")),
    )
    assert a.keys() == b.keys()  # no "_orig_mod." prefix: the plain module is what gets saved
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key
