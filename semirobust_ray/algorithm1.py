"""Algorithm 1 of the paper in plain Python: trials of f_b adversarial training, and their summary.

One trial (:func:`run_trial`) takes the frozen f*_a and the regularly trained f_b, adversarially
trains f_b for up to E epochs and stops as soon as it is within k of Acc*_val, decided by the
paired check of :mod:`semirobust_ray.paired` (the same validation images and attack randomness
as the baseline's, the gap counted in whole images). Its outcome is that check on its final
network (f_b at its best validation epoch). With ``test_eval: all`` it then measures its test
Acc and the class-conditional layer MI I_{j,t}; with ``best`` (the default) only the best trial
of each depth is, after the search (:mod:`semirobust_ray.final_eval`). The semirobust accuracy
Acc_sr of (f*_a, regular f_b) is a property of the depth, not of the trial: one trial of each
depth measures it and shares it with the others (:class:`AccSrShare`). A split depth's result
(:func:`summarise_depth`) is Acc = the test accuracy of the trial with the best validation
accuracy and ρ_j in both readings: the minimum over trials (the pseudo-code) and the best
trial's (the prose: "results are reported for the trial which achieves the highest adversarial
testing accuracy"; we choose that trial on validation, so the test set picks nothing).

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
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import torch

from semirobust_ray.baseline import Baseline
from semirobust_ray.data import TEST_SEED, stratified_subset
from semirobust_ray.experiment import Experiment
from semirobust_ray.models import Split, split, trainable_layers
from semirobust_ray.paired import (
    PairedCheck,
    count_check,
    paired_check,
    unpack_correct,
    within_k,
)
from semirobust_ray.training import (
    accuracy,
    cuda_rng_states,
    evaluate,
    make_optimizer,
    predict_adversarial,
    restore_cuda_rng_states,
    seed_everything,
    train_epoch,
)

logger = logging.getLogger(__name__)


def trial_seed(seed: int, fb_layers: int, trial: int | str) -> int:
    """A seed for trial ``trial`` of depth ``fb_layers``, stable across processes and runs."""
    digest = hashlib.sha256(f"{seed}:{fb_layers}:{trial}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def acc_sr_seed(seed: int, fb_layers: int) -> int:
    """The seed of a depth's Acc_sr evaluation: the depth's, so any trial measures the same."""
    return trial_seed(seed, fb_layers, "acc_sr")


class AccSrShare(Protocol):
    """Acc_sr of each split depth, measured by one of the depth's trials and shared.

    (f*_a, regular f_b) is the same network in all T trials of a depth, so one robust
    evaluation serves them all (on a CPU one AutoAttack evaluation of a VGG16 was most of a
    trial). A trial calls :meth:`claim` when it starts: it gets the value if it is known, True if
    it should measure it (then :meth:`put` it), or False if another trial is measuring it; then it
    asks :meth:`wait` at its end and measures the value itself if none came in time.
    """

    def claim(self, fb_layers: int, trial: int) -> float | bool: ...

    def put(self, fb_layers: int, value: float) -> None: ...

    def wait(self, fb_layers: int, timeout_s: float) -> float | None: ...


class LocalAccSr:
    """An in-process :class:`AccSrShare` (the plain runner, tests): trials run one by one."""

    def __init__(self, known: dict[int, float] | None = None) -> None:
        self.values: dict[int, float] = dict(known or {})

    def claim(self, fb_layers: int, trial: int) -> float | bool:
        return self.values.get(fb_layers, True)

    def put(self, fb_layers: int, value: float) -> None:
        self.values.setdefault(fb_layers, value)

    def wait(self, fb_layers: int, timeout_s: float) -> float | None:
        return self.values.get(fb_layers)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of f_b training: the numbers a trial reports after every epoch.

    The check is paired with the baseline's Acc*_val (:mod:`semirobust_ray.paired`): the same
    validation images, in the same order, under the stop attack with the same seed. The trial
    stops once ``within_k(gap_images, val_images, k)``.
    """

    epoch: int
    loss: float
    train_acc: float
    val_robust_acc: float
    gap: float  # Acc*_val - val robust accuracy, a fraction (gap_images / val_images)
    seconds: float
    train_seconds: float = 0.0  # the f_b training part of ``seconds``
    check_seconds: float = 0.0  # the validation check part
    gap_images: int = 0  # the baseline's correct validation images minus this network's
    val_images: int = 0  # validation images checked
    gap_se: float = 0.0  # standard error of ``gap`` from the paired per-image outcomes

    def within(self, k: float) -> bool:
        """Whether this epoch's network is within k of Acc*_val (the one predicate)."""
        return within_k(self.gap_images, self.val_images, k)


