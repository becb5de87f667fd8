"""Official checkpoint -> mmae_hf conversion, checked against an independent functional reference of the official
forward (written here from method.md §3 over the official state-dict key names; the official code is not used)."""

import argparse

import pytest
import torch
import torch.nn.functional as F
from official_layout import ENCODER_BLOCKS, official_layout, read_key_table

from mmae_hf import MMAEForPreTraining, MMAEForSequenceClassification, MMAEModel
from mmae_hf.convert_original_checkpoint import CheckpointConversionError, convert, main


@pytest.mark.shared_data
def test_official_layout_is_the_real_checkpoints_key_table(shared_dir):
    """The layout the tests build checkpoints from == the keys and shapes of the real official checkpoints."""
    table = read_key_table(shared_dir / "reference" / "official_checkpoint_keys.tsv")
    assert set(table) == {"mmae_pretrain", "mmae_classifier"}
    for model, keys in table.items():
        assert official_layout(model) == keys, model


def random_official_state_dict(model: str, seed: int = 0, num_classes: int = 8) -> dict:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_layout(model, num_classes).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith(".weight") and ("norm" in key.rsplit(".", 2)[-2] or key.endswith("stat_fusion.1.weight")):
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) >= 2 and not key.endswith(("pos_embed", "token")):
            fan_in = shape[1] * (shape[2] if len(shape) > 2 else 1)
            state[key] = torch.randn(shape, generator=gen) / fan_in**0.5
        else:
            state[key] = 0.1 * torch.randn(shape, generator=gen)
    return state


def reference_official_forward(sd: dict, input_bytes: torch.Tensor):
    """The official classifier forward in plain functional ops (fp32): returns (hidden states [B, 401, 256], logits)."""
    x = input_bytes.to(torch.float32).view(input_bytes.shape[0], 1, -1)
    x = (x / 255.0 - 0.5) / 0.5
    tokens = F.conv1d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=4).transpose(1, 2)
    tokens = tokens + sd["pos_embed"][:, 1:]
    cls = (sd["cls_token"] + sd["pos_embed"][:, :1]).expand(x.shape[0], -1, -1)
    h = torch.cat([cls, tokens], dim=1)
    batch, length, width = h.shape
    heads, head_dim = 8, width // 8
    for level, block in ENCODER_BLOCKS:
        p = f"mmae_core_block.levels.{level}.blocks.{block}."
        y = F.layer_norm(h, (width,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-5)
        qkv = F.linear(y, sd[p + "mixer.qkv.weight"], sd[p + "mixer.qkv.bias"])
        q, k, v = qkv.reshape(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) / head_dim**0.5, dim=-1)
        a = (attn @ v).transpose(1, 2).reshape(batch, length, width)
        h = h + F.linear(a, sd[p + "mixer.proj.weight"], sd[p + "mixer.proj.bias"])
        y = F.layer_norm(h, (width,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-5)
        h = h + F.linear(
            F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
            sd[p + "mlp.fc2.weight"],
            sd[p + "mlp.fc2.bias"],
        )
    logits = F.linear(h[:, 0], sd["head.weight"], sd["head.bias"]) if "head.weight" in sd else None
    return h, logits


@pytest.fixture(scope="module")
def flows():
    return torch.randint(0, 256, (2, 1600), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))


def test_classifier_conversion_matches_the_official_forward(tmp_path, flows):
    sd = random_official_state_dict("mmae_classifier", seed=1, num_classes=8)
    ckpt = tmp_path / "checkpoint-best.pth"
    torch.save({"model": sd, "epoch": 3, "args": argparse.Namespace(nb_classes=8, blr=2e-3)}, ckpt)
    assert main([str(ckpt), str(tmp_path / "hf"), "--num-labels", "8"]) == 0
    model = MMAEForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    ref_hidden, ref_logits = reference_official_forward(sd, flows)
    with torch.no_grad():
        logits = model(flows).logits
        hidden = MMAEModel.from_pretrained(tmp_path / "hf").eval()(flows).last_hidden_state
    assert ref_hidden.abs().mean() > 0.1  # a non-degenerate test
    assert (logits - ref_logits).abs().max() <= 1e-5
    assert (hidden - ref_hidden).abs().max() <= 1e-5
    # the attention implementation does not matter
    eager = MMAEForSequenceClassification.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    with torch.no_grad():
        assert (eager(flows).logits - ref_logits).abs().max() <= 1e-5


