"""Regular and adversarial training epochs, clean and robust evaluation.

Images travel as uint8 tensors (a quarter of float32's memory, so small datasets stay on the
device) and become [0, 1] floats one batch at a time. Only parameters with ``requires_grad``
receive gradients: after :func:`semirobust_ray.models.split`, that is f_b alone, and since f*_a's
parameters need no gradient and the attacked input is detached, autograd records nothing for
f*_a in the weight update.

Training methods
----------------
:func:`train_epoch`'s ``method``:

* ``"standard"`` (the paper): every batch is replaced by ``attack(x, y)`` (e.g. PGD-10),
  then one SGD step on it; without ``attack``, regular training.
* ``"fast"``: FGSM with a random start (Wong et al., 2020, "Fast is better than free"):
  δ ~ U(−ε, ε), one signed-gradient step of size ``alpha`` (default 1.25·ε), projected back
  to the ε-ball and [0, 1]; then one SGD step. Two gradient computations per batch instead
  of PGD-K's K + 1. The step runs through :class:`semirobust_ray.attacks.PGD` (one step),
  so like every attack here it sees the model in eval mode and computes input gradients only.
* ``"free"``: free adversarial training (Shafahi et al., 2019): each batch is replayed
  ``replays`` = m times; each replay does ONE forward/backward on ``x + δ`` in train mode that
  yields both f_b's weight gradient (one SGD step) and the input gradient, with which δ moves
  by ``alpha`` (default ε) along its sign and is clipped to the ε-ball. δ is carried across
  replays and on to the next batch (as in the paper's Algorithm 1) and starts at 0 each call.
  One call therefore makes m optimizer steps per batch and costs about m regular epochs:
  epochs are counted as passes over the data, so E "free" epochs are E·m minibatch updates.
  Shafahi et al. run E/m passes to match the step count of E regular epochs, which is the
  equivalence to use when comparing budgets.

``fast`` and ``free`` take ε from ``eps`` or, when omitted, from ``attack.eps`` (the
training attack the config builds); ``alpha`` is their own step (not ``attack.alpha``,
PGD's small step). Their random numbers come from a seed: ``attack.seed`` when the attack has
one (Algorithm 1 seeds it per epoch, so resumed trials repeat), else one drawn from
``generator``. Evaluation is not affected: robust accuracy is measured with the strong
attack as before.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semirobust_ray.config import TRAIN_METHODS, ConfigError
from semirobust_ray.data import augment_batch, to_unit
from semirobust_ray.models import eval_mode

#: An attack maps (x in [0, 1], labels) to adversarial x in [0, 1].
AttackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DivergenceError(RuntimeError):
    """Training produced a NaN or infinite loss; the run cannot go on meaningfully."""


class DeviceError(ConfigError):
    """The configured device does not exist in this process (``cuda`` without a visible GPU).

    A :class:`ConfigError` (so a ``ValueError``): the launchers print it as one line.
    """


@dataclass(frozen=True)
class EpochStats:
    """Mean training loss and accuracy over one epoch (on adversarial inputs when attacked)."""

    loss: float
    accuracy: float
    examples: int


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cuda`` without a GPU is a :class:`DeviceError`.

    Call it where the computation runs: on a cluster that is the trial's or task's worker, not
    the driver (a CPU-only head node schedules GPU trials).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "device: cuda but torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
            "use device: cpu or auto, or run where a GPU is visible to torch"
        )
    return torch.device(name)


def seed_everything(seed: int, *, deterministic: bool | None = None) -> torch.Generator:
    """Seed Python, NumPy and torch (initialisation, attack random starts); return a data RNG.

    The returned CPU generator drives the data order, so batches do not depend on how many
    random numbers model construction or attacks happened to draw. ``torch.manual_seed`` seeds
    every CUDA device as well (dropout masks on a GPU come from there).

    ``deterministic`` (the config key of that name) sets this process's CUDA numerics with
    :func:`set_deterministic` at the same time; None leaves them as they are. Trials and baseline
    tasks run in their own processes, so each passes its config's value here when it starts.
    """
    if deterministic is not None:
        set_deterministic(deterministic)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


#: cuBLAS's deterministic workspace setting (one of the two its documentation names). cuBLAS
#: reads it when a process creates its first handle, so it must be set before the first CUDA
#: matrix product of the process; :func:`set_deterministic` sets it when it is unset.
CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"


@dataclass(frozen=True)
class NumericsFlags:
    """The process-wide torch settings that decide whether CUDA results repeat bit for bit."""

    cudnn_deterministic: bool
    cudnn_benchmark: bool
    deterministic_algorithms: bool
    deterministic_warn_only: bool
    cudnn_allow_tf32: bool
    matmul_precision: str

    @classmethod
    def current(cls) -> NumericsFlags:
        """This process's settings now."""
        return cls(
            cudnn_deterministic=torch.backends.cudnn.deterministic,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
            deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_precision=torch.get_float32_matmul_precision(),
        )

    @classmethod
    def for_config(cls, deterministic: bool) -> NumericsFlags:
        """What ``deterministic: true`` asks for, or PyTorch's defaults for ``false``."""
        return cls(
            cudnn_deterministic=deterministic,
            # Benchmark mode times candidate algorithms on every new shape and keeps the
            # fastest, which can differ from run to run.
            cudnn_benchmark=False,
            deterministic_algorithms=deterministic,
            # True: an op with no deterministic CUDA kernel (e.g. AdaptiveAvgPool2d's backward,
            # which every attack's input gradient runs through) warns instead of stopping a
            # search that would otherwise fail on its first GPU batch.
            deterministic_warn_only=deterministic,
            # TF32 rounds fp32 convolution inputs to 10 mantissa bits on Ampere and newer GPUs;
            # PyTorch allows it for cuDNN convolutions by default, not for matmuls.
            cudnn_allow_tf32=not deterministic,
            matmul_precision="highest",
        )

    def apply(self) -> None:
        """Make these the process's settings (on a CPU-only machine they change nothing that
        this project computes; the flags are still set)."""
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.use_deterministic_algorithms(
            self.deterministic_algorithms, warn_only=self.deterministic_warn_only
        )
        torch.backends.cudnn.allow_tf32 = self.cudnn_allow_tf32
        torch.set_float32_matmul_precision(self.matmul_precision)