@dataclass
class TrialState:
    """Everything needed to continue a trial after its last finished epoch (f_b only).

    The random number generators come with it: ``data_rng`` (batch order, augmentation),
    ``torch_rng`` (the CPU global RNG: dropout masks on a CPU) and ``cuda_rng``, the global RNG
    of every CUDA device (dropout masks on a GPU), one uint8 tensor per device, empty when the
    trial's process never initialised CUDA. Attack random starts need none of them: attacks
    are seeded per epoch. A checkpoint restored on a machine with fewer CUDA devices restores
    the first ones (see :func:`semirobust_ray.training.restore_cuda_rng_states`).
    """

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
    # Checkpoints written before it existed load with [] (and resume with seeded CUDA RNGs).
    cuda_rng: list[torch.Tensor] = field(default_factory=list)
    # Compute spent so far, carried across resumes (the final evaluation and MI come on top).
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    measured_acc_sr: bool = False  # this trial ran the depth's Acc_sr evaluation

    def to_dict(self) -> dict[str, Any]:
        """Tensors and plain containers only, so it loads with ``weights_only=True``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialState:
        return cls(**d)


@dataclass
class TrialResult:
    """The outcome of one Algorithm 1 trial; accuracies are fractions on the test split.

    The trial's final network is f_b at its best validation epoch (the stopping epoch when it
    reached), and its outcome is that epoch's paired check against the baseline: ``reached`` =
    ``within_k(gap_images, val_images, k)``, with ``gap_se`` its paired standard error and
    ``val_acc`` its validation robust accuracy. ``acc``, ``clean_acc`` and ``mi`` (the test
    evaluation) are measured inside the trial only with ``test_eval: all``; with ``best`` they
    are NaN and empty (``test_evaluated`` False) until :mod:`semirobust_ray.final_eval`
    evaluates the best trial of the depth.
    """

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
    # Compute spent, in seconds: f_b training; robust evaluations (Acc_sr when this trial
    # measured it, the per-epoch checks, the final test evaluation); the layer MI.
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    mi_seconds: float = 0.0
    measured_acc_sr: bool = False  # this trial ran the depth's (shared) Acc_sr evaluation
    # The final network's paired check on the validation images (None: stored before it was
    # recorded): the gap in images, the images, the gap's standard error (a fraction), and the
    # final network's validation robust accuracy.
    gap_images: int | None = None
    val_images: int | None = None
    gap_se: float | None = None
    val_acc: float | None = None
    # Whether acc, clean_acc and mi were measured (results stored before test_eval: True).
    test_evaluated: bool = True
    # The trial's final f_b (the network Acc was measured on, with f*_a); not part of to_dict.
    fb_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def diff(self) -> float:
        """Acc* − Acc, as in Table 1."""
        return self.acc_star - self.acc

    @property
    def epochs_to_reach(self) -> int | None:
        """The epoch at which the trial came within k of Acc*_val (it stops there), or None."""
        return self.epochs_run if self.reached else None

    def mi_bits(self, j: int) -> float:
        """I_{j,t} of this trial, NaN when the pair was not measured."""
        return next((float(p["bits"]) for p in self.mi if int(p["j"]) == j), math.nan)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable numbers (everything but the weights), with Diff."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "fb_state"}
        return {**copy.deepcopy(out), "diff": self.diff}


@dataclass
class _Trial:
    """What a running trial's helpers share: its experiment and baseline, who it is (depth,
    index, seed, log tag) and what it trains with (the split network, its optimizer, the data
    generator). Set up once by :func:`run_trial`; what changes per epoch is in
    :class:`TrialState`."""

    exp: Experiment
    baseline: Baseline
    fb_layers: int
    index: int
    seed: int
    tag: str
    split: Split
    optimizer: torch.optim.Optimizer
    gen: torch.Generator


def semirobust_model(exp: Experiment, baseline: Baseline, fb_layers: int) -> Split:
    """(f*_a, f_b): robust weights with the regularly trained f_b loaded on top, f*_a frozen."""
    model = exp.build_model()
    model.load_state_dict(baseline.robust_state)
    s = split(model, fb_layers)
    s.load_fb_state(s.fb_subset(baseline.regular_state))
    return s


def measure_acc_sr(exp: Experiment, baseline: Baseline, fb_layers: int) -> float:
    """Acc_sr: robust test accuracy of (f*_a, regular f_b) under ``eval_attack``, depth-seeded.

    It builds its own copy of the network, under a forked RNG: the trial that measures it draws
    the same random numbers afterwards as the trials that take the shared value.
    """
    with torch.random.fork_rng(devices=[]):
        s = semirobust_model(exp, baseline, fb_layers)
    x_test, y_test = exp.eval_split("test")
    attack = exp.eval_attack(s.model, acc_sr_seed(exp.config.seed, fb_layers))
    try:
        return evaluate(
            s.model,
            x_test,
            y_test,
            attack=attack,
            batch_size=exp.config.eval_batch,
            device=exp.device,
        )
    finally:
        s.release()


def run_trial(
    exp: Experiment,
    baseline: Baseline,
    fb_layers: int,
    trial: int,
    *,
    state: TrialState | None = None,
    on_epoch: Callable[[EpochRecord, TrialState], None] | None = None,
    acc_sr: AccSrShare | None = None,
) -> TrialResult:
    """Run (or, given ``state``, continue) trial ``trial`` of split depth ``fb_layers``.

    ``acc_sr`` shares the depth's Acc_sr between its trials; without one, the trial measures it.
    """
    c = exp.config
    seed = trial_seed(c.seed, fb_layers, trial)
    start = time.perf_counter()
    gen = seed_everything(seed, deterministic=c.deterministic)
    s = semirobust_model(exp, baseline, fb_layers)
    optimizer = make_optimizer(s.fb_parameters(), c.lr, c.momentum, c.weight_decay)
    t = _Trial(
        exp=exp,
        baseline=baseline,
        fb_layers=fb_layers,
        index=trial,
        seed=seed,
        tag=f"[trial |f_b|={fb_layers} t={trial}]",
        split=s,
        optimizer=optimizer,
        gen=gen,
    )
    share = acc_sr if acc_sr is not None else LocalAccSr()
    if state is None:
        state = TrialState(
            epoch=0,
            acc_sr=math.nan,
            history=[],
            fb_state={},
            optimizer_state={},
            best_epoch=0,
            best_val=-math.inf,
            best_fb_state=s.fb_state(),
            data_rng=gen.get_state(),
            torch_rng=torch.get_rng_state(),
            cuda_rng=cuda_rng_states(),
        )
        _claim_acc_sr(t, share, state)
    else:
        s.load_fb_state(state.fb_state)
        optimizer.load_state_dict(state.optimizer_state)
        gen.set_state(state.data_rng)
        torch.set_rng_state(state.torch_rng)
        _restore_cuda_rng(t, state)
        logger.info(f"{t.tag} resuming after epoch {state.epoch}")

    reached = _train_fb(t, state, on_epoch)
    if math.isnan(state.acc_sr):
        _collect_acc_sr(t, share, state, time.perf_counter() - start)
    result = _final_evaluation(t, state, reached)
    result.seconds = time.perf_counter() - start
    s.release()
    return result


def _restore_cuda_rng(t: _Trial, state: TrialState) -> None:
    """Put back the checkpoint's CUDA RNG states; say so when the trial's own GPU gets none
    (a checkpoint from a CPU, an older one, or one from a machine with fewer GPUs), since its
    dropout masks will then differ from an uninterrupted run's."""
    restored = restore_cuda_rng_states(state.cuda_rng)
    device = t.exp.device
    if device.type != "cuda":
        return  # a CPU trial draws nothing from the CUDA RNGs
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= restored:
        logger.warning(
            f"{t.tag} note: the checkpoint holds no CUDA RNG state for cuda:{index} "
            f"({len(state.cuda_rng)} saved); dropout masks restart from the trial's seed"
        )


