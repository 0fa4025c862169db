"""Long videos in windows: HumanDiT's clean-prefix strategy or the baselines' overlap-and-blend.

Latent arithmetic (causal VAE, latent frame 0 = video frame 0, latent frame i ≥ 1 = video frames
4i-3 … 4i): windows and overlaps are given in VIDEO frames and must be multiples of 4; they become
`window_frames / 4` and `overlap_frames / 4` latent frames. The baselines' protocol, window 24 and
overlap 8, is therefore 6 latent frames with 2 shared: latent windows [0, 6), [4, 10), [8, 14), … The
first window covers video frames [0, 21) (its latent frame 0 is a single frame); every later window
covers exactly 24 video frames, e.g. latent [4, 10) = video [13, 37), and consecutive windows share
8 video frames. The last window is moved back to end at the last latent frame (it may then share more).

Each window's conditions are `slice_conditions(cond, a, b, L)`, so every latent frame sees exactly
the body frames and cameras it has in the whole video. The whole latent is decoded by the VAE at once
(chunked decoding keeps memory constant).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from isa4d.diffusion.flow import CONDITION_NAMES, ModelFn
from isa4d.diffusion.sampler import euler_sample, guided_velocity, sampling_times
from isa4d.models.dit.conditions import FRAMES_PER_LATENT, DiTConditions, slice_conditions

STRATEGIES = ("prefix", "blend")


def latent_windows(num_latent_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Latent windows `[a, b)` of length `window` (fewer only if the video is shorter), consecutive ones
    sharing `overlap` frames, the last one moved back to end at `num_latent_frames`."""
    if not 0 <= overlap < window:
        raise ValueError(f"need 0 <= overlap < window, got overlap={overlap}, window={window}")
    windows = [(0, min(window, num_latent_frames))]
    while windows[-1][1] < num_latent_frames:
        start = windows[-1][1] - overlap
        stop = min(start + window, num_latent_frames)
        windows.append((stop - window, stop))
    return windows


def frames_to_latents(frames: int, name: str) -> int:
    """Video frames (a multiple of 4) -> latent frames."""
    if frames % FRAMES_PER_LATENT:
        raise ValueError(f"{name}={frames} video frames is not a multiple of {FRAMES_PER_LATENT}")
    return frames // FRAMES_PER_LATENT


def blend_weights(start: int, stop: int, num_latent_frames: int, overlap: int) -> torch.Tensor:
    """(stop - start,) weights of a window: linear ramps `k / (overlap + 1)` over `overlap` frames at the
    sides shared with a neighbour, 1 elsewhere (and at the video's ends)."""
    j = torch.arange(stop - start, dtype=torch.float64)
    weight = torch.ones_like(j)
    if start > 0:
        weight = torch.minimum(weight, (j + 1) / (overlap + 1))
    if stop < num_latent_frames:
        weight = torch.minimum(weight, (stop - start - j) / (overlap + 1))
    return weight


def sample_long(
    model_fn: ModelFn,
    noise: torch.Tensor,
    cond: DiTConditions,
    strategy: str = "prefix",
    window_frames: int = 24,
    overlap_frames: int = 8,
    num_steps: int = 30,
    shift: float = 3.0,
    guidance_scale: float = 2.0,
    uncond_drops: Sequence[str] = CONDITION_NAMES,
    prefix_clean: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Sample a video longer than the model's window.

    * `"prefix"`: windows one after the other; each window after the first starts with the latent frames
      it shares with the previous window, already generated, as a clean prefix kept fixed
      (`euler_sample(prefix=...)`); only the new frames are written.
    * `"blend"`: all windows denoised together; at every Euler step each window predicts the velocity of
      its frames and shared frames take the `blend_weights`-weighted mean.

    Args:
        model_fn: `model_fn(x, t, cond) -> v`.
        noise: (B, C, L, h, w) noise of the whole latent video.
        cond: Conditions of the whole video (`T = 4L - 3` video frames).
        strategy: `"prefix"` or `"blend"`.
        window_frames: Window in video frames (multiple of 4).
        overlap_frames: Shared video frames between consecutive windows (multiple of 4).
        num_steps: Euler steps.
        shift: SD3 time shift.
        guidance_scale: CFG scale.
        uncond_drops: Conditions dropped by the unconditional pass.
        prefix_clean: `"prefix"` only: keep the prefix clean at every step (default: as trained) instead of
            putting it on the noise path.
        progress: Progress bars.

    Returns:
        (B, C, L, h, w) latents.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
    L = noise.shape[2]
    window = frames_to_latents(window_frames, "window_frames")
    overlap = frames_to_latents(overlap_frames, "overlap_frames")
    windows = latent_windows(L, window, overlap)
    conds = [slice_conditions(cond, a, b, L) for a, b in windows]
    sampler = dict(num_steps=num_steps, shift=shift, guidance_scale=guidance_scale, uncond_drops=uncond_drops)

    if strategy == "prefix":
        out = torch.empty_like(noise)
        done = 0
        for (a, b), window_cond in zip(
            tqdm(windows, disable=not progress, desc="windows"), conds, strict=True
        ):
            prefix = out[:, :, a:done] if done > a else None
            x = euler_sample(
                model_fn, noise[:, :, a:b], window_cond, prefix=prefix, prefix_clean=prefix_clean, **sampler
            )
            out[:, :, done:b] = x[:, :, done - a :]
            done = b
        return out

    weights = [blend_weights(a, b, L, overlap).to(noise.device) for a, b in windows]
    total = torch.zeros(L, dtype=torch.float64, device=noise.device)
    for (a, b), weight in zip(windows, weights, strict=True):
        total[a:b] += weight
    weights = [
        (weight / total[a:b]).to(noise.dtype)[:, None, None]
        for (a, b), weight in zip(windows, weights, strict=True)
    ]
    times = sampling_times(num_steps, shift)
    x = noise
    for i in tqdm(range(num_steps), disable=not progress, desc="sampling"):
        t, t_next = float(times[i]), float(times[i + 1])
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32)
        v = torch.zeros_like(x)
        for (a, b), window_cond, weight in zip(windows, conds, weights, strict=True):
            v_window = guided_velocity(
                model_fn, x[:, :, a:b], t_batch, window_cond, guidance_scale, None, uncond_drops
            )
            v[:, :, a:b] += weight * v_window.to(x.dtype)
        x = x + (t_next - t) * v
    return x
