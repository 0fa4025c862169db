"""Lightning callbacks of the training stages (docs/train_vae.md, docs/train_dit.md, docs/reliability.md)."""

from isa4d.callbacks.dit import DiTSamples
from isa4d.callbacks.preemption import PreemptionCheckpoint
from isa4d.callbacks.resume import SeedEveryStep, StepCheckpoint
from isa4d.callbacks.vae import LastFrameBias, LatentStatistics, ReconstructionVideos

__all__ = [
    "DiTSamples",
    "LastFrameBias",
    "LatentStatistics",
    "PreemptionCheckpoint",
    "ReconstructionVideos",
    "SeedEveryStep",
    "StepCheckpoint",
]