def _claim_acc_sr(t: _Trial, share: AccSrShare, state: TrialState) -> None:
    """At a trial's start: take the depth's Acc_sr, measure it for everyone, or leave it NaN
    while another trial measures it (collected at the end, see :func:`_collect_acc_sr`)."""
    claim = share.claim(t.fb_layers, t.index)
    if claim is True:
        t0 = time.perf_counter()
        state.acc_sr = measure_acc_sr(t.exp, t.baseline, t.fb_layers)
        state.eval_seconds += time.perf_counter() - t0
        state.measured_acc_sr = True
        share.put(t.fb_layers, state.acc_sr)
        logger.info(f"{t.tag} Acc_sr = {state.acc_sr:.4f}")
    elif claim is not False:
        state.acc_sr = float(claim)


def _collect_acc_sr(t: _Trial, share: AccSrShare, state: TrialState, elapsed: float) -> None:
    """At a trial's end: the Acc_sr another trial measured, or our own measurement (on a fresh
    (f*_a, regular f_b), not this trial's trained f_b) when it did not come within as long as
    this trial has run (the measuring trial failed or is slow)."""
    value = share.wait(t.fb_layers, timeout_s=max(60.0, elapsed))
    if value is None:
        t0 = time.perf_counter()
        value = measure_acc_sr(t.exp, t.baseline, t.fb_layers)
        state.eval_seconds += time.perf_counter() - t0
        state.measured_acc_sr = True
        share.put(t.fb_layers, value)
    state.acc_sr = float(value)


