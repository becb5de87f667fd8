"""The state-dict layout (key -> shape) of the official MMAE checkpoints, written out from the architecture.

The official code (``lx6c78/MMAE``) saves ``torch.save({"model": state_dict, ...})``. Its encoder is a patch
embedding (a 1-D convolution over 4 bytes, 256 wide), a CLS token and 401 position embeddings, seven pre-LN
transformer blocks spread over four "levels" of depths 1, 2, 2, 2 (``mmae_core_block.levels.<l>.blocks.<b>``;
attention ``mixer.qkv`` / ``mixer.proj``, MLP ``fc1`` / ``fc2`` of 4x width) and an unused 2048-wide
BatchNorm + 1000-way head left over from its backbone. The fine-tuned classifier adds ``head`` on the CLS token
(and keeps a stray ``decoder_pred``). The pre-training checkpoint adds the 128-wide decoder (two blocks), the
loss predictor (two more decoder blocks and its own norm / prediction) with the PMP router
(``loss_predictor_router``) and a statistics encoder the forward never uses.

This is what the conversion tests build random official checkpoints from. A ``shared_data`` test checks it,
key by key, against the table of the real checkpoints in ``../shared/reference/official_checkpoint_keys.tsv``.
"""

ENCODER_BLOCKS = [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]  # levels of depths [1, 2, 2, 2]
WIDTH, DECODER_WIDTH, PATCH, TOKENS = 256, 128, 4, 400


def _block(prefix: str, width: int) -> dict:
    return {
        f"{prefix}.norm1.weight": (width,),
        f"{prefix}.norm1.bias": (width,),
        f"{prefix}.mixer.qkv.weight": (3 * width, width),
        f"{prefix}.mixer.qkv.bias": (3 * width,),
        f"{prefix}.mixer.proj.weight": (width, width),
        f"{prefix}.mixer.proj.bias": (width,),
        f"{prefix}.norm2.weight": (width,),
        f"{prefix}.norm2.bias": (width,),
        f"{prefix}.mlp.fc1.weight": (4 * width, width),
        f"{prefix}.mlp.fc1.bias": (4 * width,),
        f"{prefix}.mlp.fc2.weight": (width, 4 * width),
        f"{prefix}.mlp.fc2.bias": (width,),
    }


def _batch_norm(prefix: str, width: int) -> dict:
    return {
        f"{prefix}.weight": (width,),
        f"{prefix}.bias": (width,),
        f"{prefix}.running_mean": (width,),
        f"{prefix}.running_var": (width,),
        f"{prefix}.num_batches_tracked": (),
    }


def _linear(prefix: str, out_features: int, in_features: int, bias: bool = True) -> dict:
    return {f"{prefix}.weight": (out_features, in_features), **({f"{prefix}.bias": (out_features,)} if bias else {})}


def _encoder() -> dict:
    layout = {
        "cls_token": (1, 1, WIDTH),
        "pos_embed": (1, TOKENS + 1, WIDTH),
        "patch_embed.proj.weight": (WIDTH, 1, PATCH),
        "patch_embed.proj.bias": (WIDTH,),
    }
    for level, block in ENCODER_BLOCKS:
        layout.update(_block(f"mmae_core_block.levels.{level}.blocks.{block}", WIDTH))
    layout.update(_batch_norm("mmae_core_block.norm", 2048))
    layout.update(_linear("mmae_core_block.head", 1000, 2048))
    return layout


def _pretraining_extras() -> dict:
    layout = {"mask_token": (1, 1, DECODER_WIDTH), "decoder_pos_embed": (1, TOKENS + 1, DECODER_WIDTH)}
    layout.update(_linear("decoder_embed", DECODER_WIDTH, WIDTH))
    for name in ("decoder_blocks", "decoder_blocks_losspred"):
        for index in range(2):
            layout.update(_block(f"{name}.{index}", DECODER_WIDTH))
    for suffix in ("", "_losspred"):
        layout.update(
            {f"decoder_norm{suffix}.weight": (DECODER_WIDTH,), f"decoder_norm{suffix}.bias": (DECODER_WIDTH,)}
        )
        layout.update(_linear(f"decoder_pred{suffix}", PATCH, DECODER_WIDTH))
    router = "loss_predictor_router"
    for stream in ("len", "time"):
        layout.update(
            {
                f"{router}.{stream}_embedder.proj.weight": (64, 1, PATCH),
                f"{router}.{stream}_embedder.proj.bias": (64,),
                f"{router}.{stream}_pos_embed": (1, TOKENS, 64),
            }
        )
    layout.update(_linear(f"{router}.norm_to_saliency", 8, 1))
    for name in ("U_del", "U_sup", "V_del", "V_sup"):
        layout.update(_linear(f"{router}.router_{name}", 16, 16, bias=False))
    layout.update({f"{router}.router_gamma_del": (), f"{router}.router_gamma_sup": ()})
    layout.update(_linear(f"{router}.router_phi.0", 64, DECODER_WIDTH))
    layout.update(_linear(f"{router}.router_phi.2", 16, 64))
    layout.update(_linear(f"{router}.selector_a", 32, 25, bias=False))
    layout.update(_linear(f"{router}.selector_b", 32, 25, bias=False))
    layout.update(_linear(f"{router}.stat_fusion.0", DECODER_WIDTH, DECODER_WIDTH))
    layout.update(
        {f"{router}.stat_fusion.1.weight": (DECODER_WIDTH,), f"{router}.stat_fusion.1.bias": (DECODER_WIDTH,)}
    )
    layout.update(_linear(f"{router}.stat_to_gate", 16, DECODER_WIDTH))
    layout.update(_batch_norm("stat_encoder.bn_input", 27))
    layout.update({"stat_encoder.cnn.0.weight": (16, 1, 3), "stat_encoder.cnn.0.bias": (16,)})
    layout.update(_batch_norm("stat_encoder.cnn.2", 16))
    layout.update({"stat_encoder.cnn.3.weight": (32, 16, 3), "stat_encoder.cnn.3.bias": (32,)})
    layout.update(_batch_norm("stat_encoder.cnn.5", 32))
    layout.update(_linear("stat_encoder.fc.0", 64, 32))
    return layout


def official_layout(model: str, num_classes: int = 8) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of an official ``mmae_pretrain`` or ``mmae_classifier`` checkpoint."""
    layout = _encoder()
    if model == "mmae_classifier":
        layout.update(_linear("decoder_pred", PATCH, DECODER_WIDTH))
        layout.update(_linear("head", num_classes, WIDTH))
    elif model == "mmae_pretrain":
        layout.update(_pretraining_extras())
    else:
        raise ValueError(f"unknown official model {model!r}")
    return layout


def read_key_table(path) -> dict[str, dict[str, tuple[int, ...]]]:
    """``{model: {key: shape}}`` from the reference table (``model<TAB>key<TAB>(shape)`` lines)."""
    from pathlib import Path

    tables: dict[str, dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("#") or line.startswith("model\t") or not line.strip():
            continue
        which, key, shape = line.split("\t")
        tables.setdefault(which, {})[key] = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
    return tables