def set_deterministic(enabled: bool) -> None:
    """Turn bit-for-bit repeatable CUDA numerics on (``deterministic: true``) or back to
    PyTorch's defaults, for this process.

    On: deterministic cuDNN algorithms without benchmark mode,
    ``torch.use_deterministic_algorithms(True, warn_only=True)``, TF32 off for convolutions and
    matmuls, and ``CUBLAS_WORKSPACE_CONFIG`` set (when unset) so cuBLAS's reductions repeat.
    A rerun on the same GPU model and software stack then gives the same numbers, except
    through ops PyTorch has no deterministic CUDA kernel for, which emit a warning naming
    themselves. Off: PyTorch's defaults (cuDNN may pick nondeterministic algorithms, TF32
    convolutions on Ampere and newer). On a CPU, this project's numbers are the same either way.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)
    NumericsFlags.for_config(enabled).apply()


@contextlib.contextmanager
def deterministic_numerics(enabled: bool) -> Iterator[None]:
    """:func:`set_deterministic` inside the block; the caller's settings come back afterwards."""
    previous = NumericsFlags.current()
    set_deterministic(enabled)
    try:
        yield
    finally:
        previous.apply()


def cuda_rng_states() -> list[torch.Tensor]:
    """The global RNG state of every visible CUDA device (uint8 tensors), or [] when CUDA was
    never initialised in this process.

    An uninitialised process has drawn no CUDA random numbers: its devices still hold what
    :func:`seed_everything` seeded, which a resumed run seeds again, so there is nothing to save
    (and initialising CUDA here would cost a context on every GPU of the machine).
    """
    if not torch.cuda.is_initialized():
        return []
    return [state.clone() for state in torch.cuda.get_rng_state_all()]


