"""Lightning callbacks of the training stages (docs/train_vae.md)."""

from isa4d.callbacks.vae import LastFrameBias, LatentStatistics, ReconstructionVideos

__all__ = ["LastFrameBias", "LatentStatistics", "ReconstructionVideos"]
