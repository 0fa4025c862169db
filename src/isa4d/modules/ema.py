"""Exponential moving average of a module's weights, shared by the stage modules (VAE, ISA-DiT)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded (`DTensor`) parameter; a plain tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _layout(tensor: torch.Tensor) -> tuple[object, ...] | None:
    """How a parameter is sharded (device mesh and placements), None when it is not."""
    return (tensor.device_mesh, tuple(tensor.placements)) if isinstance(tensor, DTensor) else None


class EMA(nn.Module):
    """Exponential moving average of a module's parameters (like sgm's `LitEma`).

    The average lives in `self.module`, a frozen copy of the model (parameters with
    `requires_grad=False`, so DDP neither reduces nor broadcasts them). With `warmup`, the decay of
    update `n` is `min(decay, (1 + n) / (10 + n))`, so early averages follow the model closely.
    Buffers (e.g. the VAE's latent statistics) are not averaged: the model's own are authoritative.

    Under FSDP (`fully_shard`, `DiTModule.configure_model`) `shard_like` shards every average exactly like
    its parameter, so each rank updates and swaps only its own shard (no communication); the state dict
    then holds the shards (`DTensor`s), which a full state dict gathers like the model's.

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
        """(average, parameter) of every parameter of `model`: this rank's shards when sharded.

        Raises:
            ValueError: if an average is not laid out like its parameter (`shard_like` was not called, or
                FSDP holds the parameters gathered).
        """
        averages, parameters = self.module.named_parameters(), model.named_parameters()
        for (name, average), (_, parameter) in zip(averages, parameters, strict=True):
            if _layout(average) != _layout(parameter) or _local(average).shape != _local(parameter).shape:
                raise ValueError(
                    f"the EMA copy of {name!r} is not laid out like the model's parameter (local shapes "
                    f"{tuple(_local(average).shape)} and {tuple(_local(parameter).shape)}): call "
                    "EMA.shard_like(model) after sharding the model, and update or swap only while its "
                    "parameters are sharded (between forward passes)"
                )
            yield _local(average), _local(parameter)

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
    def shard_like(self, model: nn.Module) -> None:
        """Shard every average like its parameter in `model` (call after sharding `model`, e.g. with
        `fully_shard`): each rank keeps the chunk of the average that matches its chunk of the parameter.

        The chunks are cut locally (like `fully_shard` cuts the parameters), so every rank must hold the
        same full averages before, as it holds the same full model.
        """
        averages = dict(self.module.named_parameters())
        for name, parameter in model.named_parameters():
            average = averages[name]
            if _layout(parameter) is None or _layout(average) is not None:
                continue
            sharded = distribute_tensor(
                average.detach(), parameter.device_mesh, parameter.placements, src_data_rank=None
            )
            owner, _, attribute = name.rpartition(".")
            setattr(self.module.get_submodule(owner), attribute, nn.Parameter(sharded, requires_grad=False))

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