def restore_cuda_rng_states(states: list[torch.Tensor]) -> int:
    """Restore states saved by :func:`cuda_rng_states`, device by device; return how many.

    A machine with fewer CUDA devices than the saving one gets the first ones' states (Ray
    renumbers a trial's GPUs from 0, so a one-GPU trial's device is always the first); one
    without CUDA gets none. Devices left out keep their seeded state, so only random draws on
    them (dropout masks) differ from an uninterrupted run. Never raises for a missing device.
    """
    if not states or not torch.cuda.is_available():
        return 0
    count = min(len(states), torch.cuda.device_count())
    for index in range(count):
        torch.cuda.set_rng_state(states[index], device=index)
    return count


def canonical_memory_format(device: torch.device) -> torch.memory_format:
    """The layout a model trains and is evaluated in on ``device``: channels_last (NHWC) on
    CUDA, where cuDNN's NHWC kernels are faster, contiguous (NCHW) elsewhere, where it did not
    pay. cuDNN picks different kernels, with different rounding, for the two layouts, so every
    evaluation of a network uses this one, whatever was done to the model before
    (:func:`train_epoch`, :func:`predict_adversarial`, ``semirobust_ray.reevaluate``)."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


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


#: FGSM step of "fast" adversarial training as a multiple of ε (Wong et al., 2020).
FAST_STEP_FACTOR = 1.25

#: Default number of replays per minibatch of "free" adversarial training (Shafahi et al., 2019).
FREE_REPLAYS = 4


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
    method: str = "standard",
    eps: float | None = None,
    alpha: float | None = None,
    replays: int = FREE_REPLAYS,
    channels_last: bool | None = None,
    bf16: bool = False,
    augment: bool = False,
) -> EpochStats:
    """One pass over ``(x, y)``: regular or adversarial training of the parameters that need grad.

    ``x`` is uint8 (N×C×H×W); it is moved to ``device`` once and converted to [0, 1] floats one
    batch at a time. Raises :class:`DivergenceError` on a non-finite loss. Only parameters with
    ``requires_grad`` get gradients, so after :func:`semirobust_ray.models.split` only f_b is
    updated and f*_a stays bit-identical (frozen weights, BN statistics in eval mode).

    ``method``: ``"standard"`` (the paper: attack each batch, or regular training without
    ``attack``), ``"fast"`` (FGSM, random start) or ``"free"`` (``replays`` replays per batch);
    the module docstring says how each works and counts, and where ``eps``/``alpha`` come from.

    ``augment=True`` trains on :func:`semirobust_ray.data.augment_batch` of every batch (random
    crop with 4-pixel zero padding, horizontal flip): the clean batch is augmented first, then
    attacked (or, for ``free``, perturbed), so every method and regular training see the same
    augmented images. Offsets and flips come from ``generator``, after the epoch's permutation,
    so a run restarted from a saved generator state draws them again identically.

    Speed options: ``channels_last`` stores activations NHWC (default:
    :func:`canonical_memory_format`, on for CUDA, off on CPU, where it did not pay); it changes
    how the same function is computed, so only the rounding. ``bf16`` runs forward passes
    (attack steps included) under bfloat16 autocast — faster on GPUs and CPUs with bf16 units,
    but it does change the arithmetic, hence off by default.
    """
    eps = _checked_method_options(method, eps, attack, replays)
    fmt = _memory_format(device, channels_last)
    # In place, so the attack (which holds the same module) runs in the same layout; values and
    # the optimizer's Parameter objects are unchanged. Both ways, so ``channels_last=False``
    # trains NCHW even after an evaluation left the model NHWC.
    model.to(memory_format=fmt)
    model.train()
    # One host-to-device copy of the uint8 images per epoch; batches are gathered on the device.
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    order = torch.randperm(len(y), generator=generator).to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    # After the permutation: "fast" may draw its attack seed from ``generator``.
    step = _make_step(method, model, optimizer, attack, amp, eps, alpha, replays, generator)
    return _run_batches(step, x, y, order, batch_size, fmt, generator if augment else None)


def _checked_method_options(
    method: str, eps: float | None, attack: AttackFn | None, replays: int
) -> float | None:
    """Refuse an unknown method or bad ε / replays; return the ε "fast" and "free" use."""
    if method not in TRAIN_METHODS:
        raise ValueError(f"unknown train method {method!r}; valid: {', '.join(TRAIN_METHODS)}")
    if method != "standard":
        eps = _method_eps(method, eps, attack)
    if method == "free" and (
        isinstance(replays, bool) or not isinstance(replays, int) or replays < 1
    ):
        raise ValueError(f"replays must be an integer >= 1, got {replays!r}")
    return eps


def _memory_format(device: torch.device, channels_last: bool | None) -> torch.memory_format:
    """The layout ``channels_last`` asks for; None means the device's canonical one."""
    if channels_last is None:
        return canonical_memory_format(device)
    return torch.channels_last if channels_last else torch.contiguous_format


