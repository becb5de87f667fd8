"""MMAE model core: config, shapes, masking, FlowMix pairing, determinism, gradients, mean teacher (tiny CPU configs)."""

import numpy as np
import pytest
import torch
from huggingface_hub.errors import StrictDataclassFieldValidationError

from mmae_hf import (
    DataCollatorForFlowMix,
    MeanTeacher,
    MMAEConfig,
    MMAEForPreTraining,
    MMAEForSequenceClassification,
    MMAEModel,
    hard_mask_share,
)
from mmae_hf.flowmix import greedy_symmetric_pairing, transform_flow_stats
from mmae_hf.modeling_mmae import pairwise_ranking_loss


def tiny(**overrides):
    return MMAEConfig.from_preset("mmae-tiny", **overrides)


def make_rows(n, seed=0, labels=True):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = {
            "payload": rng.integers(0, 256, 1600, dtype=np.uint8),
            "packet_lengths": rng.integers(40, 1500, 5).astype(np.int32),
            "packet_iats": rng.random(5).astype(np.float32),
            "packet_directions": rng.choice([-1, 1], 5).astype(np.int8),
            "flow_stats": (rng.random(27) * 100).astype(np.float32),
        }
        if labels:
            row["label"] = i % 3
        rows.append(row)
    return rows


def model_inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


# ---------------------------------------------------------------- config
def test_config_defaults_are_the_official_architecture():
    c = MMAEConfig()
    assert (c.num_bytes, c.num_tokens, c.tokens_per_packet, c.num_masked_tokens) == (1600, 400, 80, 361)
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (256, 7, 8, 1024)
    assert (c.decoder_hidden_size, c.decoder_num_hidden_layers, c.decoder_num_attention_heads) == (128, 2, 8)
    assert c.drop_path_rate == 0.2 and c.mask_ratio == 0.9 and c.num_flow_stats == 27
    assert c.rank_loss_weight == 0.1 and c.distillation_loss_weight == 1.0
    assert c.model_type == "mmae" and c.ood_threshold is None


def test_parameter_counts_match_the_official_model():
    # method.md §3: 6,594,106 gradient-trained pre-training parameters (6,598,000 used minus the frozen StatEncoder,
    # which our pairing replaces), classifier with 8 classes 5,634,568.
    assert sum(p.numel() for p in MMAEForPreTraining(MMAEConfig()).parameters()) == 6_594_106
    assert sum(p.numel() for p in MMAEForSequenceClassification(MMAEConfig(num_labels=8)).parameters()) == 5_634_568


def test_tiny_preset_keeps_the_byte_layout_with_wider_tokens():
    c = tiny()
    assert (c.num_bytes, c.bytes_per_token, c.num_tokens, c.tokens_per_packet) == (1600, 16, 100, 20)
    assert c.num_masked_tokens == 91  # int(100 * (1 - 0.9)) = 9 kept, the official float rounding


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="divisible"):
        MMAEConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="multiple of bytes_per_token"):
        MMAEConfig(header_bytes=81)
    with pytest.raises(ValueError, match="unknown MMAE preset"):
        MMAEConfig.from_preset("mmae-huge")
    with pytest.raises(StrictDataclassFieldValidationError):
        MMAEConfig(hidden_size="wide")  # strict dataclass validation is on
    c = tiny(num_labels=4)
    assert c.hidden_size == 64 and c.num_labels == 4


# ---------------------------------------------------------------- shapes
def test_model_shapes_and_input_checks():
    c = tiny()
    x = torch.randint(0, 256, (3, 1600), dtype=torch.uint8)
    model = MMAEModel(c).eval()
    out = model(x, output_hidden_states=True)
    assert out.last_hidden_state.shape == (3, c.num_tokens + 1, 64)
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, 0])
    assert len(out.hidden_states) == c.num_hidden_layers + 1
    # long input gives the same result as uint8
    model = MMAEModel(c).eval()
    assert torch.equal(model(x).last_hidden_state, model(x.long()).last_hidden_state)
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(2, 1599, dtype=torch.uint8))
    with pytest.raises(ValueError, match="raw byte"):
        model(torch.zeros(2, 1600))
    logits = MMAEForSequenceClassification(tiny(num_labels=5))(x, labels=torch.tensor([0, 1, 4]))
    assert logits.logits.shape == (3, 5) and logits.loss.ndim == 0


