"""Layer-wise lr decay: every trainable parameter in exactly one group, multipliers by true depth."""

import pytest
import torch
from torch import nn

from mmae_hf.training.layer_decay import layer_decay_parameter_groups, parameter_depth, uses_weight_decay


class _Embeddings(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.byte_embeddings = nn.Conv1d(1, hidden, 4, 4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 5, hidden))


class _Layer(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(hidden)
        self.q_proj = nn.Linear(hidden, hidden)
        self.fc = nn.Linear(hidden, hidden)


class _Encoder(nn.Module):
    def __init__(self, hidden, layers):
        super().__init__()
        self.layer = nn.ModuleList([_Layer(hidden) for _ in range(layers)])


class _Base(nn.Module):
    def __init__(self, hidden, layers):
        super().__init__()
        self.embeddings = _Embeddings(hidden)
        self.encoder = _Encoder(hidden, layers)
        self.layernorm = nn.LayerNorm(hidden)


class _Classifier(nn.Module):
    """Same naming scheme as the vit_mae-style MMAEForSequenceClassification."""

    def __init__(self, hidden=8, layers=3, labels=4):
        super().__init__()
        self.mmae = _Base(hidden, layers)
        self.classifier = nn.Linear(hidden, labels)


def _groups_by_name(groups, summary):
    by_name = {}
    for group, info in zip(groups, summary):
        assert len(group["params"]) == len(info.names)
        for name in info.names:
            assert name not in by_name, f"{name} in two groups"
            by_name[name] = group
    return by_name


def test_each_parameter_exactly_once_with_depth_multipliers():
    model = _Classifier(layers=3)
    groups, summary = layer_decay_parameter_groups(
        model, base_lr=1e-3, weight_decay=0.05, layer_decay=0.5, num_layers=3
    )
    by_name = _groups_by_name(groups, summary)
    assert set(by_name) == {n for n, _ in model.named_parameters()}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))

    # L = 3: embeddings 0.5^4, layer i 0.5^(3-i), top (final norm, head) 1.0
    expected = {
        "mmae.embeddings.byte_embeddings.weight": 0.5**4,
        "mmae.embeddings.cls_token": 0.5**4,
        "mmae.embeddings.position_embeddings": 0.5**4,
        "mmae.encoder.layer.0.q_proj.weight": 0.5**3,
        "mmae.encoder.layer.1.fc.bias": 0.5**2,
        "mmae.encoder.layer.2.layernorm_before.weight": 0.5**1,
        "mmae.layernorm.weight": 1.0,
        "classifier.weight": 1.0,
        "classifier.bias": 1.0,
    }
    for name, scale in expected.items():
        assert by_name[name]["lr_scale"] == pytest.approx(scale), name
        assert by_name[name]["lr"] == pytest.approx(1e-3 * scale), name
    # strictly increasing learning rate with depth: embeddings are the most decayed
    scales = (
        [by_name["mmae.embeddings.byte_embeddings.weight"]["lr_scale"]]
        + [by_name[f"mmae.encoder.layer.{i}.q_proj.weight"]["lr_scale"] for i in range(3)]
        + [by_name["classifier.weight"]["lr_scale"]]
    )
    assert scales == sorted(scales) and len(set(scales)) == 5


def test_no_weight_decay_on_norms_biases_pos_embed_cls():
    model = _Classifier()
    groups, summary = layer_decay_parameter_groups(model, base_lr=1.0, weight_decay=0.05, num_layers=3)
    by_name = _groups_by_name(groups, summary)
    for name in (
        "mmae.embeddings.cls_token",
        "mmae.embeddings.position_embeddings",
        "mmae.layernorm.weight",
        "mmae.encoder.layer.0.layernorm_before.bias",
        "classifier.bias",
        "mmae.encoder.layer.1.fc.bias",
    ):
        assert by_name[name]["weight_decay"] == 0.0, name
    for name in ("mmae.embeddings.byte_embeddings.weight", "mmae.encoder.layer.2.fc.weight", "classifier.weight"):
        assert by_name[name]["weight_decay"] == 0.05, name


