# Copyright 2026 The mmae-hf authors. Licensed under the Apache License, Version 2.0.
"""PMP: packet-importance aware mask predictor.

The PMP turns per-packet side information (arrival times and lengths of the first packets) and the current byte
predictions into an additive attention bias for the loss-prediction decoder (method.md §3 "PMP"). The loss predictor
estimates, per token, how hard the token is to reconstruct; guided masking then masks the hardest tokens first.

Shipped with saved models (trust_remote_code): imports only torch.

Fixed input transforms (nothing fitted on data):

- inter-arrival time `iat` in seconds -> `clip(log10(1 + iat * 1e6) / 8, 0, 1)` (1 us .. 100 s on a log scale),
- IP total length `len` -> `min(len, 1500) / 1500`, times the packet direction (+1 / -1) when
  `config.pmp_use_directions` (absent packets have length 0 and stay 0).
"""

import math

import torch
from torch import nn


def scale_packet_iats(packet_iats: torch.Tensor) -> torch.Tensor:
    """Inter-arrival times in seconds [B, P] -> values in [0, 1] (log10 of microseconds / 8)."""
    iat_us = packet_iats.float().clamp(min=0.0) * 1e6
    return (torch.log10(1.0 + iat_us) / 8.0).clamp(0.0, 1.0)


def scale_packet_lengths(packet_lengths: torch.Tensor, packet_directions: torch.Tensor | None = None) -> torch.Tensor:
    """IP total lengths [B, P] (optionally signed by direction) -> values in [-1, 1]."""
    lengths = packet_lengths.float().clamp(0.0, 1500.0) / 1500.0
    if packet_directions is not None:
        lengths = lengths * packet_directions.float().sign()
    return lengths


def hard_mask_share(step: int, total_steps: int, max_share: float) -> float:
    """Curriculum of guided masking: the share of the masked set chosen as hard tokens rises linearly from 0 at
    step 0 to `max_share` at `total_steps` (and stays there)."""
    if total_steps <= 0:
        return float(max_share)
    return float(max_share) * min(max(step, 0) / total_steps, 1.0)


class MMAEPacketSignalConv(nn.Conv1d):
    """Conv1d(1 -> embed_dim, kernel = stride = bytes_per_token) applied to a signal that is constant inside every
    token: that convolution equals `value * weight.sum(-1) + bias`, which is what `forward` computes
    (token values [N, L] -> [N, L, E]; no 1600-long signal is materialised). Its own forward, so that the weight is
    only read where device-map / offload hooks have placed it."""

    def forward(self, token_values: torch.Tensor) -> torch.Tensor:
        return token_values.unsqueeze(-1) * self.weight.sum(dim=(1, 2)) + self.bias  # type: ignore[operator]


class MMAEPacketSignalEmbedding(nn.Module):
    """Embeds one per-packet scalar signal as per-token vectors.

    The official model repeats each packet's value over its bytes and runs a stride-`bytes_per_token` Conv1d
    (`MMAEPacketSignalConv` computes the same without the repetition). The parameter keeps the convolution's shape for
    checkpoint compatibility.
    """

    def __init__(self, embed_dim: int, bytes_per_token: int):
        super().__init__()
        self.proj = MMAEPacketSignalConv(1, embed_dim, kernel_size=bytes_per_token, stride=bytes_per_token)

    def forward(self, token_values: torch.Tensor) -> torch.Tensor:
        # token_values: [N, L] -> [N, L, E]
        return self.proj(token_values)