@pytest.mark.parametrize("use_flowmix", [True, False])
def test_pretraining_output_shapes_and_exact_mask_count(use_flowmix):
    c = tiny(use_flowmix=use_flowmix, bytes_per_token=4)  # the official token layout: 400 tokens, 361 masked
    model = MMAEForPreTraining(c)
    batch = DataCollatorForFlowMix(c, seed=0, use_flowmix=use_flowmix)(make_rows(6))
    teacher = model.teacher_forward(**model_inputs(batch))
    assert teacher.features.shape == (6, 400, 32) and teacher.predicted_token_loss.shape == (6, 400)
    out = model(**model_inputs(batch), teacher_features=teacher.features)
    assert out.logits.shape == (6, 400, 4)
    assert out.mask.dtype == torch.bool and out.mask.sum(1).tolist() == [361] * 6
    assert out.predicted_token_loss.shape == (6, 400) and out.token_loss.shape == (6, 400)
    assert out.decoder_features.shape == (6, 400, 32)
    for name in ("reconstruction_loss", "rank_loss", "distillation_loss"):
        assert getattr(out, name).ndim == 0 and torch.isfinite(getattr(out, name))
    total = out.reconstruction_loss + 0.1 * out.rank_loss + 1.0 * out.distillation_loss
    torch.testing.assert_close(out.loss, total)
    # the mask is the one the noise dictates: the 361 largest noise values
    expected = torch.zeros(6, 400, dtype=torch.bool)
    expected.scatter_(1, batch["mask_noise"].topk(361, dim=1).indices, True)
    assert torch.equal(out.mask, expected)


def test_no_teacher_features_means_no_distillation_and_switches():
    c = tiny(use_loss_predictor=False, use_guided_masking=False)
    model = MMAEForPreTraining(c)
    assert model.loss_predictor is None
    batch = DataCollatorForFlowMix(c, seed=1)(make_rows(4))
    out = model(**model_inputs(batch))
    assert out.distillation_loss is None and out.rank_loss is None
    torch.testing.assert_close(out.loss, out.reconstruction_loss)
    assert MMAEForPreTraining(tiny(use_pmp=False)).loss_predictor.pmp is None
    with pytest.raises(ValueError, match="use_loss_predictor"):
        tiny(use_loss_predictor=False)  # guided masking needs the loss predictor


def test_reconstruction_loss_on_masked_only():
    c_all = tiny()
    model = MMAEForPreTraining(c_all).eval()
    batch = DataCollatorForFlowMix(c_all, seed=2)(make_rows(4))
    out_all = model(**model_inputs(batch))
    model.config.reconstruction_loss_on = "masked"
    out_masked = model(**model_inputs(batch))
    tl, m = out_all.token_loss, out_all.mask
    torch.testing.assert_close(out_all.reconstruction_loss, tl.mean())
    torch.testing.assert_close(out_masked.reconstruction_loss, tl[m].mean())


# ---------------------------------------------------------------- guided masking
def test_guided_masking_masks_the_hardest_tokens_first():
    c = tiny(bytes_per_token=4)
    model = MMAEForPreTraining(c)
    noise = torch.rand(2, 400, generator=torch.Generator().manual_seed(0))
    scores = torch.rand(2, 400, generator=torch.Generator().manual_seed(1))
    share = 0.5
    mask, _ = model.make_mask(noise, scores, share)
    hard = scores.topk(int(share * 361), dim=1).indices
    assert bool(mask.gather(1, hard).all()) and mask.sum(1).tolist() == [361, 361]
    # share 0 (start of the curriculum) and the switch reproduce the random mask
    random_mask, _ = model.make_mask(noise)
    assert torch.equal(model.make_mask(noise, scores, 0.0)[0], random_mask)
    model.config.use_guided_masking = False
    assert torch.equal(model.make_mask(noise, scores, share)[0], random_mask)
    # the curriculum rises linearly from 0 to the maximum share
    assert hard_mask_share(0, 100, 0.5) == 0.0
    assert hard_mask_share(50, 100, 0.5) == pytest.approx(0.25)
    assert hard_mask_share(500, 100, 0.5) == 0.5


