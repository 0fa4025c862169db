"""LightningModules of the training stages: assembled from networks and losses built elsewhere."""

from isa4d.modules.vae_module import (
    EMA,
    VAEModule,
    build_vae_loss,
    frames_to_tensor,
    load_vae,
    read_checkpoint,
    tensor_to_frames,
    video_of,
)

__all__ = [
    "EMA",
    "VAEModule",
    "build_vae_loss",
    "frames_to_tensor",
    "load_vae",
    "read_checkpoint",
    "tensor_to_frames",
    "video_of",
]
