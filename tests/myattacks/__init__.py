"""Attacks a user might write, imported by path (``myattacks:MIFGSM``) in the tests.

A package, so that a test can ship it to Ray workers the way docs/extending.md tells users to:
``ray.init(runtime_env={"py_modules": [path_to_this_directory]})``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semirobust_ray.attacks import Attack


class MIFGSM(Attack):
    """Momentum iterative FGSM (Dong et al., 2018) under L∞: ``steps`` sign steps of ``alpha``
    along a gradient accumulated with momentum ``decay``, projected onto the ε-ball.

    ``decay`` has no default on purpose: a search whose workers did not receive the config's
    ``attack_kwargs`` fails to build it, so the tests see the options arrive everywhere.
    """

    norm = "Linf"

    def __init__(self, model, *, eps=8 / 255, alpha=1 / 255, steps=10, seed=0, decay: float):
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, seed=seed)
        if not decay >= 0:
            raise ValueError(f"decay must be >= 0, got {decay!r}")
        self.decay = float(decay)

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        momentum = torch.zeros_like(x)
        x_adv = x.clone()
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(self.model(x_adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            norm = grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
            momentum = self.decay * momentum + grad / norm
            x_adv = x_adv.detach() + self.alpha * momentum.sign()
            x_adv = (x + (x_adv - x).clamp(-self.eps, self.eps)).clamp(0.0, 1.0)
        return x_adv


class NotAnAttack:
    """A class that is not a subclass of semirobust_ray.attacks.Attack."""

    def __init__(self, model, **kwargs) -> None:
        self.model = model


def build(model, **kwargs):
    """A function where a class is expected."""
    return NotAnAttack(model)
