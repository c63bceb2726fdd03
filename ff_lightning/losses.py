"""Autoencoder losses shared by the image MoVQ and video decoder systems: reconstruction, hinge GAN, adaptive weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["reconstruction_loss", "hinge_d_loss", "generator_loss", "adaptive_gan_weight"]


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, l1: float = 1.0, l2: float = 0.0) -> torch.Tensor:
    """``l1 * mean|pred - target| + l2 * mean (pred - target)^2`` (any equal shapes)."""
    loss = pred.new_zeros(())
    if l1:
        loss = loss + l1 * F.l1_loss(pred, target)
    if l2:
        loss = loss + l2 * F.mse_loss(pred, target)
    return loss


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: ``0.5 * (mean relu(1 - real) + mean relu(1 + fake))``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: ``-mean(logits_fake)``."""
    return -logits_fake.mean()


def adaptive_gan_weight(
    nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """Balance the GAN gradient against the reconstruction gradient at the decoder's last layer (taming / MoVQGAN):
    ``||grad nll|| / (||grad g|| + 1e-4)``, clamped to [0, max_weight] and detached."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = nll_grad.norm() / (g_grad.norm() + 1e-4)
    return w.clamp(0.0, max_weight).detach()