# ---------------------------------------------------------------- pairing / collator
def test_pairing_is_an_involution_and_prefers_similar_flows():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(8, 27, generator=gen) * 5
    # 16 flows: twins around 8 random centres, shuffled; the pairing must find the twins
    stats = torch.cat([centers, centers + 0.01 * torch.randn(8, 27, generator=gen)])
    order = torch.randperm(16, generator=gen)
    partner = greedy_symmetric_pairing(stats[order])
    assert torch.equal(partner[partner], torch.arange(16)) and not bool((partner == torch.arange(16)).any())
    twin = order % 8
    assert torch.equal(twin[partner], twin)


def test_pairing_equals_sequential_greedy_and_handles_odd_batches():
    gen = torch.Generator().manual_seed(3)
    for batch in (2, 5, 31, 64):
        feats = torch.randn(batch, 27, generator=gen)
        partner = greedy_symmetric_pairing(feats)
        assert torch.equal(partner[partner], torch.arange(batch))
        # reference: B/2 global argmax steps
        unit = torch.nn.functional.normalize(feats.double(), dim=1)
        sim = unit @ unit.T
        sim.fill_diagonal_(float("-inf"))
        ref = torch.arange(batch)
        for _ in range(batch // 2):
            r, c = divmod(int(sim.argmax()), batch)
            ref[r], ref[c] = c, r
            sim[[r, c], :] = float("-inf")
            sim[:, [r, c]] = float("-inf")
        assert torch.equal(partner, ref)
        assert int((partner == torch.arange(batch)).sum()) == batch % 2  # odd: the leftover is its own partner
    # ties everywhere (identical statistics) still give a valid pairing
    partner = greedy_symmetric_pairing(torch.ones(9, 27))
    assert torch.equal(partner[partner], torch.arange(9)) and int((partner == torch.arange(9)).sum()) == 1


def test_collator_stacks_rows_and_is_seedable():
    c = tiny()
    rows = make_rows(5)
    rows[1] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in rows[1].items()}  # lists are accepted
    batch = DataCollatorForFlowMix(c, seed=7)(rows)
    assert batch["input_bytes"].dtype == torch.uint8 and batch["input_bytes"].shape == (5, 1600)
    assert batch["packet_lengths"].dtype == torch.int32 and batch["flow_stats"].shape == (5, 27)
    assert batch["labels"].tolist() == [0, 1, 2, 0, 1] and batch["mask_noise"].shape == (5, c.num_tokens)
    assert torch.equal(batch["input_bytes"][1], torch.tensor(rows[1]["payload"], dtype=torch.uint8))
    again = DataCollatorForFlowMix(c, seed=7)(rows)
    assert torch.equal(batch["mask_noise"], again["mask_noise"])
    assert not torch.equal(batch["mask_noise"], DataCollatorForFlowMix(c, seed=8)(rows)["mask_noise"])
    with pytest.raises(ValueError, match="payload"):
        DataCollatorForFlowMix(c)([{"flow_stats": [0.0] * 27}])
    bad = make_rows(2)
    bad[0]["payload"] = bad[0]["payload"][:100]
    with pytest.raises(ValueError, match="payload"):
        DataCollatorForFlowMix(c)(bad)
    # batch-standardised stats are scale free
    s = torch.rand(6, 27) * 10
    torch.testing.assert_close(transform_flow_stats(s).mean(0), torch.zeros(27, dtype=torch.float64))