class MMAEPacketMaskPredictor(nn.Module):
    """The PMP attention bias (method.md §3, "loss_predictor_router" in the official code; sub-module names kept).

    forward(query [N, L, P] byte predictions, packet_times [N, num_packets], packet_lengths [N, num_packets]) returns
    an additive attention bias [N, 1, L, L] (broadcast over heads; optionally with zero rows/columns in front for a CLS
    token), clamped to +-`pmp_bias_clamp`:

    1. packet context m = GELU(LN(Linear(cat(time_emb + time_pos, len_emb + len_pos)))) per token,
    2. two rank-r maps D_sup = u_sup v_sup^T / sqrt(r), D_del = u_del v_del^T / sqrt(r) from z = MLP(m),
    3. a gate p = sigmoid((W_a g)(W_b g)^T) from g = [mean positive cosine of the token's prediction with the other
       tokens' (no gradient), Linear(||q||), Linear(m)],
    4. bias = p * (-softplus(gamma_sup)) * D_sup + (1 - p) * softplus(gamma_del) * D_del.
    """

    def __init__(self, config):
        super().__init__()
        e = config.pmp_embed_dim
        self.num_tokens = config.num_tokens
        self.tokens_per_packet = config.tokens_per_packet
        self.rank = config.pmp_rank
        self.clamp = float(config.pmp_bias_clamp)
        self.time_embedder = MMAEPacketSignalEmbedding(e, config.bytes_per_token)
        self.len_embedder = MMAEPacketSignalEmbedding(e, config.bytes_per_token)
        self.time_pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, e))
        self.len_pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, e))
        self.stat_fusion = nn.Sequential(
            nn.Linear(2 * e, 2 * e), nn.LayerNorm(2 * e, eps=config.layer_norm_eps), nn.GELU()
        )
        self.router_phi = nn.Sequential(
            nn.Linear(2 * e, config.pmp_router_hidden_size),
            nn.GELU(),
            nn.Linear(config.pmp_router_hidden_size, self.rank),
        )
        self.router_U_sup = nn.Linear(self.rank, self.rank, bias=False)
        self.router_V_sup = nn.Linear(self.rank, self.rank, bias=False)
        self.router_U_del = nn.Linear(self.rank, self.rank, bias=False)
        self.router_V_del = nn.Linear(self.rank, self.rank, bias=False)
        self.router_gamma_sup = nn.Parameter(torch.zeros(()))
        self.router_gamma_del = nn.Parameter(torch.zeros(()))
        self.stat_to_gate = nn.Linear(2 * e, config.pmp_gate_stat_dim)
        self.norm_to_saliency = nn.Linear(1, config.pmp_saliency_dim)
        gate_in = 1 + config.pmp_saliency_dim + config.pmp_gate_stat_dim
        self.selector_a = nn.Linear(gate_in, config.pmp_gate_dim, bias=False)
        self.selector_b = nn.Linear(gate_in, config.pmp_gate_dim, bias=False)

    def packet_context(self, packet_times: torch.Tensor, packet_lengths: torch.Tensor) -> torch.Tensor:
        """Per-token packet context m [N, L, 2E]: every token sees its packet's time and length."""
        times = packet_times.repeat_interleave(self.tokens_per_packet, dim=1)
        lengths = packet_lengths.repeat_interleave(self.tokens_per_packet, dim=1)
        t = self.time_embedder(times) + self.time_pos_embed
        l = self.len_embedder(lengths) + self.len_pos_embed
        return self.stat_fusion(torch.cat([t, l], dim=-1))

    def forward(
        self,
        query: torch.Tensor,
        packet_times: torch.Tensor,
        packet_lengths: torch.Tensor,
        num_prefix_tokens: int = 0,
    ) -> torch.Tensor:
        """query [N, L, P], packet_* [N, num_packets] -> bias [N, 1, T + L, T + L] with T = `num_prefix_tokens`
        leading rows and columns of zeros (for a CLS token that gets no bias)."""
        dtype = query.dtype
        m = self.packet_context(packet_times.to(dtype), packet_lengths.to(dtype))
        z = self.router_phi(m)
        scale = 1.0 / math.sqrt(self.rank)
        # The scalar factors are folded into the [N, L, r] factors instead of the [N, L, L] maps (same values).
        support = -nn.functional.softplus(self.router_gamma_sup) * scale
        suppress = nn.functional.softplus(self.router_gamma_del) * scale

        with torch.no_grad():
            # mean over the OTHER tokens of ReLU(cos(q_i, q_j)); the diagonal term is ReLU(cos(q_i, q_i)) = 1 (0 for a
            # zero vector), removed after the sum.
            q_unit = nn.functional.normalize(query.float(), dim=-1)
            cos = torch.matmul(q_unit, q_unit.transpose(1, 2)).clamp_(min=0.0)
            self_cos = (q_unit * q_unit).sum(-1).clamp(min=0.0)
            similarity = ((cos.sum(-1) - self_cos) / max(query.shape[1] - 1, 1)).to(dtype)
            del cos
        saliency = self.norm_to_saliency(query.norm(dim=-1, keepdim=True))
        gate_features = torch.cat([similarity.unsqueeze(-1), saliency, self.stat_to_gate(m)], dim=-1)

        factors = [
            self.router_U_sup(z) * support,
            self.router_V_sup(z),
            self.router_U_del(z) * suppress,
            self.router_V_del(z),
            self.selector_a(gate_features),
            self.selector_b(gate_features),
        ]
        if num_prefix_tokens:
            # zero rows in front: the low-rank maps (hence the bias) are exactly 0 in the prefix rows and columns
            factors = [nn.functional.pad(f, (0, 0, num_prefix_tokens, 0)) for f in factors]
        u_sup, v_sup, u_del, v_del, gate_a, gate_b = factors
        d_sup = torch.matmul(u_sup, v_sup.transpose(1, 2))
        d_del = torch.matmul(u_del, v_del.transpose(1, 2))
        gate = torch.sigmoid(torch.matmul(gate_a, gate_b.transpose(1, 2)))
        # gate * support * D_sup + (1 - gate) * suppress * D_del
        bias = torch.lerp(d_del, d_sup, gate)
        return bias.clamp(-self.clamp, self.clamp).unsqueeze(1)


__all__ = [
    "MMAEPacketMaskPredictor",
    "MMAEPacketSignalEmbedding",
    "hard_mask_share",
    "scale_packet_iats",
    "scale_packet_lengths",
]
