# Copyright 2026 The mmae-hf authors. Licensed under the Apache License, Version 2.0.
"""PyTorch MMAE (Mean Masked Autoencoder with Flow-Mixing) for encrypted-traffic classification.

The model reads the first bytes of a flow (`input_bytes`, [batch, 1600] uint8: 5 packets x (80 header + 240 payload
bytes)), normalises them like the official code (`(x / 255 - 0.5) / 0.5`), cuts them into 400 tokens of 4 bytes and
runs a pre-norm ViT with a CLS token (no final LayerNorm). Pre-training (`MMAEForPreTraining`) mixes the tokens of
paired flows (FlowMix), reconstructs both flows with a two-branch decoder, predicts each token's reconstruction loss
with a decoder biased by the PMP (`pmp.py`) and distils the decoder features of a mean teacher (`teacher.py`).

Shipped with saved models (trust_remote_code): imports only torch, transformers and its sibling modules
`configuration_mmae` and `pmp` (single-dot imports), and no `from __future__ import annotations`.

Official behaviour kept by default, each behind a config switch (method.md §8/§10):
  * `reconstruction_loss_on="all"`: the MSE averages over all tokens, not only the masked ones;
  * `distillation_cosine_dim=1`: the distillation cosine runs over the token axis;
  * `decoder_cls_from_first_patch=True`: the student decoder's position 0 gets the first patch token, not the CLS.
Official bugs fixed (no switch, or a switch that reproduces the official behaviour):
  * guided (hard) masking works: the hardest tokens predicted for the SAME batch (by the teacher) are masked first,
    with a curriculum (`use_guided_masking=False` gives the official, always-random masking);
  * the teacher is a copy of the student, in eval mode, updated in place (`teacher.py`);
  * the dead parameters (encoder `norm`/`head` of the unused MambaVision skeleton, the random frozen StatEncoder, the
    classifier's `decoder_pred`) are not part of the model; pairing uses fixed transforms of the flow statistics
    (`flowmix.py`).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Unpack

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_mmae import MMAEConfig
from .pmp import MMAEPacketMaskPredictor, scale_packet_iats, scale_packet_lengths


AUTO_MAP = {
    "AutoConfig": "configuration_mmae.MMAEConfig",
    "AutoModel": "modeling_mmae.MMAEModel",
    "AutoModelForPreTraining": "modeling_mmae.MMAEForPreTraining",
    "AutoModelForSequenceClassification": "modeling_mmae.MMAEForSequenceClassification",
}


def set_auto_map(config: MMAEConfig) -> MMAEConfig:
    """Write the full `auto_map` into `config` so that every Auto class loads a saved folder with
    `trust_remote_code=True` (transformers only lists the classes that were saved otherwise). Called by
    `MMAEPreTrainedModel.save_pretrained` / `push_to_hub`; returns the config."""
    config.auto_map = dict(AUTO_MAP)
    return config


@dataclass
class MMAEForPreTrainingOutput(ModelOutput):
    r"""
    Output of `MMAEForPreTraining`. B = batch, L = byte tokens (400), P = bytes per token (4), D = decoder width.

    loss (`torch.FloatTensor` of shape `()`):
        `reconstruction_loss + rank_loss_weight * rank_loss + distillation_loss_weight * distillation_loss`
        (terms that were not computed count as 0).
    reconstruction_loss (`torch.FloatTensor` of shape `()`):
        Mean squared error between the unmixed byte predictions and the normalised input bytes.
    rank_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Pairwise ranking loss of the loss predictor (None when `use_loss_predictor=False`).
    distillation_loss (`torch.FloatTensor` of shape `()`, *optional*):
        `1 - mean cosine` between the standardised teacher features and the student's unmixed decoder features
        (None when no `teacher_features` are given).
    logits (`torch.FloatTensor` of shape `(B, L, P)`):
        Unmixed byte predictions (normalised scale, in [-1, 1] for a perfect model).
    mask (`torch.BoolTensor` of shape `(B, L)`):
        True where the token was masked (replaced by the partner's token under FlowMix).
    token_loss (`torch.FloatTensor` of shape `(B, L)`):
        Per-token reconstruction MSE (detached): the target of the loss predictor.
    predicted_token_loss (`torch.FloatTensor` of shape `(B, L)`, *optional*):
        Unmixed per-token loss predictions of the loss predictor.
    decoder_features (`torch.FloatTensor` of shape `(B, L, D)`):
        Unmixed student decoder features (after the decoder LayerNorm), the distillation student side.
    partner_index (`torch.LongTensor` of shape `(B,)`, *optional*):
        The FlowMix partner of every flow (None without FlowMix).
    """

    loss: torch.Tensor | None = None
    reconstruction_loss: torch.Tensor | None = None
    rank_loss: torch.Tensor | None = None
    distillation_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    token_loss: torch.Tensor | None = None
    predicted_token_loss: torch.Tensor | None = None
    decoder_features: torch.Tensor | None = None
    partner_index: torch.Tensor | None = None


@dataclass
class MMAETeacherOutput(ModelOutput):
    r"""
    Output of `MMAEForPreTraining.teacher_forward` (unmasked, unmixed flows). B, L, P, D as above.

    features (`torch.FloatTensor` of shape `(B, L, D)`):
        Decoder features after the decoder LayerNorm (not standardised): pass as `teacher_features`.
    predicted_token_loss (`torch.FloatTensor` of shape `(B, L)`, *optional*):
        Per-token predicted reconstruction loss: pass as `hard_token_scores` for guided masking (None when
        guided masking or the loss predictor is off).
    logits (`torch.FloatTensor` of shape `(B, L, P)`):
        Byte predictions of the teacher's decoder.
    """

    features: torch.Tensor | None = None
    predicted_token_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


@dataclass
class MMAEDecoderOutput(ModelOutput):
    r"""
    Output of `MMAEDecoder`. N = B flows, or 2B under FlowMix (the two branches of every flow, stacked); L, P, D as
    above.

    logits (`torch.FloatTensor` of shape `(N, L, P)`):
        Byte predictions (normalised scale).
    features (`torch.FloatTensor` of shape `(N, L, D)`):
        Decoder features after the decoder LayerNorm, without position 0.
    inputs (`torch.FloatTensor` of shape `(N, 1 + L, D)`):
        The decoder inputs (embedded latent, mask tokens, positions): the loss predictor reads them too.
    """

    logits: torch.Tensor | None = None
    features: torch.Tensor | None = None
    inputs: torch.Tensor | None = None


def normalize_bytes(input_bytes: torch.Tensor, num_bytes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Raw bytes [B, num_bytes] (uint8 or integer 0..255) -> floats in [-1, 1], exactly as the official loader:
    `(x / 255 - 0.5) / 0.5`."""
    if input_bytes.dim() != 2 or input_bytes.shape[1] != num_bytes:
        raise ValueError(
            f"input_bytes must have shape [batch, {num_bytes}] (num_packets * (header_bytes + payload_bytes)), "
            f"got {tuple(input_bytes.shape)}"
        )
    if input_bytes.is_floating_point():
        raise ValueError("input_bytes must hold raw byte values (uint8 or an integer dtype), not floats")
    return (input_bytes.to(dtype) / 255.0 - 0.5) / 0.5


def drop_path(hidden_states: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample: zero the residual branch of a whole sample with probability `drop_prob` and scale
    the kept ones by `1 / (1 - drop_prob)`."""
    if drop_prob == 0.0 or not training:
        return hidden_states
    keep_prob = 1.0 - drop_prob
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
    keep = hidden_states.new_empty(shape).bernoulli_(keep_prob)
    return hidden_states * keep / keep_prob


class MMAEDropPath(nn.Module):
    """Stochastic depth (drop path) on the residual branch."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return drop_path(hidden_states, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
):
    """Plain attention (q, k, v: [B, heads, N, head_dim]); the additive `attention_mask` [B, 1|heads, N, N] (the PMP
    bias in the loss predictor) is added to the logits."""
    attn_weights = torch.matmul(query * scaling, key.transpose(2, 3))
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    # softmax in the scores' dtype: the CPU/GPU kernels accumulate bf16/fp16 in float32 internally, and skipping the
    # explicit float32 round trip saves two copies of the [B, heads, N, N] scores under autocast.
    attn_weights = nn.functional.softmax(attn_weights, dim=-1)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class MMAEAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (official layout: rows q | k | v, heads contiguous).

    The kernel is `config._attn_implementation` looked up in transformers' attention interface (`"sdpa"` by
    default, `"eager"`, or any registered one), with two exceptions that need the eager kernel: the attention weights
    were asked for (`output_attentions=True`), or the additive mask needs a gradient (the learned PMP bias in training:
    SDPA's CPU path with a grad-requiring mask is about 2x slower than plain autograd attention).
    """

    def __init__(self, config: MMAEConfig, hidden_size: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, width = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        if attention_mask is not None:
            attention_mask = attention_mask.to(query.dtype)  # SDPA wants the additive mask in the query dtype
        if kwargs.get("output_attentions") or (
            attention_mask is not None and attention_mask.requires_grad and torch.is_grad_enabled()
        ):
            attention_interface = eager_attention_forward
        attn_output, attn_weights = attention_interface(
            self, query, key, value, attention_mask, scaling=self.scaling, dropout=0.0, **kwargs
        )
        return self.proj(attn_output.reshape(batch, length, width)), attn_weights


class MMAEMLP(nn.Module):
    """Linear -> activation -> Linear."""

    def __init__(self, config: MMAEConfig, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class MMAELayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: x += DropPath(Attn(LN(x), mask)); x += DropPath(MLP(LN(x))). Returns the hidden
    states only (the attention weights are recorded by `capture_outputs` when asked for)."""

    def __init__(self, config: MMAEConfig, hidden_size: int, num_heads: int, intermediate_size: int, drop_prob=0.0):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attention = MMAEAttention(config, hidden_size, num_heads)
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = MMAEMLP(config, hidden_size, intermediate_size)
        self.drop_path = MMAEDropPath(drop_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        # `attention_mask` must come positionally: reentrant gradient checkpointing only propagates gradients through
        # positional inputs (the PMP bias is learned).
        attn_output, _ = self.attention(self.layernorm_before(hidden_states), attention_mask, **kwargs)
        hidden_states = hidden_states + self.drop_path(attn_output)
        hidden_states = hidden_states + self.drop_path(self.mlp(self.layernorm_after(hidden_states)))
        return hidden_states


class MMAEByteProjection(nn.Conv1d):
    """The byte tokenizer's Conv1d(1 -> hidden, kernel = stride = bytes_per_token), computed as a matmul over the
    bytes of each token ([B, L, bytes_per_token] -> [B, L, hidden]): same weights and values, cheaper. Its own
    forward, so that the weight is only read where device-map / offload hooks have placed it."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(tokens, self.weight.view(self.out_channels, -1), self.bias)


class MMAEPatchEmbeddings(nn.Module):
    """Byte tokenizer: normalised bytes [B, num_bytes] -> token embeddings [B, L, hidden] (`MMAEByteProjection`)."""

    def __init__(self, config: MMAEConfig):
        super().__init__()
        self.bytes_per_token = config.bytes_per_token
        self.projection = MMAEByteProjection(
            1, config.hidden_size, kernel_size=config.bytes_per_token, stride=config.bytes_per_token
        )

    def forward(self, normalized_bytes: torch.Tensor) -> torch.Tensor:
        return self.projection(normalized_bytes.view(normalized_bytes.shape[0], -1, self.bytes_per_token))


class MMAEEmbeddings(nn.Module):
    """Byte normalisation, token embedding, CLS token and learned position embeddings (CLS at position 0).

    Pre-training mixes or drops tokens here, between the token embedding and the positions: with `partner_index`
    the tokens where `token_mask` is True are replaced by the partner flow's tokens at the same positions (FlowMix);
    with `keep_index` only those tokens are kept, each with its own position (plain MAE).
    """

    def __init__(self, config: MMAEConfig):
        super().__init__()
        self.config = config
        self.patch_embeddings = MMAEPatchEmbeddings(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_tokens + 1, config.hidden_size))

    def normalize(self, input_bytes: torch.Tensor) -> torch.Tensor:
        """Raw bytes -> floats in [-1, 1], in the model's dtype (reads only the dtype of the weights)."""
        return normalize_bytes(input_bytes, self.config.num_bytes, dtype=self.cls_token.dtype)

    def forward(
        self,
        input_bytes: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        partner_index: torch.Tensor | None = None,
        keep_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_bytes [B, num_bytes] -> [B, 1 + L, H] (or [B, 1 + K, H] with `keep_index` [B, K]).

        token_mask [B, L] bool and partner_index [B] long: FlowMix (masked tokens come from the partner flow).
        keep_index [B, K] long: keep only these tokens (with their own positions).
        """
        tokens = self.embed_tokens(input_bytes)
        if partner_index is not None:
            if token_mask is None:
                raise ValueError("FlowMix (partner_index) needs the token_mask of the tokens to take from the partner")
            tokens = torch.where(token_mask.unsqueeze(-1), tokens[partner_index], tokens)
        if keep_index is not None:
            tokens = torch.gather(tokens, 1, keep_index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return self.add_cls_and_positions(tokens, keep_index)

    def embed_tokens(self, input_bytes: torch.Tensor) -> torch.Tensor:
        """Raw bytes [B, num_bytes] -> token embeddings [B, L, H] (no position, no CLS): where FlowMix mixes."""
        return self.patch_embeddings(self.normalize(input_bytes))

    def add_cls_and_positions(self, tokens: torch.Tensor, keep_index: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, L, H] (or the kept subset [B, K, H] with their positions `keep_index` [B, K]) -> [B, 1+L|K, H]."""
        positions = self.position_embeddings[:, 1:]
        if keep_index is not None:
            positions = torch.gather(
                positions.expand(tokens.shape[0], -1, -1), 1, keep_index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            )
        cls = (self.cls_token + self.position_embeddings[:, :1]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens + positions], dim=1)


class MMAEEncoder(nn.Module):
    """Stack of pre-norm blocks with linearly increasing stochastic depth; no final LayerNorm (official)."""

    def __init__(self, config: MMAEConfig):
        super().__init__()
        n = config.num_hidden_layers
        rates = [config.drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        self.layers = nn.ModuleList(
            [
                MMAELayer(config, config.hidden_size, config.num_attention_heads, config.intermediate_size, rate)
                for rate in rates
            ]
        )

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states, None, **kwargs)
        return hidden_states


class MMAEDecoder(nn.Module):
    """Reconstruction decoder: embed, mask tokens, learned positions, pre-norm blocks, LayerNorm, byte prediction.

    `forward(latent, token_mask=None, keep_index=None)` takes the encoder output and builds the decoder inputs in one
    of three ways:

    * neither: every token is visible (the mean teacher on unmasked flows);
    * `keep_index` [B, K]: plain MAE; the K encoded tokens go back to their positions, mask tokens fill the rest;
    * `token_mask` [B, L] (FlowMix, the latent holds all L mixed tokens): two branches per flow, stacked as
      [2B, ...]: branch 1 keeps the flow's own visible tokens (mask tokens where `token_mask`), branch 2 keeps the
      partner's tokens (mask tokens elsewhere). Position 0 gets the first patch token when
      `config.decoder_cls_from_first_patch` (official), else the CLS output.
    """

    def __init__(self, config: MMAEConfig):
        super().__init__()
        d = config.decoder_hidden_size
        self.num_tokens = config.num_tokens
        self.cls_from_first_patch = config.decoder_cls_from_first_patch
        self.decoder_embed = nn.Linear(config.hidden_size, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens + 1, d))
        self.layers = nn.ModuleList(
            [
                MMAELayer(config, d, config.decoder_num_attention_heads, config.decoder_intermediate_size)
                for _ in range(config.decoder_num_hidden_layers)
            ]
        )
        self.decoder_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(d, config.bytes_per_token)

    def embed(
        self, latent: torch.Tensor, token_mask: torch.Tensor | None = None, keep_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Decoder inputs [N, 1 + L, D] with positions (N = 2B for FlowMix, else B); see the class docstring."""
        hidden = self.decoder_embed(latent)
        mask_token = self.mask_token.to(hidden.dtype)
        if token_mask is not None:
            masked = token_mask.unsqueeze(-1)
            cls = hidden[:, 1:2] if self.cls_from_first_patch else hidden[:, :1]
            patches = hidden[:, 1:]
            own = torch.where(masked, mask_token, patches)  # branch 1: own visible tokens
            partner = torch.where(masked, patches, mask_token)  # branch 2: the partner's tokens
            hidden = torch.cat([torch.cat([cls, own], dim=1), torch.cat([cls, partner], dim=1)], dim=0)
        elif keep_index is not None:
            batch, width = hidden.shape[0], hidden.shape[-1]
            full = mask_token.expand(batch, self.num_tokens, width).clone()
            full = full.scatter(1, keep_index.unsqueeze(-1).expand(-1, -1, width), hidden[:, 1:])
            hidden = torch.cat([hidden[:, :1], full], dim=1)
        return hidden + self.decoder_pos_embed

    def forward(
        self,
        latent: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        keep_index: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> "MMAEDecoderOutput":
        inputs = self.embed(latent, token_mask, keep_index)
        hidden_states = inputs
        for layer in self.layers:
            hidden_states = layer(hidden_states, None, **kwargs)
        features = self.decoder_norm(hidden_states)[:, 1:]
        return MMAEDecoderOutput(logits=self.decoder_pred(features), features=features, inputs=inputs)


class MMAELossPredictor(nn.Module):
    """Loss-prediction decoder (HPM style): blocks of the decoder's size whose attention adds the PMP bias (as an
    additive attention mask), LayerNorm, Linear(D -> bytes_per_token), mean over the outputs -> one predicted loss per
    token."""

    def __init__(self, config: MMAEConfig):
        super().__init__()
        d = config.decoder_hidden_size
        self.config = config
        self.layers = nn.ModuleList(
            [
                MMAELayer(config, d, config.decoder_num_attention_heads, config.decoder_intermediate_size)
                for _ in range(config.loss_predictor_num_hidden_layers)
            ]
        )
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.pred = nn.Linear(d, config.bytes_per_token)
        self.pmp = MMAEPacketMaskPredictor(config) if config.use_pmp else None

    def forward(self, decoder_inputs, byte_predictions, packet_times, packet_lengths) -> torch.Tensor:
        """decoder_inputs [N, 1+L, D], byte_predictions [N, L, P], packet_* [N, num_packets] -> [N, L]."""
        attention_mask = None
        if self.pmp is not None:
            # The PMP bias covers the byte tokens; the CLS row and column (position 0) get no bias.
            attention_mask = self.pmp(byte_predictions, packet_times, packet_lengths, num_prefix_tokens=1)
        hidden_states = decoder_inputs
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask)
        return self.pred(self.norm(hidden_states))[:, 1:].mean(dim=-1)


class MMAEPreTrainedModel(PreTrainedModel):
    """Base class: config class, weight initialisation (official scheme) and full `auto_map` on save."""

    config: MMAEConfig
    config_class = MMAEConfig
    base_model_prefix = "mmae"
    main_input_name = "input_bytes"
    input_modalities = "text"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MMAEEmbeddings", "MMAELayer", "MMAEDecoder", "MMAEPacketMaskPredictor"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _can_record_outputs = {"hidden_states": MMAELayer, "attentions": MMAEAttention}

    @torch.no_grad()
    def _init_weights(self, module):
        """Official initialisation: xavier-uniform Linear (bias 0), LayerNorm (1, 0), byte conv xavier-uniform over
        its [hidden, bytes_per_token] matrix, PMP signal convs kaiming-normal (fan_out), truncated-normal position
        embeddings, normal CLS and mask tokens (std `initializer_range`), PMP gammas 0."""
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, MMAEPatchEmbeddings):
            weight = module.projection.weight
            fan_out, fan_in = weight.shape[0], weight.shape[1] * weight.shape[2]
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            init.uniform_(weight, -bound, bound)
            init.zeros_(module.projection.bias)
        elif isinstance(module, MMAEEmbeddings):
            init.trunc_normal_(module.position_embeddings, std=std)
            init.normal_(module.cls_token, std=std)
        elif isinstance(module, MMAEDecoder):
            init.normal_(module.mask_token, std=std)
            init.trunc_normal_(module.decoder_pos_embed, std=std)
        elif isinstance(module, MMAEPacketMaskPredictor):
            for embedder in (module.time_embedder, module.len_embedder):
                init.kaiming_normal_(embedder.proj.weight, mode="fan_out", nonlinearity="relu")
                init.zeros_(embedder.proj.bias)
            init.trunc_normal_(module.time_pos_embed, std=std)
            init.trunc_normal_(module.len_pos_embed, std=std)
            init.zeros_(module.router_gamma_sup)
            init.zeros_(module.router_gamma_del)

    def save_pretrained(self, save_directory, *args, **kwargs):
        set_auto_map(self.config)
        return super().save_pretrained(save_directory, *args, **kwargs)

    def push_to_hub(self, *args, **kwargs):
        set_auto_map(self.config)
        return super().push_to_hub(*args, **kwargs)


class MMAEModel(MMAEPreTrainedModel):
    """The MMAE encoder: raw bytes -> hidden states of CLS + 400 byte tokens."""

    def __init__(self, config: MMAEConfig):
        super().__init__(config)
        self.config = config
        self.embeddings = MMAEEmbeddings(config)
        self.encoder = MMAEEncoder(config)
        self.post_init()

    @capture_outputs
    def forward(self, input_bytes: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutputWithPooling:
        r"""
        input_bytes (`torch.Tensor` of shape `(batch_size, num_bytes)`, uint8 or integer):
            Raw flow bytes (data-contract column `input_bytes`).

        Returns `BaseModelOutputWithPooling` with `last_hidden_state` [B, 1+L, H], `pooler_output` [B, H] (the CLS
        output, no extra pooling layer), and, when asked (`output_hidden_states` / `output_attentions`, as arguments
        or in the config), `hidden_states` (embeddings + every block) and `attentions` (every block, [B, heads,
        1+L, 1+L]; computed with the eager kernel).
        """
        if kwargs.get("output_attentions") is None and self.config.output_attentions:
            kwargs["output_attentions"] = True  # the attention layers return their weights only when told
        hidden_states = self.encoder(self.embeddings(input_bytes), **kwargs)
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=hidden_states[:, 0])


def pairwise_ranking_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """HPM relative loss: for every sample and token pair (j, k) with target_j != target_k, binary cross-entropy of
    sigmoid(pred_k - pred_j) against [target_k > target_j]; summed and divided by the number of such pairs."""
    predicted = predicted.float()
    target = target.float()
    logits = predicted.unsqueeze(1) - predicted.unsqueeze(2)  # [B, j, k] = pred_k - pred_j
    greater = target.unsqueeze(1) > target.unsqueeze(2)
    valid = target.unsqueeze(1) != target.unsqueeze(2)
    # BCE-with-logits: softplus(x) - y * x (numerically stable).
    losses = nn.functional.softplus(logits) - greater * logits
    return (losses * valid).sum() / valid.sum().clamp(min=1)


class MMAEForPreTraining(MMAEPreTrainedModel):
    """MMAE pre-training: FlowMix (or plain MAE masking), two-branch decoder with unmixing, PMP-biased loss predictor
    with ranking loss, and mean-teacher distillation (`teacher_features` from `teacher_forward` of an EMA copy).

    `forward` runs five steps, each a method: `make_mask` (which tokens), `mix` (token embeddings, FlowMix-mixed or
    reduced to the kept tokens), `encode`, `decode` (decoder and loss predictor, back to one row per flow with
    `unmix`), and `compute_loss`. None of them waits on the host.
    """

    def __init__(self, config: MMAEConfig):
        super().__init__(config)
        self.config = config
        self.mmae = MMAEModel(config)
        self.decoder = MMAEDecoder(config)
        self.loss_predictor = MMAELossPredictor(config) if config.use_loss_predictor else None
        self.post_init()

    # ---- masking -------------------------------------------------------------------------------------------------
    def make_mask(
        self,
        mask_noise: torch.Tensor,
        hard_token_scores: torch.Tensor | None = None,
        hard_mask_share: float | torch.Tensor = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (mask [B, L] bool, ids_shuffle [B, L]): tokens with the largest noise are masked, exactly
        `config.num_masked_tokens` per flow. With guided masking, the `int(hard_mask_share * num_masked)` tokens of
        highest `hard_token_scores` are masked first (their noise is set to +inf), the rest at random."""
        batch, length = mask_noise.shape
        if length != self.config.num_tokens:
            raise ValueError(
                f"mask_noise must have shape [batch, {self.config.num_tokens}], got {tuple(mask_noise.shape)}"
            )
        num_keep = self.config.num_tokens - self.config.num_masked_tokens
        noise = mask_noise.float()
        if self.config.use_guided_masking and hard_token_scores is not None:
            # The share may be a 0-d tensor, and the number of hard tokens stays one: a compiled step then keeps one
            # graph while the curriculum moves (a Python number would be baked in, one recompilation per value).
            share = torch.as_tensor(hard_mask_share, dtype=torch.float64, device=noise.device)
            num_hard = torch.floor(share * self.config.num_masked_tokens)  # = int(share * num_masked) for share >= 0
            order = hard_token_scores.float().argsort(dim=1, descending=True, stable=True)
            ranks = torch.empty_like(order).scatter_(
                1, order, torch.arange(length, device=noise.device).expand_as(order)
            )
            noise = noise.masked_fill(ranks < num_hard, float("inf"))
        ids_shuffle = torch.argsort(noise, dim=1)
        mask = torch.zeros(batch, length, dtype=torch.bool, device=noise.device)
        mask.scatter_(1, ids_shuffle[:, num_keep:], True)
        return mask, ids_shuffle

    def _pairing(self, partner_index: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """The FlowMix partners: `partner_index` checked to be a permutation (the one host sync of the forward, an
        input check), or a random pairing when None."""
        if partner_index is None:
            return _random_pairing(batch, device)
        partner_index = partner_index.to(device=device, dtype=torch.long)
        if partner_index.shape != (batch,) or not torch.equal(
            torch.sort(partner_index).values, torch.arange(batch, device=device)
        ):
            raise ValueError(
                f"partner_index must be a permutation of 0..{batch - 1} (shape [{batch}]), got {partner_index.tolist()}"
            )
        return partner_index

    def _packet_signals(self, packet_lengths, packet_iats, packet_directions, batch, device):
        """Fixed transforms of the per-packet side information for the PMP (zeros when not given)."""
        shape = (batch, self.config.num_packets)
        times = (
            scale_packet_iats(packet_iats.to(device)) if packet_iats is not None else torch.zeros(shape, device=device)
        )
        directions = (
            packet_directions.to(device) if self.config.pmp_use_directions and packet_directions is not None else None
        )
        lengths = (
            scale_packet_lengths(packet_lengths.to(device), directions)
            if packet_lengths is not None
            else torch.zeros(shape, device=device)
        )
        return times, lengths

    # ---- the steps -----------------------------------------------------------------------------------------------
    def mix(
        self,
        input_bytes: torch.Tensor,
        mask: torch.Tensor | None = None,
        partner_index: torch.Tensor | None = None,
        keep_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encoder inputs [B, 1 + L | 1 + K, H]: FlowMix puts the partner's tokens where `mask` is True
        (`partner_index`); plain MAE keeps the `keep_index` tokens; neither: all tokens as they are."""
        return self.mmae.embeddings(input_bytes, token_mask=mask, partner_index=partner_index, keep_index=keep_index)

    def encode(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The encoder blocks: [B, 1 + N, H] -> latent [B, 1 + N, H]."""
        return self.mmae.encoder(embeddings)

    def decode(
        self,
        latent: torch.Tensor,
        mask: torch.Tensor | None = None,
        keep_index: torch.Tensor | None = None,
        packet_signals: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[MMAEDecoderOutput, torch.Tensor | None]:
        """The reconstruction decoder (`MMAEDecoder`: FlowMix branches with `mask`, MAE with `keep_index`) and, given
        the PMP signals `(times, lengths)` [B, num_packets], the loss predictor on the same decoder inputs.

        Returns the decoder output (2B rows for FlowMix) and the predicted per-token losses (same rows, or None)."""
        decoded = self.decoder(latent, token_mask=mask, keep_index=keep_index)
        predicted = None
        if self.loss_predictor is not None and packet_signals is not None:
            times, lengths = packet_signals
            repeats = decoded.inputs.shape[0] // times.shape[0]
            predicted = self.loss_predictor(
                decoded.inputs, decoded.logits, times.repeat(repeats, 1), lengths.repeat(repeats, 1)
            )
        return decoded, predicted

    @staticmethod
    def unmix(branches, mask: torch.Tensor, source_of: torch.Tensor | None):
        """FlowMix branches [2B, L, ...] -> one row per flow [B, L, ...]: a flow's visible tokens from its own branch 1,
        its masked tokens from branch 2 of the flow it was mixed into (`source_of` = argsort(partner_index)).
        Without FlowMix (`source_of` None) the rows are returned as they are."""
        if source_of is None:
            return branches
        batch, length = mask.shape
        first, second = branches[:batch], branches[batch:][source_of]
        selector = mask.view(batch, length, *([1] * (branches.ndim - 2)))
        return torch.where(selector, first, second)

    def compute_loss(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor,
        features: torch.Tensor,
        predicted_token_loss: torch.Tensor | None = None,
        teacher_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """Reconstruction MSE (all tokens or the masked ones), pairwise ranking loss of the loss predictor, distillation
        from the standardised teacher features, and their weighted sum `loss` (plus the detached `token_loss`)."""
        config = self.config
        token_loss = (logits.float() - target.float()).pow(2).mean(dim=-1)
        if config.reconstruction_loss_on == "all":
            reconstruction_loss = token_loss.mean()
        else:
            reconstruction_loss = (token_loss * mask).sum() / mask.sum().clamp(min=1)
        loss = reconstruction_loss

        rank_loss = None
        if predicted_token_loss is not None:
            rank_loss = pairwise_ranking_loss(predicted_token_loss, token_loss.detach())
            loss = loss + config.rank_loss_weight * rank_loss

        distillation_loss = None
        if teacher_features is not None:
            teacher = teacher_features.float()
            if teacher.shape != features.shape:
                raise ValueError(
                    f"teacher_features must have shape {tuple(features.shape)} (teacher_forward(...).features), "
                    f"got {tuple(teacher.shape)}"
                )
            mean = teacher.mean(dim=-1, keepdim=True)
            var = teacher.var(dim=-1, keepdim=True)
            teacher = (teacher - mean) / (var + 1e-6).sqrt()
            cosine = nn.functional.cosine_similarity(teacher, features.float(), dim=config.distillation_cosine_dim)
            distillation_loss = 1.0 - cosine.mean()
            loss = loss + config.distillation_loss_weight * distillation_loss
        return {
            "loss": loss,
            "reconstruction_loss": reconstruction_loss,
            "rank_loss": rank_loss,
            "distillation_loss": distillation_loss,
            "token_loss": token_loss.detach(),
        }

    # ---- teacher -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_forward(
        self,
        input_bytes: torch.Tensor,
        packet_lengths: torch.Tensor | None = None,
        packet_iats: torch.Tensor | None = None,
        packet_directions: torch.Tensor | None = None,
        **kwargs,
    ) -> MMAETeacherOutput:
        """Forward of the (EMA) teacher on the unmasked, unmixed flows: decoder features for the distillation and,
        with guided masking, per-token predicted losses for the same batch."""
        signals = None
        if self.config.use_guided_masking:
            signals = self._packet_signals(
                packet_lengths, packet_iats, packet_directions, input_bytes.shape[0], input_bytes.device
            )
        decoded, predicted = self.decode(self.encode(self.mix(input_bytes)), packet_signals=signals)
        return MMAETeacherOutput(features=decoded.features, predicted_token_loss=predicted, logits=decoded.logits)

    # ---- student -------------------------------------------------------------------------------------------------
    @can_return_tuple
    def forward(
        self,
        input_bytes: torch.Tensor,
        packet_lengths: torch.Tensor | None = None,
        packet_iats: torch.Tensor | None = None,
        packet_directions: torch.Tensor | None = None,
        partner_index: torch.Tensor | None = None,
        mask_noise: torch.Tensor | None = None,
        teacher_features: torch.Tensor | None = None,
        hard_token_scores: torch.Tensor | None = None,
        hard_mask_share: float | torch.Tensor = 0.0,
        **kwargs,
    ) -> MMAEForPreTrainingOutput:
        r"""
        input_bytes (`torch.Tensor` of shape `(B, num_bytes)`, uint8 or integer): raw flow bytes.
        packet_lengths (`(B, num_packets)` int), packet_iats (`(B, num_packets)` float seconds),
        packet_directions (`(B, num_packets)` +1/-1/0): raw per-packet side information for the PMP (zeros if None).
        partner_index (`torch.LongTensor` of shape `(B,)`): FlowMix partner of every flow (a permutation, normally an
            involution from `DataCollatorForFlowMix`). None with FlowMix on: a random pairing is drawn.
        mask_noise (`torch.FloatTensor` of shape `(B, L)`): uniform noise in [0, 1); the largest values are masked.
            None: drawn with `torch.rand`.
        teacher_features (`torch.FloatTensor` of shape `(B, L, D)`): `teacher_forward(...).features` of the mean
            teacher; enables the distillation loss.
        hard_token_scores (`torch.FloatTensor` of shape `(B, L)`): per-token difficulty for guided masking
            (`teacher_forward(...).predicted_token_loss`).
        hard_mask_share (`float` or 0-d `torch.Tensor`): share of the masked set taken from the hardest tokens (curriculum,
            `mmae_hf.pmp.hard_mask_share`).
        Other keyword arguments (e.g. the collator's `flow_stats`, which pairing has already used) are ignored.
        """
        config = self.config
        target = self.mmae.embeddings.normalize(input_bytes)  # also checks the input's shape and dtype
        batch, device = target.shape[0], target.device
        target = target.view(batch, config.num_tokens, config.bytes_per_token)

        if mask_noise is None:
            mask_noise = torch.rand(batch, config.num_tokens, device=device)
        mask, ids_shuffle = self.make_mask(mask_noise.to(device), hard_token_scores, hard_mask_share)
        if config.use_flowmix:
            partner_index = self._pairing(partner_index, batch, device)
            source_of = torch.argsort(partner_index)  # flow j whose partner is i: its branch 2 holds i's visible tokens
            keep_index = None
        else:
            partner_index = source_of = None
            keep_index = ids_shuffle[:, : config.num_tokens - config.num_masked_tokens]

        latent = self.encode(self.mix(input_bytes, mask, partner_index, keep_index))
        signals = None
        if self.loss_predictor is not None:
            signals = self._packet_signals(packet_lengths, packet_iats, packet_directions, batch, device)
        decoded, predicted = self.decode(latent, mask if config.use_flowmix else None, keep_index, signals)
        logits = self.unmix(decoded.logits, mask, source_of)
        features = self.unmix(decoded.features, mask, source_of)
        predicted_token_loss = None if predicted is None else self.unmix(predicted, mask, source_of)
        losses = self.compute_loss(logits, target, mask, features, predicted_token_loss, teacher_features)
        return MMAEForPreTrainingOutput(
            **losses,
            logits=logits,
            mask=mask,
            predicted_token_loss=predicted_token_loss,
            decoder_features=features,
            partner_index=partner_index,
        )


def _random_pairing(batch: int, device) -> torch.Tensor:
    """A random involution: consecutive flows of a random order are partners (an odd one out is its own partner)."""
    order = torch.randperm(batch, device=device)
    partner = torch.arange(batch, device=device)
    even = batch - batch % 2
    partner[order[0:even:2]] = order[1:even:2]
    partner[order[1:even:2]] = order[0:even:2]
    return partner


class MMAEForSequenceClassification(MMAEPreTrainedModel):
    """MMAE encoder with a linear classifier on the CLS output (official head, no final LayerNorm) or, with
    `config.classifier_pooling="mean"`, on the mean of the byte-token outputs."""

    def __init__(self, config: MMAEConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mmae = MMAEModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)  # type: ignore[arg-type]
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_bytes: torch.Tensor,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutput:
        r"""
        input_bytes (`torch.Tensor` of shape `(B, num_bytes)`, uint8 or integer): raw flow bytes.
        labels (`torch.LongTensor` of shape `(B,)`, *optional*): class ids; gives the cross-entropy `loss`.

        Returns `SequenceClassifierOutput` with `logits` [B, num_labels] (and the encoder's `hidden_states` /
        `attentions` when asked for).
        """
        outputs = self.mmae(input_bytes, return_dict=True, **kwargs)
        if getattr(self.config, "classifier_pooling", "cls") == "mean":  # (configs saved before the option: "cls")
            pooled = outputs.last_hidden_state[:, 1:].mean(dim=1)
        else:
            pooled = outputs.pooler_output
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "MMAEForPreTraining",
    "MMAEForPreTrainingOutput",
    "MMAEForSequenceClassification",
    "MMAEModel",
    "MMAEPreTrainedModel",
    "MMAETeacherOutput",
    "normalize_bytes",
    "pairwise_ranking_loss",
    "set_auto_map",
]
