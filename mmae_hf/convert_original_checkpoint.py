# Copyright 2026 The mmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Convert an official MMAE checkpoint (lx6c78/MMAE, `torch.save({"model": state_dict, ...})`) into a
`save_pretrained` folder.

    python -m mmae_hf.convert_original_checkpoint CHECKPOINT.pth OUTPUT_DIR [--num-labels N]

* A pre-training checkpoint (student: encoder, decoder, loss-prediction decoder, PMP router) becomes
  `MMAEForPreTraining`; `--num-labels N` records N labels in the config for later fine-tuning.
* A fine-tuned checkpoint (encoder + `head`) becomes `MMAEForSequenceClassification`; the number of labels is read from
  `head.weight` (`--num-labels`, when given, must agree).

The file is read with `torch.load(weights_only=True)` (no arbitrary unpickling; the only extra class allowed is the
`argparse.Namespace` of the saved training arguments). Every used key is mapped; the dead
ones are dropped and listed: the unused MambaVision skeleton's `mmae_core_block.norm.*` (BatchNorm 2048) and
`mmae_core_block.head.*` (Linear 2048->1000), the `stat_encoder.*` (never trained: its output only feeds an argmax;
our pairing uses fixed transforms of the statistics, `flowmix.py`) and the classifier's unused `decoder_pred.*`.
Anything else that does not fit (a missing key, an unknown key, a wrong shape, not a state dict, an unreadable file)
stops the conversion with a message naming the file and the keys.

Assumptions where the specification (method.md §3) is silent, checked against the official module types:
* every LayerNorm uses torch's default eps 1e-5 (the official blocks build `nn.LayerNorm(dim)` without eps);
* attention is torch's `scaled_dot_product_attention` with the default scale head_dim**-0.5, the fused `qkv` rows
  ordered q | k | v and heads contiguous inside each (timm layout), no q/k normalisation, no dropout;
