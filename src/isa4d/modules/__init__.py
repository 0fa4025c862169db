"""LightningModules of the training stages: assembled from networks and losses built elsewhere."""

from isa4d.modules.checkpoints import check_sharded_checkpoint, read_checkpoint
from isa4d.modules.dit_batch import ConditionBuilder
from isa4d.modules.dit_module import DiTModule, load_dit_module
from isa4d.modules.ema import EMA
from isa4d.modules.vae_module import (
    VAEModule,
    build_vae_loss,
    frames_to_tensor,
    load_vae,
    tensor_to_frames,
    video_of,
)

__all__ = [
    "EMA",
    "ConditionBuilder",
    "DiTModule",
    "VAEModule",
    "build_vae_loss",
    "check_sharded_checkpoint",
    "frames_to_tensor",
    "load_dit_module",
    "load_vae",
    "read_checkpoint",
    "tensor_to_frames",
    "video_of",
]
