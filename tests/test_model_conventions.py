"""The model files follow transformers 5's conventions: each test pins a defect that users hit before.

- attention goes through the attention interface, so switching it really switches the kernel;
- eager and SDPA give the same numbers, also where the PMP bias enters as an additive attention mask;
- attentions come back when asked for (argument or config), whatever the kernel;
- gradient checkpointing (reentrant and not) trains and saves activation memory;
- device_map with disk offload loads and runs (submodules are called, not reached into);
- a config that does not fit cannot be saved.
"""

import numpy as np
import pytest
import torch
from transformers import AttentionInterface, AutoModelForPreTraining, AutoModelForSequenceClassification

from mmae_hf import (
    DataCollatorForFlowMix,
    MMAEConfig,
    MMAEForPreTraining,
    MMAEForSequenceClassification,
    MMAEModel,
)


def tiny(**overrides):
    return MMAEConfig.from_preset("mmae-tiny", **overrides)


def pretraining_batch(config, size=4, seed=0):
    rng = np.random.default_rng(seed)
    rows = [
        {
            "input_bytes": rng.integers(0, 256, config.num_bytes, dtype=np.uint8),
            "packet_lengths": rng.integers(40, 1500, config.num_packets).astype(np.int32),
            "packet_iats": rng.random(config.num_packets).astype(np.float32),
            "packet_directions": rng.choice([-1, 1], config.num_packets).astype(np.int8),
            "flow_stats": (rng.random(27) * 100).astype(np.float32),
        }
        for _ in range(size)
    ]
    return DataCollatorForFlowMix(config, seed=seed)(rows)


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Records the `attn_mask` of every call of torch's SDPA kernel."""
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def recording(*args, **kwargs):
        calls.append(kwargs.get("attn_mask"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    return calls


# ---------------------------------------------------------------------------------------------------- attention
def test_switching_attention_really_switches_the_kernel(sdpa_calls):
    torch.manual_seed(0)
    model = MMAEModel(tiny()).eval()
    x = torch.randint(0, 256, (2, 1600), dtype=torch.uint8)
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        sdpa_out = model(x).last_hidden_state
    assert len(sdpa_calls) == model.config.num_hidden_layers

    sdpa_calls.clear()
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    with torch.no_grad():
        eager_out = model(x).last_hidden_state
    assert sdpa_calls == []  # no layer kept the old kernel
    torch.testing.assert_close(eager_out, sdpa_out, atol=1e-5, rtol=1e-4)

    # any kernel registered with transformers' attention interface is used, by name
    used = []

    def counting_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        used.append(query.shape)
        weights = torch.softmax(query @ key.transpose(2, 3) * scaling, dim=-1)
        return (weights @ value).transpose(1, 2).contiguous(), weights

    AttentionInterface.register("mmae_test_counting", counting_attention)
    model.set_attn_implementation("mmae_test_counting")
    with torch.no_grad():
        counted = model(x).last_hidden_state
    assert len(used) == model.config.num_hidden_layers and sdpa_calls == []
    torch.testing.assert_close(counted, sdpa_out, atol=1e-5, rtol=1e-4)


def test_eager_and_sdpa_agree_with_the_pmp_bias_as_attention_mask(sdpa_calls):
    torch.manual_seed(0)
    config = tiny(drop_path_rate=0.0)
    model = MMAEForPreTraining(config).eval()
    batch = pretraining_batch(config, size=4)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    teacher = model.teacher_forward(**inputs)
    inputs.update(
        teacher_features=teacher.features, hard_token_scores=teacher.predicted_token_loss, hard_mask_share=0.5
    )
    with torch.no_grad():  # no gradient: the loss predictor runs the PMP bias through SDPA too
        sdpa = model(**inputs)
    # the PMP bias reached the SDPA kernel of the loss predictor as an additive mask over both FlowMix branches
    n = config.num_tokens + 1
    assert any(mask is not None and tuple(mask.shape) == (8, 1, n, n) for mask in sdpa_calls)

    sdpa_calls.clear()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = model(**inputs)
    assert sdpa_calls == []
    for name in ("loss", "reconstruction_loss", "rank_loss", "distillation_loss", "logits", "predicted_token_loss"):
        torch.testing.assert_close(eager[name], sdpa[name], atol=1e-5, rtol=1e-4, msg=name)

    classifier = MMAEForSequenceClassification(tiny(num_labels=3)).eval()
    x = batch["input_bytes"]
    with torch.no_grad():
        sdpa_logits = classifier(x).logits
        classifier.set_attn_implementation("eager")
        eager_logits = classifier(x).logits
    torch.testing.assert_close(eager_logits, sdpa_logits, atol=1e-5, rtol=1e-4)


def test_attentions_are_returned_when_asked():
    torch.manual_seed(0)
    config = tiny(num_labels=3)
    x = torch.randint(0, 256, (2, 1600), dtype=torch.uint8)
    model = MMAEModel(config).eval()
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        plain = model(x)
        asked = model(x, output_attentions=True)  # under SDPA: these layers fall back to the eager kernel
    assert plain.attentions is None
    n = config.num_tokens + 1
    assert len(asked.attentions) == config.num_hidden_layers
    for attention in asked.attentions:
        assert attention.shape == (2, config.num_attention_heads, n, n)
        torch.testing.assert_close(attention.sum(-1), torch.ones(2, config.num_attention_heads, n))
    torch.testing.assert_close(asked.last_hidden_state, plain.last_hidden_state, atol=1e-5, rtol=1e-4)

    # through the config (which transformers only allows with the eager kernel)
    model.set_attn_implementation("eager")
    model.config.output_attentions = True
    with torch.no_grad():
        from_config = model(x)
    assert len(from_config.attentions) == config.num_hidden_layers
    torch.testing.assert_close(from_config.attentions[-1], asked.attentions[-1], atol=1e-6, rtol=1e-5)

    # the classifier passes them on, next to the hidden states
    classifier = MMAEForSequenceClassification(config).eval()
    with torch.no_grad():
        out = classifier(x, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == config.num_hidden_layers
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert classifier(x, return_dict=False)[0].shape == (2, 3)


# -------------------------------------------------------------------------------------------- checkpointing
def saved_activation_bytes(run):
    """Runs `run()` (a forward) and returns its result and the bytes autograd saved for the backward pass."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = run()
    return result, total


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_trains_and_saves_memory(use_reentrant):
    config = tiny(drop_path_rate=0.0)  # PMP on (default): the loss predictor's bias needs a gradient
    torch.manual_seed(0)
    model = MMAEForPreTraining(config).train()
    inputs = {k: v for k, v in pretraining_batch(config, size=4, seed=3).items() if k != "labels"}

    loss, plain_bytes = saved_activation_bytes(lambda: model(**inputs).loss)
    loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    model.activation_checkpointing_enable({"use_reentrant": use_reentrant})
    loss, checkpointed_bytes = saved_activation_bytes(lambda: model(**inputs).loss)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        torch.testing.assert_close(parameter.grad, plain[name], atol=1e-6, rtol=1e-5, msg=name)
    # every block (encoder, decoder, loss predictor) keeps only its input: far less saved for the backward pass
    assert checkpointed_bytes < 0.5 * plain_bytes, (checkpointed_bytes, plain_bytes)

    model.activation_checkpointing_disable()
    _, again = saved_activation_bytes(lambda: model(**inputs).loss)
    assert again == plain_bytes


# -------------------------------------------------------------------------------------------------- offload
@pytest.mark.parametrize(
    "model_class, auto_class, device_map",
    [
        (MMAEForSequenceClassification, AutoModelForSequenceClassification, "auto"),
        (
            MMAEForSequenceClassification,
            AutoModelForSequenceClassification,
            {"mmae.embeddings": "disk", "mmae.encoder": "cpu", "classifier": "disk"},
        ),
        (
            MMAEForPreTraining,
            AutoModelForPreTraining,
            {"mmae.embeddings": "disk", "mmae.encoder": "cpu", "decoder": "disk", "loss_predictor": "disk"},
        ),
    ],
)
def test_disk_offload_loads_and_runs(tmp_path, model_class, auto_class, device_map):
    torch.manual_seed(0)
    model = model_class(tiny(num_labels=3)).eval()
    model.save_pretrained(tmp_path / "model")
    offloaded = auto_class.from_pretrained(
        tmp_path / "model",
        device_map=device_map,
        max_memory={"cpu": "60KB"} if device_map == "auto" else None,
        offload_folder=tmp_path / "offload",
    )
    assert "disk" in set(offloaded.hf_device_map.values())
    x = torch.randint(0, 256, (3, 1600), dtype=torch.uint8)
    with torch.no_grad():
        if model_class is MMAEForPreTraining:
            inputs = {"mask_noise": torch.rand(3, model.config.num_tokens), "partner_index": torch.tensor([1, 0, 2])}
            torch.testing.assert_close(offloaded(x, **inputs).loss, model(x, **inputs).loss)
        else:
            torch.testing.assert_close(offloaded(x).logits, model(x).logits)


# --------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "field, value, message",
    [("mask_ratio", 5, "mask_ratio"), ("hidden_size", 30, "divisible"), ("ood_threshold", 1.5, "ood_threshold")],
)
def test_a_bad_config_cannot_be_saved(tmp_path, field, value, message):
    config = tiny()
    setattr(config, field, value)  # a change after construction (the type is right, the value is not)
    with pytest.raises(Exception, match=message):
        config.save_pretrained(tmp_path / "config")
    assert not (tmp_path / "config" / "config.json").exists()

    model = MMAEModel(tiny())
    setattr(model.config, field, value)
    with pytest.raises(Exception, match=message):
        model.save_pretrained(tmp_path / "model")
    assert not (tmp_path / "model" / "config.json").exists()
    # at construction the same checks raise a plain ValueError
    with pytest.raises(ValueError, match=message):
        tiny(**{field: value})


# ----------------------------------------------------------------------------------------------- the steps
def test_pretraining_forward_is_mix_encode_decode_loss():
    torch.manual_seed(0)
    config = tiny(drop_path_rate=0.0)
    model = MMAEForPreTraining(config).eval()
    batch = pretraining_batch(config, size=4, seed=5)
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        mask, _ = model.make_mask(batch["mask_noise"])
        partner = batch["partner_index"]
        latent = model.encode(model.mix(batch["input_bytes"], mask, partner_index=partner))
        signals = model._packet_signals(
            batch["packet_lengths"], batch["packet_iats"], batch["packet_directions"], 4, latent.device
        )
        decoded, predicted = model.decode(latent, mask, packet_signals=signals)
        source_of = torch.argsort(partner)
        logits = model.unmix(decoded.logits, mask, source_of)
        target = model.mmae.embeddings.normalize(batch["input_bytes"]).view(4, config.num_tokens, -1)
        losses = model.compute_loss(
            logits,
            target,
            mask,
            model.unmix(decoded.features, mask, source_of),
            model.unmix(predicted, mask, source_of),
        )
    assert decoded.logits.shape[0] == 8  # two FlowMix branches per flow
    torch.testing.assert_close(losses["loss"], out.loss, atol=0, rtol=0)
    torch.testing.assert_close(logits, out.logits, atol=0, rtol=0)
