"""Turn a validated config into the things Algorithm 1 works on: data, models, attacks, device.

Everything a user can get wrong about the data or the split depths is checked here, once, before
any training starts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import torch

from semirobust_ray.attacks import AttackError, create_attack, external_attack_fingerprint
from semirobust_ray.config import ConfigError, ExperimentConfig
from semirobust_ray.data import TEST_SEED, DataSplits, load_dataset, stratified_subset
from semirobust_ray.models import ImageClassifier, create_model, trainable_layers
from semirobust_ray.pretrained import Sources, resolve_sources
from semirobust_ray.training import AttackFn, resolve_device

#: Splits :meth:`Experiment.eval_split` serves.
_EVAL_SPLITS = ("val", "test")


@dataclass
class Experiment:
    """A config with its data loaded and its model architecture checked."""

    config: ExperimentConfig
    data: DataSplits
    # Where this process computes. A Ray driver's is the CPU; trials and tasks replace it
    # with config.device resolved on their worker.
    device: torch.device
    num_layers: int
    # The networks a baseline: section names, resolved on the driver (None: train them).
    sources: Sources | None = None
    _eval_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False
    )

    @property
    def split_depths(self) -> list[int]:
        """Candidate |f_b| values, ascending (every depth 1..n when the config names none)."""
        depths = self.config.split_depths or range(1, self.num_layers + 1)
        return sorted(depths)

    def build_model(self) -> ImageClassifier:
        """A fresh model with normalisation from the training images' per-channel statistics."""
        return create_model(
            self.config.model,
            self.data.num_classes,
            self.data.image_size,
            self.data.in_channels,
            mean=self._channel_stats[0],
            std=self._channel_stats[1],
            width=self.config.width,
            model_kwargs=self.config.model_kwargs,
        ).to(self.device)

    @cached_property
    def _channel_stats(self) -> tuple[list[float], list[float]]:
        x = self.data.x_train.float().div(255)
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return mean.tolist(), std.tolist()

    def train_attack(self, model: torch.nn.Module, seed: int) -> AttackFn:
        """The attack adversarial training uses (``attack``, ``eps``, ``alpha``, ``steps``)."""
        return self.make_attack(self.config.attack, model, seed)

    def eval_attack(self, model: torch.nn.Module, seed: int) -> AttackFn:
        """The attack Acc*, Acc_sr and Acc are measured with (``eval_attack``)."""
        return self.make_attack(self.config.eval_attack_name, model, seed)

    def stop_attack(self, model: torch.nn.Module, seed: int) -> AttackFn:
        """The attack of the per-epoch validation check against Acc*_val - k (``stop_attack``)."""
        return self.make_attack(self.config.stop_attack_name, model, seed)

    def make_attack(self, spec: str, model: torch.nn.Module, seed: int) -> AttackFn:
        """The one place an attack of this config is built: ``spec`` against ``model`` with the
        config's ``eps``, ``alpha``, ``steps``, its ``attack_kwargs`` entry and ``seed``."""
        c = self.config
        return create_attack(
            spec,
            model,
            eps=c.eps,
            alpha=c.alpha,
            steps=c.steps,
            seed=seed,
            **c.attack_options(spec),
        )

    def eval_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``val`` or ``test`` images and labels robust accuracy is measured on.

        Every image of the split by default. With a cap (``eval_samples`` for ``test``,
        ``val_samples`` for ``val``), a seeded, class-stratified subset of that many (the whole
        split when it is smaller), not the first images: a class-sorted split (torchvision's
        Imagenette) would otherwise be scored on a few classes. The test subset does not depend
        on the run seed (every seed is scored on the same images); the validation subset is
        drawn with the config's seed. Computed once per split: the baseline and every trial
        ask for it, and the paired check needs the very same images in the same order.
        """
        if split not in _EVAL_SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(_EVAL_SPLITS)}")
        if split not in self._eval_cache:
            x, y = getattr(self.data, f"x_{split}"), getattr(self.data, f"y_{split}")
            cap = self.config.eval_samples if split == "test" else self.config.val_samples
            if cap is not None and cap < len(y):
                seed = TEST_SEED if split == "test" else self.config.seed
                idx = stratified_subset(y, cap, seed)
                x, y = x[idx], y[idx]
            self._eval_cache[split] = (x, y)
        return self._eval_cache[split]

    @cached_property
    def data_fingerprint(self) -> str:
        """A hash of the exact images and labels, so a cache never outlives its data."""
        h = hashlib.sha256()
        for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            h.update(getattr(self.data, name).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def prepare(config: ExperimentConfig, device: str | None = None) -> Experiment:
    """Load the data and check the model and split depths; fails fast with a one-line error.

    ``device`` is where this process will compute: None resolves the config's ``device`` here
    (a run in one process, which fails at once when ``cuda`` is missing). A Ray driver passes
    ``"cpu"``: it only schedules, possibly from a CPU-only head node, and every trial and task
    resolves ``config.device`` on the worker it lands on.
    """
    c = config
    data = load_dataset(
        c.dataset,
        root=c.data_root,
        path=c.data_path,
        val_fraction=c.val_fraction,
        seed=c.seed,
        download=c.download,
        image_size=c.image_size,
        max_train=c.max_train,
        max_test=c.max_test,
    )
    target = resolve_device(c.device if device is None else device)
    # Here, on the driver and before Ray starts, a timm:NAME or package.module:factory model is
    # imported and built once: a missing module or a failing factory is one line now, not a
    # traceback in every trial.
    model = create_model(
        c.model,
        data.num_classes,
        data.image_size,
        data.in_channels,
        width=c.width,
        model_kwargs=c.model_kwargs,
    )
    n = len(trainable_layers(model))
    bad = [d for d in (c.split_depths or ()) if not 1 <= d <= n]
    if bad:
        raise ConfigError(
            f"split_depths {bad} out of range for {c.model}: it has {n} trainable layers, "
            f"valid |f_b| is 1..{n}"
        )
    exp = Experiment(c, data, target, n)
    _check_attacks(exp, model)
    if c.baseline:
        exp.sources = resolve_sources(c.baseline, exp.build_model)
    return exp


def _check_attacks(exp: Experiment, model: torch.nn.Module) -> None:
    """Build the config's three attacks once, here on the driver and before Ray starts: a
    module that cannot be imported, a class that is not an Attack, an option the attack does not
    take or a bad value is one line now, not a traceback in every trial. Building one runs
    nothing and draws no random number."""
    c = exp.config
    for key, spec in (
        ("attack", c.attack),
        ("eval_attack", c.eval_attack_name),
        ("stop_attack", c.stop_attack_name),
    ):
        try:
            exp.make_attack(spec, model, c.seed)
        except AttackError as err:  # the message names the attack; the key, where it helps
            raise ConfigError(str(err) if key == "attack" else f"{key}: {err}") from None


def external_attacks_fingerprint(config: ExperimentConfig) -> dict[str, str] | None:
    """The code of the config's attacks from outside the package (``torchattacks:`` version,
    a hash of a ``package.module:Class``'s source), for the baseline cache key: editing your
    attack makes cached baselines miss, as editing your model does. None when all three are
    registered attacks (their code is fingerprinted with the package)."""
    specs = {config.attack, config.eval_attack_name, config.stop_attack_name}
    codes = {spec: external_attack_fingerprint(spec) for spec in sorted(specs)}
    return {spec: code for spec, code in codes.items() if code is not None} or None
