"""Stage 1 of Algorithm 1: regular, then adversarial training of the whole network, cached.

The regular weights give every trial its starting f_b; the adversarial weights give the frozen
f*_a and the target robust accuracy Acc*. Both are expensive, so they are stored on disk under a
key made of everything that determines them (config fields, the exact data, a hash of the code)
and a second search with the same settings reuses them. Each cache entry carries SHA-256 sums of
its weight files; an entry that fails them is rebuilt, never silently used.

With a ``baseline:`` section (:mod:`semirobust_ray.pretrained`) the two networks are loaded
instead of trained and only measured here; the cache then keeps the measurements of exactly
those files (their SHA-256 sums are part of the record).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from semirobust_ray.experiment import Experiment, external_attacks_fingerprint
from semirobust_ray.models import external_code_fingerprint, model_slug
from semirobust_ray.paired import pack_correct
from semirobust_ray.pretrained import load_networks
from semirobust_ray.storage import CorruptFileError, Store
from semirobust_ray.training import (
    AttackFn,
    accuracy,
    evaluate,
    make_optimizer,
    predict_adversarial,
    seed_everything,
    train_epoch,
)

logger = logging.getLogger(__name__)

#: The modules whose code determines a baseline (data splits, model, attacks, training and
#: evaluation loops, this stage itself): the cache key holds a hash of their source, so any
#: change to them makes cached baselines miss without anyone remembering to bump a version.
BASELINE_MODULES = ("data", "models", "attacks", "training", "experiment", "baseline")

#: Config fields that determine the baseline; anything else (split depths, k, E, T, search,
#: resources) leaves it unchanged.
BASELINE_FIELDS = (
    "model",
    "model_kwargs",  # a timm or factory model's size and options: another network
    "width",
    "dataset",
    "image_size",
    "val_fraction",
    "max_train",
    "max_test",
    "augment",
    "attack",
    "eps",
    "alpha",
    "steps",
    "eval_attack",
    "stop_attack",
    "attack_kwargs",  # options of an attack's own (PGD's random_start, C&W's c): other attacks
    "eval_samples",
    "val_samples",
    "eval_batch_size",
    "seed",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "baseline_epochs",
    "baseline_adv_epochs",
    "baseline_init",
    "precision",
    # GPU numerics (TF32, cuDNN's algorithm choice) differ with it, so the weights do too.
    "deterministic",
    "baseline",  # given networks (their robust: and regular: references)
)


@dataclass(frozen=True)
class BaselineMetrics:
    """What stage 1 measured; accuracies are fractions, robust ones under the eval attack."""

    acc_star: float  # Acc*: robust test accuracy of (f*_a, f*_b)
    acc_star_val: float  # the same on the validation split, which trials stop against
    clean_acc_robust: float
    clean_acc_regular: float
    robust_acc_regular: float
    seconds: float
    # The training loops alone; what semirobust training of f_b is weighed against (the
    # frontier's cost columns). None in baselines stored before they were recorded.
    regular_train_seconds: float | None = None
    adv_train_seconds: float | None = None
    # Where given networks came from (a baseline: section): spec, location, SHA-256 per role.
    source: dict[str, Any] | None = None
    # Every training epoch: {"stage": "regular" | "adversarial", "epoch", "loss", "train_acc",
    # "seconds"}; the baseline's TensorBoard run. None for given networks and older baselines.
    history: list[dict[str, Any]] | None = None
    # The validation images Acc*_val was measured on, and which of them (f*_a, f*_b) classified
    # correctly under the stop attack seeded with the config's seed, packed
    # (semirobust_ray.paired.pack_correct): every trial's check is paired with it image by
    # image. None in baselines stored before they were recorded: trials against such a
    # baseline compare counts only (semirobust_ray.paired.count_check).
    val_images: int | None = None
    val_correct: str | None = None
    # The test images Acc* (and every trial's Acc) was measured on: the standard error of a
    # test Diff. None in baselines stored before it was recorded (eval_samples stands in).
    test_images: int | None = None


@dataclass
class Baseline:
    """Regular and adversarially trained weights of the full network, with their metrics."""

    key: str
    path: str  # where it is stored: a directory or a storage URI
    regular_state: dict[str, torch.Tensor]
    robust_state: dict[str, torch.Tensor]
    metrics: BaselineMetrics
    reused: bool = False

    @property
    def acc_star(self) -> float:
        return self.metrics.acc_star


@functools.cache
def code_fingerprint() -> str:
    """A hash of the source of :data:`BASELINE_MODULES` and of the torch version."""
    h = hashlib.sha256(torch.__version__.encode())
    for name in BASELINE_MODULES:
        module = importlib.import_module(f"semirobust_ray.{name}")
        h.update(name.encode() + b"\0" + Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]


def baseline_key(exp: Experiment) -> str:
    """Cache key: baseline-relevant config fields, the data's fingerprint and the code's."""
    c = exp.config.to_dict()
    fields = {name: c[name] for name in BASELINE_FIELDS}
    fields.update(
        # Resolved, so null and the dataset's default spelled out share one baseline.
        augment=exp.config.augment_enabled,
        eval_attack=exp.config.eval_attack_name,
        stop_attack=exp.config.stop_attack_name,
        # {} and null are the same (no keyword arguments).
        model_kwargs=exp.config.model_kwargs or None,
        # Which networks, not where RobustBench keeps them or whether it may download.
        baseline=(
            {role: exp.config.baseline[role] for role in ("robust", "regular")}
            if exp.config.baseline
            else None
        ),
        data=exp.data_fingerprint,
        code=code_fingerprint(),
    )
    model_code = external_code_fingerprint(exp.config.model)
    if model_code is not None:  # a registry model's code is in code_fingerprint() already
        fields["model_code"] = model_code
    attack_code = external_attacks_fingerprint(exp.config)
    if attack_code is not None:  # likewise a registered attack's
        fields["attack_code"] = attack_code
    blob = json.dumps(fields, sort_keys=True).encode()
    model = model_slug(exp.config.model)
    return f"{model}-{exp.config.dataset}-{hashlib.sha256(blob).hexdigest()[:16]}"


BASELINE_FILE = "baseline.json"


def load_baseline(where: Store | str | os.PathLike) -> Baseline:
    """Read a stored baseline (a cache entry, or a search's ``baseline/``, local or at a URI),
    verifying both weight files against their recorded checksums."""
    store = Store.of(where)
    meta = store.read_json(BASELINE_FILE)
    try:
        regular = store.load_state("regular.pt", meta["sha256"]["regular.pt"])
        robust = store.load_state("robust.pt", meta["sha256"]["robust.pt"])
        metrics = BaselineMetrics(**meta["metrics"])
        key = meta["key"]
    except (KeyError, TypeError, AttributeError) as err:
        # A hand-edited or partly written record: as unusable as a failed checksum.
        raise CorruptFileError(f"{store.uri(BASELINE_FILE)} is incomplete ({err!r})") from None
    return Baseline(key, store.uri(), regular, robust, metrics, reused=True)


def get_baseline(exp: Experiment, *, cache_dir: str | None = None) -> Baseline:
    """Return the cached baseline for ``exp`` or train it (regular, then adversarial) and cache it.

    ``cache_dir`` (default: the config's) is resolved here, by the process that trains, so a
    ``~`` means the home directory of the node that uses the cache.
    """
    key = baseline_key(exp)
    cache = Store(Path(cache_dir or exp.config.cache_dir).expanduser() / key)
    if exp.sources is not None:
        return _given_baseline(exp, key, cache)
    if cache.is_file(BASELINE_FILE):
        try:
            baseline = load_baseline(cache)
            logger.info(f"[baseline] reusing {cache.uri()} (Acc* = {baseline.acc_star:.4f})")
            return baseline
        except CorruptFileError as err:
            logger.warning(f"[baseline] cache entry is damaged, rebuilding it: {err}")
    baseline = train_baseline(exp, key=key, path=cache.uri())
    save_baseline(baseline, cache)
    return baseline


def save_baseline(baseline: Baseline, where: Store | str | os.PathLike | None = None) -> None:
    """Write the baseline to ``where`` (default: ``baseline.path``): weights first and the
    metadata (with their checksums) last, each atomically.

    A crash between the writes leaves no ``baseline.json`` pointing at unfinished weights.
    """
    store = Store.of(baseline.path if where is None else where)
    sums = {
        "regular.pt": store.save_state("regular.pt", baseline.regular_state),
        "robust.pt": store.save_state("robust.pt", baseline.robust_state),
    }
    meta = {"key": baseline.key, "metrics": asdict(baseline.metrics), "sha256": sums}
    store.write_json(BASELINE_FILE, meta)


def _given_baseline(exp: Experiment, key: str, cache: Store) -> Baseline:
    """Load the ``baseline:`` section's networks and measure them (or reuse the measurements
    of the very same files)."""
    start = time.perf_counter()
    regular, robust, source = load_networks(exp.sources, exp.build_model)
    if cache.is_file(BASELINE_FILE):
        try:
            cached = load_baseline(cache)
            if cached.metrics.source == source:
                logger.info(f"[baseline] reusing the measurements in {cache.uri()} (Acc* = "
                    f"{cached.acc_star:.4f})")  # fmt: skip
                return cached
        except CorruptFileError as err:
            logger.warning(f"[baseline] cache entry is damaged, measuring again: {err}")
    logger.info(
        f"[baseline] given networks: robust {source['robust']['spec']}, regular "
        f"{source['regular']['spec']} (not trained); measuring Acc*"
    )
    models = {}
    for role, state in (("regular", regular), ("robust", robust)):
        models[role] = exp.build_model()
        models[role].load_state_dict(state)
    regular_acc = measure_regular(exp, models["regular"])
    metrics = measure_robust(exp, models["robust"], regular_acc, start, source=source)
    baseline = Baseline(key, cache.uri(), regular, robust, metrics)
    save_baseline(baseline, cache)
    return baseline


def measure_regular(exp: Experiment, regular: torch.nn.Module) -> tuple[float, float]:
    """The regular network's clean and robust (``eval_attack``) test accuracy."""
    c = exp.config
    kw = {"batch_size": c.eval_batch, "device": exp.device}
    x_test, y_test = exp.eval_split("test")
    clean = evaluate(regular, exp.data.x_test, exp.data.y_test, **kw)
    robust = evaluate(regular, x_test, y_test, attack=exp.eval_attack(regular, c.seed), **kw)
    logger.info(f"[baseline] regular: clean {clean:.4f}, robust {robust:.4f}")
    return clean, robust


def measure_robust(
    exp: Experiment,
    robust: torch.nn.Module,
    regular_acc: tuple[float, float],
    start: float,
    **extra: Any,
) -> BaselineMetrics:
    """Acc* (test, ``eval_attack``), Acc*_val (validation, ``stop_attack`` seeded with the
    config's seed, with its per-image correctness for the trials' paired checks) and the robust
    network's clean accuracy, beside ``regular_acc`` (:func:`measure_regular`); ``extra``
    fills the remaining metric fields."""
    c = exp.config
    kw = {"batch_size": c.eval_batch, "device": exp.device}
    d = exp.data
    x_test, y_test = exp.eval_split("test")
    x_val, y_val = exp.eval_split("val")
    # Per image, so each trial's check can be paired with it (same images, order, attack seed).
    _, val_preds = predict_adversarial(
        robust, x_val, y_val, attack=exp.stop_attack(robust, c.seed), keep_inputs=False, **kw
    )
    val_correct = val_preds == y_val.cpu()
    metrics = BaselineMetrics(
        acc_star=evaluate(robust, x_test, y_test, attack=exp.eval_attack(robust, c.seed), **kw),
        acc_star_val=accuracy(val_preds, y_val),
        clean_acc_robust=evaluate(robust, d.x_test, d.y_test, **kw),
        clean_acc_regular=regular_acc[0],
        robust_acc_regular=regular_acc[1],
        seconds=time.perf_counter() - start,
        val_images=len(y_val),
        val_correct=pack_correct(val_correct),
        test_images=len(y_test),
        **extra,
    )
    logger.info(
        f"[baseline] Acc* = {metrics.acc_star:.4f} (val {metrics.acc_star_val:.4f} on "
        f"{len(y_val)} images), "
        f"clean {metrics.clean_acc_robust:.4f}, {metrics.seconds:.1f} s"
    )
    return metrics


def train_baseline(exp: Experiment, *, key: str, path: str) -> Baseline:
    """Regular training of the full network, then adversarial training; measure Acc*."""
    c = exp.config
    start = time.perf_counter()
    gen = seed_everything(c.seed, deterministic=c.deterministic)
    model = exp.build_model()
    opt = make_optimizer(list(model.parameters()), c.lr, c.momentum, c.weight_decay)
    train_kw = {
        "batch_size": c.batch_size,
        "device": exp.device,
        "bf16": c.precision == "bf16",
        "augment": c.augment_enabled,
    }
    run = _BaselineRun(exp, gen, train_kw, history=[])
    regular_train_seconds = _train_stage(run, model, opt, "regular", c.baseline_epochs, None)
    regular_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    regular_acc = measure_regular(exp, model)

    if c.baseline_init == "scratch":
        seed_everything(c.seed + 1)
        model = exp.build_model()
    opt = make_optimizer(list(model.parameters()), c.lr, c.momentum, c.weight_decay)
    attack = exp.train_attack(model, c.seed)
    adv_train_seconds = _train_stage(run, model, opt, "adversarial", c.baseline_adv_epochs, attack)
    robust_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    metrics = measure_robust(
        exp,
        model,
        regular_acc,
        start,
        regular_train_seconds=regular_train_seconds,
        adv_train_seconds=adv_train_seconds,
        history=run.history,
    )
    return Baseline(key, path, regular_state, robust_state, metrics)


@dataclass
class _BaselineRun:
    """What both stages of the baseline's training share: the experiment, the data generator
    (one stream across both stages), the keyword arguments of every epoch, and the history
    both stages append to."""

    exp: Experiment
    gen: torch.Generator
    train_kw: dict[str, Any]
    history: list[dict[str, Any]]


def _train_stage(
    run: _BaselineRun,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    stage: str,
    epochs: int,
    attack: AttackFn | None,
) -> float:
    """``epochs`` epochs of one stage (``attack`` None: regular training), each logged and
    appended to ``run.history``; the stage's seconds."""
    data = run.exp.data
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        stats = train_epoch(
            model,
            data.x_train,
            data.y_train,
            optimizer,
            generator=run.gen,
            attack=attack,
            **run.train_kw,
        )
        logger.info(_epoch_line(stage, epoch, epochs, stats.loss, start))
        run.history.append(
            {
                "stage": stage,
                "epoch": epoch,
                "loss": stats.loss,
                "train_acc": stats.accuracy,
                "seconds": time.perf_counter() - start,
            }
        )
    return time.perf_counter() - start


def _epoch_line(stage: str, epoch: int, total: int, loss: float, stage_start: float) -> str:
    """``[baseline] adversarial epoch 2/6: loss 1.2345, 41 s/epoch, about 2.7 min left``: the
    stage's mean epoch time so far, and what is left of the stage at that rate."""
    per_epoch = (time.perf_counter() - stage_start) / epoch
    left = per_epoch * (total - epoch)
    eta = f"about {left / 60:.1f} min left" if left >= 90 else f"about {left:.0f} s left"
    return (
        f"[baseline] {stage} epoch {epoch}/{total}: loss {loss:.4f}, {per_epoch:.1f} s/epoch, "
        + (eta if epoch < total else "stage done")
    )