def _train_fb(
    t: _Trial, state: TrialState, on_epoch: Callable[[EpochRecord, TrialState], None] | None
) -> bool:
    """Adversarial f_b epochs until within k of Acc*_val or E epochs; True when it reached."""
    c = t.exp.config
    reached = bool(state.history) and epoch_check(t.exp, t.baseline, state.history[-1]).within(c.k)
    while not reached and state.epoch < c.epochs:
        record = _fb_epoch(t, state.epoch + 1)
        _record_epoch(t, state, record)
        reached = record.within(c.k)
        logger.info(
            f"{t.tag} epoch {record.epoch}/{c.epochs}: "
            f"loss {record.loss:.4f}, val robust {record.val_robust_acc:.4f}, "
            f"gap to Acc*_val {record.gap_images:+d} of {record.val_images} images "
            f"(± {record.gap_se * record.val_images:.1f})"
            + (" -> within k, stopping" if reached else "")
        )
        if on_epoch is not None:
            on_epoch(record, state)
    return reached


def _fb_epoch(t: _Trial, epoch: int) -> EpochRecord:
    """Epoch ``epoch`` (from 1) of adversarial f_b training, then the stop check on val."""
    exp, model = t.exp, t.split.model
    c = exp.config
    t0 = time.perf_counter()
    # Attacks are seeded per epoch, so a trial resumed from a checkpoint draws the same
    # random starts as one that never stopped.
    epoch_seed = (t.seed + 7919 * epoch) % 2**31
    stats = train_epoch(
        model,
        exp.data.x_train,
        exp.data.y_train,
        t.optimizer,
        generator=t.gen,
        attack=exp.train_attack(model, epoch_seed),
        method=c.train_method,
        bf16=c.precision == "bf16",
        augment=c.augment_enabled,
        batch_size=c.batch_size,
        device=exp.device,
    )
    t1 = time.perf_counter()
    check = validation_check(exp, t.baseline, model)
    t2 = time.perf_counter()
    return EpochRecord(
        epoch=epoch,
        loss=stats.loss,
        train_acc=stats.accuracy,
        val_robust_acc=check.accuracy,
        gap=check.gap,
        seconds=t2 - t0,
        train_seconds=t1 - t0,
        check_seconds=t2 - t1,
        gap_images=check.gap_images,
        val_images=check.n_images,
        gap_se=check.se,
    )


def validation_check(exp: Experiment, baseline: Baseline, model: torch.nn.Module) -> PairedCheck:
    """``model`` against the baseline on the validation images: the paired check.

    The stop attack is seeded exactly as for the baseline's Acc*_val (the config's ``seed``,
    the same images in the same order, batches of ``eval_batch``), so both networks meet the
    same attack randomness and the comparison is paired image by image. Against a baseline
    stored without per-image outcomes (``val_correct`` None) it compares counts
    (:func:`semirobust_ray.paired.count_check`).
    """
    c = exp.config
    x_val, y_val = exp.eval_split("val")
    _, preds = predict_adversarial(
        model,
        x_val,
        y_val,
        attack=exp.stop_attack(model, c.seed),
        batch_size=c.eval_batch,
        device=exp.device,
        keep_inputs=False,
    )
    correct = preds == y_val.cpu()
    m = baseline.metrics
    if m.val_correct is None:
        return count_check(m.acc_star_val, len(correct), int(correct.sum()))
    return paired_check(unpack_correct(m.val_correct), correct)