def test_frozen_parameters_are_left_out_and_optimizer_accepts_groups():
    model = _Classifier()
    for p in model.mmae.parameters():
        p.requires_grad_(False)
    groups, _ = layer_decay_parameter_groups(model, base_lr=1e-3, weight_decay=0.05, num_layers=3)
    assert sum(len(g["params"]) for g in groups) == 2  # classifier weight + bias
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    assert {g["lr_scale"] for g in optimizer.param_groups} == {1.0}


def test_depth_parsing_and_errors():
    assert parameter_depth("mmae.encoder.layer.11.mlp.fc1.weight", 12) == 12
    assert parameter_depth("mmae.embeddings.byte_embeddings.weight", 12) == 0
    assert parameter_depth("classifier.weight", 12) == 13
    with pytest.raises(ValueError, match="layer 12"):
        parameter_depth("mmae.encoder.layer.12.fc.weight", 12)
    with pytest.raises(ValueError, match="layer_decay"):
        layer_decay_parameter_groups(_Classifier(), 1.0, 0.0, layer_decay=0.0, num_layers=3)
    assert not uses_weight_decay("x.bias", torch.zeros(3))
    assert uses_weight_decay("x.weight", torch.zeros(3, 3))


def test_real_mmae_classifier_groups():
    import mmae_hf

    config = mmae_hf.MMAEConfig.from_preset("mmae-tiny", num_labels=3)
    model = mmae_hf.MMAEForSequenceClassification(config)
    layers = config.num_hidden_layers
    groups, summary = layer_decay_parameter_groups(model, base_lr=1.0, weight_decay=0.05, layer_decay=0.5)
    by_name = _groups_by_name(groups, summary)
    assert set(by_name) == {n for n, p in model.named_parameters() if p.requires_grad}
    for name, group in by_name.items():
        if name.startswith("mmae.embeddings."):
            assert group["layer_depth"] == 0 and group["lr_scale"] == 0.5 ** (layers + 1), name
        elif ".layers." in name or ".layer." in name:
            index = (
                int(name.split(".layers.")[-1].split(".")[0])
                if ".layers." in name
                else int(name.split(".layer.")[-1].split(".")[0])
            )
            assert group["layer_depth"] == index + 1, name
            assert group["lr_scale"] == 0.5 ** (layers - index), name
        else:  # classifier (and a final norm, if the model has one)
            assert group["lr_scale"] == 1.0, name
    assert by_name["classifier.weight"]["weight_decay"] == 0.05
    assert by_name["mmae.embeddings.position_embeddings"]["weight_decay"] == 0.0
    assert by_name["mmae.embeddings.cls_token"]["weight_decay"] == 0.0


def test_trainer_uses_the_groups_and_the_schedule_keeps_the_ratios(tmp_path):
    import mmae_hf
    from mmae_hf.training.finetuning import (
        FinetuneArguments,
        FlowClassificationCollator,
        MMAEFinetuneTrainer,
        make_training_arguments,
    )

    model = mmae_hf.MMAEForSequenceClassification(mmae_hf.MMAEConfig.from_preset("mmae-tiny", num_labels=2))
    args = FinetuneArguments(
        dataset="x", output_dir=str(tmp_path), learning_rate=1e-3, layer_decay=0.5, warmup_ratio=0.2, report_to="none"
    )
    training_args = make_training_arguments(args, tmp_path)
    training_args.eval_strategy = "no"
    training_args.load_best_model_at_end = False
    trainer = MMAEFinetuneTrainer(
        model=model, args=training_args, data_collator=FlowClassificationCollator(), layer_decay=0.5
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    groups = trainer.optimizer.param_groups
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    for _ in range(5):  # past warm-up, into the cosine
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    top = max(groups, key=lambda g: g["lr_scale"])
    assert top["lr_scale"] == 1.0 and 0 < top["lr"] < 1e-3
    for group in groups:
        assert group["lr"] == pytest.approx(top["lr"] * group["lr_scale"])
    assert min(g["lr_scale"] for g in groups) == pytest.approx(0.5**3)  # embeddings of a 2-layer model
