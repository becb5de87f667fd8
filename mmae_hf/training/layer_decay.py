"""Layer-wise learning-rate decay (BEiT / MAE fine-tuning recipe), done by true depth.

A parameter at depth ``d`` gets the learning rate ``base_lr * decay ** (num_layers + 1 - d)`` where

- depth 0: the embeddings (byte tokenizer, CLS token, position embeddings): the most decayed,
- depth ``i + 1``: everything inside encoder layer ``i`` (``i = 0 .. num_layers - 1``),
- depth ``num_layers + 1``: whatever sits above the last layer (final norm, pooler, classifier): 1.0x.

This fixes the official MMAE fine-tuning code, whose layer-id function mis-parsed its block names:
there block 0 got 0.1x, blocks 1-6 all got 0.75x, and the embeddings and CLS token got the *largest*
rate (1.0x).

Weight decay is not applied to biases, norm weights (every parameter with fewer than two dimensions),
nor to the position embeddings, CLS and mask tokens (the "no_weight_decay" set of ViT/MAE), whatever
their shape.
"""

import re
from dataclasses import dataclass

import torch

# a parameter inside encoder layer i: "...layer.3.attention...", "...layers.3....", "...blocks.3...."
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers|blocks|block)\.(\d+)\.")
# a parameter of the input embeddings (depth 0)
_EMBEDDING_PART = re.compile(
    r"(?:^|\.)(?:embeddings|embedding|patch_embed|pos_embed|cls_token|byte_embeddings)(?:\.|$)"
)
# parameters never weight-decayed although they have two or more dimensions
NO_WEIGHT_DECAY_NAMES = ("position_embeddings", "pos_embed", "cls_token", "mask_token")


def parameter_depth(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer decay: 0 = embeddings, i + 1 = encoder layer i, num_layers + 1 = top."""
    match = _LAYER_INDEX.search(name)
    if match is not None:
        index = int(match.group(1))
        if not 0 <= index < num_layers:
            raise ValueError(f"parameter {name!r} is in layer {index}, but the model has {num_layers} layers")
        return index + 1
    if _EMBEDDING_PART.search(name):
        return 0
    return num_layers + 1


def uses_weight_decay(name: str, parameter: torch.Tensor) -> bool:
    """False for biases, norm weights and other 0/1-D parameters, position embeddings, CLS and mask tokens."""
    if parameter.ndim <= 1:
        return False
    leaf = name.split(".")
    return not any(part in NO_WEIGHT_DECAY_NAMES for part in leaf)


@dataclass
class ParameterGroupSummary:
    depth: int
    lr_scale: float
    weight_decay: float
    names: list[str]


def layer_decay_parameter_groups(
    model: torch.nn.Module,
    base_lr: float,
    weight_decay: float,
    layer_decay: float = 0.75,
    num_layers: int | None = None,
) -> tuple[list[dict], list[ParameterGroupSummary]]:
    """Optimizer parameter groups with per-depth learning rates and the right weight-decay exemptions.

    Args:
        model: any module whose encoder layers are named ``...layer.<i>.`` (or ``layers``/``blocks``) and
            whose embeddings live under ``...embeddings.``. Frozen parameters (``requires_grad=False``) are left out.
        base_lr: the learning rate of the top (head) group.
        weight_decay: decoupled weight decay for the groups that use it.
        layer_decay: multiplicative decay per layer of depth; 1.0 turns layer decay off.
        num_layers: number of encoder layers; defaults to ``model.config.num_hidden_layers``.

    Returns:
        ``(groups, summary)``: ``groups`` go straight into a torch optimizer (each has ``params``, ``lr``,
        ``weight_decay``, ``lr_scale`` and ``layer_depth``); ``summary`` lists the parameter names per group
        for logging and tests. Every trainable parameter is in exactly one group.
    """
    if num_layers is None:
        num_layers = int(model.config.num_hidden_layers)
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    buckets: dict[tuple[int, bool], tuple[list, list]] = {}
    for name, parameter in model.named_parameters():  # named_parameters() already skips tied duplicates
        if not parameter.requires_grad:
            continue
        key = (parameter_depth(name, num_layers), uses_weight_decay(name, parameter))
        params, names = buckets.setdefault(key, ([], []))
        params.append(parameter)
        names.append(name)
    groups, summary = [], []
    for (depth, decayed), (params, names) in sorted(buckets.items()):
        scale = layer_decay ** (num_layers + 1 - depth)
        wd = weight_decay if decayed else 0.0
        groups.append(
            {"params": params, "lr": base_lr * scale, "weight_decay": wd, "lr_scale": scale, "layer_depth": depth}
        )
        summary.append(ParameterGroupSummary(depth=depth, lr_scale=scale, weight_decay=wd, names=names))
    return groups, summary


def format_parameter_groups(summary: list[ParameterGroupSummary]) -> str:
    """A short human-readable table of the groups (printed at the start of fine-tuning)."""
    lines = ["depth  lr_scale  weight_decay  #params  first parameter"]
    for group in summary:
        lines.append(
            f"{group.depth:>5}  {group.lr_scale:8.4f}  {group.weight_decay:12.3g}  {len(group.names):>7}  "
            f"{group.names[0]}"
        )
    return "\n".join(lines)


__all__ = [
    "NO_WEIGHT_DECAY_NAMES",
    "ParameterGroupSummary",
    "format_parameter_groups",
    "layer_decay_parameter_groups",
    "parameter_depth",
    "uses_weight_decay",
]
