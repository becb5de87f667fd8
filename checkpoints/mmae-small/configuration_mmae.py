# Copyright 2026 The mmae-hf authors. Licensed under the Apache License, Version 2.0.
"""MMAE model configuration.

This module is shipped with saved models for `trust_remote_code` loading: it imports only torch-free
`transformers` / `huggingface_hub` code and must not use `from __future__ import annotations`
(that silently disables the strict dataclass validation of v5 configs).
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


PRESETS = {
    # The official MMAE architecture (lx6c78/MMAE, commit 9511f43); see docs / method.md §3.
    "mmae-base": {},
    # A small model for CPU tests and demos: pre-trains a few hundred steps on 2 CPU cores in minutes. Its tokens are
    # 16 bytes wide (100 tokens per flow instead of 400): the token-pair costs (attention, PMP bias, ranking loss)
    # dominate a small model, and they fall 16-fold. The byte layout (1600 bytes) is the same as mmae-base.
    "mmae-tiny": {
        "bytes_per_token": 16,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 256,
        "drop_path_rate": 0.1,
        "decoder_hidden_size": 32,
        "decoder_num_hidden_layers": 1,
        "decoder_num_attention_heads": 4,
        "decoder_intermediate_size": 128,
        "loss_predictor_num_hidden_layers": 1,
        "pmp_embed_dim": 16,
        "pmp_router_hidden_size": 16,
        "pmp_rank": 8,
        "pmp_saliency_dim": 4,
        "pmp_gate_stat_dim": 8,
        "pmp_gate_dim": 8,
    },
    # The CPU pre-training preset: what 2 CPU cores pre-train in about 2 hours (6,000 steps of 64 flows). 4 x 128 wide
    # encoder on 16-byte tokens. It carries the recipe the diagnostics chose on validation (docs/pretraining.md):
    # half the tokens masked (90 % left the encoder no context to read: held-out reconstruction was worse than the
    # mean byte of each position) and random rather than loss-guided masking (guided masking keeps the header tokens
    # masked for the whole second half of training, so the encoder rarely sees them as input).
    "mmae-small": {
        "bytes_per_token": 16,
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "drop_path_rate": 0.1,
        "decoder_hidden_size": 64,
        "decoder_num_hidden_layers": 1,
        "decoder_num_attention_heads": 4,
        "decoder_intermediate_size": 256,
        "loss_predictor_num_hidden_layers": 1,
        "pmp_embed_dim": 16,
        "pmp_router_hidden_size": 16,
        "pmp_rank": 8,
        "pmp_saliency_dim": 4,
        "pmp_gate_stat_dim": 8,
        "pmp_gate_dim": 8,
        "mask_ratio": 0.5,
        "use_guided_masking": False,
    },
}


@strict
class MMAEConfig(PreTrainedConfig):
    r"""
    Configuration of an MMAE model (Mean Masked Autoencoder with Flow-Mixing for encrypted traffic). The defaults
    give the official architecture ("mmae-base"); `MMAEConfig.from_preset("mmae-tiny")` gives a small CPU model.

    Byte layout (shared with the data contract and the feature extractor):

    num_packets (`int`, *optional*, defaults to 5):
        Number of leading packets of a flow in one sample.
    header_bytes (`int`, *optional*, defaults to 80):
        Bytes kept per packet from the IP header on (cut / zero-padded).
    payload_bytes (`int`, *optional*, defaults to 240):
        Bytes of L4 payload kept per packet (cut / zero-padded).
    bytes_per_token (`int`, *optional*, defaults to 4):
        Consecutive bytes that form one token (kernel and stride of the byte "patch" convolution).
        `num_bytes = num_packets * (header_bytes + payload_bytes)` (1600) and `num_tokens = num_bytes / bytes_per_token`
        (400); `header_bytes + payload_bytes` must be a multiple of `bytes_per_token`.
    num_flow_stats (`int`, *optional*, defaults to 27):
        Number of per-flow statistics (`flow_stats` column) used by FlowMix to pair similar flows.

    Encoder (a pre-norm ViT over the byte tokens plus a CLS token; no final LayerNorm, as the official model):

    hidden_size (`int`, *optional*, defaults to 256):
        Width of the encoder.
    num_hidden_layers (`int`, *optional*, defaults to 7):
        Number of encoder blocks.
    num_attention_heads (`int`, *optional*, defaults to 8):
        Attention heads per encoder block.
    intermediate_size (`int`, *optional*, defaults to 1024):
        Hidden width of the encoder MLPs.
    hidden_act (`str`, *optional*, defaults to `"gelu"`):
        MLP activation (exact GELU as the official `nn.GELU`).
    qkv_bias (`bool`, *optional*, defaults to `True`):
        Bias in the fused query/key/value projections (encoder and decoders).
    drop_path_rate (`float`, *optional*, defaults to 0.2):
        Stochastic depth: block `i` of `n` drops its residual branches with probability
        `drop_path_rate * i / (n - 1)` in training (official: linspace(0, 0.2, 7), hard-coded there).
    layer_norm_eps (`float`, *optional*, defaults to 1e-5):
        Epsilon of every LayerNorm (torch's default, as the official `nn.LayerNorm` without eps argument).
    initializer_range (`float`, *optional*, defaults to 0.02):
        Std of the truncated-normal position embeddings and the normal CLS / mask tokens. Linear layers use
        xavier-uniform (bias 0) as the official initialisation.

    Pre-training decoder (MAE-style, also used to "unmix" FlowMix):

    decoder_hidden_size (`int`, *optional*, defaults to 128):
        Width of the reconstruction decoder and of the loss-prediction decoder.
    decoder_num_hidden_layers (`int`, *optional*, defaults to 2):
        Blocks of the reconstruction decoder.
    decoder_num_attention_heads (`int`, *optional*, defaults to 8):
        Heads of the decoder blocks (reconstruction and loss prediction).
    decoder_intermediate_size (`int`, *optional*, defaults to 512):
        MLP width of the decoder blocks (reconstruction and loss prediction).
    loss_predictor_num_hidden_layers (`int`, *optional*, defaults to 2):
        Blocks of the loss-prediction decoder (same width as the reconstruction decoder).

    PMP (packet-importance aware mask predictor; attention bias of the loss-prediction decoder, `pmp.py`):

    pmp_embed_dim (`int`, *optional*, defaults to 64):
        Width of the per-token time embedding and of the length embedding (concatenated: 2x).
    pmp_router_hidden_size (`int`, *optional*, defaults to 64):
        Hidden width of the router MLP that maps the packet context to the low-rank factors.
    pmp_rank (`int`, *optional*, defaults to 16):
        Rank of the two low-rank bias maps ("support" and "suppress").
    pmp_saliency_dim (`int`, *optional*, defaults to 8):
        Width of the gate feature computed from the norm of each token's predicted bytes.
    pmp_gate_stat_dim (`int`, *optional*, defaults to 16):
        Width of the gate feature computed from the packet context.
    pmp_gate_dim (`int`, *optional*, defaults to 32):
        Width of the bilinear gate projections.
    pmp_bias_clamp (`float`, *optional*, defaults to 5.0):
        The attention bias is clamped to `[-pmp_bias_clamp, pmp_bias_clamp]`.
    pmp_use_directions (`bool`, *optional*, defaults to `True`):
        Sign the packet-length signal with the packet direction (+1 initiator->responder, -1 back). The official
        model had no direction input (unidirectional flows); set `False` to feed unsigned lengths.

    Pre-training objective:

    mask_ratio (`float`, *optional*, defaults to 0.9):
        Fraction of tokens replaced (FlowMix) or masked (plain MAE). Kept tokens = `int(num_tokens * (1 - mask_ratio))`
        exactly as the official code (39 of 400, so 361 are masked).
    rank_loss_weight (`float`, *optional*, defaults to 0.1):
        Weight of the pairwise ranking loss of the loss predictor.
    distillation_loss_weight (`float`, *optional*, defaults to 1.0):
        Weight of the mean-teacher feature distillation loss.
    use_flowmix (`bool`, *optional*, defaults to `True`):
        Mix the tokens of paired flows (FlowMix) and decode both branches. `False` gives a plain random-masking MAE
        (the encoder sees only the kept tokens).
    flowmix_pairing (`str`, *optional*, defaults to `"similar"`):
        How `DataCollatorForFlowMix` pairs flows: `"similar"` (official: greedy most-similar flow statistics) or
        `"random"` (a random partner, as MixMAE). Tokens are mixed position by position, so a look-alike partner
        puts near-copies of a flow's own header bytes into its masked positions (measured in
        `benchmarks/diagnose_pretraining.py`: reconstruction leans on them).
    use_teacher (`bool`, *optional*, defaults to `True`):
        Train with a mean teacher (read by the training script; the model adds the distillation loss whenever
        `teacher_features` are passed).
    use_loss_predictor (`bool`, *optional*, defaults to `True`):
        Train the loss-prediction decoder with the ranking loss (HPM style). Required by guided masking.
    use_pmp (`bool`, *optional*, defaults to `True`):
        Add the PMP attention bias in the loss-prediction decoder. `False` runs that decoder without bias.
    use_guided_masking (`bool`, *optional*, defaults to `True`):
        Mask the tokens with the highest predicted loss first (a curriculum share of the masked set, see
        `hard_mask_max_share`). This is dead in the official code (always random masking); `False` reproduces it.
    hard_mask_max_share (`float`, *optional*, defaults to 0.5):
        Final share of the masked set chosen as "hard" tokens; the share rises linearly from 0 over training
        (`mmae_hf.pmp.hard_mask_share`). 0.5 as in HPM.
    reconstruction_loss_on (`str`, *optional*, defaults to `"all"`):
        `"all"`: mean squared error over all tokens (official); `"masked"`: only the masked / replaced tokens.
    distillation_cosine_dim (`int`, *optional*, defaults to 1):
        Axis of the cosine similarity between teacher and student decoder features ([batch, tokens, channels]).
        1 = over the token axis per channel (official, torch's default `dim=1`); -1 = per token over channels.
    decoder_cls_from_first_patch (`bool`, *optional*, defaults to `True`):
        Official quirk: the student decoder's position 0 receives the first patch token instead of the CLS token.
        `False` uses the CLS token.

    Classification:

    classifier_pooling (`str`, *optional*, defaults to `"cls"`):
        What the sequence-classification head reads: `"cls"` (the CLS output, the official head) or `"mean"` (the mean
        of the byte-token outputs). Pre-training never trains the CLS output (no loss reads it; the official student
        decoder does not even see it), so on a pre-trained encoder the mean of the tokens is the representation the
        objective shaped (measured in docs/pretraining.md).

    Inference:

    ood_threshold (`float`, *optional*):
        Max-softmax probability below which the pipeline reports a flow as "unknown" (calibrated on validation).

    Example:

    ```python
    >>> from mmae_hf import MMAEConfig, MMAEModel
    >>> config = MMAEConfig.from_preset("mmae-tiny")
    >>> model = MMAEModel(config)
    ```"""

    model_type = "mmae"

    num_packets: int = 5
    header_bytes: int = 80
    payload_bytes: int = 240
    bytes_per_token: int = 4
    num_flow_stats: int = 27

    hidden_size: int = 256
    num_hidden_layers: int = 7
    num_attention_heads: int = 8
    intermediate_size: int = 1024
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    drop_path_rate: float | int = 0.2
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    decoder_hidden_size: int = 128
    decoder_num_hidden_layers: int = 2
    decoder_num_attention_heads: int = 8
    decoder_intermediate_size: int = 512
    loss_predictor_num_hidden_layers: int = 2

    pmp_embed_dim: int = 64
    pmp_router_hidden_size: int = 64
    pmp_rank: int = 16
    pmp_saliency_dim: int = 8
    pmp_gate_stat_dim: int = 16
    pmp_gate_dim: int = 32
    pmp_bias_clamp: float | int = 5.0
    pmp_use_directions: bool = True

    mask_ratio: float | int = 0.9
    rank_loss_weight: float | int = 0.1
    distillation_loss_weight: float | int = 1.0
    use_flowmix: bool = True
    flowmix_pairing: str = "similar"
    use_teacher: bool = True
    use_loss_predictor: bool = True
    use_pmp: bool = True
    use_guided_masking: bool = True
    hard_mask_max_share: float | int = 0.5
    reconstruction_loss_on: str = "all"
    distillation_cosine_dim: int = 1
    decoder_cls_from_first_patch: bool = True

    classifier_pooling: str = "cls"
    ood_threshold: float | None = None

    def __post_init__(self, **kwargs):
        # The `validate_*` checks below run on every construction (here, so that a bad value raises a plain
        # ValueError naming it) and again on every save: huggingface_hub's strict dataclass `validate()`, called by
        # `save_pretrained`, runs all of them, so a config changed after construction cannot be saved broken.
        for name in _MMAE_VALIDATORS:
            getattr(self, name)()
        super().__post_init__(**kwargs)
        if type(self).__module__.startswith("mmae_hf."):  # installed (not remote code): use the registered pipeline
            from .custom_pipelines import mark_registered

            mark_registered(self)

    def validate_byte_layout(self):
        """Packets, bytes and tokens fit together: every token lies inside one packet."""
        packet_bytes = self.header_bytes + self.payload_bytes
        if min(self.num_packets, packet_bytes, self.bytes_per_token) <= 0:
            raise ValueError("num_packets, header_bytes + payload_bytes and bytes_per_token must be positive")
        if packet_bytes % self.bytes_per_token:
            raise ValueError(
                f"header_bytes + payload_bytes ({packet_bytes}) must be a multiple of bytes_per_token "
                f"({self.bytes_per_token}) so that every token lies inside one packet"
            )

    def validate_attention_heads(self):
        """Widths split evenly over the attention heads (encoder and decoders)."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.decoder_hidden_size % self.decoder_num_attention_heads:
            raise ValueError(
                f"decoder_hidden_size ({self.decoder_hidden_size}) must be divisible by "
                f"decoder_num_attention_heads ({self.decoder_num_attention_heads})"
            )

    def validate_pretraining_objective(self):
        """Ratios in range and switches that fit together."""
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.hard_mask_max_share <= 1.0:
            raise ValueError(f"hard_mask_max_share must be in [0, 1], got {self.hard_mask_max_share}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.reconstruction_loss_on not in ("all", "masked"):
            raise ValueError(f"reconstruction_loss_on must be 'all' or 'masked', got {self.reconstruction_loss_on!r}")
        if self.distillation_cosine_dim not in (1, -1, 2):
            raise ValueError(
                f"distillation_cosine_dim must be 1 (token axis, official) or -1 (channel axis), "
                f"got {self.distillation_cosine_dim}"
            )
        if self.flowmix_pairing not in ("similar", "random"):
            raise ValueError(f"flowmix_pairing must be 'similar' or 'random', got {self.flowmix_pairing!r}")
        if self.use_guided_masking and not self.use_loss_predictor:
            raise ValueError("use_guided_masking=True needs use_loss_predictor=True (the hard tokens are predicted)")

    def validate_classifier_pooling(self):
        """The classification head reads the CLS output or the mean of the token outputs."""
        if self.classifier_pooling not in ("cls", "mean"):
            raise ValueError(f"classifier_pooling must be 'cls' or 'mean', got {self.classifier_pooling!r}")

    def validate_ood_threshold(self):
        """The out-of-distribution threshold is a probability (or not calibrated)."""
        if self.ood_threshold is not None and not 0.0 <= self.ood_threshold <= 1.0:
            raise ValueError(f"ood_threshold must be a probability in [0, 1] or None, got {self.ood_threshold}")

    @property
    def num_bytes(self) -> int:
        """Input bytes per flow: `num_packets * (header_bytes + payload_bytes)` (1600)."""
        return self.num_packets * (self.header_bytes + self.payload_bytes)

    @property
    def num_tokens(self) -> int:
        """Byte tokens per flow, without the CLS token (400)."""
        return self.num_bytes // self.bytes_per_token

    @property
    def tokens_per_packet(self) -> int:
        """Tokens of one packet (80); token `t` belongs to packet `t // tokens_per_packet`."""
        return (self.header_bytes + self.payload_bytes) // self.bytes_per_token

    @property
    def num_masked_tokens(self) -> int:
        """Tokens masked / replaced per flow: `num_tokens - int(num_tokens * (1 - mask_ratio))` (361 of 400)."""
        return self.num_tokens - int(self.num_tokens * (1 - self.mask_ratio))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MMAEConfig":
        """Build a config from a named preset (`"mmae-base"`, `"mmae-tiny"`), with keyword overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown MMAE preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


_MMAE_VALIDATORS = (
    "validate_byte_layout",
    "validate_attention_heads",
    "validate_pretraining_objective",
    "validate_classifier_pooling",
    "validate_ood_threshold",
)

__all__ = ["MMAEConfig", "PRESETS"]
