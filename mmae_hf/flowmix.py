# Copyright 2026 The mmae-hf authors. Licensed under the Apache License, Version 2.0.
"""FlowMix batching: stack data-contract rows, pair every flow with a similar partner, draw the mask noise.

Pairing (method.md §4.1, official `get_symmetric_pairing`): greedy most-similar-first symmetric matching on the cosine
similarity of the flows' statistics. The official code embeds the 27 statistics with a StatEncoder whose parameters
never receive gradients (a fixed random map behind a batch-statistics BatchNorm); we use the batch-standardised,
signed-log statistics directly (the BatchNorm part, without the random projection), so nothing is fitted on data.

The matching is computed with the "locally dominant edge" rounds: in every round each unpaired flow points at its
most similar unpaired flow, and mutual choices are paired. Every mutual choice is an edge the sequential greedy
algorithm would also take, so the result equals greedy most-similar-first matching (for distinct similarities), in a
handful of vectorised rounds instead of B/2 global argmax steps. With an odd batch the one flow left over is its own
partner (no mixing for it: its "masked" tokens stay its own tokens).
"""

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .data_contract import BYTE_COLUMN, FLOW_ARRAY_COLUMNS, LEGACY_COLUMN_NAMES, contract_name


# the data contract's side-channel columns and their dtypes (the byte column is stacked as uint8)
PER_PACKET_COLUMNS = {name: getattr(torch, dtype) for name, dtype in FLOW_ARRAY_COLUMNS.items() if name != BYTE_COLUMN}


def transform_flow_stats(flow_stats: torch.Tensor) -> torch.Tensor:
    """Fixed transform of raw statistics [B, S] before pairing: signed log1p, then standardised over the batch (as the
    official BatchNorm in train mode); non-finite values count as 0."""
    x = torch.nan_to_num(flow_stats.double(), nan=0.0, posinf=0.0, neginf=0.0)
    x = torch.sign(x) * torch.log1p(x.abs())
    x = x - x.mean(dim=0, keepdim=True)
    return x / (x.var(dim=0, unbiased=False, keepdim=True) + 1e-5).sqrt()


def greedy_symmetric_pairing(features: torch.Tensor) -> torch.Tensor:
    """Greedy most-similar-first perfect matching on the cosine similarity of `features` [B, F].

    Returns `partner` [B] (long), an involution: `partner[partner] == arange(B)`; flows are never their own partner
    except the single leftover of an odd batch.
    """
    batch = features.shape[0]
    partner = torch.arange(batch, device=features.device)
    if batch < 2:
        return partner
    unit = torch.nn.functional.normalize(features.double(), dim=1)
    sim = unit @ unit.T
    sim.fill_diagonal_(float("-inf"))
    free = torch.arange(batch, device=features.device)  # unpaired flows; the similarity matrix shrinks with them
    while free.numel() >= 2:
        sub = sim[free][:, free]
        best = sub.argmax(dim=1)
        local = torch.arange(free.numel(), device=features.device)
        mutual = best[best] == local
        if not bool(mutual.any()):
            # Only possible with ties: take the global best pair, like one step of the sequential algorithm.
            r, c = divmod(int(sub.argmax()), free.numel())
            mutual = torch.zeros_like(mutual)
            mutual[r] = mutual[c] = True
            best = best.clone()
            best[r], best[c] = c, r
        partner[free[mutual]] = free[best[mutual]]
        free = free[~mutual]
    return partner


def random_pairing(batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random involution: consecutive flows of a random order are partners (an odd one out is its own partner)."""
    order = torch.randperm(batch, generator=generator)
    partner = torch.arange(batch)
    even = batch - batch % 2
    partner[order[0:even:2]] = order[1:even:2]
    partner[order[1:even:2]] = order[0:even:2]
    return partner


def _stack(values, dtype: torch.dtype, name: str) -> torch.Tensor:
    try:
        if isinstance(values[0], torch.Tensor):
            return torch.stack([v.to(dtype) for v in values])
        return torch.from_numpy(np.stack([np.asarray(v) for v in values])).to(dtype)
    except (ValueError, RuntimeError, TypeError) as error:
        raise ValueError(f"column {name!r}: rows cannot be stacked into one tensor ({error})") from error


class DataCollatorForFlowMix:
    """Collates data-contract rows for `MMAEForPreTraining`.

    Args:
        config: an `MMAEConfig` (byte layout, token count).
        seed: seed of the collator's own `torch.Generator` (pairing ties, mask noise). With DataLoader workers every
            worker derives its own stream (`seed + 1_000_003 * worker_id`), so workers never repeat each other.
        use_flowmix: compute `partner_index` (False: plain MAE batches, no pairing).

    `__call__(rows)` takes a list of dicts with `input_bytes`, `packet_lengths`, `packet_iats`,
    `packet_directions`, `flow_stats` (numpy arrays, lists or tensors; optional `label`/`labels`) and returns
    `input_bytes` [B, num_bytes] uint8, `packet_lengths` [B, P] int32, `packet_iats` [B, P] float32,
    `packet_directions` [B, P] int8, `flow_stats` [B, S] float32, `partner_index` [B] long (with FlowMix),
    `mask_noise` [B, num_tokens] float32 in [0, 1), and `labels` [B] long when the rows carry labels.
    """

    def __init__(self, config, seed: int | None = None, use_flowmix: bool = True):
        self.config = config
        self.seed = seed
        self.use_flowmix = use_flowmix
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()
        self._worker_id = None

    def _maybe_reseed_for_worker(self):
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker_id != info.id:
            self._worker_id = info.id
            base = self.seed if self.seed is not None else int(info.seed)
            self.generator.manual_seed(base + 1_000_003 * info.id)

    def __call__(self, rows: Sequence[Mapping]) -> dict:
        if len(rows) == 0:
            raise ValueError("DataCollatorForFlowMix got an empty batch")
        self._maybe_reseed_for_worker()
        first = rows[0]
        byte_key = next((key for key in first if contract_name(key) == BYTE_COLUMN), None)
        if byte_key is None:
            old = " or ".join(repr(name) for name in LEGACY_COLUMN_NAMES)
            raise ValueError(f"rows need an {BYTE_COLUMN!r} column (old name {old}); got columns {sorted(first)}")
        input_bytes = _stack([r[byte_key] for r in rows], torch.uint8, byte_key)
        if input_bytes.shape[1] != self.config.num_bytes:
            raise ValueError(
                f"{byte_key!r} rows have {input_bytes.shape[1]} bytes, the model expects {self.config.num_bytes}"
            )
        batch = {BYTE_COLUMN: input_bytes}
        for name, dtype in PER_PACKET_COLUMNS.items():
            if name in first:
                batch[name] = _stack([r[name] for r in rows], dtype, name)
        label_key = "labels" if "labels" in first else ("label" if "label" in first else None)
        if label_key is not None:
            batch["labels"] = torch.as_tensor([int(r[label_key]) for r in rows], dtype=torch.long)
        size = input_bytes.shape[0]
        if self.use_flowmix:
            if getattr(self.config, "flowmix_pairing", "similar") == "random":
                batch["partner_index"] = random_pairing(size, self.generator)
            elif "flow_stats" in batch:
                batch["partner_index"] = greedy_symmetric_pairing(transform_flow_stats(batch["flow_stats"]))
            else:
                raise ValueError("FlowMix pairing needs the 'flow_stats' column (or use_flowmix=False)")
        batch["mask_noise"] = torch.rand(size, self.config.num_tokens, generator=self.generator)
        return batch


__all__ = ["DataCollatorForFlowMix", "greedy_symmetric_pairing", "random_pairing", "transform_flow_stats"]
