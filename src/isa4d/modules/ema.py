"""Exponential moving average of a module's weights, shared by the stage modules (VAE, ISA-DiT)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class EMA(nn.Module):
    """Exponential moving average of a module's parameters (like sgm's `LitEma`).

    The average lives in `self.module`, a frozen copy of the model (parameters with
    `requires_grad=False`, so DDP neither reduces nor broadcasts them). With `warmup`, the decay of
    update `n` is `min(decay, (1 + n) / (10 + n))`, so early averages follow the model closely.
    Buffers (e.g. the VAE's latent statistics) are not averaged: the model's own are authoritative.

    Args:
        model: The module to average.
        decay: The EMA decay (e.g. 0.999).
        warmup: Use the `(1 + n) / (10 + n)` warm-up of the decay.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.active = False
        """Whether the averaged weights are swapped into the model now (inside `swapped`)."""

    def _pairs(self, model: nn.Module) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return zip(self.module.parameters(), model.parameters(), strict=True)

    def current_decay(self) -> float:
        """The decay the next `update` uses."""
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """`average <- decay * average + (1 - decay) * parameter`, for every parameter of `model`."""
        weight = 1.0 - self.current_decay()
        for average, parameter in self._pairs(model):
            average.lerp_(parameter.detach().to(average.dtype), weight)
        self.num_updates += 1

    @torch.no_grad()
    def swap(self, model: nn.Module) -> None:
        """Exchange the averaged and the live parameter values (twice restores both)."""
        for average, parameter in self._pairs(model):
            live = parameter.detach().clone()
            parameter.copy_(average)
            average.copy_(live)

    @contextmanager
    def swapped(self, model: nn.Module) -> Iterator[None]:
        """Run the block with the averaged weights in `model`, restored after (a no-op when nested)."""
        if self.active:
            yield
            return
        self.swap(model)
        self.active = True
        try:
            yield
        finally:
            self.swap(model)
            self.active = False
