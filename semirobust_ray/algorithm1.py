"""Algorithm 1 of the paper in plain Python: trials of f_b adversarial training, and their summary.

One trial (:func:`run_trial`) takes the frozen f*_a and the regularly trained f_b, measures the
semirobust accuracy Acc_sr, adversarially trains f_b for up to E epochs and stops as soon as
Acc* − Acc ≤ k, then measures the class-conditional layer MI I_{j,t}. A split depth's result
(:func:`summarise_depth`) is Acc = the best trial's accuracy and ρ_j = min_t I_{j,t}.

Validation versus test (a deliberate difference from the paper's pseudo-code, which stops on
test accuracy): the k-stop and the choice of a trial's best epoch use robust accuracy on the
VALIDATION split against Acc* measured on that split, so the test set never steers training.
The reported Acc, Acc_sr and Acc* are robust accuracies on the TEST split under ``eval_attack``;
the per-epoch check may use a cheaper ``stop_attack`` (e.g. PGD while Acc is AutoAttack's), and
then Acc*_val is measured with that same attack, so the gap compares like with like.

Everything here runs without Ray; :mod:`semirobust_ray.trial` wraps :func:`run_trial` as a Ray
Tune trainable and passes ``on_epoch`` to report and checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from semirobust_ray.baseline import Baseline
from semirobust_ray.experiment import Experiment
from semirobust_ray.models import Split, split, trainable_layers
from semirobust_ray.training import (
    accuracy,
    evaluate,
    make_optimizer,
    predict_adversarial,
    seed_everything,
    train_epoch,
)


def trial_seed(seed: int, fb_layers: int, trial: int) -> int:
    """A seed for trial ``trial`` of depth ``fb_layers``, stable across processes and runs."""
    digest = hashlib.sha256(f"{seed}:{fb_layers}:{trial}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of f_b training: the numbers a trial reports after every epoch."""

    epoch: int
    loss: float
    train_acc: float
    val_robust_acc: float
    gap: float  # Acc*_val - val robust accuracy; the trial stops once gap <= k
    seconds: float


