"""Training objectives: LPIPS-VGG from local weights, hinge GAN losses, the video VAE loss."""

from isa4d.losses.gan import adaptive_weight, disc_factor, hinge_d_loss, hinge_g_loss
from isa4d.losses.lpips import LIN_FILE, LPIPS, VGG16_FILE, bundled_lin_path
from isa4d.losses.vae_loss import VAELoss, kl_loss, l1_loss, perceptual_loss

__all__ = [
    "LIN_FILE",
    "LPIPS",
    "VGG16_FILE",
    "VAELoss",
    "adaptive_weight",
    "bundled_lin_path",
    "disc_factor",
    "hinge_d_loss",
    "hinge_g_loss",
    "kl_loss",
    "l1_loss",
    "perceptual_loss",
]