def epoch_check(exp: Experiment, baseline: Baseline, h: dict[str, Any]) -> PairedCheck:
    """The paired check of a recorded epoch (``EpochRecord`` as a dict). An epoch recorded
    before the check was paired (a checkpoint of an older version) has only fractions: its
    counts are recovered on the validation images (:func:`semirobust_ray.paired.count_check`).
    """
    if h.get("val_images"):
        n, gap = int(h["val_images"]), int(h["gap_images"])
        base = round(baseline.metrics.acc_star_val * n)
        return PairedCheck(n, base, base - gap, gap, float(h["gap_se"]) * n)
    n = len(exp.eval_split("val")[1])
    return count_check(baseline.metrics.acc_star_val, n, round(float(h["val_robust_acc"]) * n))


def _record_epoch(t: _Trial, state: TrialState, record: EpochRecord) -> None:
    """Everything a resume needs after ``record``'s epoch, and the best epoch so far, into
    ``state`` (the checkpoint)."""
    state.epoch = record.epoch
    state.history.append(asdict(record))
    state.fb_state = t.split.fb_state()
    state.optimizer_state = t.optimizer.state_dict()
    state.data_rng = t.gen.get_state()
    state.torch_rng = torch.get_rng_state()
    state.cuda_rng = cuda_rng_states()
    state.train_seconds += record.train_seconds
    state.eval_seconds += record.check_seconds
    if record.val_robust_acc > state.best_val:
        state.best_epoch, state.best_val = record.epoch, record.val_robust_acc
        state.best_fb_state = state.fb_state


def _final_evaluation(t: _Trial, state: TrialState, reached: bool) -> TrialResult:
    """The trial's network (f_b at its best validation epoch, the stopping epoch if it reached)
    and its outcome: that epoch's paired check. With ``test_eval: all`` also its test
    evaluation (:func:`final_test_evaluation`); with ``best`` that is left to
    :mod:`semirobust_ray.final_eval`, for the best trial of each depth only."""
    exp, baseline, s, seed = t.exp, t.baseline, t.split, t.seed
    c = exp.config
    if state.best_epoch:
        s.load_fb_state(state.best_fb_state)
    best = next((h for h in state.history if h["epoch"] == state.best_epoch), None)
    check = (
        epoch_check(exp, baseline, best)
        if best is not None
        else validation_check(exp, baseline, s.model)
    )
    # The same decision as the epoch loop's: an epoch within k is the best epoch so far (every
    # earlier one had fewer correct images), so the trial stops at its best epoch.
    if check.within(c.k) != reached:
        raise AssertionError(f"trial outcome {check} disagrees with the epoch loop ({reached})")
    ev = final_test_evaluation(exp, s, seed) if c.test_eval == "all" else None
    return TrialResult(
        fb_layers=s.fb_layers,
        trial=t.index,
        seed=seed,
        acc_star=baseline.acc_star,
        acc_sr=state.acc_sr,
        acc=ev.acc if ev else math.nan,
        clean_acc=ev.clean_acc if ev else math.nan,
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        reached=reached,  # = check.within(c.k), asserted above
        seconds=0.0,
        history=state.history,
        mi=ev.mi if ev else [],
        train_seconds=state.train_seconds,
        eval_seconds=state.eval_seconds + (ev.eval_seconds if ev else 0.0),
        mi_seconds=ev.mi_seconds if ev else 0.0,
        measured_acc_sr=state.measured_acc_sr,
        gap_images=check.gap_images,
        val_images=check.n_images,
        gap_se=check.se,
        val_acc=check.accuracy,
        test_evaluated=ev is not None,
        fb_state=s.fb_state(),
    )