@dataclass
class TrialState:
    """Everything needed to continue a trial after its last finished epoch (f_b only)."""

    epoch: int
    acc_sr: float
    history: list[dict[str, float]]
    fb_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    best_epoch: int
    best_val: float
    best_fb_state: dict[str, torch.Tensor]
    data_rng: torch.Tensor
    torch_rng: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        """Tensors and plain containers only, so it loads with ``weights_only=True``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialState:
        return cls(**d)


@dataclass
class TrialResult:
    """The outcome of one Algorithm 1 trial; accuracies are fractions on the test split."""

    fb_layers: int
    trial: int
    seed: int
    acc_star: float
    acc_sr: float
    acc: float
    clean_acc: float
    best_epoch: int
    epochs_run: int
    reached: bool
    seconds: float
    history: list[dict[str, float]]
    mi: list[dict[str, Any]] = field(default_factory=list)  # one per consecutive layer pair
    # The trial's final f_b (the network Acc was measured on, with f*_a); not part of to_dict.
    fb_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def diff(self) -> float:
        """Acc* − Acc, as in Table 1."""
        return self.acc_star - self.acc

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable numbers (everything but the weights), with Diff."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "fb_state"}
        return {**copy.deepcopy(out), "diff": self.diff}


def semirobust_model(exp: Experiment, baseline: Baseline, fb_layers: int) -> Split:
    """(f*_a, f_b): robust weights with the regularly trained f_b loaded on top, f*_a frozen."""
    model = exp.build_model()
    model.load_state_dict(baseline.robust_state)
    s = split(model, fb_layers)
    prefixes = tuple(f"{m}." for m in s.fb_modules)
    s.load_fb_state({k: v for k, v in baseline.regular_state.items() if k.startswith(prefixes)})
    return s


def run_trial(
    exp: Experiment,
    baseline: Baseline,
    fb_layers: int,
    trial: int,
    *,
    state: TrialState | None = None,
    on_epoch: Callable[[EpochRecord, TrialState], None] | None = None,
    log: Callable[[str], None] = print,
) -> TrialResult:
    """Run (or, given ``state``, continue) trial ``trial`` of split depth ``fb_layers``."""
    c = exp.config
    seed = trial_seed(c.seed, fb_layers, trial)
    start = time.perf_counter()
    gen = seed_everything(seed)
    s = semirobust_model(exp, baseline, fb_layers)
    model = s.model
    optimizer = make_optimizer(s.fb_parameters(), c.lr, c.momentum, c.weight_decay)
    kw = {"batch_size": c.eval_batch, "device": exp.device}
    x_val, y_val = exp.eval_split("val")
    x_test, y_test = exp.eval_split("test")
    if state is None:
        acc_sr = evaluate(model, x_test, y_test, attack=exp.eval_attack(model, seed), **kw)
        state = TrialState(
            0,
            acc_sr,
            [],
            {},
            {},
            0,
            -math.inf,
            s.fb_state(),
            gen.get_state(),
            torch.get_rng_state(),
        )
        log(f"[trial |f_b|={fb_layers} t={trial}] Acc_sr = {acc_sr:.4f}")
    else:
        s.load_fb_state(state.fb_state)
        optimizer.load_state_dict(state.optimizer_state)
        gen.set_state(state.data_rng)
        torch.set_rng_state(state.torch_rng)
        log(f"[trial |f_b|={fb_layers} t={trial}] resuming after epoch {state.epoch}")

    reached = bool(state.history) and state.history[-1]["gap"] <= c.k
    while not reached and state.epoch < c.epochs:
        t0 = time.perf_counter()
        d = exp.data
        # Attacks are seeded per epoch, so a trial resumed from a checkpoint draws the same
        # random starts as one that never stopped.
        epoch_seed = (seed + 7919 * (state.epoch + 1)) % 2**31
        attack = exp.train_attack(model, epoch_seed)
        stats = train_epoch(
            model,
            d.x_train,
            d.y_train,
            optimizer,
            generator=gen,
            attack=attack,
            method=c.train_method,
            bf16=c.precision == "bf16",
            augment=c.augment_enabled,
            batch_size=c.batch_size,
            device=exp.device,
        )
        val = evaluate(model, x_val, y_val, attack=exp.stop_attack(model, epoch_seed), **kw)
        record = EpochRecord(
            epoch=state.epoch + 1,
            loss=stats.loss,
            train_acc=stats.accuracy,
            val_robust_acc=val,
            gap=baseline.metrics.acc_star_val - val,
            seconds=time.perf_counter() - t0,
        )
        state.epoch = record.epoch
        state.history.append(asdict(record))
        state.fb_state = s.fb_state()
        state.optimizer_state = optimizer.state_dict()
        state.data_rng = gen.get_state()
        state.torch_rng = torch.get_rng_state()
        if val > state.best_val:
            state.best_epoch, state.best_val, state.best_fb_state = (
                record.epoch,
                val,
                state.fb_state,
            )
        reached = record.gap <= c.k
        log(
            f"[trial |f_b|={fb_layers} t={trial}] epoch {record.epoch}/{c.epochs}: "
            f"loss {record.loss:.4f}, val robust {val:.4f}, gap to Acc* {record.gap:+.4f}"
            + (" -> within k, stopping" if reached else "")
        )
        if on_epoch is not None:
            on_epoch(record, state)

    # The trial's network is f_b at its best validation epoch (the stopping epoch if it reached).
    if state.best_epoch:
        s.load_fb_state(state.best_fb_state)
    x_adv, preds = predict_adversarial(
        model, x_test, y_test, attack=exp.eval_attack(model, seed), **kw
    )
    result = TrialResult(
        fb_layers=fb_layers,
        trial=trial,
        seed=seed,
        acc_star=baseline.acc_star,
        acc_sr=state.acc_sr,
        acc=accuracy(preds, y_test),
        clean_acc=evaluate(model, exp.data.x_test, exp.data.y_test, **kw),
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        reached=reached,
        seconds=time.perf_counter() - start,
        history=state.history,
        fb_state=s.fb_state(),
    )
    if c.mi:
        result.mi = trial_mi(exp, s, x_adv, y_test, seed)
    s.release()
    return result


def trial_mi(
    exp: Experiment, s: Split, x_adv: torch.Tensor, y: torch.Tensor, seed: int
) -> list[dict[str, Any]]:
    """I_{j,t} for every consecutive layer pair from f_a's last layer to the output.

    Measured on the adversarial test set the trial's Acc was measured on (``eval_attack``).
    """
    from semirobust_ray.mi import layer_mi

    c = exp.config
    a = s.split_index
    layers = trainable_layers(s.model)
    first = max(a - 1, 0)
    if c.mi_samples is not None:
        x_adv, y = x_adv[: c.mi_samples], y[: c.mi_samples]
    pairs = layer_mi(
        s.model,
        layers[first:],
        x_adv,
        y,
        first_index=first + 1,
        batch_size=c.batch_size,
        proj_dim=c.mi_proj_dim,
        seed=seed,
        estimator=c.mi_estimator,
        device=exp.device,
        # Without CPUs reserved for them, MI tasks inside a trial would wait forever.
        use_ray=None if c.mi_cpus > 0 else False,
    )
    return [asdict(p) for p in pairs]


@dataclass
class DepthSummary:
    """One row of Table 1: a split depth's result over its T trials."""

    fb_layers: int
    acc_star: float
    acc_sr: float
    acc: float  # best trial's test robust accuracy
    reached: bool  # some trial came within k of Acc* (on validation)
    trials: int
    epochs: int  # trial-epochs spent on this depth
    rho: dict[int, float]  # j -> min over trials of I_{j,t}
    best_trial: int

    @property
    def diff(self) -> float:
        return self.acc_star - self.acc

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rho"] = {str(j): v for j, v in self.rho.items()}
        d["diff"] = self.diff
        return d


def summarise_depth(trials: list[TrialResult]) -> DepthSummary:
    """Acc = max_t Acc_t and ρ_j = min_t I_{j,t}, as in Algorithm 1."""
    if not trials:
        raise ValueError("no trials to summarise")
    best = max(trials, key=lambda t: t.acc)
    rho: dict[int, float] = {}
    for t in trials:
        for pair in t.mi:
            j = int(pair["j"])
            rho[j] = min(rho.get(j, math.inf), float(pair["bits"]))
    return DepthSummary(
        fb_layers=best.fb_layers,
        acc_star=best.acc_star,
        acc_sr=best.acc_sr,
        acc=best.acc,
        reached=any(t.reached for t in trials),
        trials=len(trials),
        epochs=sum(t.epochs_run for t in trials),
        rho=dict(sorted(rho.items())),
        best_trial=best.trial,
    )


def minimal_depth(summaries: list[DepthSummary]) -> int | None:
    """The smallest |f_b| whose trials reached Acc* − k, or None when none did."""
    reached = [s.fb_layers for s in summaries if s.reached]
    return min(reached) if reached else None
