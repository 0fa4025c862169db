"""Hinge GAN losses and the adaptive generator weight of taming-transformers / Stable Diffusion."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss `0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))`, a scalar."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss `-mean(fake_logits)`, a scalar."""
    return -fake_logits.mean()


def adaptive_weight(
    nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """Balance the GAN term against reconstruction at the decoder's last layer.

    `|d nll / d W| / (|d g / d W| + 1e-4)`, clamped to `[0, max_weight]` and detached (taming's
    `calculate_adaptive_weight`). Both losses' graphs are kept for the later backward.

    Args:
        nll_loss: Reconstruction loss (scalar) depending on `last_layer`.
        g_loss: Generator loss (scalar) depending on `last_layer`.
        last_layer: Weight of the decoder's last conv (`VideoVAE.last_layer`).
        max_weight: Upper clamp.

    Returns:
        The weight, a detached scalar tensor.
    """
    (nll_grad,) = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)
    (g_grad,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def disc_factor(step: int, disc_start: int, value: float = 1.0, warmup: int = 0) -> float:
    """0 before `disc_start`, then `value` (taming's `adopt_weight`), reached linearly over `warmup` steps:
    `value * min(1, (step - disc_start + 1) / warmup)`."""
    if step < disc_start:
        return 0.0
    return value * min(1.0, (step - disc_start + 1) / warmup) if warmup > 0 else value
