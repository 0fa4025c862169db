"""Flow matching and sampling for ISA-DiT (SPEC §2 "Flow matching", "Long videos"). See docs/dit.md.

`x_t = (1 - t) x_0 + t ε` (t = 1 is noise), velocity target `v = ε - x_0`, logit-normal t, MSE loss;
Euler sampling from t = 1 to 0 with SD3's time shift and classifier-free guidance; long videos in windows.
"""

from isa4d.diffusion.flow import (
    CONDITION_NAMES,
    FlowMatching,
    ModelFn,
    draw_condition_drops,
    flow_matching_loss,
    interpolate,
    sample_logit_normal,
    velocity_target,
)
from isa4d.diffusion.long_video import (
    STRATEGIES,
    blend_weights,
    frames_to_latents,
    latent_windows,
    sample_long,
)
from isa4d.diffusion.sampler import euler_sample, guided_velocity, sampling_times, time_shift

__all__ = [
    "CONDITION_NAMES",
    "STRATEGIES",
    "FlowMatching",
    "ModelFn",
    "blend_weights",
    "draw_condition_drops",
    "euler_sample",
    "flow_matching_loss",
    "frames_to_latents",
    "guided_velocity",
    "interpolate",
    "latent_windows",
    "sample_logit_normal",
    "sample_long",
    "sampling_times",
    "time_shift",
    "velocity_target",
]
