"""Euler sampling of the flow ODE from noise (t = 1) to data (t = 0), with SD3's time shift and CFG.

`dx/dt = v(x, t)` with `v ≈ ε - x_0` (see `isa4d.diffusion.flow`); Euler steps
`x_{t_{i+1}} = x_{t_i} + (t_{i+1} - t_i) v(x_{t_i}, t_{i}) `, `t_0 = 1 > t_1 > … > t_S = 0`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from isa4d.diffusion.flow import CONDITION_NAMES, ModelFn, interpolate


def time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution-dependent shift `t' = shift·t / (1 + (shift - 1)·t)` (keeps 0 and 1; shift > 1
    spends more steps at high noise)."""
    return shift * t / (1 + (shift - 1) * t)


def sampling_times(
    num_steps: int, shift: float = 3.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """The S + 1 times `time_shift(1 - i/S)`, from 1 to 0, float64."""
    if num_steps < 1:
        raise ValueError(f"need at least one step, got {num_steps}")
    return time_shift(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64, device=device), shift)


def guided_velocity(
    model_fn: ModelFn,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Any,
    guidance_scale: float = 2.0,
    uncond: Any = None,
    uncond_drops: Sequence[str] = CONDITION_NAMES,
) -> torch.Tensor:
    """Classifier-free guidance `v = v_u + s (v_c - v_u)`.

    With `s = 1` this is exactly the conditional prediction and the unconditional pass is skipped.

    Args:
        model_fn: `model_fn(x, t, cond) -> v`.
        x: (B, ...) current sample.
        t: (B,) times.
        cond: Conditions.
        guidance_scale: s.
        uncond: Conditions of the unconditional pass; default `cond.unconditional(uncond_drops)`.
        uncond_drops: Which conditions the default unconditional pass drops.
    """
    v_cond = model_fn(x, t, cond)
    if guidance_scale == 1.0:
        return v_cond
    if uncond is None:
        uncond = cond.unconditional(tuple(uncond_drops))
    v_uncond = model_fn(x, t, uncond)
    return v_uncond + guidance_scale * (v_cond - v_uncond)


def euler_sample(
    model_fn: ModelFn,
    noise: torch.Tensor,
    cond: Any,
    num_steps: int = 30,
    shift: float = 3.0,
    guidance_scale: float = 2.0,
    uncond: Any = None,
    uncond_drops: Sequence[str] = CONDITION_NAMES,
    prefix: torch.Tensor | None = None,
    prefix_clean: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Integrate the flow ODE from `noise` at t = 1 to a sample at t = 0.

    Args:
        model_fn: `model_fn(x, t (B,), cond) -> v`.
        noise: (B, C, T', h, w) ε, the sample at t = 1.
        cond: Conditions (passed through).
        num_steps: S Euler steps.
        shift: SD3 time shift (1 = uniform steps).
        guidance_scale: CFG scale s (1 = no guidance, one model call per step).
        uncond: Unconditional conditions (see `guided_velocity`).
        uncond_drops: Conditions dropped by the default unconditional pass.
        prefix: (B, C, n, h, w) known clean latents of the first n latent frames (HumanDiT's prefix for
            long videos). Before every step they are put back clean (`prefix_clean`, the default: how
            `DiTModule` trains its mid-clip windows, `flow_matching_loss(clean_prefix=n)`) or at their place
            on the noise path, `(1 - t) prefix + t ε`; the returned first n frames are exactly `prefix`.
        prefix_clean: See `prefix`.
        progress: Show a progress bar.

    Returns:
        (B, C, T', h, w) sample at t = 0.
    """
    times = sampling_times(num_steps, shift)
    x = noise
    n = 0 if prefix is None else prefix.shape[2]
    for i in tqdm(range(num_steps), disable=not progress, desc="sampling", leave=False):
        t, t_next = float(times[i]), float(times[i + 1])
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32)
        if n:
            known = prefix if prefix_clean else interpolate(prefix, noise[:, :, :n], t_batch)
            x = torch.cat([known.to(x.dtype), x[:, :, n:]], dim=2)
        v = guided_velocity(model_fn, x, t_batch, cond, guidance_scale, uncond, uncond_drops)
        x = x + (t_next - t) * v.to(x.dtype)
    if n:
        x = torch.cat([prefix.to(x.dtype), x[:, :, n:]], dim=2)
    return x