def test_pretraining_conversion_maps_every_used_tensor(tmp_path, flows):
    sd = random_official_state_dict("mmae_pretrain", seed=2)
    torch.save({"model": sd}, tmp_path / "pretrain.pth")
    model = convert(tmp_path / "pretrain.pth", tmp_path / "hf", num_labels=5)
    assert isinstance(model, MMAEForPreTraining)
    loaded = MMAEForPreTraining.from_pretrained(tmp_path / "hf").eval()
    assert loaded.config.num_labels == 5
    ours = loaded.state_dict()
    assert torch.equal(ours["decoder.decoder_pos_embed"], sd["decoder_pos_embed"])
    assert torch.equal(
        ours["loss_predictor.layers.1.attention.qkv.weight"], sd["decoder_blocks_losspred.1.mixer.qkv.weight"]
    )
    assert torch.equal(ours["loss_predictor.pmp.selector_b.weight"], sd["loss_predictor_router.selector_b.weight"])
    assert torch.equal(
        ours["mmae.encoder.layers.2.mlp.fc1.weight"], sd["mmae_core_block.levels.1.blocks.1.mlp.fc1.weight"]
    )
    used = [k for k in sd if not k.startswith(("mmae_core_block.norm.", "mmae_core_block.head.", "stat_encoder."))]
    assert len(used) == len(ours)  # one-to-one
    ours_values = sorted(float(v.double().sum()) for v in ours.values())
    assert ours_values == sorted(float(sd[k].double().sum()) for k in used)
    ref_hidden, _ = reference_official_forward(sd, flows)
    with torch.no_grad():
        assert (loaded.mmae(flows).last_hidden_state - ref_hidden).abs().max() <= 1e-5
        out = loaded(flows, mask_noise=torch.rand(2, 400), partner_index=torch.tensor([1, 0]))
    assert torch.isfinite(out.loss)


class NotAllowed:
    """An arbitrary pickled class: weights_only loading must refuse it."""


def _expect_error(tmp_path, payload, match, name="bad.pth", **kwargs):
    path = tmp_path / name
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointConversionError, match=match) as info:
        convert(path, tmp_path / "out", **kwargs)
    assert str(path) in str(info.value)  # the message names the file
    assert not (tmp_path / "out" / "model.safetensors").exists()  # nothing half-written


def test_broken_or_mismatched_checkpoints_are_refused_clearly(tmp_path, capsys):
    good = random_official_state_dict("mmae_classifier", seed=3, num_classes=4)
    torch.save({"model": good}, tmp_path / "good.pth")
    blob = (tmp_path / "good.pth").read_bytes()
    _expect_error(tmp_path, blob[: len(blob) // 2], "cannot be read", name="truncated.pth")
    _expect_error(tmp_path, b"this is not a checkpoint at all", "cannot be read", name="garbage.pth")
    _expect_error(tmp_path, [1, 2, 3], "expected an official MMAE checkpoint", name="list.pth")
    _expect_error(tmp_path, {"model": {"foo.weight": torch.zeros(2)}}, "neither", name="foreign.pth")
    missing = dict(good)
    del missing["mmae_core_block.levels.2.blocks.1.mlp.fc2.bias"]
    _expect_error(tmp_path, {"model": missing}, "missing keys.*layers.4.mlp.fc2.bias", name="missing.pth")
    unknown = dict(good, **{"extra_adapter.weight": torch.zeros(3)})
    _expect_error(tmp_path, {"model": unknown}, "unknown keys.*extra_adapter", name="unknown.pth")
    wrong = dict(good, pos_embed=torch.zeros(1, 201, 256))
    _expect_error(tmp_path, {"model": wrong}, "wrong shapes.*position_embeddings", name="shape.pth")
    _expect_error(tmp_path, {"model": good}, "--num-labels 6 disagrees", name="labels.pth", num_labels=6)

    _expect_error(tmp_path, {"model": good, "evil": NotAllowed()}, "cannot be read", name="pickle.pth")
    assert main([str(tmp_path / "nope.pth"), str(tmp_path / "out")]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err
    # a DDP-saved checkpoint ("module." prefixes) converts
    torch.save({"model": {"module." + k: v for k, v in good.items()}}, tmp_path / "ddp.pth")
    assert convert(tmp_path / "ddp.pth", tmp_path / "ddp").config.num_labels == 4