# ---------------------------------------------------------------- determinism and gradients
def test_injected_noise_makes_the_forward_deterministic():
    c = tiny(drop_path_rate=0.0)
    torch.manual_seed(0)
    model = MMAEForPreTraining(c).train()
    batch = DataCollatorForFlowMix(c, seed=3)(make_rows(4))
    teacher = model.teacher_forward(**model_inputs(batch))
    kwargs = dict(
        teacher_features=teacher.features, hard_token_scores=teacher.predicted_token_loss, hard_mask_share=0.3
    )
    a = model(**model_inputs(batch), **kwargs)
    torch.manual_seed(123)  # global RNG state must not matter
    b = model(**model_inputs(batch), **kwargs)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.logits, b.logits) and torch.equal(a.mask, b.mask)
    with pytest.raises(ValueError, match="permutation"):
        model(**dict(model_inputs(batch), partner_index=torch.tensor([0, 0, 1, 2])))
    # a different partner assignment changes the result
    other = dict(model_inputs(batch), partner_index=torch.tensor([1, 0, 3, 2]))
    if not torch.equal(other["partner_index"], batch["partner_index"]):
        assert not torch.equal(model(**other, **kwargs).logits, a.logits)


def test_flowmix_unmixing_routes_each_flow_to_its_own_outputs():
    # with identical flows in a pair, swapping who is whose partner must not change anything; and the encoder input of
    # a flow holds its partner's tokens exactly at the masked positions
    c = tiny(drop_path_rate=0.0)
    model = MMAEForPreTraining(c).eval()
    batch = DataCollatorForFlowMix(c, seed=4)(make_rows(4))
    captured = {}
    handle = model.mmae.encoder.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0].detach()))
    out = model(**model_inputs(batch))
    handle.remove()
    tokens = model.mmae.embeddings.embed_tokens(batch["input_bytes"])
    pos = model.mmae.embeddings.position_embeddings[:, 1:]
    partner = batch["partner_index"]
    expected = torch.where(out.mask.unsqueeze(-1), tokens[partner], tokens) + pos
    torch.testing.assert_close(captured["x"][:, 1:], expected)


@pytest.mark.parametrize("use_flowmix", [True, False])
def test_every_trainable_parameter_gets_a_gradient(use_flowmix):
    # Nothing is frozen on purpose: the StatEncoder of the official code (never trained) is not part of the model.
    c = tiny(use_flowmix=use_flowmix)
    model = MMAEForPreTraining(c).train()
    batch = DataCollatorForFlowMix(c, seed=5, use_flowmix=use_flowmix)(make_rows(6))
    teacher = MeanTeacher(model, total_steps=10)
    t = teacher(**model_inputs(batch))
    out = model(
        **model_inputs(batch),
        teacher_features=t.features,
        hard_token_scores=t.predicted_token_loss,
        hard_mask_share=0.5,
    )
    out.loss.backward()
    # The ranking loss only sees differences of predicted losses, so the bias of the loss predictor's output layer
    # gets an exactly-zero gradient in theory (rounding noise in practice), as in the official model.
    shift_invariant = "loss_predictor.pred.bias"
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert [n for n, g in grads.items() if g is None] == []
    assert [n for n, g in grads.items() if n != shift_invariant and not g.abs().sum() > 0] == []
    assert grads[shift_invariant].abs().max() < 1e-5


def test_ranking_loss_prefers_correct_order():
    target = torch.tensor([[0.1, 0.5, 0.9, 0.9]])
    good = pairwise_ranking_loss(torch.tensor([[0.0, 5.0, 10.0, 10.0]]), target)
    bad = pairwise_ranking_loss(torch.tensor([[10.0, 5.0, 0.0, 0.0]]), target)
    assert good < 0.01 < 5 < bad
    # ties in the target are ignored: 10 of the 12 ordered pairs are valid
    z = pairwise_ranking_loss(torch.zeros(1, 4), target)
    torch.testing.assert_close(z, torch.log(torch.tensor(2.0)))


