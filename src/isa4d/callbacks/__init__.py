"""Lightning callbacks of the training stages (docs/train_vae.md, docs/train_dit.md)."""

from isa4d.callbacks.dit import DiTSamples
from isa4d.callbacks.vae import LastFrameBias, LatentStatistics, ReconstructionVideos

__all__ = ["DiTSamples", "LastFrameBias", "LatentStatistics", "ReconstructionVideos"]