def _make_step(
    method: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    attack: AttackFn | None,
    amp: contextlib.AbstractContextManager,
    eps: float | None,
    alpha: float | None,
    replays: int,
    generator: torch.Generator,
) -> _Step:
    """The per-batch training step of ``method`` (see the module docstring)."""
    if method == "standard":
        return _StandardStep(model, optimizer, attack, amp)
    if method == "fast":
        fgsm = _fast_attack(model, eps, alpha, _method_seed(attack, generator))
        return _StandardStep(model, optimizer, fgsm, amp)
    return _FreeStep(model, optimizer, eps, alpha if alpha is not None else eps, replays, amp)


def _run_batches(
    step: _Step,
    x: torch.Tensor,
    y: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    fmt: torch.memory_format,
    augment_generator: torch.Generator | None,
) -> EpochStats:
    """Run ``step`` on the batches of ``order``, augmented when a generator is given."""
    n = len(y)
    # Sums stay on the device: one synchronisation per batch (the divergence check), none per
    # example.
    total_loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    seen = 0
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        xb = x[idx]
        if augment_generator is not None:
            # On the uint8 pixels: the same images as augmenting the floats, a quarter the bytes.
            xb = augment_batch(xb, augment_generator)
        xb = to_unit(xb).contiguous(memory_format=fmt)
        yb = y[idx]
        loss_sum, hits, count = step(xb, yb)
        if not torch.isfinite(loss_sum):
            raise DivergenceError(f"training loss became {loss_sum.item()} after {seen} examples")
        total_loss += loss_sum
        correct += hits
        seen += count
    return EpochStats(total_loss.item() / seen, correct.item() / seen, n)


