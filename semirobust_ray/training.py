"""Regular and adversarial training epochs, clean and robust evaluation.

Images travel as uint8 tensors (a quarter of float32's memory, so small datasets stay on the
device) and become [0, 1] floats one batch at a time. Only parameters with ``requires_grad``
receive gradients: after :func:`semirobust_ray.models.split`, that is f_b alone, and since f*_a's
parameters need no gradient and the attacked input is detached, autograd records nothing for
f*_a in the weight update.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semirobust_ray.data import to_unit

#: An attack maps (x in [0, 1], labels) to adversarial x in [0, 1].
AttackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DivergenceError(RuntimeError):
    """Training produced a NaN or infinite loss; the run cannot go on meaningfully."""


@dataclass(frozen=True)
class EpochStats:
    """Mean training loss and accuracy over one epoch (on adversarial inputs when attacked)."""

    loss: float
    accuracy: float
    examples: int


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA GPU is visible; use device: cpu")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (initialisation, attack random starts); return a data RNG.

    The returned CPU generator drives the data order, so batches do not depend on how many
    random numbers model construction or attacks happened to draw.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def batches(
    n: int, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Index batches over ``n`` examples, shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def make_optimizer(
    params: list[nn.Parameter], lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """SGD with the authors' settings by default (lr 0.01, momentum 0.9, weight decay 5e-4)."""
    if not params:
        raise ValueError("no trainable parameters: nothing to optimise")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def train_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator,
    attack: AttackFn | None = None,
) -> EpochStats:
    """One epoch of training; with ``attack`` every batch is replaced by its adversarial version.

    ``x`` is uint8 (N×C×H×W). Raises :class:`DivergenceError` on a non-finite loss.
    """
    model.train()
    x, y = x.to(device), y.to(device)
    total_loss, correct, seen = 0.0, 0, 0
    for idx in batches(len(y), batch_size, generator):
        idx = idx.to(device)
        xb, yb = to_unit(x[idx]), y[idx]
        if attack is not None:
            xb = attack(xb, yb).detach()
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        if not torch.isfinite(loss):
            raise DivergenceError(f"training loss became {loss.item()} after {seen} examples")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(yb)
        correct += (logits.argmax(1) == yb).sum().item()
        seen += len(yb)
    return EpochStats(total_loss / seen, correct / seen, seen)


def predict_adversarial(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    attack: AttackFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adversarial (or clean) inputs in [0, 1] and the model's predictions on them, on CPU.

    The model is evaluated in eval mode and its previous mode is restored afterwards.
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    inputs, preds = [], []
    try:
        x, y = x.to(device), y.to(device)
        for idx in batches(len(y), batch_size):
            idx = idx.to(device)
            xb, yb = to_unit(x[idx]), y[idx]
            if attack is not None:
                xb = attack(xb, yb).detach()
            with torch.no_grad():
                preds.append(model(xb).argmax(1).cpu())
            inputs.append(xb.cpu())
    finally:
        for m, mode in modes.items():
            m.training = mode
    return torch.cat(inputs), torch.cat(preds)


def accuracy(preds: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of correct predictions."""
    return float((preds == y.cpu()).float().mean().item()) if len(y) else math.nan


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    attack: AttackFn | None = None,
) -> float:
    """Clean accuracy, or robust accuracy under ``attack``, as a fraction."""
    _, preds = predict_adversarial(model, x, y, batch_size=batch_size, device=device, attack=attack)
    return accuracy(preds, y)
