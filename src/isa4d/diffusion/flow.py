"""Rectified-flow matching (SD3): the path, the velocity target, logit-normal times, the loss, CFG dropout.

Convention (the SPEC's, and SD3's): `x_t = (1 - t) x_0 + t ε`, `t ∈ [0, 1]`, so `t = 0` is data and
`t = 1` pure noise, and the network predicts the velocity `v = dx_t/dt = ε - x_0`. (Some code uses the
opposite sign, `x_0 - ε`, with time running from noise to data; an Euler step here is
`x_{t'} = x_t + (t' - t) v` with `t' < t`.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
"""`model_fn(x_t (B, ...), t (B,), cond) -> v (B, ...)`; an `ISADiT` is one."""

CONDITION_NAMES = ("ref", "smpl", "camera")


def _expand(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, …, 1) broadcasting against x."""
    return t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """`x_t = (1 - t) x_0 + t ε` for (B,) times."""
    t = _expand(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching target `v = ε - x_0` (= d x_t / dt)."""
    return noise - x0


def sample_logit_normal(
    batch_size: int,
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """SD3's logit-normal times `t = sigmoid(N(mean, std²))`, (B,) in (0, 1)."""
    normal = torch.randn(batch_size, generator=generator, device=device)
    return torch.sigmoid(mean + std * normal)


def flow_matching_loss(
    model_fn: ModelFn,
    x0: torch.Tensor,
    cond: Any,
    generator: torch.Generator | None = None,
    *,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    loss_mask: torch.Tensor | None = None,
    clean_prefix: int = 0,
    reduction: str = "mean",
) -> torch.Tensor:
    """MSE between the predicted and the target velocity.

    Args:
        model_fn: `model_fn(x_t, t, cond) -> v`.
        x0: (B, C, T', h, w) clean (normalised) latents.
        cond: Passed to `model_fn` unchanged (apply condition dropout before, `draw_condition_drops`).
        generator: For the noise and the times; must live on x0's device.
        t: (B,) times; drawn logit-normal when None.
        noise: ε like x0; drawn when None.
        logit_mean: Mean of the logit-normal.
        logit_std: Standard deviation of the logit-normal.
        loss_mask: Weights broadcastable to x0 (e.g. (B, 1, T', 1, 1)); the loss is the weighted mean over
            the weighted elements.
        clean_prefix: HumanDiT's clean prefix: the first n latent frames enter the model clean (x_0, at
            every t), as `euler_sample(prefix=..., prefix_clean=True)` gives them in long-video windows,
            and are excluded from the loss.
        reduction: `"mean"` (scalar) or `"none"` (per sample, (B,)).

    Returns:
        The loss.
    """
    B = x0.shape[0]
    if not 0 <= clean_prefix < x0.shape[2]:
        raise ValueError(
            f"clean_prefix={clean_prefix} must leave latent frames to denoise (T'={x0.shape[2]})"
        )
    if t is None:
        t = sample_logit_normal(B, logit_mean, logit_std, generator, x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = interpolate(x0, noise, t)
    if clean_prefix:
        x_t = torch.cat([x0[:, :, :clean_prefix], x_t[:, :, clean_prefix:]], dim=2)
        denoised = torch.ones(1, 1, x0.shape[2], 1, 1, device=x0.device)
        denoised[:, :, :clean_prefix] = 0
        loss_mask = denoised if loss_mask is None else loss_mask * denoised
    prediction = model_fn(x_t, t, cond)
    error = (prediction.float() - velocity_target(x0, noise).float()) ** 2
    if loss_mask is None:
        per_sample = error.flatten(1).mean(1)
    else:
        weight = torch.broadcast_to(loss_mask.to(error.dtype), error.shape)
        per_sample = (error * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1e-8)
    if reduction == "none":
        return per_sample
    if reduction != "mean":
        raise ValueError(f"unknown reduction {reduction!r}")
    return per_sample.mean()


def draw_condition_drops(
    batch_size: int,
    p_ref: float = 0.1,
    p_smpl: float = 0.1,
    p_camera: float = 0.1,
    p_all: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample condition-dropout flags for classifier-free guidance.

    Each condition is dropped independently with its probability; with probability `p_all` all of
    them are dropped together: the input of the CFG unconditional pass (`DiTConditions.unconditional()`,
    which drops exactly `CONDITION_NAMES`), which independent drops alone give only p_ref·p_smpl·p_camera
    of the time (0.1 % at 10 % each).

    Returns:
        `{"ref": (B,) bool, "smpl": (B,) bool, "camera": (B,) bool}`; use `cond.with_drops(**flags)`.
    """
    draws = torch.rand(4, batch_size, generator=generator, device=device)
    everything = draws[3] < p_all
    probabilities = (p_ref, p_smpl, p_camera)
    return {
        name: (draws[i] < p) | everything
        for i, (name, p) in enumerate(zip(CONDITION_NAMES, probabilities, strict=True))
    }


@dataclass
class FlowMatching:
    """The training objective as one configurable object (Hydra-friendly).

    Attributes:
        logit_mean: Mean of the logit-normal time distribution.
        logit_std: Its standard deviation.
        p_drop_ref: Reference/identity dropout probability.
        p_drop_smpl: Body dropout probability.
        p_drop_camera: Camera dropout probability.
        p_drop_all: Probability of dropping all three together (the unconditional mode CFG samples with).
    """

    logit_mean: float = 0.0
    logit_std: float = 1.0
    p_drop_ref: float = 0.1
    p_drop_smpl: float = 0.1
    p_drop_camera: float = 0.1
    p_drop_all: float = 0.1

    def loss(
        self,
        model_fn: ModelFn,
        x0: torch.Tensor,
        cond: Any,
        generator: torch.Generator | None = None,
        loss_mask: torch.Tensor | None = None,
        clean_prefix: int = 0,
    ) -> torch.Tensor:
        """Condition dropout (if `cond` has `with_drops`; OR-ed with its flags), then `flow_matching_loss`."""
        if hasattr(cond, "with_drops"):
            flags = draw_condition_drops(
                x0.shape[0],
                self.p_drop_ref,
                self.p_drop_smpl,
                self.p_drop_camera,
                self.p_drop_all,
                generator,
                x0.device,
            )
            if hasattr(cond, "drop_flags"):  # keep drops the data already asked for
                flags = {name: flag | cond.drop_flags(name) for name, flag in flags.items()}
            cond = cond.with_drops(**flags)
        return flow_matching_loss(
            model_fn,
            x0,
            cond,
            generator,
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
            loss_mask=loss_mask,
            clean_prefix=clean_prefix,
        )
