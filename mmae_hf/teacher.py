# Copyright 2026 The mmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Mean teacher for MMAE self-distillation.

Fixes against the official code (method.md §6/§8): the teacher starts as a COPY of the student (officially its own
random init), stays in eval mode (officially train mode, so stochastic depth was active in the teacher), and is updated
in place with fused `torch._foreach` ops (officially a deep copy of the whole teacher every step). The momentum
follows a per-STEP cosine schedule from `momentum_start` to `momentum_end` over `total_steps` (officially a per-epoch
schedule indexed by the epoch but applied every step).
"""

import copy
import math

import torch
from torch import nn


class MeanTeacher:
    """EMA copy of a student model.

    Args:
        student: the model being trained (e.g. `MMAEForPreTraining`; a DDP wrapper is unwrapped via `.module`).
        momentum_start, momentum_end: cosine schedule of the EMA momentum m (teacher <- m * teacher + (1 - m) * student).
        total_steps: optimizer steps over which the momentum goes from start to end (it stays at the end after).

    `.model` is the teacher (eval mode, no gradients). `update(student, step)` applies one EMA step with
    `momentum(step)`. Floating buffers are copied from the student (there are none in MMAE), other buffers kept.
    `state_dict()` / `load_state_dict()` make it checkpointable (e.g. `accelerator.register_for_checkpointing`).
    """

    def __init__(
        self, student: nn.Module, momentum_start: float = 0.96, momentum_end: float = 0.99, total_steps: int = 1
    ):
        if not 0.0 <= momentum_start <= 1.0 or not 0.0 <= momentum_end <= 1.0:
            raise ValueError(f"momenta must be in [0, 1], got {momentum_start}, {momentum_end}")
        student = getattr(student, "module", student)
        self.model = copy.deepcopy(student)
        self.model.eval()
        self.model.requires_grad_(False)
        self.momentum_start = float(momentum_start)
        self.momentum_end = float(momentum_end)
        self.total_steps = max(int(total_steps), 1)

    def momentum(self, step: int) -> float:
        """Cosine schedule: momentum_start at step 0, momentum_end at `total_steps` and after."""
        progress = min(max(step, 0) / self.total_steps, 1.0)
        return self.momentum_end - (self.momentum_end - self.momentum_start) * (math.cos(math.pi * progress) + 1) / 2

    def _tensor_lists(self, student: nn.Module):
        teacher_params, student_params = [], []
        student_named = dict(student.named_parameters())
        for name, param in self.model.named_parameters():
            if name not in student_named:
                raise ValueError(f"student has no parameter {name!r}: the teacher must mirror the student")
            if param.is_floating_point():
                teacher_params.append(param.data)
                student_params.append(student_named[name].detach())
        return teacher_params, student_params

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> float:
        """One in-place EMA step; returns the momentum used."""
        student = getattr(student, "module", student)
        m = self.momentum(step)
        teacher_params, student_params = self._tensor_lists(student)
        student_params = [s.to(t.dtype) if s.dtype != t.dtype else s for t, s in zip(teacher_params, student_params)]
        torch._foreach_mul_(teacher_params, m)
        torch._foreach_add_(teacher_params, student_params, alpha=1.0 - m)
        student_buffers = dict(student.named_buffers())
        for name, buffer in self.model.named_buffers():
            if buffer.is_floating_point() and name in student_buffers:
                buffer.copy_(student_buffers[name])
        return m

    def to(self, *args, **kwargs) -> "MeanTeacher":
        self.model.to(*args, **kwargs)
        return self

    def __call__(self, *args, **kwargs):
        return self.model.teacher_forward(*args, **kwargs)

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "momentum_start": self.momentum_start,
            "momentum_end": self.momentum_end,
            "total_steps": self.total_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.momentum_start = float(state.get("momentum_start", self.momentum_start))
        self.momentum_end = float(state.get("momentum_end", self.momentum_end))
        self.total_steps = int(state.get("total_steps", self.total_steps))


__all__ = ["MeanTeacher"]