* the MLP activation is exact (erf) GELU (`nn.GELU()`);
* encoder blocks run in the order levels.0.blocks.0, levels.1.blocks.0, levels.1.blocks.1, ... (depths 1, 2, 2, 2);
* the byte Conv1d(1 -> 256, k=4, s=4) equals a Linear over 4-byte tokens with weight `proj.weight[:, 0, :]`.
"""

import argparse
import re
import sys
from pathlib import Path

import torch

from .configuration_mmae import MMAEConfig
from .modeling_mmae import MMAEForPreTraining, MMAEForSequenceClassification


DEAD_PREFIXES_ALWAYS = ("mmae_core_block.norm.", "mmae_core_block.head.", "stat_encoder.")
DEAD_PREFIXES_CLASSIFIER = ("decoder_pred.",)

_BLOCK_PARTS = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "mixer.qkv": "attention.qkv",
    "mixer.proj": "attention.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_ENCODER_BLOCK = re.compile(r"^mmae_core_block\.levels\.(\d+)\.blocks\.(\d+)\.(.+)\.(weight|bias)$")
_DECODER_BLOCK = re.compile(r"^(decoder_blocks|decoder_blocks_losspred)\.(\d+)\.(.+)\.(weight|bias)$")

_DIRECT = {
    "cls_token": "mmae.embeddings.cls_token",
    "pos_embed": "mmae.embeddings.position_embeddings",
    "patch_embed.proj.weight": "mmae.embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "mmae.embeddings.patch_embeddings.projection.bias",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    "decoder_embed.weight": "decoder.decoder_embed.weight",
    "decoder_embed.bias": "decoder.decoder_embed.bias",
    "decoder_norm.weight": "decoder.decoder_norm.weight",
    "decoder_norm.bias": "decoder.decoder_norm.bias",
    "decoder_pred.weight": "decoder.decoder_pred.weight",
    "decoder_pred.bias": "decoder.decoder_pred.bias",
    "decoder_norm_losspred.weight": "loss_predictor.norm.weight",
    "decoder_norm_losspred.bias": "loss_predictor.norm.bias",
    "decoder_pred_losspred.weight": "loss_predictor.pred.weight",
    "decoder_pred_losspred.bias": "loss_predictor.pred.bias",
    "head.weight": "classifier.weight",
    "head.bias": "classifier.bias",
}


class CheckpointConversionError(ValueError):
    """The checkpoint cannot be converted; the message names the file and the problem."""


def load_official_state_dict(path) -> dict:
    """Read `path` safely and return its state dict (`{"model": state_dict}` or a bare state dict)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointConversionError(f"{path}: no such checkpoint file")
    try:
        # Official checkpoints also hold the training `args` (an argparse.Namespace, a plain attribute container):
        # allow exactly that class on top of the tensor-only weights_only unpickler.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupted zip, truncated pickle, non-tensor objects refused by weights_only, ...
        raise CheckpointConversionError(
            f"{path}: cannot be read as a PyTorch checkpoint with weights_only=True "
            f"(corrupted, truncated or not a torch.save file): {type(error).__name__}: {error}"
        ) from error
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        state = obj["model"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        kind = type(obj).__name__
        keys = sorted(obj)[:10] if isinstance(obj, dict) else None
        raise CheckpointConversionError(
            f"{path}: expected an official MMAE checkpoint {{'model': state_dict}} or a state dict of tensors, "
            f"got a {kind}" + (f" with keys {keys}" if keys is not None else "")
        )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointConversionError(f"{path}: state dict entries are not tensors: {bad[:10]}")
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def map_official_keys(state: dict) -> tuple[dict, list, list]:
    """Official key names -> mmae_hf names. Returns (mapped state dict, dropped dead keys, unknown keys)."""
    is_classifier = "head.weight" in state
    dead_prefixes = DEAD_PREFIXES_ALWAYS + (DEAD_PREFIXES_CLASSIFIER if is_classifier else ())
    block_ids = sorted({(int(m.group(1)), int(m.group(2))) for m in map(_ENCODER_BLOCK.match, state) if m is not None})
    layer_of = {block: i for i, block in enumerate(block_ids)}
    mapped, dropped, unknown = {}, [], []
    for key, value in state.items():
        if key.startswith(dead_prefixes):
            dropped.append(key)
            continue
        new = _DIRECT.get(key)
        if new is None and (m := _ENCODER_BLOCK.match(key)):
            part = _BLOCK_PARTS.get(m.group(3))
            if part is not None:
                layer = layer_of[(int(m.group(1)), int(m.group(2)))]
                new = f"mmae.encoder.layers.{layer}.{part}.{m.group(4)}"
        elif new is None and (m := _DECODER_BLOCK.match(key)):
            part = _BLOCK_PARTS.get(m.group(3))
            if part is not None:
                owner = "decoder" if m.group(1) == "decoder_blocks" else "loss_predictor"
                new = f"{owner}.layers.{m.group(2)}.{part}.{m.group(4)}"
        elif new is None and key.startswith("loss_predictor_router."):
            new = "loss_predictor.pmp." + key[len("loss_predictor_router.") :]
        if new is None:
            unknown.append(key)
        else:
            mapped[new] = value
    return mapped, dropped, unknown


def convert(checkpoint, output_dir, num_labels: int | None = None, config_overrides: dict | None = None):
    """Convert and save; returns the loaded model (eval mode)."""
    state = load_official_state_dict(checkpoint)
    is_classifier = "head.weight" in state
    if not is_classifier and "decoder_embed.weight" not in state:
        raise CheckpointConversionError(
            f"{checkpoint}: neither a fine-tuned MMAE classifier (no 'head.weight') nor a pre-training checkpoint "
            f"(no 'decoder_embed.weight'); first keys: {sorted(state)[:8]}"
        )
    overrides = dict(config_overrides or {})
    if is_classifier:
        head = state["head.weight"]
        if head.ndim != 2:
            raise CheckpointConversionError(f"{checkpoint}: 'head.weight' has shape {tuple(head.shape)}, expected 2-D")
        found = head.shape[0]
        if num_labels is not None and num_labels != found:
            raise CheckpointConversionError(
                f"{checkpoint}: --num-labels {num_labels} disagrees with the checkpoint's head ({found} classes)"
            )
        overrides["num_labels"] = found
    elif num_labels is not None:
        overrides["num_labels"] = num_labels
    config = MMAEConfig(**overrides)
    model_class = MMAEForSequenceClassification if is_classifier else MMAEForPreTraining
    model = model_class(config)

    mapped, dropped, unknown = map_official_keys(state)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    wrong_shape = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in mapped.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    problems = []
    if unknown:
        problems.append(f"unknown keys (not in the official layout): {unknown[:20]}")
    if unexpected:
        problems.append(f"keys without a place in the model: {unexpected[:20]}")
    if missing:
        problems.append(
            f"missing keys: {missing[:20]}" + (f" (+{len(missing) - 20} more)" if len(missing) > 20 else "")
        )
    if wrong_shape:
        problems.append("wrong shapes (the converter expects the mmae-base sizes): " + "; ".join(wrong_shape[:10]))
    if problems:
        raise CheckpointConversionError(f"{checkpoint}: cannot convert: " + " | ".join(problems))

    floats = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in mapped.items()}
    model.load_state_dict(floats, strict=True)
    model.eval()
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    print(
        f"converted {checkpoint} -> {output_dir} as {model_class.__name__}: {len(mapped)} tensors mapped, "
        f"{len(dropped)} dead tensors dropped ({sorted({k.rsplit('.', 2)[0] for k in dropped})})"
    )
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="official MMAE .pth file ({'model': state_dict})")
    parser.add_argument("output_dir", help="folder to write (save_pretrained layout)")
    parser.add_argument("--num-labels", type=int, default=None, help="number of classes (checked for classifiers)")
    args = parser.parse_args(argv)
    try:
        convert(args.checkpoint, args.output_dir, num_labels=args.num_labels)
    except CheckpointConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