# ---------------------------------------------------------------- mean teacher
def test_mean_teacher_copy_ema_and_schedule():
    c = tiny()
    student = MMAEForPreTraining(c)
    teacher = MeanTeacher(student, 0.96, 0.99, total_steps=100)
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    for (n, p), q in zip(student.named_parameters(), teacher.model.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), n
    assert teacher.momentum(0) == pytest.approx(0.96) and teacher.momentum(100) == pytest.approx(0.99)
    assert teacher.momentum(50) == pytest.approx(0.975) and teacher.momentum(10**6) == pytest.approx(0.99)
    before = {n: p.clone() for n, p in teacher.model.named_parameters()}
    ptrs = {n: p.data_ptr() for n, p in teacher.model.named_parameters()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    m = teacher.update(student, step=0)
    for n, p in teacher.model.named_parameters():
        assert p.data_ptr() == ptrs[n]  # in place
        torch.testing.assert_close(p, m * before[n] + (1 - m) * dict(student.named_parameters())[n])
    state = teacher.state_dict()
    other = MeanTeacher(MMAEForPreTraining(c), total_steps=5)
    other.load_state_dict(state)
    assert other.total_steps == 100
    assert all(torch.equal(a, b) for a, b in zip(other.model.parameters(), teacher.model.parameters()))


# ---------------------------------------------------------------- PMP
def reference_pmp_bias(pmp, query, times, lengths):
    """method.md §3 PMP written out naively (repeat each packet value over its 320 bytes, Conv1d, ...)."""
    F = torch.nn.functional
    t = (
        F.conv1d(
            times.repeat_interleave(320, dim=1).unsqueeze(1),
            pmp.time_embedder.proj.weight,
            pmp.time_embedder.proj.bias,
            stride=4,
        ).transpose(1, 2)
        + pmp.time_pos_embed
    )
    l = (
        F.conv1d(
            lengths.repeat_interleave(320, dim=1).unsqueeze(1),
            pmp.len_embedder.proj.weight,
            pmp.len_embedder.proj.bias,
            stride=4,
        ).transpose(1, 2)
        + pmp.len_pos_embed
    )
    m = pmp.stat_fusion(torch.cat([t, l], dim=-1))
    z = pmp.router_phi(m)
    r = z.shape[-1]
    d_sup = pmp.router_U_sup(z) @ pmp.router_V_sup(z).transpose(1, 2) / r**0.5
    d_del = pmp.router_U_del(z) @ pmp.router_V_del(z).transpose(1, 2) / r**0.5
    L = query.shape[1]
    cos = F.cosine_similarity(query.unsqueeze(2), query.unsqueeze(1), dim=-1).clamp(min=0)
    off_diag = ~torch.eye(L, dtype=torch.bool)
    s = (cos * off_diag).sum(-1) / (L - 1)
    g = torch.cat([s.unsqueeze(-1), pmp.norm_to_saliency(query.norm(dim=-1, keepdim=True)), pmp.stat_to_gate(m)], -1)
    p = torch.sigmoid(pmp.selector_a(g) @ pmp.selector_b(g).transpose(1, 2))
    bias = p * (-F.softplus(pmp.router_gamma_sup)) * d_sup + (1 - p) * F.softplus(pmp.router_gamma_del) * d_del
    return bias.clamp(-5, 5)


def test_pmp_bias_matches_the_specification_and_reaches_every_parameter():
    torch.manual_seed(0)
    c = tiny(pmp_bias_clamp=5.0, bytes_per_token=4)
    pmp = MMAEForPreTraining(c).loss_predictor.pmp
    with torch.no_grad():
        pmp.router_gamma_sup.fill_(0.3)
        pmp.router_gamma_del.fill_(-0.2)
    query = torch.randn(3, 400, 4)
    times, lengths = torch.rand(3, 5), torch.rand(3, 5) * 2 - 1
    bias = pmp(query, times, lengths, num_prefix_tokens=1)
    assert bias.shape == (3, 1, 401, 401)
    assert bias[:, :, 0].abs().max() == 0 and bias[:, :, :, 0].abs().max() == 0  # CLS row/column unbiased
    torch.testing.assert_close(bias[:, 0, 1:, 1:], reference_pmp_bias(pmp, query, times, lengths), atol=1e-5, rtol=1e-4)
    bias.pow(2).sum().backward()
    assert [n for n, p in pmp.named_parameters() if p.grad is None or p.grad.abs().sum() == 0] == []


def test_gradient_checkpointing_gives_the_same_gradients():
    c = tiny(drop_path_rate=0.0)
    torch.manual_seed(0)
    model = MMAEForPreTraining(c).train()
    batch = model_inputs(DataCollatorForFlowMix(c, seed=9)(make_rows(4)))
    model(**batch).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(**batch).loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], atol=1e-6, rtol=1e-5, msg=n)