class _Step:
    """One batch of training; returns (summed loss, correct predictions, examples trained on)."""

    def __call__(
        self, xb: torch.Tensor, yb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        raise NotImplementedError


class _StandardStep(_Step):
    """Attack (if any), then one SGD step on the detached adversarial batch.

    The attacked batch is detached and f*_a's parameters do not require grad, so autograd
    records nothing until the first f_b layer: the update's backward covers f_b only, and
    f*_a's forward is effectively a no-grad pass (tests/test_training.py checks the graph).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        attack: AttackFn | None,
        amp: contextlib.AbstractContextManager,
    ) -> None:
        self.model, self.optimizer, self.attack, self.amp = model, optimizer, attack, amp

    def __call__(
        self, xb: torch.Tensor, yb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self.attack is not None:
            with self.amp:
                xb = self.attack(xb, yb).detach()
        with self.amp:
            logits = self.model(xb)
        loss = F.cross_entropy(logits.float(), yb)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        n = len(yb)
        return loss.detach() * n, (logits.detach().argmax(1) == yb).sum(), n


class _FreeStep(_Step):
    """Free adversarial training: m replays of a batch, δ carried across replays and batches."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        eps: float,
        alpha: float,
        replays: int,
        amp: contextlib.AbstractContextManager,
    ) -> None:
        self.model, self.optimizer, self.amp = model, optimizer, amp
        self.eps, self.alpha, self.replays = float(eps), float(alpha), replays
        self.delta: torch.Tensor | None = None

    def __call__(
        self, xb: torch.Tensor, yb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        n = len(yb)
        if self.delta is None:
            # The first batch is the largest (only the last one can be short).
            self.delta = torch.zeros_like(xb)
        loss_sum = torch.zeros((), dtype=torch.float64, device=xb.device)
        hits = torch.zeros((), dtype=torch.int64, device=xb.device)
        for _ in range(self.replays):
            delta = self.delta[:n].clone().requires_grad_(True)
            with self.amp:
                logits = self.model((xb + delta).clamp(0.0, 1.0))
            loss = F.cross_entropy(logits.float(), yb)
            self.optimizer.zero_grad(set_to_none=True)
            # One backward: weight gradients for f_b and the input gradient for δ.
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                self.delta[:n] = (delta + self.alpha * delta.grad.sign()).clamp_(
                    -self.eps, self.eps
                )
            if not torch.isfinite(loss):
                return loss.detach(), hits, n
            loss_sum += loss.detach() * n
            hits += (logits.detach().argmax(1) == yb).sum()
        return loss_sum, hits, n * self.replays


def _method_eps(method: str, eps: float | None, attack: AttackFn | None) -> float:
    if eps is None:
        eps = getattr(attack, "eps", None)
    if eps is None:
        raise ValueError(
            f"train method {method!r} needs eps: pass eps= or an attack with an .eps attribute"
        )
    if not 0.0 < float(eps) <= 1.0:
        raise ValueError(f"eps must be in (0, 1] (pixel scale), got {eps!r}")
    return float(eps)


def _method_seed(attack: AttackFn | None, generator: torch.Generator) -> int:
    seed = getattr(attack, "seed", None)
    if isinstance(seed, int) and not isinstance(seed, bool):
        return seed
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def _fast_attack(model: nn.Module, eps: float, alpha: float | None, seed: int) -> AttackFn:
    """FGSM with random start = one PGD step of 1.25·ε from a uniform start in the ε-ball."""
    from semirobust_ray.attacks import PGD

    step = alpha if alpha is not None else FAST_STEP_FACTOR * eps
    return PGD(model, eps=eps, alpha=step, steps=1, seed=seed, random_start=True)


def predict_adversarial(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    attack: AttackFn | None = None,
    keep_inputs: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Adversarial (or clean) inputs in [0, 1] and the model's predictions on them, on CPU.

    With ``keep_inputs=False`` the inputs are not kept (None is returned for them): an accuracy
    needs only the predictions, and a large test set's float images would cost gigabytes.
    The model is evaluated in eval mode and its previous mode is restored afterwards, and in
    :func:`canonical_memory_format` (converted in place): a network evaluated before any
    training epoch (Acc_sr, a resumed trial that had already reached) is then computed with the
    same kernels as after one, and as ``reevaluate`` computes it.
    """
    model.to(memory_format=canonical_memory_format(device))
    inputs, preds = [], []
    with eval_mode(model):
        x, y = x.to(device), y.to(device)
        for idx in batches(len(y), batch_size):
            idx = idx.to(device)
            xb, yb = to_unit(x[idx]), y[idx]
            if attack is not None:
                xb = attack(xb, yb).detach()
            with torch.no_grad():
                preds.append(model(xb).argmax(1).cpu())
            if keep_inputs:
                inputs.append(xb.cpu())
    return (torch.cat(inputs) if keep_inputs else None), torch.cat(preds)


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
    _, preds = predict_adversarial(
        model, x, y, batch_size=batch_size, device=device, attack=attack, keep_inputs=False
    )
    return accuracy(preds, y)