@dataclass(frozen=True)
class FinalEvaluation:
    """A trial's final network on the test split: Acc under ``eval_attack`` (seeded with the
    trial's seed), clean accuracy, the layer MI (empty with ``mi: false``), and their seconds."""

    acc: float
    clean_acc: float
    mi: list[dict[str, Any]]
    eval_seconds: float
    mi_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def final_test_evaluation(exp: Experiment, s: Split, seed: int) -> FinalEvaluation:
    """Acc, clean Acc and I_{j,t} of the network ``s`` holds (f*_a with the trial's final f_b)."""
    c = exp.config
    x_test, y_test = exp.eval_split("test")
    kw = {"batch_size": c.eval_batch, "device": exp.device}
    t0 = time.perf_counter()
    x_adv, preds = predict_adversarial(
        s.model, x_test, y_test, attack=exp.eval_attack(s.model, seed), **kw
    )
    clean_acc = evaluate(s.model, exp.data.x_test, exp.data.y_test, **kw)
    t1 = time.perf_counter()
    mi = trial_mi(exp, s, x_adv, y_test, seed) if c.mi else []
    return FinalEvaluation(
        acc=accuracy(preds, y_test),
        clean_acc=clean_acc,
        mi=mi,
        eval_seconds=t1 - t0,
        mi_seconds=time.perf_counter() - t1,
    )


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
        # A seeded, class-stratified subset, as for eval_samples: the first images of a
        # class-sorted test set would leave whole classes out of I_j = sum_y pi(y) I(.|y).
        keep = stratified_subset(y, c.mi_samples, TEST_SEED)
        x_adv, y = x_adv[keep], y[keep]
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
    acc: float  # test robust accuracy of the best trial (by validation accuracy)
    reached: bool  # some trial came within k of Acc* (on validation)
    trials: int
    epochs: int  # trial-epochs spent on this depth
    rho: dict[int, float]  # j -> min over trials of I_{j,t} (Algorithm 1's pseudo-code)
    best_trial: int
    # j -> I_{j,t} of the best trial (the paper's prose reports that trial's values)
    rho_best: dict[int, float] = field(default_factory=dict)

    @property
    def diff(self) -> float:
        return self.acc_star - self.acc

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rho"] = {str(j): v for j, v in self.rho.items()}
        d["rho_best"] = {str(j): v for j, v in self.rho_best.items()}
        d["diff"] = self.diff
        return d


def best_trial(trials: list[TrialResult]) -> TrialResult:
    """The depth's best trial: the highest final validation robust accuracy (``val_acc``; ties:
    the lowest trial index). Results stored before ``val_acc`` was recorded fall back to the
    test ``acc`` (the old rule). The one choice both the summary and the ``test_eval: best``
    evaluations make, so the trial Table 1 reports is the trial that was evaluated."""
    if not trials:
        raise ValueError("no trials to choose from")
    if all(t.val_acc is not None for t in trials):
        return max(trials, key=lambda t: (t.val_acc, -t.trial))
    return max(trials, key=lambda t: (t.acc if not math.isnan(t.acc) else -math.inf, -t.trial))


def summarise_depth(trials: list[TrialResult]) -> DepthSummary:
    """The depth's best trial (:func:`best_trial`, by validation accuracy) gives Acc, its test
    robust accuracy; ρ_j = min_t I_{j,t} over the trials whose MI was measured (pseudo-code;
    with ``test_eval: best`` that is the best trial's alone) and the best trial's I_{j,t}."""
    if not trials:
        raise ValueError("no trials to summarise")
    best = best_trial(trials)
    rho: dict[int, float] = {}
    for t in trials:
        for pair in t.mi:
            j = int(pair["j"])
            rho[j] = min(rho.get(j, math.inf), float(pair["bits"]))
    # Shared by the depth's trials; results stored before it was shared hold one per trial.
    acc_sr = best.acc_sr
    if math.isnan(acc_sr):
        acc_sr = next((t.acc_sr for t in trials if not math.isnan(t.acc_sr)), math.nan)
    return DepthSummary(
        fb_layers=best.fb_layers,
        acc_star=best.acc_star,
        acc_sr=acc_sr,
        acc=best.acc,
        reached=any(t.reached for t in trials),
        trials=len(trials),
        epochs=sum(t.epochs_run for t in trials),
        rho=dict(sorted(rho.items())),
        best_trial=best.trial,
        rho_best={int(p["j"]): float(p["bits"]) for p in sorted(best.mi, key=lambda p: p["j"])},
    )
