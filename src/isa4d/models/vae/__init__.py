"""Causal video VAE (ISA4D §4): SD3's image VAE inflated to 3-D, chunked coding, SD3 weight inflation.

Video `(B, 3, T, H, W)` in [-1, 1], `T = 1 + 4k` -> latent `(B, 16, 1 + k, H/8, W/8)`. See docs/vae.md.
"""

from isa4d.models.vae.autoencoder import (
    VAE_MODELS,
    BlockShortcut,
    Decoder,
    DiagonalGaussian,
    Encoder,
    VideoVAE,
    build_vae,
    vae_sd3,
    vae_tiny,
)
from isa4d.models.vae.aux_decoder import AuxImageDecoder, aux_frame_indices
from isa4d.models.vae.discriminators import PatchGAN2D, PatchGAN3D
from isa4d.models.vae.layers import (
    CausalConv3d,
    Downsample,
    FrameCache,
    FrameGroupNorm,
    MidBlock,
    ResnetBlock,
    SpatialAttention,
    Upsample,
)
from isa4d.models.vae.weights import (
    SD3_KEY_MAP,
    SD3_WEIGHTS_FILE,
    InflationReport,
    inflate_sd3_state_dict,
    load_sd3_weights,
    read_state_dict,
)

__all__ = [
    "SD3_KEY_MAP",
    "SD3_WEIGHTS_FILE",
    "VAE_MODELS",
    "AuxImageDecoder",
    "CausalConv3d",
    "Decoder",
    "DiagonalGaussian",
    "Downsample",
    "Encoder",
    "FrameCache",
    "FrameGroupNorm",
    "InflationReport",
    "MidBlock",
    "PatchGAN2D",
    "PatchGAN3D",
    "ResnetBlock",
    "SpatialAttention",
    "Upsample",
    "BlockShortcut",
    "VideoVAE",
    "aux_frame_indices",
    "build_vae",
    "inflate_sd3_state_dict",
    "load_sd3_weights",
    "read_state_dict",
    "vae_sd3",
    "vae_tiny",
]
