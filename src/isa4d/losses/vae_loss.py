"""The video VAE objective (ISA4D eq. 1-2, SPEC §1):

`L = λ_1 L1 + λ_p LPIPS + λ_kl KL + λ_2d GAN_2d + λ_3d GAN_3d + λ_reg L_reg`

Reduction (Stable Diffusion / taming convention, which λ_kl = 1e-6 is calibrated for): L1, LPIPS
and KL are summed over (C, T, H, W) of each sample and averaged over the batch; LPIPS, one value per
frame, counts once per pixel of its frame (i.e. times C*H*W). The GAN terms are means of the logits
scaled by the adaptive weight, which makes them independent of that reduction.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from einops import rearrange
from torch import nn

from isa4d.losses.gan import adaptive_weight, disc_factor, hinge_d_loss, hinge_g_loss
from isa4d.models.vae import AuxImageDecoder, DiagonalGaussian


def l1_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`|x - y|` summed over all but the batch dimension, averaged over the batch; a scalar."""
    return (x - y).abs().flatten(1).sum(1).mean()


def perceptual_loss(lpips: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS of every frame pair, counted once per pixel of its frame, summed, averaged over the batch.

    Args:
        lpips: Maps two image batches (N, C, H, W) to distances (N,).
        x: Video, (B, C, T, H, W).
        y: Video, (B, C, T, H, W).

    Returns:
        `C * H * W * sum_t LPIPS(x_t, y_t)`, averaged over the batch; a scalar.
    """
    b, c, _, h, w = x.shape
    per_frame = lpips(rearrange(x, "b c t h w -> (b t) c h w"), rearrange(y, "b c t h w -> (b t) c h w"))
    return per_frame.sum() * (c * h * w) / b


def kl_loss(posterior: DiagonalGaussian) -> torch.Tensor:
    """KL to N(0, I) summed over (C, T', h, w), averaged over the batch; a scalar."""
    return posterior.kl().mean()


class VAELoss(nn.Module):
    """Generator and discriminator objectives of the video VAE.

    Owns the training-only networks: the (frozen) perceptual metric, the discriminators and the
    auxiliary image decoder. Any of them may be None, which drops its term. Optimise the
    auxiliary decoder with the VAE (generator optimiser) and `discriminator_parameters()` with the
    discriminator optimiser.

    Args:
        perceptual: LPIPS module (`isa4d.losses.LPIPS`) or None.
        disc_2d: Frame discriminator (`PatchGAN2D`) or None.
        disc_3d: Clip discriminator (`PatchGAN3D`) or None.
        aux_decoder: `AuxImageDecoder` for the image-decoding regularisation, or None.
        l1_weight: λ_1.
        perceptual_weight: λ_p (also weighs LPIPS inside L_reg).
        kl_weight: λ_kl.
        gan_2d_weight: λ_2d, multiplied by the adaptive weight.
        gan_3d_weight: λ_3d, multiplied by the adaptive weight.
        reg_weight: λ_reg.
        disc_start: Global step from which the GAN terms are on.
        disc_warmup: Steps over which the GAN terms (generator and discriminator) ramp from 0 to full.
        max_adaptive_weight: Clamp of the adaptive weight.
    """

    def __init__(
        self,
        perceptual: nn.Module | None = None,
        disc_2d: nn.Module | None = None,
        disc_3d: nn.Module | None = None,
        aux_decoder: AuxImageDecoder | None = None,
        l1_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        kl_weight: float = 1e-6,
        gan_2d_weight: float = 0.5,
        gan_3d_weight: float = 0.5,
        reg_weight: float = 1.0,
        disc_start: int = 0,
        disc_warmup: int = 0,
        max_adaptive_weight: float = 1e4,
    ) -> None:
        super().__init__()
        self.perceptual = perceptual
        self.disc_2d = disc_2d
        self.disc_3d = disc_3d
        self.aux_decoder = aux_decoder
        self.l1_weight = l1_weight
        self.perceptual_weight = perceptual_weight
        self.kl_weight = kl_weight
        self.gan_weights = {"2d": gan_2d_weight, "3d": gan_3d_weight}
        self.reg_weight = reg_weight
        self.disc_start = disc_start
        self.disc_warmup = disc_warmup
        self.max_adaptive_weight = max_adaptive_weight

    def discriminators(self) -> dict[str, nn.Module]:
        """The discriminators that are set, by name (`"2d"`, `"3d"`)."""
        return {name: d for name, d in (("2d", self.disc_2d), ("3d", self.disc_3d)) if d is not None}

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of every discriminator (for the discriminator optimiser)."""
        for discriminator in self.discriminators().values():
            yield from discriminator.parameters()

    def reconstruction(
        self, x: torch.Tensor, x_hat: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`λ_1 L1 + λ_p LPIPS` of (B, C, T, H, W) videos, and its unweighted terms."""
        terms = {"l1": l1_loss(x, x_hat)}
        if self.perceptual is not None:
            terms["lpips"] = perceptual_loss(self.perceptual, x, x_hat)
        loss = self.l1_weight * terms["l1"] + self.perceptual_weight * terms.get("lpips", 0.0)
        return loss, terms

    def forward(
        self,
        x: torch.Tensor,
        x_hat: torch.Tensor,
        posterior: DiagonalGaussian,
        step: int,
        z: torch.Tensor | None = None,
        last_layer: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Generator (autoencoder) loss.

        Args:
            x: Video, (B, C, T, H, W).
            x_hat: Reconstruction, (B, C, T, H, W).
            posterior: The encoder's posterior of `x`.
            step: Global step (for `disc_start`).
            z: The latent `x_hat` was decoded from, (B, 16, T', h, w); needed with `aux_decoder`.
            last_layer: `vae.last_layer`; needed for the GAN terms in training.

        Returns:
            total: The loss to back-propagate.
            logs: Detached terms: `total`, `nll` (= λ_1 L1 + λ_p LPIPS), `l1`, `lpips`, `kl`, `reg`,
                `reg_l1`, `reg_lpips`, and per discriminator `g_2d` / `g_3d`, `d_weight_2d` /
                `d_weight_3d` (adaptive weight; 0 outside training), and `disc_factor` (only the
                terms that are on appear).
        """
        nll, terms = self.reconstruction(x, x_hat)
        logs = {"nll": nll, **terms, "kl": kl_loss(posterior)}
        total = nll + self.kl_weight * logs["kl"]
        if self.aux_decoder is not None:
            if z is None:
                raise ValueError("the image-decoding regularisation needs the latent `z`")
            predictions, targets = self.aux_decoder(z, x)
            logs["reg"], reg_terms = self.reconstruction(targets, predictions)
            logs.update({f"reg_{name}": value for name, value in reg_terms.items()})
            total = total + self.reg_weight * logs["reg"]
        factor = disc_factor(step, self.disc_start, warmup=self.disc_warmup)
        discriminators = self.discriminators()
        if discriminators:
            logs["disc_factor"] = x.new_tensor(factor)
        if discriminators and factor > 0:
            train = self.training and torch.is_grad_enabled()
            if train and last_layer is None:
                raise ValueError("the adaptive GAN weight needs `last_layer` (vae.last_layer)")
            for name, discriminator in discriminators.items():
                g = hinge_g_loss(discriminator(x_hat))
                weight = g.new_zeros(())
                if train:
                    weight = adaptive_weight(nll, g, last_layer, self.max_adaptive_weight)
                logs[f"g_{name}"], logs[f"d_weight_{name}"] = g, weight
                total = total + factor * self.gan_weights[name] * weight * g
        logs["total"] = total
        return total, {name: value.detach() for name, value in logs.items()}

    def discriminator_loss(
        self, x: torch.Tensor, x_hat: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Discriminator loss: hinge loss of each discriminator, summed, times `disc_factor`.

        Args:
            x: Real video, (B, C, T, H, W).
            x_hat: Reconstruction (detached here), (B, C, T, H, W).
            step: Global step (for `disc_start`).

        Returns:
            total: The loss to back-propagate into the discriminators.
            logs: Detached `disc_total`, and per discriminator `d_2d`, `logits_real_2d`,
                `logits_fake_2d` (and `_3d`).
        """
        factor = disc_factor(step, self.disc_start, warmup=self.disc_warmup)
        total = x.new_zeros(())
        logs: dict[str, torch.Tensor] = {}
        for name, discriminator in self.discriminators().items():
            real, fake = discriminator(x.detach()), discriminator(x_hat.detach())
            logs[f"d_{name}"] = hinge_d_loss(real, fake)
            logs[f"logits_real_{name}"], logs[f"logits_fake_{name}"] = real.mean(), fake.mean()
            total = total + factor * logs[f"d_{name}"]
        logs["disc_total"] = total
        return total, {name: value.detach() for name, value in logs.items()}