def test_biased_attention_paths_agree():
    # with a bias that needs a gradient the loss predictor uses eager attention, without one SDPA: same numbers
    c = tiny(drop_path_rate=0.0)
    model = MMAEForPreTraining(c).eval()
    batch = model_inputs(DataCollatorForFlowMix(c, seed=11)(make_rows(3)))
    with_grad = model(**batch).predicted_token_loss
    with torch.no_grad():
        without = model(**batch).predicted_token_loss
    torch.testing.assert_close(with_grad.detach(), without, atol=1e-5, rtol=1e-4)


def test_classifier_pooling_reads_the_cls_output_or_the_token_mean(tmp_path):
    import mmae_hf  # noqa: F401
    from mmae_hf import MMAEConfig, MMAEForSequenceClassification

    torch.manual_seed(0)
    x = torch.randint(0, 256, (3, 1600), dtype=torch.uint8)
    model = MMAEForSequenceClassification(MMAEConfig.from_preset("mmae-tiny", num_labels=4)).eval()
    with torch.no_grad():
        hidden = model.mmae(input_bytes=x).last_hidden_state
        assert torch.allclose(model(input_bytes=x).logits, model.classifier(hidden[:, 0]))
        model.config.classifier_pooling = "mean"
        assert torch.allclose(model(input_bytes=x).logits, model.classifier(hidden[:, 1:].mean(dim=1)))
    model.save_pretrained(tmp_path)  # the choice travels with the weights
    reloaded = MMAEForSequenceClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.classifier_pooling == "mean"
    with torch.no_grad():
        assert torch.equal(reloaded(input_bytes=x).logits, model(input_bytes=x).logits)
    with pytest.raises(ValueError, match="classifier_pooling must be 'cls' or 'mean'"):
        MMAEConfig(classifier_pooling="max")


def test_guided_masking_takes_the_share_as_a_tensor_without_recompiling():
    """The curriculum's share changes every step: as a 0-d tensor it gives the same masks as the float, and a
    compiled step keeps one graph for all its values (a float would be baked in: one compilation per step)."""
    from torch._dynamo.testing import CompileCounter

    c = tiny(bytes_per_token=4)
    model = MMAEForPreTraining(c)
    noise = torch.rand(2, 400, generator=torch.Generator().manual_seed(0))
    scores = torch.rand(2, 400, generator=torch.Generator().manual_seed(1))
    for share in (0.0, 0.013, 0.25, 0.5):
        expected = model.make_mask(noise, scores, share)[0]
        assert torch.equal(model.make_mask(noise, scores, torch.tensor(share, dtype=torch.float64))[0], expected)
        hard = scores.topk(max(int(share * 361), 1), dim=1).indices
        assert share == 0.0 or bool(expected.gather(1, hard).all())
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(model.make_mask, backend=counter)
    for share in (0.01, 0.2, 0.37, 0.5):
        compiled(noise, scores, torch.tensor(share, dtype=torch.float64))
    assert counter.frame_count == 1
